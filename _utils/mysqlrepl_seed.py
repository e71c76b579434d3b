"""
Seeding a replica, the receiving side: the steps of ``mysqlrepl.seed_receive``.

Nothing here talks to Salt or to a server. The execution module passes the
server's names, its paths (:func:`paths`) and ``ops``, a dict of callables
that do the work (listed in :data:`OPS`); :func:`receive` decides what runs
when and what is undone on each failure. Unit tests
(``tests/unit/test_seed_steps.py``) drive every exit with scripted ops on real
directories; the integration tests (``tests/integration/test_seed.py``) run it
against real servers.

The steps of :func:`receive`, in order:

1. Refuse on the master of record (it is not seeded) and when the server's
   TLS files are missing. Nothing touched.
2. Read the replica's status. A replica that replicates: refuse when the
   live topology differs from pillar, else skip it (``seeded: False``)
   unless ``force``. Nothing touched.
3. Refuse when a previous datadir (``.<datadir name>.mysqlrepl-previous``)
   is left from an earlier seed: it may be the server's own datadir that
   could not be put back; an operator looks at it. Nothing touched. Remove an
   incoming directory an earlier seed left, make the incoming directory
   ``.<datadir name>.mysqlrepl-incoming`` beside the datadir (0700) and give
   it to the server's OS user.
4. Stream the master's backup into it.
5. Prepare it (mariadb-backup ``--prepare``).
6. Read its binlog info (the backup's GTID position).
7. Give the whole tree to the server's OS user.
   Once the incoming directory is made, a failure in 3-7 removes it and is
   raised again; the server and its datadir were never touched.
8. Stop the server. If it does not stop (``False`` or an error): the incoming
   directory is removed, the server is started again (a no-op when it runs:
   a failed stop may still have stopped it) and waited for, and the seed
   fails, "nothing changed" (or says the server does not answer).
9. Swap: datadir -> ``.<datadir name>.mysqlrepl-previous``, then incoming ->
   datadir.
10. Start the server on the seeded datadir and wait until it answers.
11. ``read_only=1`` and ``gtid_slave_pos`` = the backup's position.
12. Point it at the master (``replication_apply(seeded=True)``): both
    replication threads must run.
    A failure in 9-12 puts the old datadir back (:func:`put_back`), then is
    raised again: stop the server (when it was started), move the seeded
    datadir back to the incoming path, the previous datadir back to the
    datadir path, start the server on it and wait until it answers, remove
    the seeded copy. (A failed first rename of step 9 moved nothing: the
    server is started again on its untouched datadir.)
13. Rename the previous datadir to ``.<datadir name>.mysqlrepl-discard`` and
    remove it; what a failed removal leaves, the next seed removes at step 3
    (the result's ``left`` says so).
14. Optionally (``catch_up``) wait until the replica has applied the master's
    current GTID position. A failure here keeps the seeded datadir (it
    replicates; the previous one is gone already) and says "did not catch up".

Invariant: at every exit the server has exactly one complete datadir at its
datadir path -- its own or, once step 12 passed, the seeded one -- and after
a failure past step 8 it runs on its own again. Before the swap nothing of
the server is touched (steps 1-7), or it is only stopped (step 8: whether a
stop that failed left it running is the service manager's answer; its
datadir is untouched): the only thing made is the incoming directory, and
every failure removes it (a removal that fails is logged; the next seed
removes what is left). After the swap, until the seeded
datadir replicates from the master, the previous datadir is kept beside it,
and every failure puts it back and starts the server on it. The previous
datadir is removed only once both replication threads run from the master,
and by nothing else (step 3 refuses to go on while one is left).

If putting the old datadir back fails itself (the server does not stop, a
rename fails, the server does not start or answer on it), nothing more is
moved or deleted and the seed fails with an error that says "putting the old
datadir back failed", the original failure, where the previous datadir is
(still at ``...mysqlrepl-previous``, or back at the datadir path) and where
the seeded copy is: that is the one exit the invariant does not cover, and an
operator finishes it by hand.
"""

import logging
import os
import time

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

# What receive() needs from the execution module (and catch_up() -> pos with catch_up=True):
OPS = (
    "exists",          # exists(path) -> bool
    "makedirs",        # makedirs(path): a new directory, mode 0700
    "rename",          # rename(src, dst)
    "rmtree",          # rmtree(path): raises on failure
    "replica_status",  # replica_status() -> the replica's status row, or None
    "conflict",        # conflict(rs) -> refusal text when the live topology differs from pillar, or None
    "stream",          # stream(incoming) -> {"bytes": n, ...}: the master's backup, extracted
    "prepare",         # prepare(incoming)
    "binlog_info",     # binlog_info(incoming) -> {"gtid": "0-11-42" or None, ...}
    "chown_tree",      # chown_tree(path): the directory and everything in it to the server's OS user
    "stop",            # stop() -> bool (service.stop)
    "start",           # start() -> bool (service.start)
    "wait_up",         # wait_up(): returns once the server answers, raises otherwise
    "position",        # position(gtid): read_only=1, gtid_slave_pos=gtid
    "replicate",       # replicate() -> {"result", "comment", ...} (replication_apply(seeded=True))
)

# how far the swap got (step 9), for put_back(): SWAPPED includes every later step
NOTHING_MOVED, DATADIR_MOVED, SWAPPED = range(3)


def paths(datadir):
    """
    The seed's directories beside ``datadir`` (same parent: the renames stay on
    one filesystem): ``{"datadir", "incoming", "previous"}``; ``/var/lib/mysql``
    -> ``/var/lib/.mysql.mysqlrepl-incoming``, ``/var/lib/.mysql.mysqlrepl-previous``.
    """
    datadir = datadir.rstrip("/")
    parent, base = os.path.dirname(datadir), os.path.basename(datadir)
    return {
        "datadir": datadir,
        "incoming": os.path.join(parent, f".{base}.mysqlrepl-incoming"),
        "previous": os.path.join(parent, f".{base}.mysqlrepl-previous"),
        # a previous datadir no longer needed (its seed replicates), until it is removed
        "discard": os.path.join(parent, f".{base}.mysqlrepl-discard"),
    }


def require_files(name, files, what, exists=os.path.exists):
    """Refuse (``CommandExecutionError``) when any of ``files`` (the server's TLS files) is missing."""
    missing = [p for p in files if not exists(p)]
    if missing:
        raise CommandExecutionError(
            f"{name} cannot {what}: TLS files missing ({', '.join(missing)}); apply mysqlrepl.tls first"
        )


def _quietly(ops, path):
    """rmtree that never fails the seed (what it leaves, the next seed removes): removed or not."""
    try:
        ops["rmtree"](path)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("mysqlrepl: cannot remove %s: %s", path, exc)
        return False
    return True


def _call(op, *args):
    """``(ok, detail)`` of a service op that answers a bool or raises."""
    try:
        return bool(op(*args)), ""
    except Exception as exc:  # pylint: disable=broad-except
        return False, f" ({exc})"


def put_back(name, service, where, ops, exc, stage=SWAPPED):
    """
    Steps 9-12 failed with ``exc`` after reaching ``stage``: put the server's
    own datadir back at its datadir path and start the server on it (see the
    module docstring). Returns once it answers again; the caller raises
    ``exc``. When any of that fails, raises ``CommandExecutionError`` saying
    where the previous datadir and the seeded copy are; from then on nothing
    is moved or deleted.
    """
    datadir, seeded, previous = where["datadir"], where["incoming"], where["previous"]
    log.error("mysqlrepl: seeding %s failed in or after the swap (%s): putting the old datadir back",
              name, exc)

    def failed(why, state):
        return CommandExecutionError(
            f"seeding {name} failed ({exc}), and putting the old datadir back failed: {why}; {state}")

    if stage >= SWAPPED:
        ok, detail = _call(ops["stop"])
        if not ok:
            raise failed(f"service.stop {service} failed{detail}",
                         f"the server may still run on the seeded datadir {datadir}; the previous "
                         f"datadir is kept at {previous}")
        try:
            ops["rename"](datadir, seeded)
        except Exception as err:  # pylint: disable=broad-except
            raise failed(f"moving the seeded datadir {datadir} aside to {seeded} failed ({err})",
                         f"the server is stopped, the seeded datadir still at {datadir}; the previous "
                         f"datadir is kept at {previous}") from err
    if stage >= DATADIR_MOVED:
        try:
            ops["rename"](previous, datadir)
        except Exception as err:  # pylint: disable=broad-except
            raise failed(f"moving {previous} back to {datadir} failed ({err})",
                         f"the server is stopped with no datadir at {datadir}; the previous datadir is "
                         f"kept at {previous}, the seeded copy at {seeded}") from err
    back = (f"the previous datadir is back at {datadir}" if stage >= DATADIR_MOVED
            else f"its datadir {datadir} was not moved")
    ok, detail = _call(ops["start"])
    if not ok:
        raise failed(f"service.start {service} failed on the old datadir{detail}",
                     f"{back}, but the server does not run; the seeded copy is kept at {seeded}")
    try:
        ops["wait_up"]()
    except Exception as err:  # pylint: disable=broad-except
        raise failed(f"the server started on the old datadir but does not answer ({err})",
                     f"{back}; the seeded copy is kept at {seeded}") from err
    _quietly(ops, seeded)


def receive(name, service, master, where, ops, tls_files=(), force=False, catch_up=False,
            clock=time.monotonic):
    """
    Seed replica ``name`` (its service ``service``) from ``master`` (a server
    name): steps 1-14 of the module docstring. ``where``: :func:`paths` of its
    datadir; ``ops``: the callables of :data:`OPS` (and ``catch_up() -> pos``
    when ``catch_up``); ``tls_files``: the server's CA, certificate and key;
    ``clock``: seconds, for the timings. Returns::

        {"server", "seeded": False, "comment"}       (it replicates already: skipped)
        {"server", "seeded": True, "gtid", "bytes", "timings"[, "caught_up": {"pos", "seconds"}]}

    ``timings``: ``stream_s`` (incoming made to stream done), ``prepare_s``,
    ``swap_s`` (stop to the seeded server answering), ``total_s``. Every
    failure raises: ``CommandExecutionError``, or the failing op's own error.
    """
    missing = [op for op in OPS + (("catch_up",) if catch_up else ()) if op not in ops]
    if missing:
        raise ValueError(f"mysqlrepl_seed.receive: ops missing: {', '.join(missing)}")
    datadir, incoming, previous = where["datadir"], where["incoming"], where["previous"]

    # 1. refusals: nothing touched
    if name == master:
        raise CommandExecutionError(f"{name} is the master of record: it is not seeded")
    require_files(name, tls_files, "receive a seed", ops["exists"])

    # 2. a replica that replicates is left alone unless forced
    rs = ops["replica_status"]()
    if rs is not None and not force:
        conflict = ops["conflict"](rs)
        if conflict:
            raise CommandExecutionError(conflict)
        return {"server": name, "seeded": False,
                "comment": f"{name} already replicates from {rs['host']}:{rs['port']}; "
                           "use force=True to re-seed"}

    # 3. a fresh incoming directory; a previous datadir left by an earlier seed is never removed here
    if ops["exists"](previous):
        raise CommandExecutionError(
            f"{previous} is left from an earlier seed of {name} that did not finish: it may hold "
            f"{name}'s own datadir (that seed's error says). Move it back or remove it by hand, then "
            "seed again; nothing changed")
    for stale in (incoming, where["discard"]):  # an unfinished copy; a datadir a past seed discarded
        if ops["exists"](stale):
            ops["rmtree"](stale)
    ops["makedirs"](incoming)
    timings = {}
    started = clock()
    try:
        ops["chown_tree"](incoming)
        # 4. stream
        received = ops["stream"](incoming)
        timings["stream_s"] = round(clock() - started, 3)
        # 5. prepare
        t0 = clock()
        ops["prepare"](incoming)
        timings["prepare_s"] = round(clock() - t0, 3)
        # 6. the backup's position
        info = ops["binlog_info"](incoming)
        # 7. owned by the server's OS user
        ops["chown_tree"](incoming)
    except Exception:
        _quietly(ops, incoming)
        raise

    # 8. stop: the only window in which the replica is down starts here
    t0 = clock()
    ok, detail = _call(ops["stop"])
    if not ok:
        _quietly(ops, incoming)
        # a stop that failed may still have stopped the server: start it (a no-op when it
        # runs) and wait until it answers, so that "nothing changed" is true
        started, why = _call(ops["start"])
        if started:
            try:
                ops["wait_up"]()
            except Exception as exc:  # pylint: disable=broad-except
                started, why = False, f" ({exc})"
        if not started:
            raise CommandExecutionError(
                f"service.stop {service} failed{detail}, and the server does not answer after "
                f"service.start{why}: nothing was moved ({datadir} is its own datadir); start it by hand")
        raise CommandExecutionError(f"service.stop {service} failed{detail}; nothing changed")

    # 9-12. swap, start, position, replicate; any failure puts the old datadir back
    stage = NOTHING_MOVED
    try:
        ops["rename"](datadir, previous)
        stage = DATADIR_MOVED
        ops["rename"](incoming, datadir)
        stage = SWAPPED
        if not ops["start"]():
            raise CommandExecutionError(f"service.start {service} failed on the seeded datadir")
        ops["wait_up"]()
        timings["swap_s"] = round(clock() - t0, 3)
        ops["position"](info["gtid"] or "")
        result = ops["replicate"]()
        if not result["result"]:
            raise CommandExecutionError(f"seeded {name} but replication did not start: {result['comment']}")
    except Exception as exc:
        put_back(name, service, where, ops, exc, stage)
        raise

    # 13. the seeded server replicates from the master: only now the old datadir goes, first
    # renamed out of the previous datadir's name (a removal that fails half-way must not look
    # like a put-back that failed to the next seed); what is left, the next seed removes
    out = {"server": name, "seeded": True, "gtid": info["gtid"], "bytes": received["bytes"],
           "timings": timings}
    try:
        ops["rename"](previous, where["discard"])
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("mysqlrepl: cannot rename %s to %s: %s", previous, where["discard"], exc)
        out["left"] = (f"the old datadir of {name} is still at {previous} ({exc}): remove it by hand "
                       "before the next seed")
    else:
        if not _quietly(ops, where["discard"]):
            out["left"] = f"the old datadir of {name} is not fully removed: the next seed removes {where['discard']}"

    # 14. optionally wait until it has applied what the master has now
    if catch_up:
        t0 = clock()
        try:
            pos = ops["catch_up"]()
        except CommandExecutionError as exc:
            raise CommandExecutionError(f"{name} was seeded and replicates but did not catch up "
                                        f"with {master}: {exc}") from exc
        out["caught_up"] = {"pos": pos, "seconds": round(clock() - t0, 3)}
    timings["total_s"] = round(clock() - started, 3)
    return out


# ---------------------------------------------------------------------------
# what salt-run mysqlrepl.seed prints while the copy runs
# ---------------------------------------------------------------------------

def copy_estimate(datadir, skip_prefixes=()):
    """
    Bytes a physical backup of ``datadir`` copies, roughly: every file under
    it but the binary and relay logs (``skip_prefixes``: their basenames),
    the redo log, sockets, pid files and the InnoDB temporary tablespace. For
    the estimated time left only.
    """
    total = 0
    for root, dirs, files in os.walk(datadir):
        dirs[:] = [d for d in dirs if d != "#innodb_temp"]
        for name in files:
            # the redo log: mariadb-backup copies only what is written meanwhile
            if (name.endswith((".pid", ".sock")) or name == "ibtmp1" or name.startswith("ib_logfile")
                    or name.startswith(tuple(skip_prefixes))):
                continue
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _size(nbytes):
    for unit, div in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if nbytes >= div:
            return f"{nbytes / div:.1f} {unit}"
    return f"{nbytes} B"


def progress_line(replica, master, nbytes, total, elapsed):
    """``db3 <- db1: 41.2 MB of ~80.0 MB (52%), 20.6 MB/s, ~2 s left`` (``total``: an estimate or None)."""
    rate = nbytes / elapsed if elapsed > 0 else 0.0
    line = f"{replica} <- {master}: {_size(nbytes)}"
    if total:
        line += f" of ~{_size(total)} ({min(100, round(100 * nbytes / total))}%)"
    line += f", {_size(rate)}/s"
    if total and rate > 0:
        left = max(0.0, (total - nbytes) / rate)
        line += f", ~{left:.0f} s left" if nbytes < total else ", finishing"
    return line
