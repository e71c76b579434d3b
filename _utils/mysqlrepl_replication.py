"""
Replication planning for one server: what ``mysqlrepl.replication_apply`` does,
decided from facts the execution module has read. Nothing here talks to Salt or
to a server; the module reads, calls :func:`plan`, and runs the returned
actions in order.

Who replicates from whom (:func:`source_of`): with one master (pillar
``master``) every other server replicates from it; with a two-master pair
(``masters: [a, b]``, seed 001) each master replicates from the other and is
writable by design, and a replica follows its ``source``. A link goes to where
the replica's host reaches its source: directly, or through an SSH tunnel
(``cfg["reach"]``, worked out by ``mysqlrepl_config``).

The rules, in the order :func:`plan` applies them (each is an exit, each is
unit-tested in ``tests/unit/test_replication_plan.py``):

1. While the master record shows a switch in progress, only that switch (its
   ``switch_jid``) changes a link.
2. The live topology must be the one pillar describes: the master of record
   replicates from nobody (a master of a pair: from the other master); a
   replica replicates from its source (or, during a switch, from the old master
   it is being moved from). Otherwise refuse and say who replicates from whom.
3. The master of record: writable at runtime. A highstate (no ``switch_jid``)
   makes it writable only when the guard passed: a fresh record still names it,
   no switch is in progress, and every other server answered that it is
   read-only (never two writable masters). A master of a pair: its link from
   the other master is made first (rule 9), then it is made writable when the
   guard passed (every server but the two masters answered read-only).
4. A replica that is writable and not replicating acts as a master: never
   demoted here (only the switch demotes, read-only first).
5. A demotion (switch) is refused when the old master wrote past the position
   the switch captured: those transactions exist only there.
6. A server with no link and transactions of its own that its slave position
   does not cover was a master: refused until ``mysqlrepl.rejoin`` checked it.
7. A server with no link and no GTID position was never seeded: not touched.
8. Otherwise the link is made to match pillar, only what differs is changed;
   enabled events are set DISABLE ON SLAVE; the password is sent (in a
   statement of its own) only when the link does not hold it yet.
   Before a master of a pair links to the other or is made writable for the first
   time, no client session may predate its pair settings (a session keeps the
   auto_increment_* and gtid_domain_id it connected with): refused, naming them.
9. A master of a pair without a link (the one the other was seeded from) links
   to the other master only once that one replicates from it (connected to
   this one as a replica); it starts at
   :func:`pair_position`: its own domain from where the other master's binlog
   has it (earlier would be its own transactions coming back, later is not in
   that binlog: 1236), every other domain from its own slave position.

Invariant: an exit that refuses returns no action, so nothing is half applied.
"""

VERIFIED = "TLS verified, GTID"


def source_of(cfg, name):
    """The server ``name`` replicates from, or ``None`` (the master of a one-master topology)."""
    if cfg.get("two_masters"):
        return cfg["sources"][name]
    return None if name == cfg["master"] else cfg["master"]


def is_pair_master(cfg, name):
    return bool(cfg.get("two_masters")) and name in cfg["masters"]


def endpoint(cfg, frm, to):
    """``(host, port)`` a client on ``frm``'s host connects to for ``to``'s database."""
    reach = (cfg.get("reach") or {}).get(frm, {}).get(to)
    if reach is None:
        srv = cfg["servers"][to]
        return srv["address"], srv["port"]
    return reach["host"], reach["port"]


def desired_link(cfg, srv, source=None):
    """The link pillar wants for replica ``srv``, in ``normalize_replica_status`` keys."""
    source = source or source_of(cfg, srv["name"])
    host, port = endpoint(cfg, srv["name"], source)
    files = srv["tls_files"]
    return {
        "host": host,
        "port": port,
        "user": cfg["replication"]["user"],
        "ssl_ca": files["ca"],
        "ssl_cert": srv["replication_cert"]["cert"],
        "ssl_key": srv["replication_cert"]["key"],
        "ssl_verify_server_cert": "Yes" if cfg["tls"]["verify_server_cert"] else "No",
        "using_gtid": "Slave_Pos",
        "connect_retry": cfg["replication"]["connect_retry"],
    }


def pair_position(own_domain, own_current_pos, peer_binlog_pos):
    """
    Rule 9: where a master of a pair starts replicating from the other master.
    Its own domain from the other's binlog position (its own transactions the
    other has; they come back and are skipped, same server_id), every other
    domain from what it has already (``@@gtid_current_pos``: applied or written
    here). GTID lists as MariaDB writes them.
    """
    def parse(text):
        out = {}
        for part in (text or "").replace("\n", "").split(","):
            part = part.strip()
            if part:
                out[int(part.split("-")[0])] = part
        return out

    pos = {d: g for d, g in parse(own_current_pos).items() if d != int(own_domain)}
    peer = parse(peer_binlog_pos)
    if int(own_domain) in peer:
        pos[int(own_domain)] = peer[int(own_domain)]
    return ",".join(pos[d] for d in sorted(pos))


def link_diff(want, have):
    """``{key: {"old", "new"}}`` for every option of the live link ``have`` that differs."""
    diff = {}
    for key, value in want.items():
        if str(have.get(key)) != str(value):
            diff[key] = {"old": have.get(key), "new": value}
    if have.get("ssl_allowed") != "Yes":
        diff["ssl"] = {"old": have.get("ssl_allowed"), "new": "Yes"}
    return diff


def threads_text(rs):
    """``IO Yes, SQL No (1062: Duplicate entry ...)`` for comments."""
    if not rs:
        return "no replication configured"
    text = f"IO {rs['io_running']}"
    if rs.get("last_io_errno"):
        text += f" ({rs['last_io_errno']}: {rs['last_io_error']})"
    text += f", SQL {rs['sql_running']}"
    if rs.get("last_sql_errno"):
        text += f" ({rs['last_sql_errno']}: {rs['last_sql_error']})"
    return text


def switching_refusal(switching, switch_jid):
    """Rule 1: the refusal text while another switch is in progress, else ``None``."""
    if switching and switch_jid != switching.get("jid"):
        return (f"a switch from {switching.get('from')} to {switching.get('to')} is in progress "
                f"(jid {switching.get('jid')}, since {switching.get('since')}): replication is "
                "left alone until it ends; if it died, `salt-run mysqlrepl.record` says what to do")
    return None


def topology_conflict(cfg, srv, rs, repoint_from=None):
    """
    Rule 2: the refusal text when the live topology is not the one pillar
    describes, else ``None``. ``repoint_from``: a switch moves replicas of that
    (old) master.
    """
    name = srv["name"]
    source = source_of(cfg, name)
    if source is None:
        if rs is not None:
            who = server_at(cfg, name, rs)
            if who is not None:
                return (f"pillar says {name} is the master, but it replicates from {who} "
                        f"({rs['host']}:{rs['port']}): if they were a two-master pair, "
                        f"`salt-run mysqlrepl.unpair keep={name}` ends it (the highstate does not); "
                        "otherwise fix mysqlrepl:master or the servers; nothing changed")
            return (f"pillar says {name} is the master, but it replicates from "
                    f"{rs['host']}:{rs['port']}: the topology was changed outside mysqlrepl; "
                    "refusing to repoint anything (fix mysqlrepl:master or the servers)")
        return None
    if rs is None:
        return None
    have = (rs["host"], rs["port"])
    if repoint_from is not None and have == endpoint(cfg, name, repoint_from):
        return None
    want = endpoint(cfg, name, source)
    if have == want:
        return None
    who = server_at(cfg, name, rs)
    if who == source:
        return None  # the right server by another route (a tunnel added or removed): repointed
    hint = _unpair_hint(cfg, who)
    who = who or "a server outside the topology"
    if cfg.get("two_masters"):
        return (f"{name} replicates from {rs['host']}:{rs['port']} ({who}) but pillar says it replicates "
                f"from {source} ({want[0]}:{want[1]}): the topology was changed outside mysqlrepl; "
                "refusing to repoint it (fix mysqlrepl:servers:" + name + ":source or the servers)")
    master = cfg["servers"][source]
    return (f"{name} replicates from {rs['host']}:{rs['port']} ({who}) but pillar says the "
            f"master is {master['name']} ({want[0]}:{want[1]}): the topology was "
            "changed outside mysqlrepl; refusing to repoint it (update mysqlrepl:master if the "
            "switch was intended" + hint + ")")


def server_at(cfg, name, rs):
    """
    The server of the topology that ``rs`` (``name``'s normalised replica status,
    or ``None``) points at, by every route ``name``'s host reaches each server
    (directly or through a tunnel) or by a tunnel name (its tunnel may be gone
    from pillar: the forward's port is then unknown). ``None``: no server of
    the topology.
    """
    if rs is None:
        return None
    known = {(s["address"], s["port"]): n for n, s in cfg["servers"].items()}
    known.update({endpoint(cfg, name, n): n for n in cfg["servers"] if n != name})
    names = {s["tunnel_host"]: n for n, s in cfg["servers"].items() if s.get("tunnel_host")}
    return known.get((rs["host"], rs["port"])) or names.get(rs["host"])


def _unpair_hint(cfg, who):
    """A replica of ``who`` that pillar moves to the one master: ``who`` may be the end of a pair."""
    if cfg.get("two_masters") or who is None or who == cfg.get("master"):
        return ""
    return f"; if {who} and {cfg['master']} were a two-master pair, `salt-run mysqlrepl.unpair keep={cfg['master']}` " \
        "ends it and repoints this replica"


def needs_master_guard(cfg, srv, read_only, switch_jid):
    """
    Rule 3: must the module ask the record and the peers before making ``srv``
    writable? (A master of a pair: only the peers, :func:`guarded_peers`.)
    """
    master = srv["name"] == cfg["master"] and not cfg.get("two_masters")
    return (master or is_pair_master(cfg, srv["name"])) and read_only != "OFF" and switch_jid is None


def guarded_peers(cfg, name):
    """The servers the guard asks before ``name`` is made writable: all others but its pair."""
    skip = set(cfg["masters"]) if is_pair_master(cfg, name) else {name}
    return sorted(n for n in cfg["servers"] if n not in skip)


def _refuse(comment):
    return {"result": False, "changes": {}, "comment": comment, "actions": []}


def _master_plan(cfg, srv, facts, test, switch_jid, guard):
    name = srv["name"]
    if facts["read_only"] == "OFF":
        return {"result": True, "changes": {}, "comment": f"{name} is the writable master", "actions": []}
    if switch_jid is None:
        if guard is None:
            raise ValueError("a highstate making the master writable needs the guard's answers")
        stale, writable, unknown = guard.get("stale"), guard.get("writable") or [], guard.get("unknown") or []
        if stale:
            return _refuse(stale)
        if writable:
            return _refuse(f"{', '.join(writable)} writable: {name} (master of record) stays read-only, "
                           "never two writable masters; make it read-only, or if it took writes as master "
                           "see `salt-run mysqlrepl.record`")
        if unknown:
            return _refuse(f"{name} (master of record) stays read-only: cannot tell whether another server "
                           f"is writable ({'; '.join(unknown)}); bring it back, or remove a server that is "
                           "gone from mysqlrepl:servers")
    changes = {"read_only": {"old": "ON", "new": "OFF"}}
    if test:
        return {"result": None, "changes": changes,
                "comment": f"{name} (master of record) would be made writable", "actions": []}
    return {"result": True, "changes": changes, "comment": f"{name} made writable",
            "actions": [("read_only", False)]}


def plan(cfg, srv, facts, test=False, seeded=False, demote=False, demote_at=None, repoint_from=None,
         switch_jid=None, guard=None):
    """
    What to do on ``srv`` (a server dict of the validated pillar; ``cfg["master"]``
    is the master to follow). ``facts``, read by the module from the server:

    * ``read_only`` ("ON"/"OFF"), ``gtid_slave_pos``, ``gtid_binlog_pos``, ``rs``
      (normalised SHOW SLAVE STATUS or ``None``);
    * replicas only: ``was_master`` (no link, own transactions its slave position
      does not cover: rule 6), ``wrote_past`` (``demote_at`` given and the binlog
      position moved since: rule 5), ``enabled_events`` ([{"db", "name"}]),
      ``heartbeat`` (live period, or ``None``), ``password_stale`` (``True`` /
      ``False`` / ``None`` when master.info cannot be read).

    ``guard`` (masters, when :func:`needs_master_guard`): ``{"stale": refusal text
    or None, "writable": [names], "unknown": ["name: error"]}``.

    Returns ``{"result", "changes", "comment", "actions"}``; ``actions`` in order:
    ``("read_only", bool)``, ``("disable_events", [events])``, ``("stop",)``,
    ``("slave_pos", gtid)``, ``("change_master", {"want": link, "demote": bool})``,
    ``("password",)``, ``("start",)``, ``("await_replica", server_id)``. After
    ``start`` the module waits for healthy threads and fails with
    :func:`threads_text` if they do not run; ``await_replica`` waits until that
    server replicates from this one (fails after ``wait_timeout``).
    """
    refusal = switching_refusal(cfg.get("switching"), switch_jid)
    if refusal:
        return _refuse(refusal)
    rs = facts.get("rs")
    conflict = topology_conflict(cfg, srv, rs, repoint_from=repoint_from)
    if conflict:
        return _refuse(conflict)
    if source_of(cfg, srv["name"]) is None:
        return _master_plan(cfg, srv, facts, test, switch_jid, guard)
    if is_pair_master(cfg, srv["name"]):
        return _pair_plan(cfg, srv, facts, test, seeded, guard)

    name, master = srv["name"], source_of(cfg, srv["name"])
    changes, actions = {}, []
    threads_ok = rs is not None and rs["io_running"] == "Yes" and rs["sql_running"] == "Yes"
    if facts["read_only"] != "ON":
        if not threads_ok and (rs is not None or facts.get("gtid_slave_pos") or seeded or demote):
            return _refuse(f"{name} is writable and not replicating (it acts as a master) but the master "
                           f"of record is {master}: refusing to demote it; if a switch was interrupted, "
                           "`salt-run mysqlrepl.record` says what to do")
        changes["read_only"] = {"old": facts["read_only"], "new": "ON"}
        actions.append(("read_only", True))
    want = desired_link(cfg, srv, master)
    if demote and demote_at is not None and rs is None and facts.get("wrote_past"):
        return _refuse(f"{name} wrote past the switch's position {demote_at} (now "
                       f"{facts.get('gtid_binlog_pos')}): not demoted; those transactions are not on "
                       f"{master}. Reconcile them, then `salt-run mysqlrepl.rejoin server={name}` "
                       "(or re-seed it)")
    if rs is None:
        if not demote and not seeded and facts.get("was_master"):
            return _refuse(f"{name} replicates from nobody and has transactions of its own "
                           f"({facts.get('gtid_binlog_pos')}): it was a master. Check it has nothing "
                           f"{master} lacks, then `salt-run mysqlrepl.rejoin server={name}`; nothing changed")
        if not facts.get("gtid_slave_pos") and not seeded and not demote:
            return _refuse(_never_seeded(name, master))
    link = _link(cfg, srv, facts, want, demote=demote)
    changes.update(link["changes"])
    actions += link["actions"]
    return _outcome(changes, actions, test, rs, f"replicates from {master}")


def _outcome(changes, actions, test, rs, role):
    """The plan's return once nothing refused: ``role`` says what the server is."""
    if test:
        return {"result": None if changes else True, "changes": changes, "actions": [],
                "comment": (f"would fix {', '.join(sorted(changes))} (now: {threads_text(rs)})" if changes
                            else f"{role} as pillar says")}
    return {"result": True, "changes": changes, "actions": actions,
            "comment": (f"{role}: " + ", ".join(sorted(changes)) + " fixed" if changes
                        else f"{role} as pillar says")}


def _never_seeded(name, source):
    return (f"{name} has never been seeded from {source}: run salt-run state.orchestrate "
            f"mysqlrepl.orch.setup (or salt-run mysqlrepl.seed replica={name}); nothing changed")


def _link(cfg, srv, facts, want, demote=False, position=None):
    """
    Rule 8: the changes and actions that make the link match ``want`` (none when it
    does and both threads run). ``position``: set ``gtid_slave_pos`` first (rule 9).
    """
    rs = facts.get("rs")
    changes, actions = {}, []
    threads_ok = rs is not None and rs["io_running"] == "Yes" and rs["sql_running"] == "Yes"
    if rs is None:
        diff = {"link": {"old": None, "new": f"{want['host']}:{want['port']} {VERIFIED}"
                         + (" (demoted, keeps its GTIDs)" if demote else "")}}
        if position is not None:
            diff["gtid_slave_pos"] = {"old": facts.get("gtid_slave_pos"), "new": position}
    else:
        diff = link_diff(want, rs)
    events = facts.get("enabled_events") or []
    if events:
        changes["events"] = {"old": [f"{e['db']}.{e['name']} ENABLED" for e in events],
                             "new": "DISABLE ON SLAVE"}
        actions.append(("disable_events", list(events)))
    if rs is not None:
        hb = facts.get("heartbeat")
        if hb is not None and abs(hb - float(cfg["replication"]["heartbeat_period"])) > 0.001:
            diff["heartbeat_period"] = {"old": hb, "new": cfg["replication"]["heartbeat_period"]}
        if rs.get("last_io_errno") == 1045 or facts.get("password_stale"):
            diff["password"] = "differs from pillar (not shown): re-sending credentials"
    changes.update(diff)
    if not diff and not threads_ok:
        changes["threads"] = {"old": threads_text(rs), "new": "IO Yes, SQL Yes"}
    if diff:
        actions.append(("stop",))
        if rs is None and position is not None:
            actions.append(("slave_pos", position))
        actions.append(("change_master", {"want": want, "demote": demote and rs is None}))
        # the password in a statement of its own, only when the link lacks it: a new
        # link, a changed password, or a master.info that cannot be read (then it is
        # unknown; MySQL keeps it in a table). A repointed link keeps its password.
        if rs is None or facts.get("password_stale") is None or "password" in diff:
            actions.append(("password",))
    if diff or not threads_ok:
        actions.append(("start",))
    return {"changes": changes, "actions": actions}


def _pair_plan(cfg, srv, facts, test, seeded, guard):
    """
    A master of a two-master pair: replicates from the other master (rules 2, 7,
    8, 9) and is writable (rule 3) once that link runs and the guard passed.
    """
    name, peer = srv["name"], source_of(cfg, srv["name"])
    rs = facts.get("rs")
    want = desired_link(cfg, srv, peer)
    position = None
    stale = facts.get("stale_sessions") or []
    if stale and not seeded and (rs is None or facts["read_only"] != "OFF"):
        return _refuse(f"{name} has {len(stale)} client session(s) opened before its pair settings "
                       "(auto_increment_increment/offset, gtid_domain_id) were set live: "
                       f"{', '.join(stale[:10])}{' ...' if len(stale) > 10 else ''}. A session keeps the "
                       "values it connected with, so they would write keys that collide with the other "
                       "master's: recycle the apps' connection pools (or KILL them), then run the highstate; "
                       "nothing changed")
    if rs is None and not seeded:
        if name != cfg["masters"][0] and facts["read_only"] == "OFF":
            return _refuse(f"{name} takes writes and replicates from nobody, but masters lists {peer} "
                           f"first: the pair's first master is the one the other is seeded from. Put {name} "
                           "first in mysqlrepl:masters (or make it read-only if it should follow); nothing "
                           "changed")
        if name != cfg["masters"][0] and not facts.get("gtid_slave_pos"):
            return _refuse(_never_seeded(name, peer))
        if not facts.get("peer_replicates"):
            return _refuse(f"{name} and {peer} are a two-master pair: {name} replicates from {peer} once "
                           f"{peer} was seeded from {name} and replicates from it ({peer} is not connected "
                           f"to {name} as a replica: salt-run mysqlrepl.seed replica={peer}, or the highstate "
                           f"on {peer}); nothing changed")
        position = facts["pair_position"]
    link = _link(cfg, srv, facts, want, position=position)
    changes, actions = dict(link["changes"]), list(link["actions"])
    # a seed only links it (the other master links back, and the highstate makes both
    # writable, at the setup orchestration's converge step)
    if facts["read_only"] != "OFF" and not seeded:
        if guard is None:
            raise ValueError("a highstate making a master writable needs the guard's answers")
        writable, unknown = guard.get("writable") or [], guard.get("unknown") or []
        if writable:
            return _refuse(f"{', '.join(writable)} writable: only the pair {' and '.join(cfg['masters'])} "
                           f"takes writes; {name} stays read-only until {', '.join(writable)} is read-only")
        if unknown:
            return _refuse(f"{name} stays read-only: cannot tell whether a server outside the pair is "
                           f"writable ({'; '.join(unknown)}); bring it back, or remove a server that is "
                           "gone from mysqlrepl:servers")
        changes["read_only"] = {"old": facts["read_only"], "new": "OFF"}
        # after the link runs (the module stops at a link that does not), and once the other
        # master replicates from this one: no transaction of this master's domain is written
        # before the other one reads its binlog (rule 9 starts it there)
        actions += [("await_replica", cfg["servers"][peer]["server_id"]), ("read_only", False)]
    return _outcome(changes, actions, test, rs, f"writable, replicates from {peer}")
