"""
Master-side mysqlrepl operations that span several minions.

The master must have the formula's runners synced (``salt-run saltutil.sync_all``;
the ``mysqlrepl.orch.*`` orchestrations do it first). Runners reach the minions
through the LocalClient: the formula's execution module runs on the minion that
owns each server.

CLI Example:

.. code-block:: bash

    salt-run mysqlrepl.topology
    salt-run mysqlrepl.seed replica=db2
    salt-run mysqlrepl.switch new_master=db2 dry_run=True
    salt-run mysqlrepl.record
"""

import concurrent.futures
import contextlib
import contextvars
import datetime
import fcntl
import functools
import json
import logging
import os
import threading
import time

import salt.client
import salt.fileserver
import salt.utils.hashutils
import salt.utils.event
import salt.utils.jid
import salt.utils.minions
from salt.exceptions import CommandExecutionError, SaltClientError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "mysqlrepl"

DEFAULT_TGT = "I@mysqlrepl:*"
# how long a minion may take to answer a precheck read
FACTS_TIMEOUT = 10


def __virtual__():
    return __virtualname__


def _client():
    return salt.client.get_local_client(__opts__["conf_file"])


def _fail(ret, message):
    # salt-run's exit code comes from the returned dict's retcode
    __context__["retcode"] = 1
    ret["result"] = False
    ret["retcode"] = 1
    ret["comment"] = message
    return ret


def _progress(message, tag=None, **data):
    """Print progress in salt-run's output and put it on the event bus."""
    try:
        # printed by the formula's progress outputter: the message alone, one line
        __jid_event__.fire_event({"message": message, "outputter": "mysqlrepl_progress"}, "progress")
    except NameError:
        pass
    if tag:
        with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as event:
            event.fire_event(dict(data, message=message), f"salt/mysqlrepl/{tag}")


def _call(minion, fun, arg=(), kwarg=None, timeout=60, jid=""):
    """
    Run ``fun`` on one minion and wait at most ``timeout`` seconds (a hard
    limit: ``LocalClient.cmd`` keeps waiting while the minion says the job
    runs); raise with the minion's own error text.
    """
    deadline = time.monotonic() + timeout
    try:
        with _client() as client:
            # listen=True: subscribed to the event bus before the job is published
            pub = client.run_job(minion, fun, arg=list(arg), kwarg=kwarg or {}, tgt_type="glob",
                                 timeout=timeout, jid=jid, listen=True)
            if not pub or not pub.get("jid"):
                raise CommandExecutionError(f"cannot publish {fun} to {minion} (is the salt-master running?)")
            if minion not in (pub.get("minions") or []):
                raise CommandExecutionError(f"no minion {minion} (its key is not accepted on this salt-master)")
            tag = f"salt/job/{pub['jid']}/ret/{minion}"
            while time.monotonic() < deadline:
                data = client.event.get_event(wait=max(0.05, min(deadline - time.monotonic(), 1.0)), tag=tag,
                                              match_type="startswith", auto_reconnect=True)
                if data and data.get("id") == minion:
                    return _answer(minion, fun, {"ret": data.get("return"), "retcode": data.get("retcode", 0)})
            cached = client.get_cache_returns(pub["jid"]).get(minion)
    except SaltClientError as exc:
        raise CommandExecutionError(f"{fun} on {minion}: the salt-master's client failed: {exc}") from exc
    if isinstance(cached, dict) and "ret" in cached:
        return _answer(minion, fun, cached)
    raise CommandExecutionError(f"minion {minion} did not answer {fun} within {timeout}s")


# what a minion returns instead of the function's value when the call failed
_SALT_ERRORS = ("ERROR", "Passed invalid arguments", "The minion function caused an exception",
                "is not available", "Exception occurred")


def _answer(minion, fun, out):
    """The function's value, or raise: a non-zero retcode, or (the job cache keeps no retcode) a
    string where every mysqlrepl function the runner calls returns a dict or a GTID position."""
    ret = out.get("ret")
    if out.get("retcode", 0) != 0 or (isinstance(ret, str) and any(e in ret for e in _SALT_ERRORS)) \
            or not isinstance(ret, (dict, str)):
        raise CommandExecutionError(f"{minion}: {fun}: {ret}")
    return ret


def _settle_job(minion, jid, fun, wait=15):
    """
    A call whose answer did not come: make sure its job is over before
    anyone reads the servers' states (a job still running could change them
    afterwards). Asks the minion (``saltutil.find_job``), kills a job still
    running (``saltutil.kill_job``) and waits until it is gone, then looks for
    an answer that reached the job cache late. Returns ``{"jid", "ended",
    "killed", "answer", "note"}``: ``ended`` is ``None`` when the minion could
    not say.
    """
    out = {"jid": jid, "ended": None, "killed": False, "answer": None, "note": ""}
    try:
        with _client() as client:

            def running():
                res = client.cmd(minion, "saltutil.find_job", [jid], timeout=5)
                return bool(res[minion]) if minion in res else None

            state = running()
            if state:
                client.cmd(minion, "saltutil.kill_job", [jid], timeout=5)
                out["killed"] = True
                deadline = time.monotonic() + wait
                while state and time.monotonic() < deadline:
                    time.sleep(0.5)
                    state = running()
            out["ended"] = None if state is None else not state
            if state is None:
                out["note"] = f"{minion} did not answer saltutil.find_job: its job {jid} may still run"
            elif state:
                out["note"] = f"job {jid} still runs on {minion} after saltutil.kill_job"
            cached = client.get_cache_returns(jid).get(minion)
        if out["ended"] and isinstance(cached, dict) and "ret" in cached:
            try:
                out["answer"] = _answer(minion, fun, cached)
            except CommandExecutionError as exc:
                out["note"] = f"the job ended with: {exc}"
    except Exception as exc:  # pylint: disable=broad-except
        out["note"] = f"cannot settle job {jid} on {minion}: {exc}"
    return out


def topology(topology=None, tgt=DEFAULT_TGT, tgt_type="compound", timeout=30):  # pylint: disable=redefined-outer-name
    """
    The validated topology (passwords masked) as the minions holding the
    ``mysqlrepl`` pillar see it. With several topologies on one master, name one.

    CLI Example:

    .. code-block:: bash

        salt-run mysqlrepl.topology topology=production
    """
    try:
        return _topology(topology, tgt, tgt_type, timeout)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _fail({"result": False}, str(exc))


def health(topology=None, tgt=DEFAULT_TGT, tgt_type="compound", timeout=10, lag_s=None, gtid_behind=None,  # pylint: disable=redefined-outer-name
           cert_days=None):
    """
    One live answer for the whole topology: every db minion reads its servers
    in one job (``mysqlrepl.health_facts``, all minions at once), and
    ``_utils/mysqlrepl_health.py`` says what each server is, by the record and
    as seen (role, read_only, IO/SQL threads, seconds and transactions behind
    its source, TLS and cipher of its link, certificate expiry, last errors,
    tunnels) and what is wrong. The verdict comes first: ``healthy``, or the
    gravest problem; the exit code is 1 when unhealthy. A minion that does not
    answer within ``timeout`` seconds makes its servers ``unreachable``.

    Thresholds: pillar ``mysqlrepl:health`` (``lag_s``, ``gtid_behind``,
    ``cert_days``), or these arguments. ``salt-run mysqlrepl.topology`` shows
    the pillar's view instead; ``--out=json`` gives this one as data.

    CLI Example:

    .. code-block:: bash

        salt-run mysqlrepl.health
        salt-run mysqlrepl.health topology=production lag_s=10 --out=json
    """
    started = time.monotonic()
    if topology:
        tgt = f"( {tgt} ) and I@mysqlrepl:topology:{topology}"
    with _client() as client:
        res = client.cmd(tgt, "mysqlrepl.health_facts", tgt_type=tgt_type, timeout=int(timeout), full_return=True)
    cfgs, silent, answers, broken = {}, [], {}, {}
    for minion, out in sorted(res.items()):
        ret = out.get("ret") if isinstance(out, dict) else out
        if isinstance(ret, str) and ret.startswith("Minion did not return"):
            silent.append(minion)
            continue
        if not isinstance(ret, dict) or out.get("retcode", 0) != 0 or "settings" not in ret:
            broken[minion] = str(ret)
            continue
        cfgs.setdefault(ret["settings"]["topology"], ret["settings"])
        answers.update(ret["servers"])
    if not cfgs:
        reason = "; ".join(f"{m}: {r}" for m, r in broken.items()) or f"no minion matching {tgt!r} answered"
        return _fail({"healthy": False}, f"cannot tell: {reason}")
    if len(cfgs) > 1:
        return _fail({"healthy": False}, f"several topologies ({', '.join(sorted(cfgs))}): name one with topology=")
    cfg = next(iter(cfgs.values()))
    for name, srv in cfg["servers"].items():
        if name not in answers:
            minion = srv["minion"]
            why = (f"did not answer within {timeout} s (is its salt-minion running? salt-run manage.down)"
                   if minion in silent else f"failed: {broken[minion]}" if minion in broken
                   else "is not targeted or has no mysqlrepl pillar")
            answers[name] = {"error": f"minion {minion} {why}"}
    limits = dict(cfg.get("health") or {})
    limits.update({k: v for k, v in (("lag_s", lag_s), ("gtid_behind", gtid_behind), ("cert_days", cert_days))
                   if v is not None})
    now = datetime.datetime.now(datetime.timezone.utc)
    report = __utils__["mysqlrepl_health.report"](cfg, answers, now, __utils__["mysqlrepl_replication.server_at"],
                                                  limits)
    report.update(topology=cfg["topology"], read_s=round(time.monotonic() - started, 3),
                  master=cfg.get("master"), masters=cfg.get("masters"), switching=cfg.get("switching"))
    # salt-run's exit code: the data's retcode (the return is {"outputter", "data"})
    report["retcode"] = 0 if report["healthy"] else 1
    if not report["healthy"]:
        __context__["retcode"] = 1
    return {"outputter": "mysqlrepl_health", "data": report}


def _topology(topology, tgt=DEFAULT_TGT, tgt_type="compound", timeout=10):  # pylint: disable=redefined-outer-name
    """The validated topology; raises with the reason."""
    if topology:
        tgt = f"( {tgt} ) and I@mysqlrepl:topology:{topology}"
    with _client() as client:
        res = client.cmd(tgt, "mysqlrepl.settings", tgt_type=tgt_type, timeout=timeout, full_return=True)
    found = {}
    errors = {}
    for minion, out in sorted(res.items()):
        if isinstance(out.get("ret"), str) and out["ret"].startswith("Minion did not return"):
            continue  # a silent minion is not a pillar error; the caller checks who answered
        if out.get("retcode", 0) != 0 or not isinstance(out.get("ret"), dict):
            errors.setdefault(str(out.get("ret")), []).append(minion)
            continue
        cfg = out["ret"]
        found.setdefault(cfg["topology"], cfg)
    if errors:
        raise CommandExecutionError("invalid mysqlrepl pillar: " + "; ".join(
            f"{', '.join(minions)}: {message}" for message, minions in errors.items()))
    if not found:
        raise CommandExecutionError(f"no minion matching {tgt!r} has a mysqlrepl pillar")
    if len(found) > 1:
        raise SaltInvocationError(f"several topologies ({', '.join(sorted(found))}): name one with topology=")
    return next(iter(found.values()))


def _served_hashes(saltenv="base"):
    """SHA-256 of the formula files the salt-master's file server serves under
    ``_modules``, ``_states``, ``_utils`` (what ``saltutil.sync_*`` copies), keyed as
    ``mysqlrepl.formula_hashes`` keys a minion's synced copies."""
    fs = salt.fileserver.Fileserver(__opts__)
    out = {}
    for path in fs.file_list({"saltenv": saltenv}):
        for form in _plan_u("sync_forms")():
            prefix = f"_{form}/"
            if path.startswith(prefix) and path.endswith((".py", ".pyx", ".so", ".zip")):
                fnd = fs.find_file(path, saltenv)
                if fnd.get("path"):
                    out[f"{form}/{path[len(prefix):]}"] = salt.utils.hashutils.get_hash(fnd["path"], "sha256")
    return out


def sync_minions(tgt=DEFAULT_TGT, tgt_type="compound", timeout=30):
    """
    Bring the formula's modules to the targeted minions, syncing only those
    that need it: every minion reports the hashes of its synced modules
    (``mysqlrepl.formula_hashes``, one job), and ``saltutil.sync_all`` runs on
    the minions whose ``_modules``, ``_states`` or ``_utils`` files differ from
    the file server's, or that cannot report them (the module missing, old or
    broken). When every minion is current nothing is synced, so the modules do
    not reload on a database host at the moment a switch starts. The
    orchestrations run it after syncing the salt-master if its runners differ.

    CLI Example:

    .. code-block:: bash

        salt-run mysqlrepl.sync_minions
        salt-run mysqlrepl.sync_minions tgt='I@mysqlrepl:topology:production'
    """
    try:
        return _sync_minions(tgt, tgt_type, timeout)
    except (CommandExecutionError, SaltInvocationError, SaltClientError) as exc:
        return _fail({"result": False, "current": [], "synced": {}}, str(exc))


def _sync_minions(tgt, tgt_type="compound", timeout=30):
    """``sync_minions``' work: ``{"result": True, "current", "synced", "seconds", "comment"}``,
    or raises with what failed."""
    ret = {"result": True, "current": [], "synced": {}, "comment": ""}
    started = time.monotonic()
    served = _served_hashes()
    expected = sorted(salt.utils.minions.CkMinions(__opts__).check_minions(
        tgt, tgt_type, greedy=False).get("minions", []))
    if not expected:
        raise CommandExecutionError(f"no minion matches {tgt!r}: nothing synced")
    with _client() as client:
        res = client.cmd(expected, "mysqlrepl.formula_hashes", tgt_type="list", timeout=timeout,
                         full_return=True)
    # a failed call's answer is its error text: not hashes, so that minion is synced
    answers = {m: res[m].get("ret") if isinstance(res.get(m), dict) else None for m in expected}
    stale = _plan_u("stale_minions")(served, answers)
    ret["current"] = [m for m in expected if m not in stale]
    if stale:
        with _client() as client:
            synced = client.cmd(sorted(stale), "saltutil.sync_all", tgt_type="list",
                                timeout=max(timeout, 120), full_return=True)
        failed = {}
        for minion, why in stale.items():
            out = synced.get(minion)
            if not isinstance(out, dict) or out.get("retcode", 0) != 0 or not isinstance(out.get("ret"), dict):
                failed[minion] = (out or {}).get("ret") if isinstance(out, dict) else "did not answer"
            else:
                ret["synced"][minion] = {"why": why, "synced": {k: v for k, v in out["ret"].items() if v}}
        if failed:
            raise CommandExecutionError("saltutil.sync_all failed on " + "; ".join(
                f"{m}: {str(why)[:300]}" for m, why in sorted(failed.items())))
    ret["seconds"] = round(time.monotonic() - started, 3)
    ret["comment"] = (f"synced {', '.join(sorted(ret['synced']))}" if ret["synced"] else "nothing to sync") + (
        f"; current: {', '.join(ret['current'])}" if ret["current"] else "")
    return ret


def seed(replica=None, topology=None, force=False, timeout=None):  # pylint: disable=redefined-outer-name
    """
    Seed replicas from the master of record: the replica's minion listens on
    its own address (``mysqlrepl:seed:port``) with the topology's TLS, the
    master's minion streams a mariadb-backup to it, the replica prepares it,
    starts, and replicates from exactly the backup's GTID position. The master
    keeps taking writes: the only locks are mariadb-backup's BACKUP STAGE
    (milliseconds). Waits until each replica has caught up with the master.

    Without ``replica`` every replica that has never been seeded is seeded
    (replicas that already replicate are left alone); ``force=True`` re-seeds
    the named replica.

    CLI Example:

    .. code-block:: bash

        salt-run mysqlrepl.seed
        salt-run mysqlrepl.seed replica=db3 force=True
    """
    ret = {"result": True, "seeded": {}, "skipped": {}, "comment": ""}
    try:
        cfg = _topology(topology)
        with _topology_lock(cfg["topology"], "seed"):
            return _seed(cfg, replica, force, timeout, ret)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _fail(ret, str(exc))


def _relay_seed_progress(replica, master, done):
    """
    While ``done`` is not set: every progress event the master's minion fires as it
    sends (``salt/mysqlrepl/seed/<replica>/send``: bytes so far, the estimate)
    becomes a line in salt-run's output (``_utils/mysqlrepl_seed.progress_line``).
    """
    tag = f"salt/mysqlrepl/seed/{replica}/send"
    started = time.monotonic()
    line = __utils__["mysqlrepl_seed.progress_line"]
    try:
        with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=True) as event:
            while not done.is_set():
                got = event.get_event(wait=0.5, tag=tag, full=True)
                if not got:
                    continue
                data = got.get("data") or {}
                data = data.get("data", data) if isinstance(data.get("data"), dict) else data
                if "bytes" in data:
                    _progress(line(replica, master, int(data["bytes"]), data.get("total"),
                                   time.monotonic() - started))
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("mysqlrepl: seed progress relay stopped: %s", exc)


def _pair_refusal(cfg, what):
    """Why ``what`` (switch, record_set, rejoin) does not apply to a two-master pair."""
    a, b = cfg["masters"]
    return (f"topology {cfg['topology']} is a two-master pair ({a} and {b} both take writes): there is no "
            f"single master to {what}. To take {a} out of service, point its apps at {b} and stop writing "
            f"to {a}. To make {b} the only master: set master: {b} in pillar instead of masters, then "
            f"salt-run mysqlrepl.unpair keep={b}. Nothing changed")


def _seed(cfg, replica, force, timeout, ret):
    source_of = functools.partial(__utils__["mysqlrepl_replication.source_of"], cfg)
    timeout = int(timeout or cfg["seed"]["timeout"])
    if replica is not None and replica not in cfg["servers"]:
        return _fail(ret, f"unknown server {replica!r}")
    # where the data comes from: the master (of a pair: the first master) is never seeded
    origin = cfg["masters"][0]
    if replica == origin:
        return _fail(ret, f"{replica} is the master of record" if not cfg["two_masters"]
                     else f"{replica} is the pair's first master: the others are seeded from it")
    # a pair's second master first: its replicas are seeded from it
    names = [replica] if replica else sorted((n for n in cfg["servers"] if n != origin),
                                             key=lambda n: (n not in cfg["masters"], n))
    todo = []
    for name in names:
        srv = cfg["servers"][name]
        if force:  # re-seeded whatever its state: no need to ask it (one job less)
            todo.append(name)
            continue
        try:
            st = _call(srv["minion"], "mysqlrepl.status", [name])
        except CommandExecutionError as exc:
            return _fail(ret, f"cannot read the state of {name}: {exc}; nothing seeded")
        if st["replica"] is not None and not force:
            ret["skipped"][name] = f"already replicates from {st['replica']['host']}"
            continue
        if st["replica"] is None and st["gtid"]["slave_pos"] and not force:
            ret["skipped"][name] = "has a GTID position: the replication state configures it"
            continue
        todo.append(name)
    for name in todo:
        srv = cfg["servers"][name]
        master = cfg["servers"][source_of(name)]
        started = time.monotonic()
        _progress(f"seeding {name} from {master['name']}", tag=f"seed/{name}/start",
                  replica=name, master=master["name"])
        outcome = {}

        def receive(srv, outcome):
            try:
                outcome["receive"] = _call(srv["minion"], "mysqlrepl.seed_receive", [srv["name"]],
                                           {"force": bool(force), "timeout": timeout, "catch_up": True},
                                           timeout=timeout + 120)
            except CommandExecutionError as exc:
                outcome["receive_error"] = str(exc)

        thread = threading.Thread(target=receive, args=(srv, outcome), daemon=True)
        thread.start()
        copying = threading.Event()
        # in a copy of this job's loader context: a bare thread has no __utils__ / __opts__
        relay = threading.Thread(target=contextvars.copy_context().run,
                                 args=(_relay_seed_progress, name, master["name"], copying), daemon=True)
        relay.start()
        try:
            outcome["send"] = _call(master["minion"], "mysqlrepl.seed_send", [],
                                    {"to": name, "server": master["name"], "timeout": timeout},
                                    timeout=timeout + 60)
        except CommandExecutionError as exc:
            outcome["send_error"] = str(exc)
        finally:
            copying.set()
        relay.join(5)
        if "send" in outcome:
            _progress(f"{name} <- {master['name']}: copied, preparing and starting it")
        thread.join(timeout + 180)
        if "receive_error" in outcome or "send_error" in outcome or "receive" not in outcome:
            return _fail(ret, f"seeding {name} failed: "
                              f"{outcome.get('send_error') or ''} {outcome.get('receive_error') or ''}".strip()
                              or f"seeding {name} failed: no answer from {srv['minion']}")
        # the replica's minion read the master's position and waited for it (catch_up=True)
        waited = outcome["receive"].get("caught_up")
        if not waited:
            return _fail(ret, f"{name} was seeded but did not say it caught up: {outcome['receive']}")
        ret["seeded"][name] = {
            "gtid": outcome["receive"].get("gtid"),
            "bytes": outcome["receive"].get("bytes"),
            "timings": outcome["receive"].get("timings"),
            # how long the master's commits were held (BACKUP STAGE), measured by the sender
            "master_locks": outcome["send"].get("lock_info"),
            "catch_up_s": waited["seconds"],
            "total_s": round(time.monotonic() - started, 3),
        }
        _progress(f"{name} seeded and caught up in {ret['seeded'][name]['total_s']}s",
                  tag=f"seed/{name}/done", replica=name)
    ret["comment"] = (f"seeded {', '.join(ret['seeded'])}" if ret["seeded"] else "nothing to seed")
    return ret


# ---------------------------------------------------------------------------
# one operation at a time per topology
# ---------------------------------------------------------------------------

def _state_dir():
    path = os.path.join(__opts__["cachedir"], "mysqlrepl")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _record_path(topology):  # pylint: disable=redefined-outer-name
    # the topology-name rule of the pillar validation (_utils/mysqlrepl_config.py)
    if not __utils__["mysqlrepl_config.valid_name"](topology):
        raise SaltInvocationError(f"invalid topology name {topology!r}")
    return os.path.join(_state_dir(), f"{topology}.json")


def _lock_path(topology):  # pylint: disable=redefined-outer-name
    return os.path.join(_state_dir(), f"{topology}.lock")


def _read_lock_record(fd):
    """The lock file's record: a dict, or ``"unreadable"`` (empty, cut short, not JSON)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode())
    except ValueError:
        return "unreadable"
    return record if isinstance(record, dict) else "unreadable"


def _write_lock_record(fd, record):
    # the new bytes first, then cut to their length: never an empty file in between
    data = json.dumps(record).encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def _peek_locks():
    """
    Every topology's lock record as it is now, without taking any lock:
    ``{topology: record or "unreadable"}`` (a topology whose lock was never
    taken has no file and is not listed).
    """
    out = {}
    for entry in os.listdir(_state_dir()):
        if entry.endswith(".lock"):
            try:
                fd = os.open(os.path.join(_state_dir(), entry), os.O_RDONLY)
            except OSError:
                continue
            try:
                out[entry[:-len(".lock")]] = _read_lock_record(fd)
            finally:
                os.close(fd)
    return out


@contextlib.contextmanager
def _topology_lock(topology, operation):  # pylint: disable=redefined-outer-name
    """
    The topology's one lock (seed, switch, rejoin, record_set): an exclusive
    ``flock`` on ``<cachedir>/mysqlrepl/<topology>.lock`` held by this process
    for the whole operation; the kernel drops it if the process dies. A second
    operation fails at once, naming the one that holds it.

    The file keeps a record of its last holder: ``seq`` (one more at every
    taking), the operation, its pid, ``since``, and ``released`` once it let
    go (a holder that died holding it never wrote it). Yields ``{"previous":
    the record as the last holder left it (or "unreadable"), "created": True
    when this call made the file}`` (the switch decides with it whether facts
    read before the lock are still current).
    """
    path = _lock_path(topology)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
    except FileExistsError:
        fd = os.open(path, os.O_RDWR)
        created = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise CommandExecutionError(
                f"another mysqlrepl operation holds topology {topology}: {holder}") from None
        previous = None if created else _read_lock_record(fd)
        seq = previous.get("seq") if isinstance(previous, dict) else None
        mine = {"seq": (seq if isinstance(seq, int) else 0) + 1, "operation": operation,
                "pid": os.getpid(), "since": _now()}
        _write_lock_record(fd, mine)
        try:
            yield {"previous": previous, "created": created}
        finally:
            mine["released"] = _now()
            _write_lock_record(fd, mine)
    finally:
        os.close(fd)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------
# the master record (read by the formula's ext_pillar)
# ---------------------------------------------------------------------------

def _read_record(topology):  # pylint: disable=redefined-outer-name
    try:
        with open(_record_path(topology), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def _write_record(topology, record):  # pylint: disable=redefined-outer-name
    """Atomically and durably (the formula's one file writer, ``mysqlrepl_tls.write_atomic``: temp
    file, fsync, rename, fsync of the directory), 0600."""
    __utils__["mysqlrepl_tls.write_atomic"](_record_path(topology),
                                            json.dumps(record, indent=1, sort_keys=True), 0o600)


def _new_record(cfg, master, previous=None, switching=None, **extra):
    rec = {
        "topology": cfg["topology"],
        "master": master,
        "address": cfg["servers"][master]["address"],
        "port": cfg["servers"][master]["port"],
        "previous": previous,
        "since": _now(),
    }
    if switching:
        rec["switching"] = switching
    rec.update(extra)
    return rec


def record(topology=None):  # pylint: disable=redefined-outer-name
    """
    The master record of a topology: who the master is since the last switch
    (``mysqlrepl:master`` and ``infra:hosts_entries:masterdb`` in every minion's
    pillar come from it), or that none exists yet (the pillar files rule).

    CLI Example:

    .. code-block:: bash

        salt-run mysqlrepl.record
        salt-run mysqlrepl.record topology=production
    """
    try:
        # with the topology named, only the salt-master's own file is read
        name = topology or _topology(None, timeout=10)["topology"]
        rec = _read_record(name)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _fail({"result": False}, str(exc))
    if rec is None:
        if topology:
            # no record: a topology no minion has is a typo, not "the pillar files rule"
            try:
                _topology(name, timeout=10)
            except (CommandExecutionError, SaltInvocationError) as exc:
                return _fail({"result": False, "topology": name, "record": None},
                             f"no record for {name}, and no minion answers with that topology ({exc}): "
                             "check the name")
        return {"result": True, "topology": name, "record": None,
                "comment": f"no record for {name}: mysqlrepl:master in the pillar files rules"}
    comment = f"{name}: master is {rec['master']} ({rec['address']}) since {rec['since']}"
    if rec.get("switching"):
        sw = rec["switching"]
        comment += (f"; a switch from {sw.get('from')} to {sw.get('to')} is marked {sw.get('phase')} "
                    f"(jid {sw.get('jid')}): states leave replication alone. If no switch runs (salt-run "
                    "jobs.active), look at the servers (salt 'db*' mysqlrepl.status): name the one writable "
                    "server, or if none is writable the one whose gtid_binlog_pos is furthest, with "
                    "salt-run mysqlrepl.record_set master=<it>")
    return {"result": True, "topology": name, "record": rec, "comment": comment}


def record_set(master, topology=None, clear=False):  # pylint: disable=redefined-outer-name
    """
    Set the master record by hand (after a switch that stopped, or to return
    to the pillar files with ``clear=True``) and refresh the db minions'
    pillar. Changes no server: the next highstate makes the named master
    writable if it is the only candidate.

    CLI Example:

    .. code-block:: bash

        salt-run mysqlrepl.record_set master=db1
        salt-run mysqlrepl.record_set master=db1 clear=True
    """
    try:
        cfg = _topology(topology)
        if cfg.get("two_masters"):
            raise SaltInvocationError(_pair_refusal(cfg, "record_set"))
        if master not in cfg["servers"]:
            raise SaltInvocationError(f"unknown server {master!r}")
        with _topology_lock(cfg["topology"], "record_set"):
            # never name a master while another server takes writes, or while one is unknown
            states = _server_states(cfg)
            others = {n: st for n, st in states.items() if n != master}
            unknown = sorted(n for n, st in others.items() if st.get("reachable") is False)
            writable = sorted(n for n, st in others.items() if st.get("read_only") == "OFF")
            if unknown or writable:
                raise CommandExecutionError(
                    f"refusing to name {master} the master: "
                    + (f"{', '.join(writable)} is writable; " if writable else "")
                    + (f"{', '.join(unknown)} cannot be reached (its state is unknown); " if unknown else "")
                    + "nothing changed")
            if clear:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_record_path(cfg["topology"]))
            else:
                _write_record(cfg["topology"], _new_record(cfg, master, previous=cfg["master"], jid="manual"))
            _refresh_pillar(cfg)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _fail({"result": False}, str(exc))
    return record(cfg["topology"])


def _minions(cfg):
    return sorted({srv["minion"] for srv in cfg["servers"].values()})


def _refresh_pillar(cfg):
    minions = _minions(cfg)
    with _client() as client:
        res = client.cmd(minions, "saltutil.refresh_pillar", kwarg={"wait": True}, tgt_type="list", timeout=30)
    missing = [m for m in minions if res.get(m) is not True]
    if missing:
        raise CommandExecutionError(f"pillar refresh failed on {', '.join(missing)}: "
                                    f"{ {m: res.get(m) for m in missing} }")


def _parallel(calls, timeout=60):
    """``{key: (minion, fun, args, kwargs)}`` -> ``{key: (ok, result or error text)}``, run at once."""
    out = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        futures = {key: pool.submit(_call, m, f, a, k, timeout) for key, (m, f, a, k) in calls.items()}
        for key, fut in futures.items():
            try:
                out[key] = (True, fut.result())
            except (CommandExecutionError, SaltInvocationError) as exc:
                out[key] = (False, str(exc))
            except Exception as exc:  # pylint: disable=broad-except
                out[key] = (False, f"{type(exc).__name__}: {exc}")
    return out


def _per_server(cfg, names, fun, timeout):
    """
    ``fun`` (a mysqlrepl function taking ``servers=[...]``) on every named
    server, one job per minion: a minion owning several servers forks one
    job, not one per server. ``{name: (ok, result or error text)}``.
    """
    by_minion = {}
    for name in names:
        by_minion.setdefault(cfg["servers"][name]["minion"], []).append(name)
    most = max((len(ns) for ns in by_minion.values()), default=1)
    # one job reads its servers one after the other
    answers = _parallel({m: (m, fun, [], {"servers": ns}) for m, ns in by_minion.items()},
                        timeout=timeout + 2 * (most - 1))
    out = {}
    for minion, ns in by_minion.items():
        ok, res = answers[minion]
        for name in ns:
            got = res.get(name) if ok and isinstance(res, dict) else None
            if not ok:
                out[name] = (False, res)
            elif not isinstance(got, dict):
                out[name] = (False, f"{minion}: {fun} returned nothing for {name}")
            elif set(got) == {"error"}:
                out[name] = (False, f"{minion}: {fun}: {got['error']}")
            else:
                out[name] = (True, got)
    return out


# ---------------------------------------------------------------------------
# planned switchover (its rules: _utils/mysqlrepl_switchplan.py, its write
# block: _utils/mysqlrepl_switch.py)
# ---------------------------------------------------------------------------

def _plan_u(name):
    return __utils__[f"mysqlrepl_switchplan.{name}"]


def _server_states(cfg, names=None):
    """Role, read_only, link and TLS of every server, or of ``names`` (for the result)."""
    summary = _plan_u("server_summary")
    return {name: summary(ok, st) for name, (ok, st) in sorted(
        _per_server(cfg, cfg["servers"] if names is None else names, "mysqlrepl.status", 30).items())}


def _update_apps(topology, sls, out):  # pylint: disable=redefined-outer-name
    """
    App minions of the topology (pillar ``mysqlrepl_app:topology``) fetch the new
    record (``infra:hosts_entries:masterdb``) and apply ``sls``; runs beside the
    replicas' repointing so apps follow as soon as the new master takes writes.
    """
    tgt = f"I@mysqlrepl_app:topology:{topology}"
    started = time.monotonic()
    try:
        expected = set(salt.utils.minions.CkMinions(__opts__).check_minions(
            tgt, "compound", greedy=False).get("minions", []))
        if not expected:
            # said once, here: a LocalClient call would print "No minions matched the target" per call
            out.update(minions=[], failed={}, comment=f"no app minion (pillar mysqlrepl_app:topology: {topology})",
                       seconds=round(time.monotonic() - started, 3))
            return
        def cmd(fun, arg, kwarg, timeout):
            with _client() as client:
                return client.cmd(tgt, fun, arg, kwarg=kwarg, tgt_type="compound", timeout=timeout)

        # side by side: a state run compiles its own fresh pillar (the new record), and the
        # minions' in-memory pillar learns it for pillar.get and later jobs
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            refreshing = pool.submit(cmd, "saltutil.refresh_pillar", [], {"wait": True}, 30)
            applied = cmd("state.apply", [sls], {}, 120)
            out["applied_s"] = round(time.monotonic() - started, 3)
            refreshed = refreshing.result()
        failed = {m: f"pillar refresh: {refreshed.get(m, 'did not answer')}" for m in sorted(expected)
                  if refreshed.get(m) is not True}
        failed.update({m: "did not answer" for m in sorted(expected - set(applied))})
        for minion, states in applied.items():
            if not isinstance(states, dict):
                failed[minion] = str(states)
                continue
            bad = [st.get("comment") for st in states.values() if isinstance(st, dict) and st.get("result") is False]
            if bad:
                failed[minion] = "; ".join(map(str, bad))
        out.update(minions=sorted(applied), failed=failed, seconds=round(time.monotonic() - started, 3))
    except Exception as exc:  # pylint: disable=broad-except
        out.update(error=str(exc), seconds=round(time.monotonic() - started, 3))


def switch(new_master, topology=None, dry_run=False, hold_after=None, hold_s=5,  # pylint: disable=redefined-outer-name
           app_sls="mysqlrepl.app", critical_timeout=None, sync_tgt=None):
    """
    Planned switchover: make ``new_master`` the master of the topology with a
    write block of milliseconds and no lost row.

    1. Prechecks on every server (nothing changes if one fails; each failure
       names the check and the reason). Their facts are read beside the
       topology, one job per minion, and read again under the topology's lock
       when another operation held it meanwhile (``facts_read`` in the result).
    2. ``dry_run=True``: return the plan (steps, changes per server) and stop.
    3. The critical section, on the new master's minion in one call (see
       ``_utils/mysqlrepl_switch.py``): old master read-only within
       ``mysqlrepl:switch:lock_budget``, its GTID position, MASTER_GTID_WAIT
       on the new master, STOP SLAVE, new master writable.
    4. The master record names the new master (ext_pillar: ``mysqlrepl:master``
       and ``infra:hosts_entries:masterdb``); every db minion then runs one job
       (``mysqlrepl.switch_followers``) in which the new master forgets its old
       link, the old master is demoted (MASTER_DEMOTE_TO_SLAVE=1) and the other
       replicas are repointed over verified TLS with GTID, all of its servers at
       once, and each waits until it has caught up with the new master. Then the
       db minions' pillar is refreshed and every link is checked for TLS.

    Right after the record names the new master, the topology's app minions
    (pillar ``mysqlrepl_app:topology``) refresh their pillar and apply
    ``app_sls`` (default ``mysqlrepl.app``: the ``masterdb`` hosts entry),
    beside the replicas' repointing; ``app_sls=""`` leaves apps to the
    orchestration.

    Progress goes to the event bus as ``salt/mysqlrepl/switch/<step>``.
    ``hold_after``/``hold_s`` pause the critical section after a step (fault drills).
    ``sync_tgt`` (the orchestration passes its db target): first, before
    anything is read, ``sync_minions`` on those minions (synced only where
    their modules differ); a failed sync refuses the switch, nothing changed.
    ``critical_timeout``: how long to wait for the critical section's answer
    (default ``time_limits(...)["runner_s"]`` of ``_utils/mysqlrepl_switch.py``:
    the longest the block can take plus 20 s for connecting, 4 × (lock budget +
    catch-up timeout + hold) + 80 s; the minion aborts before changing
    anything if connecting left too little of it). When it does not
    come, the job is found (``saltutil.find_job``) and killed if it still
    runs before the servers' states decide the outcome: promoted if only the
    new master is writable, otherwise stopped with the record marked.

    CLI Example:

    .. code-block:: bash

        salt-run mysqlrepl.switch new_master=db2 dry_run=True
        salt-run mysqlrepl.switch new_master=db2
    """
    ret = {"result": False, "comment": "", "new_master": new_master, "prechecks": [], "timings": {},
           "started_at": time.time()}
    started = time.monotonic()
    # names this switch in the record, the events and the minions' calls
    jid = f"switch-{datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d%H%M%S%f')}-{os.getpid()}"
    ret["jid"] = jid
    try:
        # side by side: the minions' module check (a sync where they differ), the topology
        # read, and every server's facts for the prechecks (one job per minion). What a
        # minion answered from an old module is read again once it is synced; the facts
        # count only if the topology's lock record is the same under the lock as it was
        # here, before anything was read (early_facts), else they are read again.
        seen_locks, read_at = _peek_locks(), time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            reading = pool.submit(_topology, topology)
            facts = pool.submit(_local_facts, topology)
            if sync_tgt:
                ret["sync"] = _sync_minions(sync_tgt, "compound")
                ret["timings"]["sync_s"] = round(time.monotonic() - started, 3)
            try:
                cfg, error = reading.result(), None
            except (CommandExecutionError, SaltInvocationError) as exc:
                cfg, error = None, exc
            early = facts.result()
        if sync_tgt and ret["sync"]["synced"]:
            cfg, early = _topology(topology), None
        elif error is not None:
            raise error
        if new_master not in cfg["servers"]:
            raise SaltInvocationError(f"unknown server {new_master!r} (servers: {', '.join(sorted(cfg['servers']))})")
        if cfg.get("two_masters"):
            raise SaltInvocationError(_pair_refusal(cfg, "switch"))
        old = cfg["master"]
        if new_master == old:
            raise SaltInvocationError(f"{new_master} is already the master of record")
        ret["old_master"] = old
        with _topology_lock(cfg["topology"], f"switch to {new_master} (jid {jid})") as previous:
            early = _plan_u("early_facts")(cfg, early, seen_locks.get(cfg["topology"]), previous,
                                           time.monotonic() - read_at)
            return _switch_locked(cfg, old, new_master, bool(dry_run), jid, ret, started,
                                  {"after": hold_after, "seconds": float(hold_s)} if hold_after else None,
                                  app_sls, critical_timeout, early)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["timings"]["total_s"] = round(time.monotonic() - started, 3)
        return _fail(ret, str(exc))


def _tag(step):
    return f"switch/{step}"


def _since(t0):
    return round(time.monotonic() - t0, 3)


def _local_facts(topology):  # pylint: disable=redefined-outer-name
    """
    Every db minion's ``mysqlrepl.switch_facts local=True`` (its servers, the
    master of record last), one job each: ``{minion: answer}``, or ``None``
    when the call failed (the prechecks then read the facts themselves).
    """
    tgt = DEFAULT_TGT if not topology else f"( {DEFAULT_TGT} ) and I@mysqlrepl:topology:{topology}"
    try:
        with _client() as client:
            res = client.cmd(tgt, "mysqlrepl.switch_facts", kwarg={"local": True}, tgt_type="compound",
                             timeout=FACTS_TIMEOUT, full_return=True)
    except Exception:  # pylint: disable=broad-except
        return None
    return {m: out.get("ret") for m, out in res.items()
            if isinstance(out, dict) and out.get("retcode", 0) == 0 and isinstance(out.get("ret"), dict)}


def _switch_locked(cfg, old, new, dry_run, jid, ret, started, hold, app_sls,  # pylint: disable=too-many-arguments
                   critical_timeout=None, early=None):
    """The switch under the topology's lock, phase by phase; each phase returns what the next needs."""
    topo = cfg["topology"]
    pre = _phase_prechecks(cfg, old, new, jid, early)
    ret["facts_read"] = ("beside the topology, before the lock (no operation took it since)" if early
                         else "under the lock")
    ret["prechecks"] = pre["checks"]
    ret["timings"]["prechecks_s"] = _since(started)
    if pre["failed"]:
        return _fail(ret, "refused, nothing changed: " + "; ".join(
            f"[{c['check']}] {c['detail']}" for c in pre["failed"]))
    ret["plan"], ret["changes"] = pre["steps"], pre["changes"]
    if dry_run:
        ret["result"] = True
        ret["comment"] = f"dry run: every precheck passed; switching {old} -> {new} would do the plan; nothing changed"
        return ret

    # mark the switch in the record: states leave replication alone until it
    # ends (a state run compiles its pillar afresh, so no refresh is needed)
    base = _read_record(topo)
    switching = {"from": old, "to": new, "jid": jid, "since": _now(), "phase": "critical section"}
    _write_record(topo, _new_record(cfg, old, previous=(base or {}).get("previous"), switching=switching))
    ret["timings"]["prepare_s"] = _since(started)

    crit = _phase_critical(cfg, old, new, pre["events"], jid, hold, critical_timeout)
    ret["timings"]["critical_call_s"] = crit["call_s"]
    if crit["job"] is not None:
        ret["critical_job"] = crit["job"]
    answer = crit["answer"]
    ret["critical_section"] = answer
    if answer is None:
        # the minion's answer is missing and its job is over: the servers' states decide
        states = _server_states(cfg)
        ret["servers"] = states
        seen = _plan_u("lost_answer")(states, new)
        if not seen["promoted"]:
            return _stopped_unanswered(cfg, old, switching, crit, seen["seen"], ret)
        # once the new master is seen writable the job cannot undo it: promoted
        answer = {"outcome": "promoted", "steps": [], "block_ms": None, "pos": None,
                  "reason": f"{new} is writable (the minion's answer was lost: {crit['error']})"}
        ret["critical_section"] = answer
    ret["timings"]["block_ms"] = answer.get("block_ms")
    if answer["outcome"] != "promoted":
        return _not_promoted(cfg, old, base, switching, answer, jid, ret)
    _progress(f"{new} is writable (write block {answer.get('block_ms')} ms)", tag=_tag("critical/done"),
              jid=jid, block_ms=answer.get("block_ms"), pos=answer.get("pos"))

    after = _phase_followers(cfg, old, new, answer, pre["events"], jid, switching, app_sls)
    ret["repointed"] = after["repointed"]
    ret["timings"].update(after["timings"])
    if "apps" in after:
        ret["apps"] = after["apps"]
        ret["timings"]["apps_s"] = after["apps"].get("seconds")
    ret["servers"] = after["servers"]
    problems = after["problems"]
    ret["timings"]["total_s"] = _since(started)
    crit_ms = sum(s["ms"] for s in answer.get("steps", []))
    ret["timings"]["critical_share"] = round(crit_ms / 1000 / ret["timings"]["total_s"], 4)
    _progress(f"{new} is the master; replicas ready in {ret['timings']['replicas_ready_s']}s",
              tag=_tag("done"), jid=jid, problems=problems, timings=ret["timings"])
    if problems:
        return _fail(ret, f"{new} is the master (write block {answer.get('block_ms')} ms) but: "
                          + "; ".join(problems))
    ret["result"] = True
    ret["comment"] = (f"{new} is the master; write block {answer.get('block_ms')} ms; "
                      f"{len(after['repointed'])} replica(s) TLS-verified and caught up in "
                      f"{ret['timings']['replicas_ready_s']}s")
    return ret


def _phase_prechecks(cfg, old, new, jid, early=None):
    """
    Facts from every server (``early``: read before the lock, still current),
    the prechecks, and (when they pass) the plan; changes nothing.
    """
    _progress(f"prechecks for {old} -> {new}", tag=_tag("precheck/start"), old=old, new=new, jid=jid)
    def read(names):
        return {n: f for n, (_ok, f) in _per_server(cfg, names, "mysqlrepl.switch_facts", FACTS_TIMEOUT).items()}

    # every server in one round (a minion reads its own servers in the order given: the
    # old master last). The old master's gtid_binlog_state only grows, so a new master
    # found holding nothing beyond it holds nothing beyond it now either; but if the old
    # master was read before a replica applied a newer GTID, that replica looks errant:
    # then the old master is read again, after the others, and the checks decide on that.
    record = _read_record(cfg["topology"]) or {}
    facts = early or read([n for n in cfg["servers"] if n != old] + [old])
    checks = _plan_u("prechecks")(cfg, facts, old, new, record)
    if any(c["check"] == "no errant transactions" and not c["ok"] for c in checks):
        facts.update(read([old]))
        checks = _plan_u("prechecks")(cfg, facts, old, new, record)
    out = {"checks": checks, "failed": [c for c in checks if not c["ok"]]}
    if out["failed"]:
        _progress(f"prechecks failed: {'; '.join(c['check'] for c in out['failed'])}",
                  tag=_tag("precheck/failed"), failed=out["failed"], jid=jid)
        return out
    out["events"] = _plan_u("events_to_move")(facts, old, new)
    out["steps"], out["changes"] = _plan_u("plan")(cfg, old, new, out["events"])
    _progress("prechecks passed", tag=_tag("precheck/ok"), jid=jid)
    return out


def _phase_critical(cfg, old, new, events, jid, hold, critical_timeout):
    """
    The write block on the new master's minion, in one call. ``{"answer",
    "error", "job", "call_s"}``: with no answer, its job is settled (found,
    killed if it still runs) before anyone reads the servers, and an answer
    that reached the job cache late is taken.
    """
    _progress(f"critical section on {new}'s minion", tag=_tag("critical/start"), jid=jid)
    t0 = time.monotonic()
    minion = cfg["servers"][new]["minion"]
    crit_jid = salt.utils.jid.gen_jid(__opts__)
    if critical_timeout is None:
        critical_timeout = __utils__["mysqlrepl_switch.time_limits"](
            cfg["switch"]["lock_budget"], cfg["switch"]["catchup_timeout"], (hold or {}).get("seconds", 0))["runner_s"]
    critical_timeout = max(1, int(critical_timeout))
    out = {"answer": None, "error": None, "job": None}
    try:
        out["answer"] = _call(minion, "mysqlrepl.switch_critical", [old],
                              {"server": new, "events": events, "switch_jid": jid, "hold": hold,
                               "time_limit": critical_timeout},
                              timeout=critical_timeout, jid=crit_jid)
    except CommandExecutionError as exc:
        out["error"] = str(exc)
    out["call_s"] = _since(t0)
    if out["answer"] is None:
        job = _settle_job(minion, crit_jid, "mysqlrepl.switch_critical")
        out["job"] = job
        if isinstance(job["answer"], dict) and job["answer"].get("outcome"):
            out["answer"] = job["answer"]
        elif job["note"]:
            out["error"] = f"{out['error']}; {job['note']}"
    return out


def _stopped_unanswered(cfg, old, switching, crit, seen, ret):
    """No answer and the new master is not (alone) writable: stop, record marked."""
    switching["phase"] = f"stopped: {crit['error']}; {seen}"
    _write_record(cfg["topology"], _new_record(cfg, old, switching=switching))
    _progress("switch stopped", tag=_tag("stopped"), jid=switching["jid"], reason=switching["phase"])
    job = crit["job"] or {}
    gone = ("its job was killed and is gone" if job.get("killed") and job.get("ended") else
            "its job is over" if job.get("ended") else
            "make sure its job is gone (salt-run jobs.active)")
    return _fail(ret, f"stopped: the critical section did not answer ({crit['error']}); {seen}; {gone}; "
                      "the record marks the switch as stopped so states change nothing. Decide the "
                      f"master — {old} if it is the only writable one, otherwise the server whose "
                      "gtid_binlog_pos is furthest (salt 'db*' mysqlrepl.status) — then salt-run "
                      "mysqlrepl.record_set master=<it>")


def _not_promoted(cfg, old, base, switching, answer, jid, ret):
    """Aborted: the record as it was before the switch. Stopped: the record marks it."""
    topo = cfg["topology"]
    if answer["outcome"] == "aborted":
        if base is None:
            os.unlink(_record_path(topo))
        else:
            _write_record(topo, base)
    else:
        switching["phase"] = f"stopped: {answer['reason']}"
        _write_record(topo, _new_record(cfg, old, switching=switching))
    try:
        _refresh_pillar(cfg)
    except CommandExecutionError as exc:
        answer["reason"] += f" (and: {exc})"
    ret["servers"] = _server_states(cfg)
    _progress(f"switch {answer['outcome']}: {answer['reason']}", tag=_tag(answer["outcome"]), jid=jid,
              reason=answer["reason"])
    return _fail(ret, f"{answer['outcome']}: {answer['reason']}")


def _phase_followers(cfg, old, new, answer, events, jid, switching, app_sls):
    """
    After the window: the record names the new master; then, at once, the app
    minions follow it and every db minion runs one ``mysqlrepl.switch_followers``
    job (the new master forgets its link, the old master is demoted, the other
    replicas are repointed, all of a minion's servers in parallel, and each
    waits until it has caught up); then the record loses its switch mark, the
    db minions' pillar is refreshed and every link is checked for TLS.
    """
    topo = cfg["topology"]
    t0 = time.monotonic()
    timings = {}
    switching["phase"] = "repointing"
    _write_record(topo, _new_record(cfg, new, previous=old, switching=switching, pos=answer.get("pos")))
    timings["record_s"] = _since(t0)
    apps, apps_thread = {}, None
    if app_sls:
        apps_thread = threading.Thread(target=_update_apps, args=(topo, app_sls, apps), daemon=True)
        apps_thread.start()
    jobs, problems = _plan_u("follower_jobs")(cfg, old, new, answer.get("pos"), events)
    ready_timeout = cfg["switch"]["ready_timeout"]
    answers = _parallel({m: (m, "mysqlrepl.switch_followers", [new, jid],
                             {"servers": job["servers"], "finish": job["finish"], "ready_timeout": ready_timeout})
                         for m, job in jobs.items()},
                        timeout=cfg["replication"]["wait_timeout"] + ready_timeout + 60)
    got = _plan_u("follower_results")(jobs, answers, new)
    problems += got["problems"]
    # every replica's state as its job read it last; the new master's (its Binlog Dump
    # threads: every replica connected) and a server no job answered for are read below
    servers = {name: _plan_u("server_summary")(True, st) for name, st in got["states"].items()
               if isinstance(st, dict) and "error" not in st and name != new}
    unread = sorted(set(cfg["servers"]) - set(servers))
    # every server of each job ran at once: the repoint and catch-up time is the job's
    timings["repoint_s"] = timings["replicas_ready_s"] = _since(t0)
    _write_record(topo, _new_record(cfg, new, previous=old, pos=answer.get("pos"), jid=jid))
    _progress(f"replicas repointed to {new}", tag=_tag("repointed"), jid=jid, problems=problems)
    # the db minions' in-memory pillar learns the new record (their states compile a
    # fresh one anyway); beside it, the new master's state and any a follower job did not report
    t1 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        refresh = pool.submit(_refresh_pillar, cfg)
        if unread:
            servers.update(_server_states(cfg, unread))
            timings["server_states_s"] = _since(t1)
        try:
            refresh.result()
        except CommandExecutionError as exc:
            problems.append(str(exc))
    servers = dict(sorted(servers.items()))
    timings["pillar_refresh_s"] = _since(t1)
    for name, st in servers.items():
        if name != new and st.get("reachable", True) and not st.get("tls_verified"):
            problems.append(f"{name}: link to {new} not TLS-verified")
    out = {"repointed": got["repointed"], "servers": servers, "problems": problems, "timings": timings}
    if apps_thread is not None:
        apps_thread.join(180)
        out["apps"] = apps
        if apps.get("error") or apps.get("failed"):
            problems.append(f"app minions: {apps.get('error') or apps.get('failed')}")
    return out


def unpair(keep, topology=None, dry_run=False, catchup_timeout=None):  # pylint: disable=redefined-outer-name
    """
    End a two-master pair (seed 001), ``keep`` staying the only master: the
    other master is made read-only, ``keep`` applies everything it logged and
    forgets its link (see ``_utils/mysqlrepl_unpair.py``: steps, invariant),
    the master record names ``keep``, and the other master's replicas are
    repointed to ``keep``. The other master keeps replicating from ``keep``.

    First change pillar: ``master: <keep>`` instead of ``masters`` (and drop the
    servers' ``source``); point the other master's apps at ``keep``. Refused,
    nothing changed, when pillar still names a pair, when ``keep`` and the other
    do not replicate from each other, or when either cannot be read.
    ``dry_run=True``: say what would change and stop. ``catchup_timeout``:
    how long ``keep`` may take to apply the other's last transactions (default
    ``mysqlrepl:replication:wait_timeout``).

    CLI Example:

    .. code-block:: bash

        salt-run mysqlrepl.unpair keep=db1 dry_run=True
        salt-run mysqlrepl.unpair keep=db1
    """
    ret = {"result": False, "comment": "", "keep": keep}
    try:
        # the pillar was just edited: every db minion reads it afresh first
        tgt = DEFAULT_TGT if not topology else f"( {DEFAULT_TGT} ) and I@mysqlrepl:topology:{topology}"
        with _client() as client:
            client.cmd(tgt, "saltutil.refresh_pillar", kwarg={"wait": True}, tgt_type="compound", timeout=30)
        cfg = _topology(topology)
        if cfg.get("two_masters"):
            plan = __utils__["mysqlrepl_unpair.find_pair"](cfg, keep, {}, None)
            raise SaltInvocationError(plan["refusal"])
        if keep not in cfg["servers"]:
            raise SaltInvocationError(f"unknown server {keep!r}")
        # the pillar files must name keep; a record from the topology's one-master past
        # may still name another server (ext_pillar), unpair replaces it
        named = (cfg.get("record") or {}).get("pillar_master") or cfg["master"]
        if named != keep:
            raise SaltInvocationError(f"pillar names {named} the master (mysqlrepl:master), not {keep}: set "
                                      f"master: {keep} in pillar, or run with keep={named}; nothing changed")
        if cfg["master"] != keep:
            ret["stale_record"] = (f"the master record (from before the pair) named {cfg['master']}: "
                                   f"replaced by one naming {keep}")
        cfg = dict(cfg, master=keep)
        with _topology_lock(cfg["topology"], f"unpair, keeping {keep}"):
            states = {name: (res if ok else {"error": res}) for name, (ok, res) in
                      _per_server(cfg, sorted(cfg["servers"]), "mysqlrepl.status", 30).items()}
            plan = __utils__["mysqlrepl_unpair.find_pair"](
                cfg, keep, states, __utils__["mysqlrepl_replication.server_at"])
            if plan["result"] is False:
                raise CommandExecutionError(plan["refusal"])
            if plan["result"] is True:
                if ret.get("stale_record") and not dry_run:
                    _write_record(cfg["topology"], _new_record(cfg, keep, previous=None, jid="unpair"))
                    _refresh_pillar(cfg)
                ret.update(result=True, comment=plan["nothing"] + (f"; {ret['stale_record']}"
                                                                    if ret.get("stale_record") else ""))
                return ret
            other = plan["other"]
            ret.update(other=other, followers=plan["followers"])
            if dry_run:
                ret.update(result=None, comment=("would finish ending the pair: " if plan.get("finish")
                                                 else "would end the pair: ") + plan["comment"])
                return ret
            if not plan.get("finish"):
                _progress(f"ending the pair {keep}/{other}: {other} read-only, {keep} catching up")
                catchup = float(catchup_timeout or cfg["replication"]["wait_timeout"])
                crit = _call(cfg["servers"][keep]["minion"], "mysqlrepl.unpair_critical", [other],
                             {"server": keep, "catchup_timeout": catchup}, timeout=int(catchup + 60))
                ret["critical"] = crit
                if crit.get("outcome") != "unpaired":
                    raise CommandExecutionError(f"{crit.get('outcome')}: {crit.get('reason')}")
            _write_record(cfg["topology"], _new_record(cfg, keep, previous=None, unpaired=other, jid="unpair"))
            _refresh_pillar(cfg)
            _progress(f"{keep} is the only master; repointing {', '.join(plan['followers']) or 'no replica'}")
            repointed = _parallel({name: (cfg["servers"][name]["minion"], "mysqlrepl.replication_apply", [name],
                                          {"master": keep, "repoint_from": other})
                                   for name in plan["followers"]},
                                  timeout=cfg["replication"]["wait_timeout"] + 60)
            ret["repointed"] = {n: (res if ok else {"result": False, "comment": res}) for n, (ok, res)
                                in repointed.items()}
            failed = {n: r.get("comment") for n, r in ret["repointed"].items() if not r.get("result")}
            ret["servers"] = _server_states(cfg)
            if failed:
                raise CommandExecutionError(f"the pair is ended ({keep} is the only master, {other} is read-only "
                                            f"and replicates from it) but repointing failed: {failed}; run the "
                                            "highstate on them")
            ret.update(result=True, comment=f"{keep} is the only master: {plan['comment']}")
            return ret
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _fail(ret, str(exc))


def rejoin(server, topology=None):  # pylint: disable=redefined-outer-name
    """
    Bring a former master back as a replica of the master of record (after a
    switch that could not demote it, e.g. it was down): refused when it holds
    transactions the master lacks (errant GTIDs, by MariaDB's rules), else
    ``CHANGE MASTER ... MASTER_DEMOTE_TO_SLAVE=1`` over verified TLS.

    CLI Example:

    .. code-block:: bash

        salt-run mysqlrepl.rejoin server=db1
    """
    try:
        cfg = _topology(topology)
        if cfg.get("two_masters"):
            raise SaltInvocationError(_pair_refusal(cfg, "rejoin"))
        if server not in cfg["servers"] or server == cfg["master"]:
            raise SaltInvocationError(f"{server!r} is not a replica of the topology")
        with _topology_lock(cfg["topology"], f"rejoin {server}"):
            master = cfg["master"]
            got = _per_server(cfg, [server, master], "mysqlrepl.switch_facts", 30)
            for name, (ok, res) in got.items():
                if not ok:
                    raise CommandExecutionError(f"{name}: {res}")
            errant = __utils__["mysqlrepl_switch.errant_gtids"](got[server][1]["gtid"]["binlog_state"],
                                                                got[master][1]["gtid"]["binlog_state"])
            if errant:
                raise CommandExecutionError(
                    f"{server} has transactions {master} lacks: {', '.join(errant)}; it cannot rejoin as is "
                    f"(re-seed it: salt-run mysqlrepl.seed replica={server} force=True); nothing changed")
            if got[server][1]["variables"]["read_only"] != "ON":
                raise CommandExecutionError(f"{server} is writable: make sure no app writes there, set it "
                                            "read-only, then rejoin; nothing changed")
            res = _call(cfg["servers"][server]["minion"], "mysqlrepl.replication_apply", [server],
                        {"demote": True}, timeout=cfg["replication"]["wait_timeout"] + 60)
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _fail({"result": False}, str(exc))
    if not res.get("result"):
        return _fail(dict(res), res.get("comment"))
    return res
