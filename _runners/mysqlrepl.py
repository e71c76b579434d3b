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
"""

import logging
import threading
import time

import salt.client
import salt.utils.event
from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "mysqlrepl"

DEFAULT_TGT = "I@mysqlrepl:*"


def __virtual__():
    return __virtualname__


def _client():
    return salt.client.get_local_client(__opts__["conf_file"])


def _fail(ret, message):
    __context__["retcode"] = 1
    ret["result"] = False
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


def _call(minion, fun, arg=(), kwarg=None, timeout=60):
    """Run ``fun`` on one minion; raise with the minion's own error text."""
    res = _client().cmd(minion, fun, arg=list(arg), kwarg=kwarg or {}, timeout=timeout,
                        full_return=True)
    if minion not in res:
        raise CommandExecutionError(f"minion {minion} did not answer {fun} within {timeout}s")
    out = res[minion]
    if out.get("retcode", 0) != 0 or (isinstance(out.get("ret"), str) and out["ret"].startswith("ERROR")):
        raise CommandExecutionError(f"{minion}: {fun}: {out.get('ret')}")
    return out["ret"]


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


def _topology(topology, tgt=DEFAULT_TGT, tgt_type="compound", timeout=30):  # pylint: disable=redefined-outer-name
    """The validated topology; raises with the reason."""
    if topology:
        tgt = f"( {tgt} ) and I@mysqlrepl:topology:{topology}"
    res = _client().cmd(tgt, "mysqlrepl.settings", tgt_type=tgt_type, timeout=timeout,
                        full_return=True)
    found = {}
    errors = {}
    for minion, out in sorted(res.items()):
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
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _fail(ret, str(exc))
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
                                           {"force": bool(force), "timeout": timeout},
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
        try:
            pos = _call(master["minion"], "mysqlrepl.gtid_position", [master["name"]])
            waited = _call(srv["minion"], "mysqlrepl.wait_for_gtid", [pos],
                           {"server": name, "timeout": cfg["replication"]["wait_timeout"]},
                           timeout=cfg["replication"]["wait_timeout"] + 30)
        except CommandExecutionError as exc:
            return _fail(ret, f"{name} was seeded but did not catch up: {exc}")
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
