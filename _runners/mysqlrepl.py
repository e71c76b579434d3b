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
import datetime
import fcntl
import json
import logging
import os
import re
import threading
import time

import salt.client
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
        __jid_event__.fire_event({"message": message}, "progress")
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


def _seed(cfg, replica, force, timeout, ret):
    master = cfg["servers"][cfg["master"]]
    timeout = int(timeout or cfg["seed"]["timeout"])
    if replica is not None and replica not in cfg["servers"]:
        return _fail(ret, f"unknown server {replica!r}")
    if replica == cfg["master"]:
        return _fail(ret, f"{replica} is the master of record")
    names = [replica] if replica else sorted(n for n in cfg["servers"] if n != cfg["master"])
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
        try:
            outcome["send"] = _call(master["minion"], "mysqlrepl.seed_send", [],
                                    {"to": name, "server": master["name"], "timeout": timeout},
                                    timeout=timeout + 60)
        except CommandExecutionError as exc:
            outcome["send_error"] = str(exc)
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

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _state_dir():
    path = os.path.join(__opts__["cachedir"], "mysqlrepl")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _record_path(topology):  # pylint: disable=redefined-outer-name
    if not _NAME_RE.match(topology or ""):
        raise SaltInvocationError(f"invalid topology name {topology!r}")
    return os.path.join(_state_dir(), f"{topology}.json")


@contextlib.contextmanager
def _topology_lock(topology, operation):  # pylint: disable=redefined-outer-name
    """
    The topology's one lock (seed, switch): an exclusive ``flock`` on
    ``<cachedir>/mysqlrepl/<topology>.lock`` held by this process for the whole
    operation; the kernel drops it if the process dies. A second operation
    fails at once, naming the one that holds it.
    """
    path = os.path.join(_state_dir(), f"{topology}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise CommandExecutionError(
                f"another mysqlrepl operation holds topology {topology}: {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"operation": operation, "pid": os.getpid(),
                                  "since": _now()}).encode(), 0)
        yield
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
    """Atomically: write a temp file, fsync, rename, fsync the directory."""
    path = _record_path(topology)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


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
# planned switchover
# ---------------------------------------------------------------------------

def _check(checks, name, ok, detail):
    checks.append({"check": name, "ok": bool(ok), "detail": detail})


def _prechecks(cfg, facts, old, new, record):
    """
    Every precheck, each with its name and reason; nothing is changed by any of
    them. ``record``: the master record file's content (``{}`` when none).
    """
    checks = []
    unreachable = {n: f for n, f in facts.items() if not isinstance(f, dict)}
    _check(checks, "reachable", not unreachable,
           "every server answered" if not unreachable else
           "; ".join(f"{n}: {err}" for n, err in sorted(unreachable.items())))
    # the record file itself, not the minions' copy of it
    sw_rec = record.get("switching")
    if sw_rec:
        _check(checks, "no switch in progress", False,
               f"the master record marks a switch from {sw_rec.get('from')} to {sw_rec.get('to')} as "
               f"{sw_rec.get('phase')}: see salt-run mysqlrepl.record")
    elif record.get("master") and record["master"] != old:
        _check(checks, "no switch in progress", False,
               f"the master record names {record['master']} but the minions' pillar names {old}: "
               "refresh the db minions' pillar (saltutil.refresh_pillar)")
    else:
        _check(checks, "no switch in progress", True, "none")
    if new not in facts or old not in facts or not isinstance(facts[new], dict) \
            or not isinstance(facts[old], dict):
        return checks
    fn, fo = facts[new], facts[old]
    srv_old = cfg["servers"][old]
    sw = cfg["switch"]
    # versions
    flavors = {n: f["version"][0] for n, f in facts.items() if isinstance(f, dict)}
    # 10.11: READ_ONLY ADMIN is the only bypass of read_only (SUPER still was before),
    # MASTER_DEMOTE_TO_SLAVE exists (10.10+)
    not_maria = sorted(n for n, f in facts.items() if isinstance(f, dict)
                       and (flavors[n] != "mariadb" or tuple(f["version"][1][:2]) < (10, 11)))
    newer = sorted(n for n, f in facts.items() if isinstance(f, dict) and n != new
                   and tuple(f["version"][1][:2]) < tuple(fn["version"][1][:2]))
    _check(checks, "versions compatible", not not_maria and not newer,
           "all MariaDB; no replica older than the new master" if not not_maria and not newer else
           (f"the switch supports MariaDB only (not: {', '.join(not_maria)})" if not_maria else
            f"{', '.join(newer)} run an older MariaDB than {new} "
            f"({'.'.join(map(str, fn['version'][1]))}): a replica must not be older than its master"))
    # the new master replicates from the old one, over verified TLS, caught up
    rs = fn["replica"]
    if rs is None:
        _check(checks, "new master replicates from the current master", False,
               f"{new} replicates from nobody")
    else:
        problems = []
        if (rs["host"], rs["port"]) != (srv_old["address"], srv_old["port"]):
            problems.append(f"it replicates from {rs['host']}:{rs['port']}, not {old} "
                            f"({srv_old['address']}:{srv_old['port']})")
        if rs["io_running"] != "Yes" or rs["sql_running"] != "Yes":
            problems.append(f"IO thread {rs['io_running']}, SQL thread {rs['sql_running']}"
                            + (f" ({rs['last_sql_errno']}: {rs['last_sql_error']})" if rs["last_sql_errno"] else "")
                            + (f" ({rs['last_io_errno']}: {rs['last_io_error']})" if rs["last_io_errno"] else ""))
        if rs["ssl_allowed"] != "Yes" or rs["ssl_verify_server_cert"] != "Yes":
            problems.append(f"TLS {rs['ssl_allowed']}, server certificate verified {rs['ssl_verify_server_cert']}")
        if rs["using_gtid"] not in ("Slave_Pos", "Current_Pos"):
            problems.append(f"not using GTID ({rs['using_gtid']})")
        _check(checks, "new master replicates from the current master", not problems,
               f"{new} replicates from {old} over verified TLS, both threads running" if not problems
               else f"{new}: " + "; ".join(problems))
        lag = rs["seconds_behind"]
        lag_ok = lag is not None and int(lag) <= sw["max_lag"]
        _check(checks, "lag", lag_ok, (f"{new} is {lag}s behind {old}" if lag is not None else
                                       f"{new}'s lag is unknown (a replication thread is stopped)")
               + f" (limit {sw['max_lag']}s, mysqlrepl:switch:max_lag)")
    others = sorted(n for n in facts if n not in (old, new) and isinstance(facts[n], dict))
    stuck = []
    for name in others:
        ors = facts[name]["replica"]
        if ors is None or (ors["host"], ors["port"]) != (srv_old["address"], srv_old["port"]):
            stuck.append(f"{name} does not replicate from {old}")
        elif ors["io_running"] != "Yes" or ors["sql_running"] != "Yes":
            stuck.append(f"{name}: IO thread {ors['io_running']}, SQL thread {ors['sql_running']}")
    _check(checks, "other replicas replicate from the current master", not stuck,
           "; ".join(stuck) if stuck else (f"replicating from {old}: {', '.join(others)}" if others else "none"))
    # the other replicas will ask the new master for what follows their position
    kept = fn.get("binlogs") or {}
    purged = []
    for name in others:
        pos = facts[name]["gtid"]["slave_pos"]
        for domain, have, first in __utils__["mysqlrepl_switch.purged_domains"](pos, kept.get("start_state")):
            at = f"seq {have}" if have is not None else "no position"
            purged.append(f"{name} is at {at} in domain {domain}, but {new}'s oldest binary log "
                          f"{kept.get('oldest')} starts after seq {first}")
    _check(checks, "replicas' positions still in the new master's binary logs", not purged,
           ("none" if not others else f"{new} has no binary logs to read (see the binary log check)"
            if not kept else f"{new} keeps the binary logs the other replicas need") if not purged else
           "; ".join(purged) + f" ({new} purged them; they would stop with error 1236: re-seed them after the "
           "switch, or keep binary logs longer: expire_logs_days / binlog_expire_logs_seconds)")
    v = fn["variables"]
    _check(checks, "binary log", v.get("log_bin") == "ON" and v.get("log_slave_updates") == "ON",
           f"{new}: log_bin {v.get('log_bin')}, log_slave_updates {v.get('log_slave_updates')} "
           "(both needed so the other replicas can follow it)")
    missing = []
    if not fn["repl_account"]:
        missing.append(f"replication account {cfg['replication']['user']} missing on {new}")
    if fn["tls_missing"]:
        missing.append(f"TLS files missing on {new}: {', '.join(fn['tls_missing'])}")
    if not cfg["admin"].get("password"):
        missing.append("mysqlrepl:admin:password is not set (the switch's admin account)")
    elif not fo["admin_account"]:
        missing.append(f"admin account {cfg['admin']['user']} (REQUIRE X509) missing on {old}: "
                       "apply mysqlrepl.server there")
    _check(checks, "accounts and certificates", not missing, "present" if not missing else "; ".join(missing))
    errant = __utils__["mysqlrepl_switch.errant_gtids"](fn["gtid"]["binlog_state"], fo["gtid"]["binlog_state"])
    _check(checks, "no errant transactions", not errant,
           f"{new}'s gtid_binlog_state holds nothing {old} lacks" if not errant else
           f"{new} has transactions {old} never had: {', '.join(errant)} "
           "(by MariaDB's rules: (domain, server_id) sequences beyond the old master's gtid_binlog_state)")
    # the old master: nothing that would hold read_only up or write through it
    if fo["variables"].get("read_only") != "OFF":
        _check(checks, "old master writable", False, f"{old} is already read-only")
    if fn["variables"].get("read_only") != "ON":
        _check(checks, "new master read-only", False, f"{new} is writable: two writable servers already")
    long_trx = [t for t in fo["transactions"]
                if t["age_s"] >= sw["long_trx_seconds"] or t["rows_modified"] >= sw["large_trx_rows"]]
    _check(checks, "no long or large transactions", not long_trx,
           "none" if not long_trx else "; ".join(
               f"{old}: connection {t['id']} ({t['user']}) open {t['age_s']}s, {t['rows_modified']} rows changed"
               for t in long_trx) + f" (limits {sw['long_trx_seconds']}s / {sw['large_trx_rows']} rows)")
    locks = fo["locks"]
    lock_text = "; ".join(
        f"connection {lk['id']} ({lk['user']}) holds {lk['mode']}"
        + (f" on {lk['db']}.{lk['tbl']}" if lk.get("tbl") else "") for lk in locks)
    _check(checks, "no locks holding read_only up", not locks,
           (f"{old}: {lock_text}" if locks else "none") + (f" ({fo['locks_note']})" if fo["locks_note"] else ""))
    leases = [n for n, f in facts.items() if isinstance(f, dict) and f["lease"]]
    _check(checks, "no mysqlrepl.lock lease", not leases,
           "none" if not leases else f"mysqlrepl.lock holds {', '.join(leases)}: run mysqlrepl.unlock first")
    bypass = fo["bypass_accounts"]
    _check(checks, "no app user can write through read_only", not bypass,
           "none" if not bypass else f"{old}: " + "; ".join(f"{a}: {how}" for a, how in sorted(bypass.items()))
           + " (revoke it, or list real admin accounts in mysqlrepl:switch:admin_users)")
    bad_events = [e for e in fo["events"] if e["status"] == "ENABLED" and e["bypass"]]
    _check(checks, "no event can write through read_only", not bad_events,
           "none" if not bad_events else f"{old}: " + "; ".join(
               f"event {e['db']}.{e['name']} runs as {e['definer']} ({e['bypass']})" for e in bad_events))
    return checks


def _events_to_move(facts, old, new):
    """Events enabled on the old master that the new one holds disabled (replicated): enable them there."""
    enabled = {(e["db"], e["name"]) for e in facts[old]["events"] if e["status"] == "ENABLED"}
    return sorted([e["db"], e["name"]] for e in facts[new]["events"]
                  if (e["db"], e["name"]) in enabled and e["status"] != "ENABLED")


def _plan(cfg, old, new, events):
    sw = cfg["switch"]
    replicas = sorted(n for n in cfg["servers"] if n not in (old, new))
    srv_new = cfg["servers"][new]
    steps = [
        f"{old}: SET STATEMENT lock_wait_timeout={sw['lock_budget']} FOR SET GLOBAL read_only=1 "
        f"(writes block from here; past {sw['lock_budget']}s the switch aborts with nothing changed)",
        f"{old}: read @@gtid_binlog_pos",
        f"{new}: MASTER_GTID_WAIT(<that position>, {sw['catchup_timeout']})",
        f"{new}: STOP SLAVE",
        f"{new}: SET GLOBAL read_only=0 (writes resume on {new})",
    ]
    steps += [f"{new}: ALTER EVENT {db}.{name} ENABLE" for db, name in events]
    if sw["kill_app_sessions"]:
        steps.append(f"{old}: KILL the app sessions left (mysqlrepl:switch:kill_app_sessions)")
    steps += [
        f"master record: master={new} (pillar mysqlrepl:master; apps' infra:hosts_entries:masterdb="
        f"{srv_new['address']})",
        f"{new}: RESET SLAVE ALL",
        f"{old}: CHANGE MASTER TO {srv_new['address']}:{srv_new['port']} (verified TLS, GTID) "
        "MASTER_DEMOTE_TO_SLAVE=1; START SLAVE; enabled events DISABLE ON SLAVE",
    ]
    steps += [f"{r}: CHANGE MASTER TO {srv_new['address']}:{srv_new['port']} (verified TLS, GTID slave_pos); "
              "START SLAVE" for r in replicas]
    steps.append(f"wait until {', '.join([old] + replicas)} run from {new}, TLS-verified, caught up")
    changes = {old: {"read_only": "OFF -> ON", "replicates from": f"nobody -> {new}"},
               new: {"read_only": "ON -> OFF", "replicates from": f"{old} -> nobody"}}
    for r in replicas:
        changes[r] = {"replicates from": f"{old} -> {new}"}
    if events:
        changes[new]["events enabled"] = [f"{db}.{name}" for db, name in events]
    return steps, changes


def _server_states(cfg):
    """Role, read_only, link and TLS of every server (for the result)."""
    out = {}
    for name, (ok, st) in sorted(_per_server(cfg, cfg["servers"], "mysqlrepl.status", 30).items()):
        if not ok:
            out[name] = {"reachable": False, "error": st}
            continue
        rs = st["replica"]
        out[name] = {
            "read_only": st["variables"].get("read_only"),
            "gtid_binlog_pos": st["gtid"]["binlog_pos"],
            "replicates_from": None if rs is None else f"{rs['host']}:{rs['port']}",
            "threads": None if rs is None else f"IO {rs['io_running']}, SQL {rs['sql_running']}",
            "tls_verified": None if rs is None else (rs["ssl_allowed"] == "Yes"
                                                      and rs["ssl_verify_server_cert"] == "Yes"),
            "binlog_dump_ciphers": [d.get("cipher") for d in st.get("binlog_dumps") or []],
        }
    return out


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
        with _client() as client:
            # a state run compiles its own fresh pillar (the new record): apply first, then
            # refresh the minions' in-memory pillar for pillar.get and later jobs
            applied = client.cmd(tgt, "state.apply", [sls], tgt_type="compound", timeout=120)
            out["applied_s"] = round(time.monotonic() - started, 3)
            refreshed = client.cmd(tgt, "saltutil.refresh_pillar", kwarg={"wait": True}, tgt_type="compound",
                                   timeout=30)
        failed = {m: f"pillar refresh: {r}" for m, r in refreshed.items() if r is not True}
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
           app_sls="mysqlrepl.app", critical_timeout=None):
    """
    Planned switchover: make ``new_master`` the master of the topology with a
    write block of milliseconds and no lost row.

    1. Prechecks on every server (nothing changes if one fails; each failure
       names the check and the reason).
    2. ``dry_run=True``: return the plan (steps, changes per server) and stop.
    3. The critical section, on the new master's minion in one call (see
       ``_utils/mysqlrepl_switch.py``): old master read-only within
       ``mysqlrepl:switch:lock_budget``, its GTID position, MASTER_GTID_WAIT
       on the new master, STOP SLAVE, new master writable.
    4. The master record names the new master (ext_pillar: ``mysqlrepl:master``
       and ``infra:hosts_entries:masterdb``), pillars are refreshed, the old
       master is demoted (MASTER_DEMOTE_TO_SLAVE=1) and the other replicas are
       repointed in parallel over verified TLS with GTID; the switch waits until
       every replica runs and has caught up.

    Right after the record names the new master, the topology's app minions
    (pillar ``mysqlrepl_app:topology``) refresh their pillar and apply
    ``app_sls`` (default ``mysqlrepl.app``: the ``masterdb`` hosts entry),
    beside the replicas' repointing; ``app_sls=""`` leaves apps to the
    orchestration.

    Progress goes to the event bus as ``salt/mysqlrepl/switch/<step>``.
    ``hold_after``/``hold_s`` pause the critical section after a step (fault drills).
    ``critical_timeout``: how long to wait for the critical section's answer
    (default: the longest the block can take, about 2 × (lock budget +
    catch-up timeout + hold) + 110 s; the minion aborts before changing
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
        cfg = _topology(topology)
        if new_master not in cfg["servers"]:
            raise SaltInvocationError(f"unknown server {new_master!r} (servers: {', '.join(sorted(cfg['servers']))})")
        old = cfg["master"]
        if new_master == old:
            raise SaltInvocationError(f"{new_master} is already the master of record")
        ret["old_master"] = old
        with _topology_lock(cfg["topology"], f"switch to {new_master} (jid {jid})"):
            return _switch_locked(cfg, old, new_master, bool(dry_run), jid, ret, started,
                                  {"after": hold_after, "seconds": float(hold_s)} if hold_after else None,
                                  app_sls, critical_timeout)
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["timings"]["total_s"] = round(time.monotonic() - started, 3)
        return _fail(ret, str(exc))


def _tag(step):
    return f"switch/{step}"


def _switch_locked(cfg, old, new, dry_run, jid, ret, started, hold, app_sls,  # pylint: disable=too-many-arguments
                   critical_timeout=None):
    topo = cfg["topology"]
    _progress(f"prechecks for {old} -> {new}", tag=_tag("precheck/start"), old=old, new=new, jid=jid)
    # the old master last: its gtid_binlog_state must be read after the others'
    # (or a replica that applied a newer GTID would look errant)
    others = [n for n in cfg["servers"] if n != old]
    facts = {n: f for n, (_ok, f) in _per_server(cfg, others, "mysqlrepl.switch_facts", FACTS_TIMEOUT).items()}
    facts.update({n: f for n, (_ok, f) in _per_server(cfg, [old], "mysqlrepl.switch_facts",
                                                       FACTS_TIMEOUT).items()})
    checks = _prechecks(cfg, facts, old, new, _read_record(topo) or {})
    ret["prechecks"] = checks
    failed = [c for c in checks if not c["ok"]]
    ret["timings"]["prechecks_s"] = round(time.monotonic() - started, 3)
    if failed:
        _progress(f"prechecks failed: {'; '.join(c['check'] for c in failed)}", tag=_tag("precheck/failed"),
                  failed=failed, jid=jid)
        return _fail(ret, "refused, nothing changed: " + "; ".join(
            f"[{c['check']}] {c['detail']}" for c in failed))
    events = _events_to_move(facts, old, new)
    steps, changes = _plan(cfg, old, new, events)
    ret["plan"] = steps
    ret["changes"] = changes
    _progress("prechecks passed", tag=_tag("precheck/ok"), jid=jid)
    if dry_run:
        ret["result"] = True
        ret["comment"] = f"dry run: every precheck passed; switching {old} -> {new} would do the plan; nothing changed"
        return ret

    # mark the switch in the record: states leave replication alone until it
    # ends (a state run compiles its pillar afresh, so no refresh is needed)
    base = _read_record(topo)
    switching = {"from": old, "to": new, "jid": jid, "since": _now(), "phase": "critical section"}
    _write_record(topo, _new_record(cfg, old, previous=(base or {}).get("previous"), switching=switching))
    ret["timings"]["prepare_s"] = round(time.monotonic() - started, 3)

    _progress(f"critical section on {new}'s minion", tag=_tag("critical/start"), jid=jid)
    t_crit = time.monotonic()
    crit_error = None
    crit_minion = cfg["servers"][new]["minion"]
    crit_jid = salt.utils.jid.gen_jid(__opts__)
    if critical_timeout is None:
        critical_timeout = __utils__["mysqlrepl_switch.time_limits"](
            cfg["switch"]["lock_budget"], cfg["switch"]["catchup_timeout"], (hold or {}).get("seconds", 0))["runner_s"]
    critical_timeout = max(1, int(critical_timeout))
    try:
        crit = _call(crit_minion, "mysqlrepl.switch_critical", [old],
                     {"server": new, "events": events, "switch_jid": jid, "hold": hold,
                      "time_limit": critical_timeout},
                     timeout=critical_timeout, jid=crit_jid)
    except CommandExecutionError as exc:
        crit, crit_error = None, str(exc)
    ret["timings"]["critical_call_s"] = round(time.monotonic() - t_crit, 3)
    if crit is None:
        # the answer is missing: the job must be over before the states are read
        job = _settle_job(crit_minion, crit_jid, "mysqlrepl.switch_critical")
        ret["critical_job"] = job
        if isinstance(job["answer"], dict) and job["answer"].get("outcome"):
            crit = job["answer"]
        elif job["note"]:
            crit_error = f"{crit_error}; {job['note']}"
    ret["critical_section"] = crit
    if crit is None:
        # the minion's answer is missing: find out where things stand before deciding
        states = _server_states(cfg)
        ret["servers"] = states
        writable = sorted(n for n, st in states.items() if st.get("read_only") == "OFF")
        unknown = sorted(n for n, st in states.items() if st.get("reachable") is False)
        # once the new master is seen writable the job cannot undo it: promoted
        if writable == [new] and not unknown:
            crit = {"outcome": "promoted", "reason": f"{new} is writable (the minion's answer was lost: {crit_error})",
                    "steps": [], "block_ms": None, "pos": None}
            ret["critical_section"] = crit
        else:
            seen = (f"writable now: {', '.join(writable) or 'none'}"
                    + (f"; unknown (unreachable): {', '.join(unknown)}" if unknown else ""))
            switching["phase"] = f"stopped: {crit_error}; {seen}"
            _write_record(topo, _new_record(cfg, old, switching=switching))
            _progress("switch stopped", tag=_tag("stopped"), jid=jid, reason=switching["phase"])
            gone = ("its job was killed and is gone" if job.get("killed") and job.get("ended") else
                    "its job is over" if job.get("ended") else
                    "make sure its job is gone (salt-run jobs.active)")
            return _fail(ret, f"stopped: the critical section did not answer ({crit_error}); {seen}; {gone}; "
                              "the record marks the switch as stopped so states change nothing. Decide the "
                              f"master — {old} if it is the only writable one, otherwise the server whose "
                              "gtid_binlog_pos is furthest (salt 'db*' mysqlrepl.status) — then salt-run "
                              "mysqlrepl.record_set master=<it>")
    ret["timings"]["block_ms"] = crit.get("block_ms")
    if crit["outcome"] != "promoted":
        if crit["outcome"] == "aborted":
            # back to the record as it was before the switch
            if base is None:
                os.unlink(_record_path(topo))
            else:
                _write_record(topo, base)
        else:
            switching["phase"] = f"stopped: {crit['reason']}"
            _write_record(topo, _new_record(cfg, old, switching=switching))
        try:
            _refresh_pillar(cfg)
        except CommandExecutionError as exc:
            crit["reason"] += f" (and: {exc})"
        ret["servers"] = _server_states(cfg)
        _progress(f"switch {crit['outcome']}: {crit['reason']}", tag=_tag(crit["outcome"]), jid=jid,
                  reason=crit["reason"])
        return _fail(ret, f"{crit['outcome']}: {crit['reason']}")
    _progress(f"{new} is writable (write block {crit.get('block_ms')} ms)", tag=_tag("critical/done"),
              jid=jid, block_ms=crit.get("block_ms"), pos=crit.get("pos"))

    # after the window: the record names the new master, then everyone follows it
    switching["phase"] = "repointing"
    _write_record(topo, _new_record(cfg, new, previous=old, switching=switching, pos=crit.get("pos")))
    t_after = time.monotonic()
    problems = []
    apps = {}
    apps_thread = None
    if app_sls:
        apps_thread = threading.Thread(target=_update_apps, args=(topo, app_sls, apps), daemon=True)
        apps_thread.start()
    # in parallel: the new master forgets its old link, the old master is
    # demoted, the other replicas follow (the new master is passed explicitly:
    # no pillar refresh needed first)
    calls = {}
    for name, srv in cfg["servers"].items():
        if name == new:
            continue
        kw = {"master": new, "switch_jid": jid}
        if name == old:
            if not crit.get("pos"):
                # the block's answer was lost: the position read from the old master is
                # unknown, so nothing proves it wrote nothing after it; rejoin checks that
                problems.append(f"{old} not demoted: the write block's answer was lost, so its position at "
                                f"read_only time is unknown; it stays read-only and not replicating: run "
                                f"salt-run mysqlrepl.rejoin server={old}"
                                + (f"; and check events {events} are enabled on {new}" if events else ""))
                continue
            kw["demote"] = True
            kw["demote_at"] = crit["pos"]
        else:
            kw["repoint_from"] = old
        calls[name] = (srv["minion"], "mysqlrepl.replication_apply", [name], kw)
    replicas = sorted(calls)
    calls["(finish)"] = (cfg["servers"][new]["minion"], "mysqlrepl.switch_finish_new", [new], {})
    repointed = _parallel(calls, timeout=cfg["replication"]["wait_timeout"] + 60)
    ok, fin = repointed.pop("(finish)")
    if not ok:
        problems.append(f"{new}: RESET SLAVE ALL failed: {fin}")
    ret["repointed"] = {}
    for name, (ok, res) in sorted(repointed.items()):
        if not ok or not res.get("result"):
            problems.append(f"{name}: {res if not ok else res.get('comment')}")
        ret["repointed"][name] = res if ok else {"result": False, "comment": res}
    _write_record(topo, _new_record(cfg, new, previous=old, pos=crit.get("pos"), jid=jid))
    ret["timings"]["repoint_s"] = round(time.monotonic() - t_after, 3)
    _progress(f"replicas repointed to {new}", tag=_tag("repointed"), jid=jid, problems=problems)

    # wait until every replica has caught up with the new master; meanwhile
    # the db minions' in-memory pillar learns the new record
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        refresh = pool.submit(_refresh_pillar, cfg)
        try:
            pos = fin["pos"] if ok else _call(cfg["servers"][new]["minion"], "mysqlrepl.gtid_position", [new])
            waits = _parallel({n: (cfg["servers"][n]["minion"], "mysqlrepl.wait_for_gtid", [pos],
                                   {"server": n, "timeout": cfg["switch"]["ready_timeout"]})
                               for n in replicas}, timeout=cfg["switch"]["ready_timeout"] + 30)
            for name, (wok, res) in sorted(waits.items()):
                if not wok:
                    problems.append(f"{name} did not catch up with {new}: {res}")
        except CommandExecutionError as exc:
            problems.append(f"cannot read {new}'s position: {exc}")
        try:
            refresh.result()
        except CommandExecutionError as exc:
            problems.append(str(exc))
    ret["timings"]["replicas_ready_s"] = round(time.monotonic() - t_after, 3)
    if apps_thread is not None:
        apps_thread.join(180)
        ret["apps"] = apps
        ret["timings"]["apps_s"] = apps.get("seconds")
        if apps.get("error") or apps.get("failed"):
            problems.append(f"app minions: {apps.get('error') or apps.get('failed')}")
    ret["servers"] = _server_states(cfg)
    for name, st in ret["servers"].items():
        if name != new and st.get("reachable", True) and not st.get("tls_verified"):
            problems.append(f"{name}: link to {new} not TLS-verified")
    ret["timings"]["total_s"] = round(time.monotonic() - started, 3)
    crit_ms = sum(s["ms"] for s in crit.get("steps", []))
    ret["timings"]["critical_share"] = round(crit_ms / 1000 / ret["timings"]["total_s"], 4)
    _progress(f"{new} is the master; replicas ready in {ret['timings']['replicas_ready_s']}s",
              tag=_tag("done"), jid=jid, problems=problems, timings=ret["timings"])
    if problems:
        return _fail(ret, f"{new} is the master (write block {crit.get('block_ms')} ms) but: " + "; ".join(problems))
    ret["result"] = True
    ret["comment"] = (f"{new} is the master; write block {crit.get('block_ms')} ms; "
                      f"{len(replicas)} replica(s) TLS-verified and caught up in {ret['timings']['replicas_ready_s']}s")
    return ret


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
