#!/usr/bin/env python3
"""
Seeding benchmark (issues 3, 10): the formula's seed as an operator runs it, against the raw tool
it wraps and against mariadb-dump | mariadb, in the same run under the same writer.

    .venv/bin/python bench/seed.py --size-mb 1000 [--runs 3]
    .venv/bin/python bench/seed.py --size-mb 20 --runs 1          # CI size

What it does
------------
* Starts two throw-away MariaDB servers (``tests/support/mariadb.py``) on their own loopback
  addresses and port (default db1 = 127.0.0.41:33306 master, db2 = 127.0.0.42:33306 replica).
* Starts a salt-master and one salt-minion per server as the sandbox does (``sandbox/run.py``:
  the repo's state tree, the test ``service`` provider ``mysqlrepl_testsvc``, the topology
  pillar 0600 in ``pillar_roots``) and brings the topology up the way users do:
  ``salt-run state.orchestrate mysqlrepl.orch.setup`` (sync, preflight, csr, ca, server on
  every server, ``salt-run mysqlrepl.seed``, then ``mysqlrepl`` with its highstate guard on the
  master); db1 must end writable and db2 replicating.
* Same server config for every method: the harness my.cnf, the formula's drop-in (sync_binlog=1,
  innodb_flush_log_at_trx_commit=1, ROW, log_slave_updates, TLS, metadata_lock_info) plus pillar
  ``settings`` ``innodb_buffer_pool_size`` (``--buffer-pool``, 256M); the replica's general log
  is off (it would log every row of the load).  ``--replica-tmpfs`` puts the replica's files in
  /dev/shm, as if it were on another host's disk.
* Creates ``benchdb`` (8 InnoDB tables + 1 Aria table, data_length + index_length summing to
  ``--size-mb``; ``sql_log_bin=0``) once.
* Starts a writer (own connection to db1, thread at nice -10 so that its own scheduling on this
  small machine is not counted as a database stall) committing one row every 2 ms, alternately
  into an InnoDB and the Aria table of benchdb, and keeps it running through every run.
* ``--runs`` times, rotating the order, with the replica emptied before each run
  (no benchdb, replication reset, binary log reset):
    - seed: ``salt-run mysqlrepl.seed replica=db2 force=True``, the whole command (salt-run's
      start, the runner, both minions' jobs, its wait for the catch-up);
    - raw: the tool alone, no Salt and no TLS stream of ours: ``mariadb-backup --backup
      --stream=mbstream | socat -u STDIN TCP:db2:<--raw-port>`` into ``socat -u TCP-LISTEN |
      mbstream -x`` beside db2's datadir (socat ``-b 1048576`` both sides: 1 MiB blocks as the
      formula's stream reads; socat's 8 KiB default slowed mariadb-backup and its lock), ``mariadb-backup --prepare``, stop db2, swap the
      datadir, start, ``SET GLOBAL gtid_slave_pos`` from ``xtrabackup_binlog_info``, the
      formula's CHANGE MASTER (same TLS replication link, same GTID mode), START SLAVE.  Same
      mariadb-backup options as the formula passes where fair: ``--log-copy-interval`` (the
      pillar's), ``--socket``, ``--datadir``, the admin user (root over the socket); the old
      datadir is removed after the timing (the formula removes it inside its window);
    - pipe: ``mariadb-dump --single-transaction --gtid --master-data=1 --databases benchdb |
      mariadb --init-command='SET sql_log_bin=0'`` into db2, then ``CHANGE MASTER`` (the
      formula's statement) and ``START SLAVE``.  mariadb-dump's --single-transaction snapshot
      covers InnoDB only: the Aria table is read later and holds writer rows past the dump's
      GTID position, so a STRICT replica stops on a duplicate key.  The pipe runs therefore
      replicate with ``slave_exec_mode=IDEMPOTENT`` until caught up (``--pipe-exec-mode
      strict`` shows the failure); the bench reports how many rows it was.  ``--no-pipe``
      skips them.
  Each timing runs from start until the replica has both threads running and has caught up
  (master's ``@@gtid_binlog_pos`` read once the threads run, then ``MASTER_GTID_WAIT``).
  After each run the writer pauses, the replica catches up, and row count and max id of every
  benchdb table must match the master (else the bench fails).
* stall: longest gap between consecutive writer commits inside the seed's timed window;
  baseline stall: the same writer over an equal window (at most 30 s) right after each seed
  run, nothing else running.
* lock_ms: how long the server held BACKUP STAGE BLOCK_COMMIT during the seed, as
  ``salt-run mysqlrepl.seed`` reports it (``master_locks.block_commit_ms``: the master's minion
  polls ``information_schema.METADATA_LOCK_INFO`` every ~1 ms near the end stages, then waits for
  BLOCK_COMMIT's end with a BACKUP STAGE START of its own; its source
  and resolution are printed per run, beside the same span read from db1's general log,
  ``log_output=TABLE``, microsecond ``event_time``).  raw_lock_ms: the raw run's
  ``BACKUP STAGE BLOCK_COMMIT`` -> ``BACKUP STAGE END`` span in db1's general log.
  Every value of the last line is the median of the runs (each run's values are printed before
  it, with the steps that hold the time: stream, prepare, swap/start, catch-up).

Last line::

    seed size_mb=.. engines=.. stall_max_ms=.. baseline_stall_max_ms=.. lock_ms=.. seed_s=.. pipe_s=.. ratio=.. raw_s=.. raw_lock_ms=.. overhead=..

(ratio = pipe_s / seed_s, overhead = seed_s / raw_s.)  Everything lives under
``/tmp/mrb-XXXXXX`` and is removed at the end (``--keep`` keeps it); servers, salt-master and
minions are stopped by PID at the end, on a failure, and on SIGTERM or SIGINT (same cleanup).
Exit code 0 only with the last line printed.
"""
# ci-args: --size-mb 20 --runs 1
# last-line: seed size_mb=<> engines=<> stall_max_ms=<> baseline_stall_max_ms=<> lock_ms=<> seed_s=<> pipe_s=<> ratio=<> raw_s=<> raw_lock_ms=<> overhead=<>

import argparse
import bisect
import concurrent.futures
import importlib.util
import os
import pathlib
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import mariadb as harness  # noqa: E402

_sb_spec = importlib.util.spec_from_file_location("sandbox_run", REPO / "sandbox" / "run.py")
sb = importlib.util.module_from_spec(_sb_spec)
_sb_spec.loader.exec_module(sb)

DB = "benchdb"
INNODB_TABLES = [f"t{i:02d}" for i in range(1, 9)]
ARIA_TABLE = "t_aria"
ALL_TABLES = INNODB_TABLES + [ARIA_TABLE]
WRITER_TABLES = (INNODB_TABLES[0], ARIA_TABLE)
PAD = 1000  # bytes of payload per bulk row
# socat's transfer block in the raw runs: 1 MiB like the formula's stream (socat's default 8 KiB
# made mariadb-backup wait on the pipe, BLOCK_COMMIT included: a weaker baseline)
RAW_BLOCK = 1 << 20

T0 = time.monotonic()


def say(msg):
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def _load_util(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "_utils" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mysqlrepl_tls = _load_util("mysqlrepl_tls")
mysqlrepl_sql = _load_util("mysqlrepl_sql")


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------


class BenchServer(harness.MariaDBServer):
    """The harness server; the replica's general log is off (it would log every row of the load)."""

    def __init__(self, *args, general_log=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.general_log_on = general_log
        self.service_name = f"mysqlrepl-bench-{self.name}"
        self.service.name = self.service_name

    def my_cnf(self):
        text = super().my_cnf()
        if not self.general_log_on:
            text = text.replace("general_log = 1\n", "general_log = 0\n")
        return text

    def sql(self, statement, args=None, **kw):
        return self.query(statement, args, **kw)

    def one(self, statement, args=None):
        rows = self.query(statement, args)
        return rows[0] if rows else None


def replica_status(server):
    return server.one("SHOW SLAVE STATUS")


def check_states(name, ret):
    if not isinstance(ret, dict):
        raise BenchError(f"{name}: state.apply returned {ret!r}")
    bad = {v.get("__id__", k): v.get("comment") for k, v in ret.items() if v.get("result") is not True}
    if bad:
        raise BenchError(f"{name}: states failed: {bad}")


# ---------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------


class Writer(threading.Thread):
    """One connection to the master, one autocommit INSERT every ``interval`` s, alternating tables."""

    def __init__(self, server, interval=0.002):
        super().__init__(name="writer", daemon=True)
        self.server = server
        self.interval = interval
        self.times = []  # monotonic completion time of every commit
        self.error = None
        self._stop_ev = threading.Event()
        self._pause_ev = threading.Event()
        self._paused_ack = threading.Event()
        self.commits = 0

    def run(self):
        try:
            # the writer stands for an application on another host: its own scheduling delays on
            # this (2-core, shared) machine are not stalls of the database
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
            except OSError:
                pass
            conn = self.server.connect()
            cur = conn.cursor()
            cur.execute("SET SESSION sql_log_off = 1")  # keep db1's general log to the admin statements
            stmts = [f"INSERT INTO {DB}.{t} (k, pad) VALUES (%s, 'writer')" for t in WRITER_TABLES]
            nxt = time.monotonic()
            i = 0
            while not self._stop_ev.is_set():
                if self._pause_ev.is_set():
                    self._paused_ack.set()
                    time.sleep(0.005)
                    nxt = time.monotonic()
                    continue
                self._paused_ack.clear()
                now = time.monotonic()
                if nxt > now:
                    time.sleep(nxt - now)
                cur.execute(stmts[i & 1], (i,))
                self.times.append(time.monotonic())
                i += 1
                nxt += self.interval
                now = time.monotonic()
                if nxt < now:
                    nxt = now
            self.commits = i
            conn.close()
        except Exception as exc:  # pylint: disable=broad-except
            self.error = f"{type(exc).__name__}: {exc}"
            self._paused_ack.set()

    def check(self):
        if self.error:
            raise BenchError(f"writer failed: {self.error}")
        if not self.is_alive():
            raise BenchError("writer is not running")

    def pause(self):
        self._pause_ev.set()
        if not self._paused_ack.wait(30):
            raise BenchError("writer did not pause within 30 s")
        self.check()

    def resume(self):
        self._paused_ack.clear()
        self._pause_ev.clear()

    def stop(self):
        self._stop_ev.set()
        self.join(30)

    def top_gaps(self, start, end, n=3):
        """[(gap_s, gap_start, table of the late commit)] for the n longest gaps in [start, end]."""
        times = self.times[:]
        lo = max(0, bisect.bisect_right(times, start) - 1)
        hi = min(len(times), bisect.bisect_left(times, end) + 1)
        gaps = [(times[i + 1] - times[i], times[i], WRITER_TABLES[(i + 1) & 1]) for i in range(lo, hi - 1)]
        return sorted(gaps, reverse=True)[:n]

    def max_gap(self, start, end):
        """Longest gap (s) between consecutive commits covering [start, end], and the commit count."""
        times = self.times[:]  # appends are atomic; a copy is consistent
        lo = max(0, bisect.bisect_right(times, start) - 1)
        hi = min(len(times), bisect.bisect_left(times, end) + 1)
        window = times[lo:hi]
        if len(window) < 2:
            return end - start, len(window)
        gaps = [b - a for a, b in zip(window, window[1:])]
        # a stall still going on at the end of the window
        if times[-1] < end:
            gaps.append(end - times[-1])
        return max(gaps), sum(1 for t in window if start <= t <= end)


# ---------------------------------------------------------------------------
# the bench
# ---------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.root = None
        self.servers = {}
        self.writer = None
        self.procs = []  # every Popen we started (salt-call, dump, load)
        self.password = "Bench-" + secrets.token_hex(12)
        self.cfg = None
        self.shm = None
        self.salt = None
        self.daemons = {}  # what -> pid: salt-master, salt-minions

    # -- setup -----------------------------------------------------------------

    def setup(self):
        a = self.args
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="mrb-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        say(f"root {self.root}")
        db1 = BenchServer("db1", a.master_address, a.port, self.root / "db", 41)
        replica_base = self.root / "db"
        if a.replica_tmpfs:
            # the replica's files on their own (memory) file system, as if on another host: its
            # writes do not compete with the master's fsyncs on this machine's one disk
            self.shm = pathlib.Path(tempfile.mkdtemp(prefix="mrb-", dir="/dev/shm"))
            os.chmod(self.shm, 0o755)
            replica_base = self.shm
        db2 = BenchServer("db2", a.replica_address, a.port, replica_base, 42, general_log=False)
        self.servers = {"db1": db1, "db2": db2}
        for srv in self.servers.values():
            harness.check_port_free(srv.address, srv.port)
        harness.check_port_free(db2.address, a.seed_port)
        harness.check_port_free(db2.address, a.raw_port)
        (self.root / "db").mkdir()
        os.chmod(self.root / "db", 0o755)

        def init_and_start(srv):
            srv.init()
            srv.start()

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for fut in [pool.submit(init_and_start, s) for s in self.servers.values()]:
                fut.result()
        for name, srv in self.servers.items():
            srv.write_service_json(self.root / "svc" / name)
        say(f"servers up: db1 {db1.address}:{db1.port} pid {db1.pid()}, "
            f"db2 {db2.address}:{db2.port} pid {db2.pid()} (MariaDB {db1.one('SELECT VERSION() v')['v']})")
        self.start_salt()
        self.bring_up()

    def start_salt(self):
        """A salt-master and one minion per server, as the sandbox runs them (sandbox/run.py)."""
        t = time.monotonic()
        self.salt = sb.Salt(self.root)
        srv_tree = sb.make_state_tree(self.root)
        ports = {"publish": sb.free_port(), "ret": sb.free_port()}
        while ports["ret"] == ports["publish"]:
            ports["ret"] = sb.free_port()
        sb.write_yaml(self.root / "master" / "master", sb.master_config(self.root, srv_tree, ports))
        pillar = self.pillar()
        sb.write_yaml(self.root / "pillar" / "top.sls", {"base": {"*": ["mysqlrepl"]}})
        sb.write_yaml(self.root / "pillar" / "mysqlrepl.sls", pillar, mode=0o600)
        self.cfg = _load_util("mysqlrepl_config").load(pillar["mysqlrepl"], minion_id="db1")
        self.daemons["salt-master"] = sb.spawn(["salt-master", "-c", str(self.root / "master")],
                                               self.root / "master" / "logs").pid
        for name in self.servers:
            sb.write_yaml(self.root / name / "minion", sb.minion_config(self.root, name, ports))
            self.daemons[f"salt-minion {name}"] = sb.spawn(["salt-minion", "-c", str(self.root / name)],
                                                           self.root / name / "logs").pid
        deadline = time.monotonic() + 120
        while True:
            _proc, data = self.salt.salt("*", "test.ping", timeout=5)
            if isinstance(data, dict) and all(data.get(n) is True for n in self.servers):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"minions did not answer test.ping within 120 s: {data}")
            time.sleep(0.5)
        say(f"salt-master + {len(self.servers)} minions answering in {time.monotonic() - t:.1f} s")

    def bring_up(self):
        """
        The topology as users bring it up: ``salt-run state.orchestrate mysqlrepl.orch.setup``
        (sync, preflight, csr, ca, server everywhere, ``salt-run mysqlrepl.seed``, then
        ``mysqlrepl`` on every minion, with its highstate guard on the master).
        """
        db1, db2 = self.servers["db1"], self.servers["db2"]
        cfg = self.cfg
        t = time.monotonic()
        proc, data = self.salt.run("state.orchestrate", "mysqlrepl.orch.setup", timeout=1800)
        states = sb.orch_states(data)
        failures = (sb.state_failures(states) if states is not None
                    else [("state.orchestrate", sb._proc_tail(proc))])  # pylint: disable=protected-access
        if failures or proc.returncode:
            raise BenchError("state.orchestrate mysqlrepl.orch.setup failed (exit "
                             f"{proc.returncode}): " + "; ".join(f"{w}: {c}" for w, c in failures))
        steps = sorted(states.values(), key=lambda st: st.get("__run_num__", 0))
        say(f"state.orchestrate mysqlrepl.orch.setup: {time.monotonic() - t:.1f} s ("
            + ", ".join(f"{st.get('__id__')} {st.get('duration', 0) / 1000:.1f}" for st in steps) + ")")
        for srv in (db1, db2):
            v = srv.one("SELECT @@have_ssl s, @@log_bin b, @@read_only r, @@innodb_buffer_pool_size p, "
                        "@@general_log g, @@sync_binlog sb")
            say(f"{srv.name}: have_ssl={v['s']} log_bin={v['b']} read_only={v['r']} "
                f"buffer_pool={int(v['p']) >> 20}M general_log={v['g']} sync_binlog={v['sb']}")
        say(f"seed: mysqlrepl:seed:log_copy_interval={cfg['seed']['log_copy_interval']} ms, "
            f"port {cfg['seed']['port']}; replication require={cfg['replication']['require']}")
        if db1.one("SELECT @@read_only r")["r"] != 0:
            raise BenchError("db1 is not writable after the setup orchestration")
        rs = replica_status(db2)
        if not rs or rs["Slave_IO_Running"] != "Yes" or rs["Slave_SQL_Running"] != "Yes":
            raise BenchError(f"db2 does not replicate after the setup orchestration: {rs}")
        # server-side lock timings with microseconds (the general log FILE has 1 s stamps)
        db1.sql("SET GLOBAL log_output = 'TABLE'")

    def pillar(self):
        a = self.args
        settings = {"innodb_buffer_pool_size": a.buffer_pool}
        data = {
            "topology": "bench",
            "master": "db1",
            "restart_allowed": True,
            "ca": {"minion": "db1", "ca_name": "mysql",
                   "cacert_path": str(self.servers["db1"].root / "pki"),
                   "bits": 2048, "days": 730, "CN": "mysqlrepl-bench-ca", "O": "mysqlrepl bench"},
            "tls": {"subject": {"O": "mysqlrepl bench"}},
            "replication": {"user": "repl", "password": self.password, "require": "x509",
                            "connect_retry": 1, "heartbeat_period": 1, "wait_timeout": 120},
            "seed": {"port": a.seed_port, "timeout": 3600},  # log_copy_interval: formula default
            "servers": {},
        }
        for name, srv in self.servers.items():
            data["servers"][name] = {
                "address": srv.address, "port": srv.port, "server_id": srv.server_id,
                "datadir": str(srv.datadir), "socket": str(srv.socket),
                "config_file": str(srv.conf_d / "60-mysqlrepl.cnf"),
                "tls_dir": str(srv.root / "tls"), "service": srv.service_name,
                "os_user": srv.os_user, "settings": dict(settings),
            }
        if a.log_copy_interval is not None:
            data["seed"]["log_copy_interval"] = a.log_copy_interval
        return {"mysqlrepl": data}

    # -- data ------------------------------------------------------------------

    def benchdb_bytes(self):
        """Bytes of benchdb's table files (what a physical copy carries)."""
        path = self.servers["db1"].datadir / DB
        return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".ibd", ".MAD", ".MAI"))

    def create_data(self):
        """benchdb: 8 InnoDB + 1 Aria table whose files sum to --size-mb (sql_log_bin=0)."""
        db1 = self.servers["db1"]
        target = self.args.size_mb << 20
        t = time.monotonic()
        conn = db1.connect()
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_bin = 0")  # the replica gets benchdb from the seed / dump
            cur.execute(f"CREATE DATABASE {DB}")
            for table in ALL_TABLES:
                engine = "Aria" if table == ARIA_TABLE else "InnoDB"
                cur.execute(f"CREATE TABLE {DB}.{table} (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT "
                            f"PRIMARY KEY, k INT UNSIGNED NOT NULL, pad VARCHAR({PAD}) NOT NULL) "
                            f"ENGINE={engine}")
        conn.close()
        done = 0

        def fill(table, first, count):
            c = db1.connect()
            try:
                with c.cursor() as cur:
                    cur.execute("SET SESSION sql_log_bin = 0")
                    pos = first
                    while pos < first + count:
                        n = min(50000, first + count - pos)
                        cur.execute(
                            f"INSERT INTO {DB}.{table} (k, pad) SELECT seq, "
                            f"RPAD(CONCAT(seq, ':', MD5(seq), ':'), {PAD}, MD5(RAND())) "
                            f"FROM {DB}.seq_{pos + 1}_to_{pos + n}")
                        pos += n
            finally:
                c.close()

        def fill_all(count):
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                for fut in [pool.submit(fill, tbl, done, count) for tbl in ALL_TABLES]:
                    fut.result()

        def sizes():
            for table in ALL_TABLES:
                db1.sql(f"ANALYZE NO_WRITE_TO_BINLOG TABLE {DB}.{table}")
            return db1.query(
                "SELECT table_name t, engine e, data_length + index_length b FROM information_schema.tables "
                "WHERE table_schema = %s ORDER BY table_name", (DB,))

        # size = data_length + index_length as the server reports it (after ANALYZE TABLE):
        # half the target with a guess of the row size, then the rest from the measured one
        first = max(500, target // 2 // len(ALL_TABLES) // 1200)
        fill_all(first)
        done += first
        have = sum(int(r["b"]) for r in sizes())
        rest = int((target - have) / (have / done))
        if rest > 0:
            fill_all(rest)
            done += rest
        sizes = sizes()
        logical = sum(int(r["b"]) for r in sizes)
        engines = sorted({r["e"] for r in sizes}, key=lambda e: (e != "InnoDB", e))
        self.engines = ",".join(engines)
        self.rows_per_table = done
        counts = {e: sum(1 for r in sizes if r["e"] == e) for e in engines}
        say(f"{DB}: {' + '.join(f'{n} {e}' for e, n in counts.items())} tables, "
            f"{done} rows of ~{PAD} bytes each, data+index {logical / 2**20:.0f} MB "
            f"(files {self.benchdb_bytes() / 2**20:.0f} MB), made in {time.monotonic() - t:.1f} s")
        self.flush_dirty()

    def flush_dirty(self, timeout=180):
        """Let InnoDB write back the pages of the load, so runs do not compete with it."""
        db1 = self.servers["db1"]
        old = db1.one("SELECT @@innodb_max_dirty_pages_pct v, @@innodb_io_capacity c, "
                      "@@innodb_io_capacity_max m")
        db1.sql("SET GLOBAL innodb_io_capacity_max = 100000")
        db1.sql("SET GLOBAL innodb_io_capacity = 50000")
        db1.sql("SET GLOBAL innodb_max_dirty_pages_pct = 0")
        t = time.monotonic()
        try:
            while time.monotonic() - t < timeout:
                dirty = int(db1.one("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")["Value"])
                if dirty < 100:
                    break
                time.sleep(0.5)
        finally:
            db1.sql("SET GLOBAL innodb_max_dirty_pages_pct = %s", (old["v"],))
            db1.sql("SET GLOBAL innodb_io_capacity = %s", (old["c"],))
            db1.sql("SET GLOBAL innodb_io_capacity_max = %s", (old["m"],))
        say(f"dirty pages written back in {time.monotonic() - t:.1f} s")

    # -- replica helpers -------------------------------------------------------

    def empty_replica(self):
        """The same empty replica for both methods: no benchdb, no replication, no binlog."""
        db2 = self.servers["db2"]
        conn = db2.connect()
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_bin = 0")
            cur.execute("STOP SLAVE")
            cur.execute("RESET SLAVE ALL")
            cur.execute(f"DROP DATABASE IF EXISTS {DB}")
            cur.execute("RESET MASTER")
            cur.execute("SET GLOBAL gtid_slave_pos = ''")
            cur.execute("SET GLOBAL slave_exec_mode = 'STRICT'")
        conn.close()

    def wait_threads(self, timeout=120):
        db2 = self.servers["db2"]
        deadline = time.monotonic() + timeout
        while True:
            rs = replica_status(db2)
            if rs and rs["Slave_IO_Running"] == "Yes" and rs["Slave_SQL_Running"] == "Yes":
                return rs
            if rs and rs["Last_SQL_Errno"]:
                raise BenchError(f"replica SQL thread stopped: {rs['Last_SQL_Errno']} {rs['Last_SQL_Error']}")
            if time.monotonic() > deadline:
                raise BenchError(f"replica threads not running after {timeout} s: "
                                 f"IO {rs and rs['Slave_IO_Running']} {rs and rs['Last_IO_Error']}, "
                                 f"SQL {rs and rs['Slave_SQL_Running']} {rs and rs['Last_SQL_Error']}")
            time.sleep(0.02)

    def catch_up(self, timeout=600):
        """Read the master's GTID position now and wait until the replica has applied it."""
        db1, db2 = self.servers["db1"], self.servers["db2"]
        pos = db1.one("SELECT @@GLOBAL.gtid_binlog_pos p")["p"]
        conn = db2.connect()
        deadline = time.monotonic() + timeout
        try:
            with conn.cursor() as cur:
                while True:
                    cur.execute("SELECT MASTER_GTID_WAIT(%s, 1)", (pos,))
                    if cur.fetchone()[0] == 0:
                        return pos
                    rs = replica_status(db2)
                    if rs is None or rs["Slave_SQL_Running"] != "Yes" or rs["Last_SQL_Errno"]:
                        raise BenchError(
                            f"replica stopped before reaching {pos}: SQL {rs and rs['Slave_SQL_Running']} "
                            f"{rs and rs['Last_SQL_Errno']} {rs and rs['Last_SQL_Error']}; "
                            f"IO {rs and rs['Slave_IO_Running']} {rs and rs['Last_IO_Error']}")
                    if time.monotonic() > deadline:
                        raise BenchError(f"replica did not reach {pos} within {timeout} s")
        finally:
            conn.close()

    def verify(self, label):
        """Writer paused, replica caught up: every benchdb table has the master's rows."""
        db1, db2 = self.servers["db1"], self.servers["db2"]
        self.writer.pause()
        try:
            pos = self.catch_up()
            q = " UNION ALL ".join(
                f"SELECT '{t}' t, COUNT(*) n, MAX(id) m FROM {DB}.{t}" for t in ALL_TABLES)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                f1, f2 = pool.submit(db1.query, q), pool.submit(db2.query, q)
                master = {r["t"]: (r["n"], r["m"]) for r in f1.result()}
                replica = {r["t"]: (r["n"], r["m"]) for r in f2.result()}
            if master != replica:
                diff = {t: {"master": master[t], "replica": replica.get(t)}
                        for t in master if master[t] != replica.get(t)}
                raise BenchError(f"{label}: replica differs from master at {pos}: {diff}")
            rs = replica_status(db2)
            total = sum(n for n, _ in master.values())
            say(f"  {label}: verified at {pos}: {len(master)} tables, {total} rows equal on both; "
                f"Using_Gtid={rs['Using_Gtid']} SSL={rs['Master_SSL_Allowed']} "
                f"verify_cert={rs['Master_SSL_Verify_Server_Cert']}")
        finally:
            self.writer.resume()

    def lock_spans(self):
        """(kind, ms) spans from db1's general log: BLOCK_COMMIT->END, FTWRL->UNLOCK TABLES."""
        rows = self.servers["db1"].query(
            "SELECT event_time, thread_id, CONVERT(argument USING utf8mb4) a FROM mysql.general_log "
            "WHERE command_type = 'Query' AND (argument LIKE 'BACKUP STAGE%%' "
            "OR argument LIKE 'FLUSH%%TABLES%%WITH%%READ%%LOCK%%' OR argument LIKE 'UNLOCK TABLES%%' "
            "OR argument LIKE 'LOCK TABLES%%FOR BACKUP%%' OR argument LIKE 'LOCK BINLOG%%') "
            "ORDER BY event_time")
        spans, open_ = [], {}
        stages = []
        for r in rows:
            text = " ".join(r["a"].split()).upper()
            tid, when = r["thread_id"], r["event_time"]
            if text.startswith("BACKUP STAGE"):
                stages.append((when, text.split()[-1]))
            if text.startswith("BACKUP STAGE BLOCK_COMMIT"):
                open_[(tid, "BLOCK_COMMIT")] = when
            elif text.startswith("BACKUP STAGE END") and (tid, "BLOCK_COMMIT") in open_:
                start = open_.pop((tid, "BLOCK_COMMIT"))
                spans.append(("BLOCK_COMMIT", (when - start).total_seconds() * 1000))
            elif text.startswith("FLUSH") and "READ LOCK" in text:
                open_[(tid, "FTWRL")] = when
            elif text.startswith("UNLOCK TABLES") and (tid, "FTWRL") in open_:
                start = open_.pop((tid, "FTWRL"))
                spans.append(("FTWRL", (when - start).total_seconds() * 1000))
        for (tid, kind), start in open_.items():
            spans.append((kind + " (never released?)", float("nan")))
        return spans, stages

    def reset_general_log(self):
        self.servers["db1"].sql("TRUNCATE TABLE mysql.general_log")

    # -- the three methods -----------------------------------------------------

    def salt_run(self, *args, timeout=3700):
        """``salt-run --out=json <args>`` (tracked: stopped with the bench); its parsed answer."""
        argv = self.salt.cmd("salt-run", "-t", str(timeout), "--out=json", *args)
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=str(REPO))
        self.procs.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout + 60)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"salt-run {' '.join(args)}: no answer in {timeout + 60} s") from exc
        return proc.returncode, sb.parse_json_output(out), (out or "")[-2000:] + (err or "")[-2000:]

    def run_seed(self, run):
        """``salt-run mysqlrepl.seed replica=db2 force=True``, as an operator runs it."""
        self.empty_replica()
        self.reset_general_log()
        self.writer.check()
        t0 = time.monotonic()
        rc, data, text = self.salt_run("mysqlrepl.seed", "replica=db2", "force=True")
        t_cmd = time.monotonic()
        if rc != 0 or not isinstance(data, dict) or data.get("result") is not True \
                or "db2" not in (data.get("seeded") or {}):
            raise BenchError(f"seed run {run}: salt-run mysqlrepl.seed failed (exit {rc}): {data or text}")
        seeded = data["seeded"]["db2"]
        self.wait_threads()
        t_threads = time.monotonic()
        pos = self.catch_up()
        t1 = time.monotonic()
        seed_s = t1 - t0
        stall, commits = self.writer.max_gap(t0, t1)
        spans, stages = self.lock_spans()
        logged = [ms for kind, ms in spans if kind == "BLOCK_COMMIT"]
        locks = seeded.get("master_locks") or {}
        say(f"  seed run {run}: {seed_s:.2f} s (salt-run {t_cmd - t0:.2f}, of which the runner's "
            f"total_s {seeded.get('total_s')}, catch_up_s {seeded.get('catch_up_s')}; threads +"
            f"{t_threads - t_cmd:.2f}, catch-up to {pos} +{t1 - t_threads:.2f}); seed_receive timings "
            f"{seeded.get('timings')}; {(seeded.get('bytes') or 0) / 2**20:.0f} MB")
        say(f"  seed run {run}: BLOCK_COMMIT {locks.get('block_commit_ms')} ms "
            f"(+-{locks.get('resolution_ms')}, {locks.get('source')}); general log "
            f"{[(k, round(v, 1)) for k, v in spans]}; stderr line arrival "
            f"{(locks.get('line_arrival') or {}).get('block_commit_ms')} ms; writer {commits} commits, "
            f"longest stall {stall * 1000:.1f} ms")
        in_backup = self.stage_gaps(f"seed run {run}", stages, t0, t1)
        if len(logged) != 1:
            raise BenchError(f"seed run {run}: expected one BACKUP STAGE BLOCK_COMMIT..END span in "
                             f"db1's general log, found {spans}")
        if any(kind != "BLOCK_COMMIT" for kind, _ in spans) or locks.get("ftwrl"):
            say(f"  seed run {run}: NOTE other global locks taken: {spans}")
        if locks.get("block_commit_ms") is None:
            raise BenchError(f"seed run {run}: the runner reported no server-side lock span: {locks}")
        # baseline stall: the same writer, an equal window, nothing else running
        time.sleep(0.2)
        b0 = time.monotonic()
        time.sleep(min(seed_s, 30))
        b1 = time.monotonic()
        self.writer.check()
        base, base_commits = self.writer.max_gap(b0, b1)
        say(f"  seed run {run}: baseline window {b1 - b0:.2f} s: {base_commits} commits, "
            f"longest stall {base * 1000:.1f} ms")
        self.verify(f"seed run {run}")
        timings = seeded.get("timings") or {}
        return {"s": seed_s, "stall_ms": stall * 1000, "base_stall_ms": base * 1000,
                "lock_ms": locks["block_commit_ms"], "log_lock_ms": logged[0],
                "in_backup_ms": in_backup, "spans": spans,
                "steps": {"command": t_cmd - t0, "stream": timings.get("stream_s"),
                          "prepare": timings.get("prepare_s"), "swap": timings.get("swap_s"),
                          "receive_total": timings.get("total_s"), "runner_total": seeded.get("total_s"),
                          "catch_up": seeded.get("catch_up_s")}}

    def stage_gaps(self, label, stages, t0, t1):
        """Print the BACKUP STAGE timeline and the writer's longest gaps; the longest inside it."""
        wall_to_mono = time.time() - time.monotonic()
        mono_stages = [(when.timestamp() - wall_to_mono, name) for when, name in stages]
        if not mono_stages:
            return None
        origin = mono_stages[0][0]
        # the master-side part: mariadb-backup from BACKUP STAGE START to END; the rest of the
        # window is start-up, the tail of the stream, prepare, the replica's restart and catch-up
        in_backup = self.writer.max_gap(mono_stages[0][0], mono_stages[-1][0])[0] * 1000
        say("  {}: stages (server log, ms from START) {}; longest gaps {}; longest between START and "
            "END {:.0f} ms".format(
                label, ", ".join(f"{name} +{(t - origin) * 1000:.0f}" for t, name in mono_stages),
                ", ".join(f"{g * 1000:.0f} ms from +{(t - origin) * 1000:.0f} ({tbl})"
                          for g, t, tbl in self.writer.top_gaps(t0, t1)), in_backup))
        return in_backup

    def link_statements(self, version):
        """The formula's statements for db2's link to db1: the link, then the password alone."""
        cfg, db1 = self.cfg, self.servers["db1"]
        srv2 = cfg["servers"]["db2"]
        repl = cfg["replication"]
        return [mysqlrepl_sql.change_master(
                    version, db1.address, db1.port, repl["user"], srv2["tls_files"]["ca"],
                    srv2["replication_cert"]["cert"], srv2["replication_cert"]["key"], verify_server_cert=True,
                    connect_retry=repl["connect_retry"], heartbeat_period=repl["heartbeat_period"]),
                mysqlrepl_sql.change_master_password(version, self.password, repl["heartbeat_period"])]

    def run_raw(self, run):
        """
        The raw tool, no Salt, no TLS stream of ours: mariadb-backup | socat (plain TCP) ->
        socat | mbstream -x on the replica's side, --prepare, swap the datadir, start,
        gtid_slave_pos, CHANGE MASTER (the formula's statement: TLS, GTID), START SLAVE, caught up.
        mariadb-backup gets what the formula gives it: --log-copy-interval (the pillar's), socket,
        datadir, the admin user; the replica's old datadir is removed after the timing.
        """
        db1, db2 = self.servers["db1"], self.servers["db2"]
        cfg = self.cfg
        self.empty_replica()
        self.reset_general_log()
        self.writer.check()
        incoming = db2.datadir.parent / "raw-incoming"
        old = db2.datadir.parent / "raw-old"
        for path in (incoming, old):
            shutil.rmtree(path, ignore_errors=True)
        incoming.mkdir(mode=0o700)
        workdir = pathlib.Path(tempfile.mkdtemp(prefix="raw-", dir=self.root))
        version = mysqlrepl_sql.parse_version(db2.one("SELECT VERSION() v")["v"])
        change = self.link_statements(version)
        port = self.args.raw_port
        t0 = time.monotonic()
        listen = subprocess.Popen(  # pylint: disable=consider-using-with
            ["socat", "-u", "-b", str(RAW_BLOCK), f"TCP-LISTEN:{port},bind={db2.address},reuseaddr", "STDOUT"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(listen)
        extract = subprocess.Popen(  # pylint: disable=consider-using-with
            ["mbstream", "-x", "-C", str(incoming)], stdin=listen.stdout,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(extract)
        listen.stdout.close()
        backup = subprocess.Popen(  # pylint: disable=consider-using-with
            ["mariadb-backup", "--backup", "--stream=mbstream", f"--target-dir={workdir}",
             f"--socket={db1.socket}", "--user=root", f"--datadir={db1.datadir}",
             f"--log-copy-interval={int(cfg['seed']['log_copy_interval'])}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(workdir))
        self.procs.append(backup)
        send = subprocess.Popen(  # pylint: disable=consider-using-with
            ["socat", "-u", "-b", str(RAW_BLOCK), "STDIN", f"TCP:{db2.address}:{port},retry=200,interval=0.01"],
            stdin=backup.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(send)
        backup.stdout.close()
        errs = {}

        def drain(key, stream):
            errs[key] = stream.read()

        readers = [threading.Thread(target=drain, args=(k, p.stderr)) for k, p in
                   (("mariadb-backup", backup), ("socat send", send), ("socat listen", listen),
                    ("mbstream", extract))]
        for th in readers:
            th.start()
        rcs = {"mariadb-backup": backup.wait(), "socat send": send.wait(), "socat listen": listen.wait(),
               "mbstream": extract.wait()}
        for th in readers:
            th.join()
        t_stream = time.monotonic()
        shutil.rmtree(workdir, ignore_errors=True)
        if any(rcs.values()):
            raise BenchError(f"raw run {run}: exit codes {rcs}: " + "; ".join(
                f"{k}: {errs.get(k, b'')[-1500:]!r}" for k, v in rcs.items() if v))
        prep = subprocess.run(["mariadb-backup", "--prepare", f"--target-dir={incoming}"],
                              stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if prep.returncode:
            raise BenchError(f"raw run {run}: --prepare exited {prep.returncode}: {prep.stderr[-1500:]!r}")
        t_prepare = time.monotonic()
        info = (incoming / "xtrabackup_binlog_info").read_text().split("\t")
        gtid = info[2].strip() if len(info) > 2 else ""
        subprocess.run(["chown", "-R", f"{db2.os_user}:{db2.os_user}", str(incoming)], check=True)
        db2.stop()
        os.rename(db2.datadir, old)
        os.rename(incoming, db2.datadir)
        db2.start()
        t_start = time.monotonic()
        conn = db2.connect()
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_off = 1")  # MASTER_PASSWORD
            cur.execute("SET GLOBAL gtid_slave_pos = %s", (gtid,))
            for stmt in change:
                cur.execute(*stmt)
            cur.execute("START SLAVE")
        conn.close()
        self.wait_threads()
        t_threads = time.monotonic()
        pos = self.catch_up()
        t1 = time.monotonic()
        shutil.rmtree(old, ignore_errors=True)
        raw_s = t1 - t0
        stall, commits = self.writer.max_gap(t0, t1)
        spans, stages = self.lock_spans()
        logged = [ms for kind, ms in spans if kind == "BLOCK_COMMIT"]
        say(f"  raw run {run}: {raw_s:.2f} s (stream {t_stream - t0:.2f}, prepare +{t_prepare - t_stream:.2f}, "
            f"swap+start +{t_start - t_prepare:.2f}, threads +{t_threads - t_start:.2f}, catch-up to {pos} "
            f"+{t1 - t_threads:.2f}); backup at {gtid}; writer {commits} commits, longest stall "
            f"{stall * 1000:.1f} ms; lock spans (server log) {[(k, round(v, 1)) for k, v in spans]}")
        self.stage_gaps(f"raw run {run}", stages, t0, t1)
        if len(logged) != 1:
            raise BenchError(f"raw run {run}: expected one BACKUP STAGE BLOCK_COMMIT..END span in "
                             f"db1's general log, found {spans}")
        self.verify(f"raw run {run}")
        return {"s": raw_s, "stall_ms": stall * 1000, "lock_ms": logged[0],
                "steps": {"stream": t_stream - t0, "prepare": t_prepare - t_stream,
                          "swap": t_start - t_prepare, "catch_up": t1 - t_start}}

    def run_pipe(self, run):
        db1, db2 = self.servers["db1"], self.servers["db2"]
        self.empty_replica()
        self.reset_general_log()
        self.writer.check()
        version = mysqlrepl_sql.parse_version(db2.one("SELECT VERSION() v")["v"])
        change = self.link_statements(version)
        t0 = time.monotonic()
        conn = db2.connect()
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_off = 1")  # MASTER_PASSWORD
            for stmt in change:
                cur.execute(*stmt)
        dump = subprocess.Popen(  # pylint: disable=consider-using-with
            ["mariadb-dump", f"--socket={db1.socket}", "--user=root", "--single-transaction", "--gtid",
             "--master-data=1", "--databases", DB],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(dump)
        load = subprocess.Popen(  # pylint: disable=consider-using-with
            ["mariadb", f"--socket={db2.socket}", "--user=root", "--init-command=SET sql_log_bin=0"],
            stdin=dump.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(load)
        dump.stdout.close()
        errs = {}

        def drain(key, stream):
            errs[key] = stream.read()

        readers = [threading.Thread(target=drain, args=("dump", dump.stderr)),
                   threading.Thread(target=drain, args=("load", load.stderr))]
        for th in readers:
            th.start()
        load_out = load.stdout.read()
        rc_load, rc_dump = load.wait(), dump.wait()
        for th in readers:
            th.join()
        t_pipe = time.monotonic()
        if rc_dump or rc_load:
            raise BenchError(f"pipe run {run}: mariadb-dump rc={rc_dump} {errs.get('dump', b'')[-2000:]!r}; "
                             f"mariadb rc={rc_load} {errs.get('load', b'')[-2000:]!r} {load_out[-500:]!r}")
        slave_pos = db2.one("SELECT @@GLOBAL.gtid_slave_pos p")["p"]
        # writer rows carry the writer's commit counter in k and are the newest rows: in a
        # consistent copy the last one in the Aria table is at most one commit ahead of the last
        # one in the InnoDB table
        last_k = {}
        for table in WRITER_TABLES:
            row = db2.one(f"SELECT k FROM {DB}.{table} WHERE pad = 'writer' ORDER BY id DESC LIMIT 1")
            last_k[table] = row["k"] if row else -1
        ahead = max(0, (last_k[ARIA_TABLE] - last_k[INNODB_TABLES[0]]) // 2)
        with conn.cursor() as cur:
            cur.execute("SET GLOBAL slave_exec_mode = %s", (self.args.pipe_exec_mode.upper(),))
            cur.execute("START SLAVE")
        conn.close()
        try:
            self.wait_threads()
            t_threads = time.monotonic()
            pos = self.catch_up()
        except BenchError as exc:
            raise BenchError(f"pipe run {run}: replica loaded from the dump (gtid_slave_pos {slave_pos}) "
                             f"does not replicate: {exc}") from exc
        t1 = time.monotonic()
        db2.sql("SET GLOBAL slave_exec_mode = 'STRICT'")  # verification replicates strictly
        pipe_s = t1 - t0
        stall, commits = self.writer.max_gap(t0, t1)
        spans, _ = self.lock_spans()
        say(f"  pipe run {run}: {pipe_s:.2f} s (dump|load {t_pipe - t0:.2f}, threads +"
            f"{t_threads - t_pipe:.2f}, catch-up to {pos} +{t1 - t_threads:.2f}); dump at {slave_pos}; "
            f"writer {commits} commits, longest stall {stall * 1000:.1f} ms; "
            f"lock spans (server log) {[(k, round(v, 1)) for k, v in spans] or 'none'}")
        say(f"  pipe run {run}: the dump's {ARIA_TABLE} holds {ahead} writer rows committed after its GTID "
            f"position (InnoDB snapshot); replayed with slave_exec_mode={self.args.pipe_exec_mode.upper()}"
            + (" (STRICT stops on duplicate key 1062)" if ahead else ""))
        self.verify(f"pipe run {run}")
        return {"s": pipe_s, "stall_ms": stall * 1000, "spans": spans, "aria_ahead": ahead}

    # -- main ------------------------------------------------------------------

    def main(self):
        self.setup()
        self.create_data()
        self.writer = Writer(self.servers["db1"], interval=self.args.interval_ms / 1000)
        self.writer.start()
        time.sleep(1.0)
        self.writer.check()
        warm0 = time.monotonic()
        time.sleep(2.0)
        gap, n = self.writer.max_gap(warm0, time.monotonic())
        say(f"writer: {n} commits in 2 s idle, longest gap {gap * 1000:.1f} ms")
        seeds, raws, pipes = [], [], []
        orders = [("seed", "raw", "pipe"), ("raw", "pipe", "seed"), ("pipe", "seed", "raw")]
        for run in range(1, self.args.runs + 1):
            for method in orders[(run - 1) % 3]:
                if method == "pipe" and self.args.no_pipe:
                    continue
                say(f"run {run}/{self.args.runs}: {method} (load average {os.getloadavg()[0]:.1f})")
                if method == "seed":
                    seeds.append(self.run_seed(run))
                elif method == "raw":
                    raws.append(self.run_raw(run))
                else:
                    pipes.append(self.run_pipe(run))
        self.writer.check()
        med = statistics.median
        seed_s = med(r["s"] for r in seeds)
        raw_s = med(r["s"] for r in raws)
        pipe_s = med(r["s"] for r in pipes) if pipes else float("nan")
        # medians of the runs, like the timings; the worst run is printed beside them
        stall = med(r["stall_ms"] for r in seeds)
        base = med(r["base_stall_ms"] for r in seeds)
        lock = med(r["lock_ms"] for r in seeds)
        raw_lock = med(r["lock_ms"] for r in raws)

        def runs(key, fmt="{:.1f}", rows=seeds):
            vals = [r[key] for r in rows]
            return ", ".join(fmt.format(v) if v is not None else "n/a" for v in vals)

        say(f"seed runs s: {runs('s', '{:.2f}')}; raw runs s: {runs('s', '{:.2f}', raws)}; "
            f"pipe runs s: {runs('s', '{:.2f}', pipes)}")
        for label, rows in (("seed", seeds), ("raw", raws)):
            steps = {}
            for r in rows:
                for k, v in r["steps"].items():
                    if v is not None:
                        steps.setdefault(k, []).append(v)
            say(f"{label} steps, median s: " + ", ".join(f"{k} {med(v):.2f}" for k, v in steps.items()))
        say(f"seed-window stalls ms: {runs('stall_ms')} (between BACKUP STAGE START and END: "
            f"{runs('in_backup_ms')}); baseline-window stalls ms: {runs('base_stall_ms')}; "
            f"raw-window stalls ms: {runs('stall_ms', rows=raws)}; "
            f"pipe-window stalls ms: {runs('stall_ms', rows=pipes)}")
        if pipes:
            say(f"pipe runs: Aria rows in the dump beyond its GTID position: "
                f"{runs('aria_ahead', '{}', pipes)} (replayed with "
                f"slave_exec_mode={self.args.pipe_exec_mode.upper()})")
        say(f"BLOCK_COMMIT ms: seed (server, METADATA_LOCK_INFO, as salt-run reports it) {runs('lock_ms')}; "
            f"seed (general log) {runs('log_lock_ms')}; raw (general log) {runs('lock_ms', rows=raws)}")
        worst = (max(r["stall_ms"] for r in seeds), max(r["base_stall_ms"] for r in seeds),
                 max(r["lock_ms"] for r in seeds))
        verdict = [
            f"stall delta {stall - base:.1f} ms (worst runs {worst[0]:.1f} - {worst[1]:.1f})",
            f"lock {lock:.1f} ms {'<=' if lock <= raw_lock + 10 else '>'} raw_lock + 10 = {raw_lock + 10:.1f} "
            f"(worst run {worst[2]:.1f})",
            f"overhead {seed_s / raw_s:.2f} {'<=' if seed_s / raw_s <= 1.3 else '>'} 1.3",
            f"ratio {pipe_s / seed_s:.2f} {'>=' if pipe_s / seed_s >= 6 else '<'} 6",
        ]
        say("targets (medians of the runs; issue 10 holds them at 1 GB, the lock also at 100 MB): "
            + "; ".join(verdict))
        return (f"seed size_mb={self.args.size_mb} engines={self.engines} stall_max_ms={stall:.1f} "
                f"baseline_stall_max_ms={base:.1f} lock_ms={lock:.1f} seed_s={seed_s:.2f} "
                f"pipe_s={pipe_s:.2f} ratio={pipe_s / seed_s:.2f} raw_s={raw_s:.2f} "
                f"raw_lock_ms={raw_lock:.1f} overhead={seed_s / raw_s:.2f}")

    # -- cleanup ---------------------------------------------------------------

    def cleanup(self):
        # a second SIGTERM / Ctrl-C must not cut the cleanup short
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if self.writer is not None and self.writer.is_alive():
            self.writer.stop()
        # our own children (salt-run, socat, mariadb-backup, mbstream, mariadb-dump, mariadb) and
        # what they left behind (orphans come to us: we are the subreaper)
        servers_pids = {s.pid() for s in self.servers.values()} - {None}
        daemon_pids = set(self.daemons.values())
        for proc in self.procs:
            if proc.poll() is None:
                for pid in descendants(proc.pid):
                    if pid not in servers_pids and pid not in daemon_pids:
                        _kill_pid(pid)
                _kill_pid(proc.pid)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        # the salt-master and minions (their job processes, a seed's mariadb-backup included)
        if self.daemons:
            try:
                sb.stop_pids([(pid, what) for what, pid in self.daemons.items()], timeout=20)
            except Exception as exc:  # pylint: disable=broad-except
                say(f"cleanup: salt daemons: {exc}")
        for pid in descendants(os.getpid()):
            if pid not in servers_pids and _comm(pid) in ("mariadb-backup", "mbstream", "mariadb-dump",
                                                           "mariadb", "socat", "salt-run"):
                _kill_pid(pid)
        if self.servers:
            try:
                harness.stop_servers(self.servers.values())
            except Exception as exc:  # pylint: disable=broad-except
                say(f"cleanup: {exc}")
        harness.reap_zombies()
        if self.shm is not None and not self.args.keep:
            shutil.rmtree(self.shm, ignore_errors=True)
        if self.root is not None:
            if self.args.keep:
                say(f"kept {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return None


def descendants(root_pid):
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                fields = fh.read().rpartition(")")[2].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_pid(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1000, help="size of benchdb (default 1000)")
    p.add_argument("--runs", type=int, default=3, help="runs of each method (default 3)")
    p.add_argument("--master-address", default="127.0.0.41")
    p.add_argument("--replica-address", default="127.0.0.42")
    p.add_argument("--port", type=int, default=33306, help="MariaDB port of both servers")
    p.add_argument("--seed-port", type=int, default=34444, help="mysqlrepl:seed:port")
    p.add_argument("--buffer-pool", default="256M", help="innodb_buffer_pool_size (pillar settings)")
    p.add_argument("--interval-ms", type=float, default=2.0, help="writer commit interval")
    p.add_argument("--pipe-exec-mode", choices=("idempotent", "strict"), default="idempotent",
                   help="replica slave_exec_mode while a pipe run catches up (default idempotent: "
                        "mariadb-dump --single-transaction copies Aria tables after its snapshot, "
                        "so STRICT stops on duplicate keys when the writer runs)")
    p.add_argument("--log-copy-interval", type=int, default=None,
                   help="mysqlrepl:seed:log_copy_interval in the pillar (default: the formula's)")
    p.add_argument("--raw-port", type=int, default=34445, help="port of the raw runs' socat listener")
    p.add_argument("--no-pipe", action="store_true",
                   help="skip the mariadb-dump | mariadb runs (pipe_s and ratio print nan)")
    p.add_argument("--replica-tmpfs", action="store_true",
                   help="put the replica's files in /dev/shm (as if on another host's disk: its "
                        "writes then do not delay the master's commits here)")
    p.add_argument("--verbose", action="store_true", help="print mariadb-backup's stderr tail")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (servers are stopped)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench/seed.py needs root (servers run as mysql, the formula chowns files)")
    harness.become_subreaper()

    def on_term(signum, frame):  # pylint: disable=unused-argument
        say(f"got signal {signum}")
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGTERM (timeout, kill) and SIGINT (Ctrl-C) end the bench like a failure: the same cleanup
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    bench = Bench(args)
    rc = 0
    line = None
    try:
        line = bench.main()
    except KeyboardInterrupt:
        say("interrupted")
        rc = 130
    except BenchError as exc:
        say(f"FAILED: {exc}")
        rc = 1
    except Exception:  # pylint: disable=broad-except
        say("FAILED: " + traceback.format_exc())
        rc = 1
    finally:
        bench.cleanup()
    if line:
        print(line, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
