"""
Turning a two-master pair back into one master (``salt-run mysqlrepl.unpair
keep=<name>``), decided and run here with no Salt in it: the runner reads the
servers, :func:`find_pair` says what the live pair is and what would change, and
:func:`critical` runs on the kept master's minion with two ready connections
(the kept master over its socket, the other over verified TLS), the statements
built beforehand, and the clock passed in.

Before it runs, pillar names one master (``master: <keep>`` instead of
``masters``); until it runs, the highstate refuses to touch the kept master
(it still replicates from the other) and makes the other read-only (a replica
in the new pillar), which is the first step below anyway.

The steps (:func:`critical`), each an exit that is unit-tested in
``tests/unit/test_unpair.py``:

1. The other master is made read-only (``lock_wait_timeout`` bounded). If it
   fails, nothing changed.
2. The other master's ``@@gtid_binlog_pos`` is read: every transaction it logged.
   Its entries with the kept master's server_id are the kept master's own
   transactions coming back (``log_slave_updates``): the kept master has them,
   and they keep coming while it takes writes, so they are left out below.
3. The kept master waits until it has applied the rest (``MASTER_GTID_WAIT``).
   On timeout: the other master is made writable again if it was, nothing
   changed.
4. The kept master's replication is stopped, then the other master's position is
   read again and compared with the kept master's ``@@gtid_current_pos``: the
   kept master must have every transaction of it (else a session that bypasses
   read_only, e.g. SUPER or READ ONLY ADMIN, wrote there after step 1). If not:
   replication is started again and the other master made writable again if it
   was; nothing changed.
5. ``RESET SLAVE ALL`` on the kept master: it forgets the link.
6. The kept master is made writable if it is not (a highstate between the pillar
   change and this made it read-only while pillar still named another server).

Invariant: the kept master's link to the other is removed only once it holds
every transaction the other logged (step 4 reads the other's position after
the link stopped and compares it with what the kept master has), and the other is
read-only from step 1 on: no row written on either master is lost, and when
it ends only the kept master is writable.
"""

import time


def find_pair(cfg, keep, states, server_at):
    """
    What ``unpair`` would do, from every server's ``mysqlrepl.status`` answer
    (``states``: ``{name: {"replica": rs or None, "variables": {"read_only"}}
    or {"error": text}}``); ``server_at(cfg, name, rs)``: the server a link points
    at (``mysqlrepl_replication.server_at``). Returns::

        {"result": True, "nothing": text}                # no pair: nothing to do
        {"result": False, "refusal": text}               # refused, nothing changed
        {"result": None, "keep", "other", "followers": [names], "comment"}

    ``followers``: replicas of the other master (apart from the kept one), to
    be repointed to the kept master once it alone takes writes.
    """
    if cfg.get("two_masters"):
        a, b = cfg["masters"]
        return {"result": False, "refusal": (
            f"pillar still names a pair (masters: [{a}, {b}]): replace masters with master: {keep} "
            "(drop the servers' source keys), then run this again; nothing changed")}
    if keep not in cfg["servers"]:
        return {"result": False, "refusal": f"unknown server {keep!r}; nothing changed"}
    down = {n: st.get("error") for n, st in states.items() if "error" in st}
    if keep in down:
        return {"result": False, "refusal": f"cannot read {keep}: {down[keep]}; nothing changed"}
    other = server_at(cfg, keep, states[keep]["replica"])
    if other is None:
        rs = states[keep]["replica"]
        if rs is None:
            return _unfinished(cfg, keep, states, server_at)
        return {"result": False, "refusal": (
            f"{keep} replicates from {rs['host']}:{rs['port']}, no server of the topology; nothing changed")}
    if other in down:
        return {"result": False, "refusal": (
            f"cannot read {other} (the other master): {down[other]}; the pair cannot be ended without "
            "making it read-only first; nothing changed")}
    back = server_at(cfg, other, states[other]["replica"])
    if back != keep:
        return {"result": False, "refusal": (
            f"{keep} replicates from {other}, but {other} does not replicate from {keep}: not a two-master "
            f"pair; nothing changed (if {keep} should be the master, see salt-run mysqlrepl.switch)")}
    followers = sorted(n for n, st in states.items()
                       if n not in (keep, other) and "error" not in st
                       and server_at(cfg, n, st["replica"]) == other)
    unread = sorted(n for n in down if n not in (keep, other))
    comment = (f"{other} made read-only, {keep} catches up with it and forgets its link; {other} keeps "
               f"replicating from {keep}" + (f"; {', '.join(followers)} repointed to {keep}" if followers else "")
               + (f" (not read: {', '.join(unread)})" if unread else ""))
    return {"result": None, "keep": keep, "other": other, "followers": followers, "comment": comment,
            "unread": unread}


def foreign(pos, server_id):
    """GTID list ``pos`` without the entries written by ``server_id``."""
    parts = [p.strip() for p in (pos or "").replace("\n", "").split(",") if p.strip()]
    return ",".join(p for p in parts if int(p.split("-")[1]) != int(server_id))


def _unfinished(cfg, keep, states, server_at):
    """
    ``keep`` replicates from nobody: the pair is over, or an earlier run ended it
    and stopped before repointing (its answer lost, a replica down then). The
    other master is read-only and replicates from ``keep``; replicas still
    linked to it are repointed (``finish``), else there is nothing to do.
    """
    def link_of(name):
        st = states[name]
        return None if "error" in st else server_at(cfg, name, st["replica"])

    former = {n for n in states if n != keep and link_of(n) == keep
              and (states[n].get("variables") or {}).get("read_only") == "ON"}
    followers = sorted(n for n in states if n != keep and n not in former and link_of(n) in former)
    if not followers:
        return {"result": True, "nothing": f"{keep} replicates from nobody: it is the only master, "
                                           "there is no pair to end"}
    other = sorted({link_of(n) for n in followers})
    if len(other) > 1:
        return {"result": False, "refusal": (
            f"{', '.join(followers)} replicate from {', '.join(other)}, read-only replicas of {keep}: repoint "
            "them with the highstate after checking them; nothing changed")}
    unread = sorted(n for n, st in states.items() if "error" in st)
    return {"result": None, "finish": True, "keep": keep, "other": other[0], "followers": followers,
            "unread": unread,
            "comment": (f"{keep} has no link any more and {other[0]} replicates from it; {', '.join(followers)} "
                        f"still replicate from {other[0]}: repointed to {keep}")}


def critical(keep, other, st, clock=time.monotonic):
    """
    Steps 1 to 6 (module docstring). ``keep`` and ``other``: objects with
    ``run(statement) -> rows`` (connections opened and tested first). ``st``::

        other_read_only    SET STATEMENT lock_wait_timeout=<budget> FOR SET GLOBAL read_only=1
        other_writable     SET GLOBAL read_only=0 (rollback)
        read_only          SELECT @@GLOBAL.read_only AS ro
        gtid_pos           @@gtid_binlog_pos AS pos
        wait(pos)          MASTER_GTID_WAIT(pos, <timeout>) AS result, on the kept master
        current_pos        @@gtid_current_pos AS current_pos (and others), on the kept master
        stop_replica / start_replica / reset_replica_all
        keep_writable      SET GLOBAL read_only=0
        keep_server_id     the kept master's server_id (its own transactions)
        reached(have, want) does GTID list ``have`` reach ``want`` in every domain

    Returns ``{"outcome": "unpaired" | "aborted" | "stopped", "reason", "pos",
    "steps": [{"step", "ms", "ok"}]}``: ``aborted`` guarantees nothing changed
    (the other master writable again if it was, the kept master's link running
    again); ``stopped`` names what an operator must look at.
    """
    out = {"outcome": None, "reason": None, "pos": None, "steps": []}

    def done(step, t0, ok=True):
        out["steps"].append({"step": step, "ms": round((clock() - t0) * 1000, 2), "ok": ok})

    def end(outcome, reason):
        out.update(outcome=outcome, reason=reason)
        return out

    rollback_notes = []

    def rollback(was_writable, restart):
        """Undo steps 1 and 4; the text says what is left to do by hand, if anything."""
        if restart:
            try:
                keep.run(st["start_replica"])
            except Exception as exc:  # pylint: disable=broad-except
                rollback_notes.append(f"START SLAVE on {keep.name} failed ({exc}): start it by hand")
        if was_writable:
            try:
                other.run(st["other_writable"])
                rollback_notes.append(f"{other.name} is writable again; the highstate, with the one-master "
                                      "pillar, makes it read-only: run unpair again soon")
            except Exception as exc:  # pylint: disable=broad-except
                rollback_notes.append(f"{other.name} stays read-only ({exc}): make it writable by hand if "
                                      "its apps still write there")
        return "; ".join(rollback_notes)

    # 1. the other master read-only
    t0 = clock()
    try:
        was_writable = int(other.run(st["read_only"])[0]["ro"]) == 0
        if was_writable:
            other.run(st["other_read_only"])
    except Exception as exc:  # pylint: disable=broad-except
        done("other_read_only", t0, ok=False)
        return end("aborted", f"cannot make {other.name} read-only: {exc}; nothing changed")
    done("other_read_only", t0)
    # 2. everything it logged
    t0 = clock()
    try:
        pos = other.run(st["gtid_pos"])[0]["pos"]
    except Exception as exc:  # pylint: disable=broad-except
        done("other_position", t0, ok=False)
        note = rollback(was_writable, restart=False)
        return end("aborted", f"cannot read {other.name}'s position: {exc}; nothing changed"
                   + (f" ({note})" if note else ""))
    out["pos"] = pos
    done("other_position", t0)
    # 3. the kept master applies it (not its own transactions: it has them)
    t0 = clock()
    want = foreign(pos, st["keep_server_id"])
    try:
        waited = keep.run(st["wait"](want))[0]["result"] if want else 0
    except Exception as exc:  # pylint: disable=broad-except
        waited = exc
    if waited != 0:
        done("catch_up", t0, ok=False)
        note = rollback(was_writable, restart=False)
        why = "timed out" if waited == -1 else f"failed ({waited})"
        return end("aborted", f"{keep.name} did not apply {other.name}'s position {pos}: waiting {why} (is "
                              f"{keep.name} replicating from {other.name}? SHOW SLAVE STATUS there; a long "
                              "backlog needs catchup_timeout=); nothing changed" + (f" ({note})" if note else ""))
    done("catch_up", t0)
    # 4. the link stopped, and the other master wrote nothing since
    t0 = clock()
    try:
        keep.run(st["stop_replica"])
    except Exception as exc:  # pylint: disable=broad-except
        done("stop_link", t0, ok=False)
        note = rollback(was_writable, restart=True)
        return end("aborted", f"cannot stop {keep.name}'s replication: {exc}; nothing changed"
                   + (f" ({note})" if note else ""))
    try:
        again = other.run(st["gtid_pos"])[0]["pos"]
        have = keep.run(st["current_pos"])[0]["current_pos"]
    except Exception as exc:  # pylint: disable=broad-except
        again, have = exc, None
    if have is None or not st["reached"](have, foreign(again, st["keep_server_id"])):
        done("stop_link", t0, ok=False)
        note = rollback(was_writable, restart=True)
        what = (f"{other.name} wrote past {pos} while read-only (now {again}; {keep.name} has {have}): a "
                "session that bypasses read_only (SUPER, READ ONLY ADMIN) writes there; stop it"
                if have is not None else f"cannot read the positions again ({again})")
        return end("aborted", f"{what}; nothing changed" + (f" ({note})" if note else ""))
    done("stop_link", t0)
    # 5. the kept master forgets the link
    t0 = clock()
    try:
        keep.run(st["reset_replica_all"])
    except Exception as exc:  # pylint: disable=broad-except
        done("reset_link", t0, ok=False)
        return end("stopped", f"{keep.name}'s link to {other.name} is stopped (it has every transaction of "
                              f"{other.name}, which is read-only) but RESET SLAVE ALL failed: {exc}; run "
                              "salt-run mysqlrepl.unpair again")
    done("reset_link", t0)
    # 6. the kept master takes writes
    t0 = clock()
    try:
        if int(keep.run(st["read_only"])[0]["ro"]) != 0:
            keep.run(st["keep_writable"])
    except Exception as exc:  # pylint: disable=broad-except
        done("keep_writable", t0, ok=False)
        return end("stopped", f"the pair is ended ({keep.name} has no link, {other.name} is read-only) but "
                              f"{keep.name} could not be made writable: {exc}; the highstate makes it writable")
    done("keep_writable", t0)
    return end("unpaired", f"{keep.name} is the only master; {other.name} is read-only")
