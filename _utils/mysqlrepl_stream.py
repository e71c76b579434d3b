"""
Seeding transport for mysqlrepl: a ``mariadb-backup --stream=mbstream`` sent over a
mutually verified TLS connection from the master's minion to the replica's minion.

Plain Python, no Salt dunders: the execution module reaches these functions as
``__utils__["mysqlrepl_stream.<func>"]`` and unit/integration tests import the file directly.

Protocol (one TCP connection, TLS 1.2+ both ways verified against the topology CA):

* the replica side (:func:`receive_backup`) listens, accepts exactly one connection, checks that
  the client certificate's subjectAltName names the master, and pipes the bytes into
  ``mbstream -x -C <target_dir>``;
* the master side (:func:`send_backup`) connects (retrying while the receiver is not up yet),
  verifies the receiver's certificate for the address it dialled, waits for the receiver's
  one-line "go" (sent after it accepted the client certificate and started mbstream), and only
  then runs mariadb-backup and pumps its stdout into the socket -- a refused sender never takes
  backup locks on the master;
* success is signalled with TLS ``close_notify`` only: the sender closes cleanly only when
  mariadb-backup exited 0, and the receiver answers with its own ``close_notify`` only after
  mbstream exited 0.  A connection that ends any other way is a failure on both sides, so a
  truncated stream can never be taken for a complete backup.

No password ever appears in argv or the environment: mariadb-backup reads its credentials from
a 0600 option file given with ``--defaults-extra-file``.
"""

import collections
import datetime
import ipaddress
import logging
import multiprocessing
import os
import queue
import re
import shutil
import socket
import ssl
import stat
import struct
import subprocess
import tempfile
import threading
import time

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # 1 MiB reads/writes
PROGRESS_INTERVAL = 2.0  # seconds between progress callbacks
STDERR_TAIL_LINES = 60
BINLOG_INFO_FILES = ("xtrabackup_binlog_info", "mariadb_backup_binlog_info")
# receiver -> sender once the client certificate is accepted and mbstream runs
GO = b"mysqlrepl-stream/1 go\n"

# Linux: grow pipes so 1 MiB reads actually get 1 MiB (default pipe is 64 KiB).
_F_SETPIPE_SZ = 1031

# mariadb-backup prints "SHOW GRANTS" output on privilege errors, hashes included.
_REDACT_RE = re.compile(
    r"(IDENTIFIED\s+(?:BY\s+PASSWORD|VIA\s+\S+\s+(?:USING|AS))\s+)'[^']*'", re.IGNORECASE
)
# "[00] 2026-11-23 12:40:44 Starting BACKUP STAGE BLOCK_COMMIT"
_STDERR_TS_RE = re.compile(r"^\[\d+\]\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s+(.*)$")
_STAGE_RE = re.compile(
    r"^(?P<what>Starting|Started|Acquired locks for|Finished|Finishing|Executing)"
    r" BACKUP STAGE (?P<stage>[A-Z_]+)\s*$"
)
_UNLOCKED = "All tables unlocked"
_BINLOG_LINE_RE = re.compile(
    r"MySQL binlog position: filename '([^']*)', position '(\d+)'"
    r"(?:, GTID of the last change '([^']*)')?"
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _redact(text):
    return _REDACT_RE.sub(r"\1'<redacted>'", text)


_PROGRESS_BUSY = threading.Lock()


def _call_progress(progress, nbytes):
    """
    Progress callbacks are best effort and never block the copy: each runs in
    its own thread, and is skipped while the previous one is still running
    (an event bus that answers slowly must not hold the stream, and with it
    mariadb-backup's BACKUP STAGE locks on the master).
    """
    if progress is None or not _PROGRESS_BUSY.acquire(blocking=False):
        return

    def run():
        try:
            progress(nbytes)
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("mysqlrepl_stream: progress callback failed: %s", exc)
        finally:
            _PROGRESS_BUSY.release()

    threading.Thread(target=run, name="mysqlrepl-progress", daemon=True).start()


class _Drain(threading.Thread):
    """
    Reads a child's stdout as fast as it writes, into a bounded in-memory queue,
    so that mariadb-backup never waits on the network while it holds BACKUP
    STAGE locks (its writes during BLOCK_COMMIT would otherwise wait for the
    receiver). ``None`` in the queue marks the end; an OSError is passed on.
    """

    def __init__(self, fileobj, max_chunks):
        super().__init__(name="mysqlrepl-drain", daemon=True)
        self.fd = fileobj.fileno()
        self.chunks = queue.Queue(maxsize=max_chunks)

    def run(self):
        try:
            while True:
                data = os.read(self.fd, CHUNK)
                self.chunks.put(data or None)
                if not data:
                    return
        except OSError as exc:
            self.chunks.put(exc)


def _kill(proc):
    """Kill a child by its Popen object (never by name) and reap it."""
    if proc is None:
        return
    try:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    except Exception:  # pylint: disable=broad-except
        pass
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            try:
                stream.close()
            except Exception:  # pylint: disable=broad-except
                pass


def _close(sock):
    if sock is None:
        return
    try:
        sock.close()
    except Exception:  # pylint: disable=broad-except
        pass


def _abort(sock):
    """Close a TLS socket *without* close_notify so the peer sees a failed transfer."""
    if sock is None:
        return
    try:
        # SO_LINGER 0 -> RST: the peer gets ECONNRESET rather than a (ragged) EOF.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except Exception:  # pylint: disable=broad-except
        pass
    _close(sock)


def _grow_pipe(fileobj):
    try:
        import fcntl  # pylint: disable=import-outside-toplevel

        fcntl.fcntl(fileobj.fileno(), _F_SETPIPE_SZ, CHUNK)
    except Exception:  # pylint: disable=broad-except
        pass


def _write_all(fileobj, view):
    """Raw (unbuffered) pipe writes may be partial: loop until everything is written."""
    while view:
        written = fileobj.write(view)
        if written is None:  # non-blocking fd would block; ours is blocking
            continue
        view = view[written:]


def _remaining(deadline, what):
    left = deadline - time.monotonic()
    if left <= 0:
        raise CommandExecutionError(f"mysqlrepl_stream: timed out {what}")
    return left


class _StderrReader(threading.Thread):
    """Drain a child's stderr: keep the tail and the arrival time of BACKUP STAGE lines."""

    def __init__(self, stream, name, keep=STDERR_TAIL_LINES, on_stage=None):
        super().__init__(name=name, daemon=True)
        self.stream = stream
        self.on_stage = on_stage  # called with each stage / unlock line as it arrives
        self.tail = collections.deque(maxlen=keep)
        self.events = []  # (monotonic, line) for stage / unlock lines
        self.binlog = None

    def run(self):
        try:
            for raw in iter(self.stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                now = time.monotonic()
                self.tail.append(line)
                if "BACKUP STAGE" in line or _UNLOCKED in line:
                    self.events.append((now, line))
                    if self.on_stage is not None:
                        try:
                            self.on_stage(line)
                        except Exception:  # pylint: disable=broad-except
                            pass
                elif "binlog position:" in line:
                    match = _BINLOG_LINE_RE.search(line)
                    if match:
                        self.binlog = {
                            "file": match.group(1),
                            "pos": int(match.group(2)),
                            "gtid": match.group(3) or "",
                        }
        except Exception:  # pylint: disable=broad-except
            pass
        finally:
            try:
                self.stream.close()
            except Exception:  # pylint: disable=broad-except
                pass

    def text(self):
        return _redact("\n".join(self.tail))


# --------------------------------------------------------------------------------------------
# the master's BACKUP STAGE locks, observed on the server (information_schema.METADATA_LOCK_INFO)
# --------------------------------------------------------------------------------------------
# MariaDB 10.4+ names the lock each BACKUP STAGE holds (and FTWRL's) in the metadata_lock_info
# plugin's table (mysqlrepl.server loads it).  BACKUP STAGE BLOCK_COMMIT = MDL_BACKUP_WAIT_COMMIT:
# every commit on the master waits while it is held, InnoDB and Aria alike.
STAGE_MODES = {
    "MDL_BACKUP_START": "START",
    "MDL_BACKUP_FLUSH": "FLUSH",
    "MDL_BACKUP_WAIT_FLUSH": "WAIT_FLUSH",
    "MDL_BACKUP_WAIT_DDL": "BLOCK_DDL",
    "MDL_BACKUP_WAIT_COMMIT": "BLOCK_COMMIT",
    "MDL_BACKUP_FTWRL1": "FTWRL1",
    "MDL_BACKUP_FTWRL2": "FTWRL2",
}
# after START, the stages that come just before BLOCK_COMMIT: poll fast from here on
_NEAR_END = {"FLUSH", "WAIT_FLUSH", "BLOCK_DDL", "BLOCK_COMMIT", "FTWRL1", "FTWRL2"}
LOCK_WATCH_SQL = (
    "SELECT LOCK_MODE FROM information_schema.METADATA_LOCK_INFO WHERE LOCK_MODE IN ("
    + ", ".join(f"'{mode}'" for mode in STAGE_MODES) + ")"
)
LOCK_WATCH_SOURCE = ("server: information_schema.METADATA_LOCK_INFO polled every ~{:g} ms near the end "
                     "stages, then BLOCK_COMMIT's end by a BACKUP STAGE START that waits for it "
                     "(resolution_ms: the longest gap actually seen)")
# Once BLOCK_COMMIT is seen, the watch stops polling (a query on the server at each ms, while
# mariadb-backup stops its redo-copy thread, made it miss its moment and sleep 200 ms in
# stop_backup_threads: 200-400 ms spans in 6 of 25 seeds, none in 8 without the polls) and asks
# for a backup stage of its own: only one connection holds backup stages, so this START waits
# until mariadb-backup's BACKUP STAGE END and is granted at once then (0.3 ms after END,
# measured); the watch then ends it. It holds nothing while it waits and blocks no commit.
LOCK_PROBE_SQL = "SET STATEMENT lock_wait_timeout={:d} FOR BACKUP STAGE START"
LOCK_PROBE_END_SQL = "BACKUP STAGE END"
# how long after the backup's END the waiting START returns, at most (measured: 0.3 ms)
LOCK_PROBE_SLACK_S = 0.001


def stage_spans(observations):
    """
    Spans of each backup lock from polls of METADATA_LOCK_INFO.

    ``observations``: ``[(t_sent, t_answered, {stage, ...})]`` in order (seconds, one clock): the
    server saw the locks at some instant between ``t_sent`` and ``t_answered``.  A lock first seen
    in poll i and last seen in poll j was taken after poll i-1 was sent and before poll i was
    answered, released after poll j was sent and before poll j+1 was answered.  Returns
    ``{stage: [{"ms", "min_ms", "max_ms", "open_start", "open_end"}]}``: ``ms`` is the middle of
    [min_ms, max_ms]; ``open_start``/``open_end`` say the lock was already held at the first poll
    or still held at the last one (that bound is then the poll itself).
    """
    out = {}
    n = len(observations)
    for stage in sorted({s for _a, _b, seen in observations for s in seen}):
        i = 0
        while i < n:
            if stage not in observations[i][2]:
                i += 1
                continue
            j = i
            while j + 1 < n and stage in observations[j + 1][2]:
                j += 1
            first, last = observations[i], observations[j]
            before = observations[i - 1] if i > 0 else None
            after = observations[j + 1] if j + 1 < n else None
            min_s = max(0.0, last[0] - first[1])
            max_s = (after[1] if after else last[1]) - (before[0] if before else first[0])
            out.setdefault(stage, []).append({
                "ms": round((min_s + max_s) * 500, 1),
                "min_ms": round(min_s * 1000, 1),
                "max_ms": round(max_s * 1000, 1),
                "open_start": before is None,
                "open_end": after is None,
            })
            i = j + 1
    return out


def lock_summary(observations, interval_ms, error=None):
    """
    ``lock_info`` from METADATA_LOCK_INFO polls: ``block_commit_ms`` (how long BACKUP STAGE
    BLOCK_COMMIT was held: commits waited), ``block_ddl_ms`` (BLOCK_DDL through the end of
    BLOCK_COMMIT: DDL waited), ``resolution_ms`` (half the uncertainty of block_commit_ms),
    ``source``, ``polls``, ``spans`` (every stage) and ``ftwrl`` (True if a FLUSH TABLES WITH
    READ LOCK was seen while we polled).  ``block_commit_ms`` is None when nothing was seen.
    """
    spans = stage_spans(observations)
    commit = spans.get("BLOCK_COMMIT") or []
    info = {
        "source": LOCK_WATCH_SOURCE.format(interval_ms),
        "polls": len(observations),
        "block_commit_ms": None,
        "resolution_ms": None,
        "block_ddl_ms": None,
        "spans": spans,
        "ftwrl": bool(spans.get("FTWRL1") or spans.get("FTWRL2")),
    }
    if error:
        info["error"] = error
    if commit and error and commit[-1]["open_end"]:
        # the watch failed while BLOCK_COMMIT was held (e.g. its BACKUP STAGE START was refused):
        # its end is unknown, so no figure (the caller falls back to mariadb-backup's lines)
        commit = commit[:-1]
    if commit:
        longest = max(commit, key=lambda s: s["ms"])
        info["block_commit_ms"] = longest["ms"]
        info["resolution_ms"] = round((longest["max_ms"] - longest["min_ms"]) / 2, 1)
        if len(commit) > 1:
            info["block_commit_spans"] = len(commit)
        ddl = spans.get("BLOCK_DDL") or []
        # BLOCK_DDL's lock is upgraded to BLOCK_COMMIT's: DDL waits through both
        info["block_ddl_ms"] = round(longest["ms"] + (max(s["ms"] for s in ddl) if ddl else 0.0), 1)
    return info


class BackupLockWatch:
    """
    Polls the master's ``information_schema.METADATA_LOCK_INFO`` on its own local connection
    while mariadb-backup runs: every ``slow`` seconds from the start, every ``fast`` seconds
    once a stage near the end is seen (FLUSH, BLOCK_DDL) or :meth:`hurry` is called
    (mariadb-backup printed such a stage). Once a poll sees BLOCK_COMMIT it stops polling and
    waits for the stage's end with a BACKUP STAGE START of its own (``LOCK_PROBE_SQL``: see
    there why, and why it blocks nothing); it also stops once :meth:`unlocked` was called and
    a poll sees no backup lock.  :meth:`finish` stops it and returns
    :func:`lock_summary`.  ``connect()`` returns a DB-API connection; a failure to connect or
    query ends the watch with ``error`` set, never the backup.

    ``process=True`` (default) polls from a forked child process: in the sender's process the
    copy loop's threads hold the GIL, and a polling thread there measured 30-40 ms between polls
    (a 1 ms poll needs the GIL several times).  ``process=False`` polls from a thread (tests).
    """

    def __init__(self, connect, fast=0.001, slow=0.02, clock=time.monotonic, sleep=time.sleep,
                 process=True, probe_timeout=3600):
        self.connect = connect
        self.probe_timeout = int(probe_timeout)
        self.fast, self.slow = fast, slow
        self.clock, self.sleep = clock, sleep
        self.observations = []
        self.error = None
        self.process = process
        if process:
            ctx = multiprocessing.get_context("fork")
            self._hurry, self._stop_ev, self._done_ev = ctx.Event(), ctx.Event(), ctx.Event()
            self._recv, self._send = ctx.Pipe(duplex=False)
            self._worker = ctx.Process(target=self._child, name="mysqlrepl-lock-watch", daemon=True)
        else:
            self._hurry, self._stop_ev, self._done_ev = (threading.Event() for _ in range(3))
            self._worker = threading.Thread(target=self._loop, name="mysqlrepl-lock-watch", daemon=True)

    def start(self):
        self._worker.start()
        if self.process:
            self._send.close()  # the child's end

    def hurry(self):
        self._hurry.set()

    def unlocked(self):
        """mariadb-backup says every lock is released: stop at the next poll that sees none."""
        self._done_ev.set()

    def _child(self):
        try:
            try:  # a poll late by the scheduler is a lock span measured long
                os.setpriority(os.PRIO_PROCESS, 0, -10)
            except OSError:
                pass
            self._recv.close()
            self._loop()
            self._send.send((self.observations, self.error))
        finally:
            self._send.close()

    def _loop(self):
        conn = None
        try:
            conn = self.connect()
            cur = conn.cursor()
            try:
                cur.execute("SET SESSION sql_log_off = 1")  # no general-log line per poll
            except Exception:  # pylint: disable=broad-except
                pass
            seen_any = False
            while not self._stop_ev.is_set():
                t0 = self.clock()
                cur.execute(LOCK_WATCH_SQL)
                rows = cur.fetchall()
                t1 = self.clock()
                seen = frozenset(STAGE_MODES[(r["LOCK_MODE"] if isinstance(r, dict) else r[0])]
                                 for r in rows)
                self.observations.append((t0, t1, seen))
                if "BLOCK_COMMIT" in seen:
                    self._wait_for_end(cur)
                    break
                if seen & _NEAR_END:
                    self._hurry.set()
                if seen:
                    seen_any = True
                elif seen_any and self._done_ev.is_set():
                    break  # mariadb-backup released every backup lock
                self.sleep(self.fast if self._hurry.is_set() else self.slow)
        except Exception as exc:  # pylint: disable=broad-except
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # pylint: disable=broad-except
                    pass

    def _wait_for_end(self, cur):
        """
        BLOCK_COMMIT is held: wait for its end with a BACKUP STAGE START of our own (granted
        when mariadb-backup's BACKUP STAGE END releases it), end that stage, and record when.
        A START that did not wait (the backup had ended already) bounds the end by the polls.
        """
        t0 = self.clock()
        cur.execute(LOCK_PROBE_SQL.format(self.probe_timeout))
        t1 = self.clock()
        cur.execute(LOCK_PROBE_END_SQL)
        if t1 - t0 > 2 * LOCK_PROBE_SLACK_S:
            # it waited: BLOCK_COMMIT was held until just before the START was granted
            self.observations.append((t1 - LOCK_PROBE_SLACK_S, t1 - LOCK_PROBE_SLACK_S,
                                      frozenset({"BLOCK_COMMIT"})))
        self.observations.append((t1, t1, frozenset()))

    def finish(self, timeout=5):
        self._done_ev.set()
        self._stop_ev.set()
        if self.process:
            try:
                if self._recv.poll(timeout):
                    self.observations, self.error = self._recv.recv()
                else:
                    self.error = self.error or "the lock watch process did not answer"
            except (EOFError, OSError) as exc:
                self.error = self.error or f"the lock watch process ended without an answer ({exc})"
            finally:
                self._recv.close()
            self._worker.join(timeout)
            if self._worker.is_alive():
                self._worker.kill()
                self._worker.join(5)
        else:
            self._worker.join(timeout)
        return lock_summary(list(self.observations), self.fast * 1000, self.error)


def _peer_names(cert):
    """(dns names lower-cased, ip addresses) from a getpeercert() dict's subjectAltName."""
    dns, ips = set(), set()
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS":
            dns.add(value.strip().lower().rstrip("."))
        elif kind == "IP Address":
            try:
                ips.add(ipaddress.ip_address(value.strip()))
            except ValueError:
                pass
    return dns, ips


def _peer_matches(cert, expected):
    """Exact SAN match (no wildcards, no CN fallback) of the expected IP or DNS name."""
    dns, ips = _peer_names(cert)
    try:
        return ipaddress.ip_address(expected.strip().strip("[]")) in ips
    except ValueError:
        return expected.strip().lower().rstrip(".") in dns


def _check_files(**paths):
    for label, path in paths.items():
        if not path or not os.path.isfile(path):
            raise CommandExecutionError(f"mysqlrepl_stream: {label} {path!r} is not a file")


# --------------------------------------------------------------------------------------------
# receiving side (replica minion)
# --------------------------------------------------------------------------------------------
def receive_backup(
    bind_host,
    port,
    target_dir,
    ca_file,
    cert_file,
    key_file,
    expected_peer,
    timeout=3600,
    progress=None,
    ready=None,
    mbstream="mbstream",
    progress_interval=PROGRESS_INTERVAL,
):
    """
    Receive one mbstream backup over TLS and extract it into ``target_dir``.

    Listens on ``bind_host:port``, accepts exactly one connection, requires a client certificate
    from ``ca_file`` whose subjectAltName contains ``expected_peer`` (an IP address or DNS name,
    or a list of acceptable ones), and feeds the stream to ``mbstream -x -C target_dir``.

    ``timeout`` bounds the whole operation (waiting for the sender included).  ``ready()`` is
    called once the socket listens; ``progress(bytes_so_far)`` at most every
    ``progress_interval`` seconds.  ``target_dir`` must exist and be empty; after a failure it
    may hold a partial extraction that the caller has to remove.

    Returns ``{"bytes", "seconds", "peer", "peer_addr"}``; raises CommandExecutionError.
    """
    _check_files(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    if not os.path.isdir(target_dir):
        raise CommandExecutionError(f"mysqlrepl_stream: target_dir {target_dir} does not exist")
    if os.listdir(target_dir):
        raise CommandExecutionError(f"mysqlrepl_stream: target_dir {target_dir} is not empty")
    expected = [expected_peer] if isinstance(expected_peer, str) else list(expected_peer or ())
    if not expected:
        raise CommandExecutionError("mysqlrepl_stream: expected_peer is required")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=ca_file)
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise CommandExecutionError(f"mysqlrepl_stream: cannot load TLS files: {exc}") from exc

    start = time.monotonic()
    deadline = start + timeout
    where = f"{bind_host}:{port}"
    listener = conn = tls = proc = errs = watchdog = None
    nbytes = 0
    try:
        try:
            family, _, _, _, addr = socket.getaddrinfo(
                bind_host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(addr)
            listener.listen(1)
        except OSError as exc:
            raise CommandExecutionError(f"mysqlrepl_stream: cannot listen on {where}: {exc}") from exc
        if ready is not None:
            ready()

        listener.settimeout(_remaining(deadline, f"before listening on {where}"))
        try:
            conn, peer_addr = listener.accept()
        except socket.timeout as exc:
            raise CommandExecutionError(
                f"mysqlrepl_stream: no sender connected to {where} within {timeout} s"
            ) from exc
        _close(listener)  # exactly one connection
        listener = None
        peer_addr = f"{peer_addr[0]}:{peer_addr[1]}"

        conn.settimeout(min(60.0, _remaining(deadline, "waiting for the TLS handshake")))
        try:
            tls = ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
        except (ssl.SSLError, OSError) as exc:
            raise CommandExecutionError(
                f"mysqlrepl_stream: TLS handshake with {peer_addr} failed: {exc}"
            ) from exc
        conn = None
        cert = tls.getpeercert() or {}
        peer = next((name for name in expected if _peer_matches(cert, name)), None)
        if peer is None:
            dns, ips = _peer_names(cert)
            names = sorted(dns) + sorted(str(ip) for ip in ips)
            raise CommandExecutionError(
                f"mysqlrepl_stream: refused connection from {peer_addr}: client certificate "
                f"names {names or 'nothing'} in subjectAltName, expected {expected_peer!r}"
            )

        try:
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                [mbstream, "-x", "-C", target_dir],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                bufsize=0,
                close_fds=True,
            )
        except OSError as exc:
            raise CommandExecutionError(f"mysqlrepl_stream: cannot run {mbstream}: {exc}") from exc
        _grow_pipe(proc.stdin)
        errs = _StderrReader(proc.stderr, "mbstream-stderr")
        errs.start()
        tls.settimeout(min(60.0, _remaining(deadline, "sending go")))
        try:
            tls.sendall(GO)
        except (ssl.SSLError, OSError) as exc:
            raise CommandExecutionError(
                f"mysqlrepl_stream: connection from {peer_addr} broke before the transfer: {exc}"
            ) from exc
        # a wedged mbstream (blocked write) cannot outlive the deadline
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), proc.kill)
        watchdog.daemon = True
        watchdog.start()

        buf = bytearray(CHUNK)
        view = memoryview(buf)
        last_progress = time.monotonic()
        eof = False
        while not eof:
            filled = 0
            # gather up to 1 MiB (TLS hands out at most one 16 KiB record per read)
            while filled < CHUNK - 16384:
                tls.settimeout(_remaining(deadline, f"receiving the backup from {peer_addr}"))
                try:
                    n = tls.recv_into(view[filled:])
                except ssl.SSLEOFError as exc:
                    raise CommandExecutionError(
                        f"mysqlrepl_stream: sender {peer_addr} closed the connection without "
                        f"finishing (after {nbytes + filled} bytes): the backup failed on the "
                        "master side"
                    ) from exc
                except socket.timeout as exc:
                    raise CommandExecutionError(
                        f"mysqlrepl_stream: timed out receiving the backup from {peer_addr} "
                        f"after {nbytes + filled} bytes"
                    ) from exc
                except (ssl.SSLError, OSError) as exc:
                    raise CommandExecutionError(
                        f"mysqlrepl_stream: connection from {peer_addr} broke after "
                        f"{nbytes + filled} bytes: {exc}"
                    ) from exc
                if n == 0:
                    eof = True  # clean close_notify: the sender's mariadb-backup exited 0
                    break
                filled += n
            if filled:
                try:
                    _write_all(proc.stdin, view[:filled])
                except OSError as exc:
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
                    errs.join(5)
                    raise CommandExecutionError(
                        f"mysqlrepl_stream: {mbstream} stopped reading (exit {proc.returncode}) "
                        f"after {nbytes} bytes: {errs.text() or exc}"
                    ) from exc
                nbytes += filled
            now = time.monotonic()
            if progress is not None and now - last_progress >= progress_interval:
                last_progress = now
                _call_progress(progress, nbytes)

        proc.stdin.close()
        try:
            rc = proc.wait(timeout=_remaining(deadline, f"waiting for {mbstream} to finish"))
        except subprocess.TimeoutExpired as exc:
            raise CommandExecutionError(f"mysqlrepl_stream: {mbstream} did not finish in time") from exc
        errs.join(5)
        if rc != 0:
            raise CommandExecutionError(
                f"mysqlrepl_stream: {mbstream} exited {rc} after {nbytes} bytes: {errs.text()}"
            )
        # confirm to the sender that everything was extracted
        try:
            tls.settimeout(10)
            tls.unwrap()
        except (ssl.SSLError, OSError) as exc:
            log.debug("mysqlrepl_stream: closing TLS to %s: %s", peer_addr, exc)
        return {
            "bytes": nbytes,
            "seconds": round(time.monotonic() - start, 3),
            "peer": peer,
            "peer_addr": peer_addr,
        }
    except BaseException:
        _kill(proc)
        _abort(tls)
        raise
    finally:
        if watchdog is not None:
            watchdog.cancel()
        _close(listener)
        _close(conn)
        _close(tls)
        if proc is not None:
            _kill(proc)
            if proc.stderr is not None:
                try:
                    proc.stderr.close()
                except Exception:  # pylint: disable=broad-except
                    pass


# --------------------------------------------------------------------------------------------
# sending side (master minion)
# --------------------------------------------------------------------------------------------
CONNECT_RETRY_S = 0.05


def _connect_tls(host, port, ctx, connect_timeout, source_address=None):
    deadline = time.monotonic() + connect_timeout
    last = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CommandExecutionError(
                f"mysqlrepl_stream: cannot connect to receiver {host}:{port} within "
                f"{connect_timeout} s: {last}"
            )
        sock = None
        try:
            sock = socket.create_connection(
                (host, port),
                timeout=min(10.0, left),
                source_address=(source_address, 0) if source_address else None,
            )
            sock.settimeout(min(60.0, max(left, 10.0)))
            return ctx.wrap_socket(sock, server_hostname=host, suppress_ragged_eofs=False)
        except ssl.SSLCertVerificationError as exc:
            _close(sock)
            raise CommandExecutionError(
                f"mysqlrepl_stream: receiver {host}:{port} failed certificate verification: "
                f"{exc.verify_message or exc}"
            ) from exc
        except ssl.SSLEOFError as exc:
            # through an SSH tunnel the forward accepts at once and closes when nothing
            # listens behind it yet: the receiver is not up yet, as for a refused connect
            _close(sock)
            last = exc
            time.sleep(min(CONNECT_RETRY_S, max(0.0, deadline - time.monotonic())))
        except ssl.SSLError as exc:
            _close(sock)
            raise CommandExecutionError(
                f"mysqlrepl_stream: TLS handshake with receiver {host}:{port} failed: {exc}"
            ) from exc
        except OSError as exc:  # refused / unreachable / timeout: receiver not up yet
            _close(sock)
            last = exc
            # both minions' jobs start at once: the receiver listens a moment after the
            # sender first tries, and every ms waited here is a ms of the seed
            time.sleep(min(CONNECT_RETRY_S, max(0.0, deadline - time.monotonic())))


def _wait_go(tls, host, port, deadline):
    got = b""
    try:
        while len(got) < len(GO):
            tls.settimeout(min(60.0, _remaining(deadline, f"waiting for {host}:{port} to accept")))
            chunk = tls.recv(len(GO) - len(got))
            if not chunk:
                break
            got += chunk
    except ssl.SSLError as exc:
        raise CommandExecutionError(
            f"mysqlrepl_stream: receiver {host}:{port} refused this sender ({exc}); its log says "
            "why (client certificate not from the CA / SAN is not the expected master, "
            "target_dir not usable)"
        ) from exc
    except OSError as exc:
        raise CommandExecutionError(
            f"mysqlrepl_stream: receiver {host}:{port} refused this sender ({exc!r}); its log "
            "says why (client certificate SAN is not the expected master, target_dir not usable)"
        ) from exc
    if got != GO:
        raise CommandExecutionError(
            f"mysqlrepl_stream: receiver {host}:{port} refused this sender (closed the connection "
            f"before the transfer, got {got!r}); check the receiving side (client certificate "
            "SAN must name this master)"
        )


def send_backup(
    host,
    port,
    ca_file,
    cert_file,
    key_file,
    defaults_file,
    timeout=3600,
    progress=None,
    connect_timeout=60,
    backup_cmd="mariadb-backup",
    extra_args=(),
    datadir=None,
    socket=None,  # pylint: disable=redefined-outer-name
    progress_interval=PROGRESS_INTERVAL,
    source_address=None,
    log_copy_interval=None,
    buffer_mb=256,
    lock_watch_connect=None,
    lock_watch_interval=0.001,
):
    """
    Stream ``mariadb-backup --backup --stream=mbstream`` of the local server to a receiver.

    Connects to ``host:port`` (retrying for ``connect_timeout`` seconds while the receiver comes
    up), verifies the receiver's certificate against ``ca_file`` for ``host`` (IP or DNS name)
    and presents ``cert_file``/``key_file`` as client certificate.  Only then runs::

        <backup_cmd> --defaults-extra-file=<defaults_file> --backup --stream=mbstream
                     --target-dir=<private tmp dir> [--datadir=...] [--socket=...] <extra_args>

    ``defaults_file`` is an option file (mode 0600, not group/world readable) holding the
    credentials in ``[client]`` / ``[mariadb-backup]``; passwords are never put in argv or in
    the environment.  ``socket`` and ``datadir`` are passed to mariadb-backup when given.

    Nothing runs on the master before the receiver has accepted this connection (it answers
    a short "go" line once it verified our certificate and started mbstream).

    ``log_copy_interval`` (ms) is passed as ``--log-copy-interval``: BACKUP STAGE BLOCK_COMMIT
    (every commit on the master waits, InnoDB and Aria alike) lasts until the redo-log copy
    thread has caught up, and that thread polls every 1000 ms by default -- measured commit
    stalls of 0.8-0.95 s with the default, 50-80 ms with 10.
    ``source_address`` (optional) binds the outgoing connection to the master's own address.
    ``timeout`` bounds the whole transfer (mariadb-backup is killed when it expires).
    ``lock_watch_connect`` (a function returning a local DB-API connection to the master) turns
    on :class:`BackupLockWatch`: ``lock_info`` then gives how long the *server* held BACKUP STAGE
    BLOCK_COMMIT (``information_schema.METADATA_LOCK_INFO`` polled every ``lock_watch_interval``
    s near the end stages); without it, or when the watch fails, ``lock_info`` falls back to the
    arrival times of mariadb-backup's stderr lines (``"source": "line arrival"``: from the
    BLOCK_COMMIT line to "All tables unlocked", which also covers mariadb-backup's own work after
    BACKUP STAGE END, so it reads longer).  ``lock_info["line_arrival"]`` always keeps the latter.
    Returns ``{"bytes", "seconds", "stderr_tail", "lock_info", "binlog"}``; raises
    CommandExecutionError with mariadb-backup's stderr tail on failure or when the receiver
    hangs up or does not confirm the extraction.
    
    ``buffer_mb`` bounds the in-memory buffer between mariadb-backup and the
    network (1 MiB chunks): mariadb-backup is read as fast as it writes, so its
    BACKUP STAGE locks on the master never wait for a slow receiver.
    """
    _check_files(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    try:
        st = os.stat(defaults_file)
    except OSError as exc:
        raise CommandExecutionError(f"mysqlrepl_stream: defaults file: {exc}") from exc
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
        raise CommandExecutionError(
            f"mysqlrepl_stream: defaults file {defaults_file} must be a regular file with mode "
            f"0600 or stricter (is {stat.S_IMODE(st.st_mode):04o})"
        )
    extra_args = [str(arg) for arg in (extra_args or ())]
    for arg in extra_args:
        if re.match(r"^(--password|-p)", arg):
            raise CommandExecutionError(
                "mysqlrepl_stream: passwords go in the defaults file, never on the command line"
            )

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname + CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=ca_file)
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise CommandExecutionError(f"mysqlrepl_stream: cannot load TLS files: {exc}") from exc

    start = time.monotonic()
    deadline = start + timeout
    tls = proc = errs = watchdog = workdir = watch = None
    nbytes = 0
    timed_out = threading.Event()
    try:
        tls = _connect_tls(host, port, ctx, min(connect_timeout, timeout), source_address)
        _wait_go(tls, host, port, deadline)

        workdir = tempfile.mkdtemp(prefix="mysqlrepl-backup-")  # 0700
        argv = [
            backup_cmd,
            f"--defaults-extra-file={defaults_file}",
            "--backup",
            "--stream=mbstream",
            f"--target-dir={workdir}",
        ]
        if datadir:
            argv.append(f"--datadir={datadir}")
        if socket:
            argv.append(f"--socket={socket}")
        if log_copy_interval:
            argv.append(f"--log-copy-interval={int(log_copy_interval)}")
        argv.extend(extra_args)
        env = {k: v for k, v in os.environ.items() if k not in ("MYSQL_PWD", "MYSQL_HOST")}
        try:
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                close_fds=True,
                cwd=workdir,
                env=env,
            )
        except OSError as exc:
            raise CommandExecutionError(f"mysqlrepl_stream: cannot run {backup_cmd}: {exc}") from exc
        _grow_pipe(proc.stdout)
        if lock_watch_connect is not None:
            watch = BackupLockWatch(lock_watch_connect, fast=lock_watch_interval)
            watch.start()

        def on_stage(line):
            if watch is None:
                return
            if _UNLOCKED in line:
                watch.unlocked()
            elif re.search(r"BACKUP STAGE (FLUSH|BLOCK_DDL|BLOCK_COMMIT)", line):
                watch.hurry()

        errs = _StderrReader(proc.stderr, "mariadb-backup-stderr", on_stage=on_stage)
        errs.start()

        def _expire():
            timed_out.set()
            proc.kill()

        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _expire)
        watchdog.daemon = True
        watchdog.start()

        drain = _Drain(proc.stdout, max_chunks=max(1, int(buffer_mb)))
        drain.start()
        last_progress = time.monotonic()
        while True:
            try:
                data = drain.chunks.get(timeout=_remaining(deadline, "reading mariadb-backup's output"))
            except queue.Empty as exc:
                raise CommandExecutionError(
                    f"mysqlrepl_stream: no output from {backup_cmd} until the timeout; {errs.text()}"
                ) from exc
            if isinstance(data, OSError):
                raise CommandExecutionError(f"mysqlrepl_stream: reading {backup_cmd}'s output: {data}")
            if data is None:
                break
            tls.settimeout(_remaining(deadline, f"sending the backup to {host}:{port}"))
            try:
                tls.sendall(data)
            except (ssl.SSLError, OSError) as exc:
                raise CommandExecutionError(
                    f"mysqlrepl_stream: receiver {host}:{port} hung up after {nbytes} bytes "
                    f"({exc}); mariadb-backup output: {errs.text()}"
                ) from exc
            nbytes += len(data)
            now = time.monotonic()
            if progress is not None and now - last_progress >= progress_interval:
                last_progress = now
                _call_progress(progress, nbytes)

        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _expire()
            rc = proc.wait()
        errs.join(10)
        if timed_out.is_set():
            raise CommandExecutionError(
                f"mysqlrepl_stream: backup to {host}:{port} timed out after {timeout} s "
                f"({nbytes} bytes sent); mariadb-backup output: {errs.text()}"
            )
        if rc != 0:
            raise CommandExecutionError(
                f"mysqlrepl_stream: {backup_cmd} exited {rc} after {nbytes} bytes: {errs.text()}"
            )
        # clean close_notify = "complete"; the receiver answers only once mbstream exited 0
        try:
            tls.settimeout(max(5.0, min(120.0, deadline - time.monotonic())))
            tls.unwrap()
        except (ssl.SSLError, OSError) as exc:
            raise CommandExecutionError(
                f"mysqlrepl_stream: receiver {host}:{port} did not confirm the extraction of "
                f"{nbytes} bytes ({exc!r}); check the receiving side"
            ) from exc
        tail = errs.text()
        arrival = _lock_timings(errs.events, "line arrival")
        lock_info = dict(arrival)
        if watch is not None:
            server = watch.finish()
            watch = None
            if server["block_commit_ms"] is not None:
                lock_info = server
            else:
                lock_info["server_watch"] = {k: server[k] for k in ("source", "polls", "error")
                                             if server.get(k) is not None}
        lock_info["line_arrival"] = {k: arrival[k] for k in ("block_commit_ms", "block_ddl_ms")}
        return {
            "bytes": nbytes,
            "seconds": round(time.monotonic() - start, 3),
            "stderr_tail": tail,
            "lock_info": lock_info,
            "binlog": errs.binlog,
        }
    except BaseException:
        _kill(proc)
        _abort(tls)
        raise
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if watch is not None:
            watch.finish(timeout=1)
        _close(tls)
        if proc is not None:
            _kill(proc)
        if errs is not None:
            errs.join(5)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# after the transfer (replica minion)
# --------------------------------------------------------------------------------------------
def prepare_backup(target_dir, backup_cmd="mariadb-backup", timeout=None, extra_args=()):
    """Run ``mariadb-backup --prepare --target-dir=<target_dir>``; raise with its stderr tail."""
    if not any(
        os.path.isfile(os.path.join(target_dir, name))
        for name in ("xtrabackup_checkpoints", "mariadb_backup_checkpoints")
    ):
        raise CommandExecutionError(
            f"mysqlrepl_stream: {target_dir} does not hold a mariadb-backup backup "
            "(no xtrabackup_checkpoints)"
        )
    argv = [backup_cmd, "--prepare", f"--target-dir={target_dir}"]
    argv.extend(str(arg) for arg in (extra_args or ()))
    try:
        res = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandExecutionError(f"mysqlrepl_stream: {backup_cmd} --prepare timed out") from exc
    except OSError as exc:
        raise CommandExecutionError(f"mysqlrepl_stream: cannot run {backup_cmd}: {exc}") from exc
    if res.returncode != 0:
        lines = res.stdout.decode("utf-8", "replace").splitlines()[-STDERR_TAIL_LINES:]
        raise CommandExecutionError(
            f"mysqlrepl_stream: {backup_cmd} --prepare exited {res.returncode}: "
            + _redact("\n".join(lines))
        )


def read_binlog_info(target_dir):
    """
    Binlog coordinates of the backup: ``{"file", "pos", "gtid"}``.

    MariaDB 10.11's mariadb-backup writes ``xtrabackup_binlog_info`` (later versions renamed it
    ``mariadb_backup_binlog_info``; both are read): ``file<TAB>pos<TAB>gtid``.  ``gtid`` is ""
    when the master never wrote a GTID.  It is taken under BACKUP STAGE BLOCK_COMMIT, so it is
    exact for every engine (InnoDB's own ``xtrabackup_binlog_pos_innodb`` is not, when the
    last writes went to Aria/MyISAM).
    """
    for name in BINLOG_INFO_FILES:
        path = os.path.join(target_dir, name)
        if os.path.isfile(path):
            break
    else:
        raise CommandExecutionError(
            f"mysqlrepl_stream: no {' / '.join(BINLOG_INFO_FILES)} in {target_dir} "
            "(is log_bin enabled on the master?)"
        )
    with open(path, encoding="utf-8") as fh:
        line = next((ln for ln in fh.read().splitlines() if ln.strip()), "")
    fields = line.split("\t")
    try:
        pos = int(fields[1])
    except (IndexError, ValueError) as exc:
        raise CommandExecutionError(
            f"mysqlrepl_stream: cannot parse {path}: {line!r}"
        ) from exc
    if not fields[0]:
        raise CommandExecutionError(f"mysqlrepl_stream: cannot parse {path}: {line!r}")
    gtid = fields[2].strip() if len(fields) > 2 else ""
    return {"file": fields[0], "pos": pos, "gtid": gtid}


# --------------------------------------------------------------------------------------------
# BACKUP STAGE timings
# --------------------------------------------------------------------------------------------
def _lock_timings(events, source):
    """
    ``events``: [(seconds, line)] for the BACKUP STAGE lines of mariadb-backup's stderr.

    Returns ``{"source", "stages": {STAGE: {"start_ms", "acquired_ms", "finished_ms"}},
    "block_ddl_ms", "block_commit_ms"}``: offsets are relative to ``BACKUP STAGE START``;
    ``block_commit_ms`` spans from requesting BLOCK_COMMIT to "All tables unlocked" (the window
    in which commits on the master may wait), ``block_ddl_ms`` likewise for BLOCK_DDL
    (the window in which DDL waits).  Missing spans are None.
    """
    stages = {}
    unlocked = None
    for when, line in events:
        match = _STDERR_TS_RE.match(line)
        text = match.group(2) if match else line.strip()
        if text.startswith(_UNLOCKED):
            unlocked = when if unlocked is None else unlocked
            continue
        match = _STAGE_RE.match(text)
        if not match:
            continue
        what, stage = match.group("what"), match.group("stage")
        entry = stages.setdefault(stage, {})
        key = {
            "Starting": "start",
            "Started": "start",
            "Acquired locks for": "acquired",
            "Finished": "finished",
            "Finishing": "finished",
            "Executing": "start",
        }[what]
        entry.setdefault(key, when)
    if not stages:
        return {"source": source, "stages": {}, "block_ddl_ms": None, "block_commit_ms": None}
    origin = stages.get("START", {}).get("start")
    if origin is None:
        origin = min(t for entry in stages.values() for t in entry.values())

    def _ms(delta):
        return int(round(delta * 1000))

    def _span(stage):
        begin = stages.get(stage, {}).get("start")
        if begin is None or unlocked is None:
            return None
        return _ms(unlocked - begin)

    return {
        "source": source,
        "stages": {
            stage: {f"{k}_ms": _ms(v - origin) for k, v in entry.items()}
            for stage, entry in stages.items()
        },
        "block_ddl_ms": _span("BLOCK_DDL"),
        "block_commit_ms": _span("BLOCK_COMMIT"),
    }


def parse_lock_timings(stderr_text):
    """
    BACKUP STAGE timings from mariadb-backup's stderr text.

    mariadb-backup 10.11 prefixes its lines with a timestamp of one-second resolution
    (``[00] 2026-11-23 12:40:45 Starting BACKUP STAGE BLOCK_COMMIT`` …
    ``[00] 2026-11-23 12:40:46 All tables unlocked``), so spans computed here are multiples of
    1000 ms (``"source": "stderr timestamps (1 s resolution)"``).  :func:`send_backup` times the
    same lines as they arrive instead, to the millisecond.
    """
    events = []
    for line in (stderr_text or "").splitlines():
        match = _STDERR_TS_RE.match(line.strip())
        if not match or ("BACKUP STAGE" not in line and _UNLOCKED not in line):
            continue
        try:
            when = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
        except ValueError:
            continue
        events.append((when, line.strip()))
    return _lock_timings(events, "stderr timestamps (1 s resolution)")
