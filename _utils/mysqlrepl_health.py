"""
The operator's view of a topology (``salt-run mysqlrepl.health``) and the
beacon's faults, decided here with no Salt in it: the runner (or the beacon)
reads each server's ``mysqlrepl.status`` answer, and this module says what
each server is, by the record and as seen, and what is wrong. The clock is
passed in (certificate expiry).

The rules, in the order :func:`server_problems` and :func:`topology_problems`
apply them (each one is unit-tested in ``tests/unit/test_health.py``):

1. A server that did not answer is ``unreachable`` (the error is kept).
2. A replica (by pillar: it has a source) must replicate from its source: a
   link to another server, or none, is a problem; so is a one-master
   topology's master that replicates from anyone.
3. Each replication thread must run; a stopped one is reported with its last
   error (``Last_IO_Error`` / ``Last_SQL_Error``).
4. Lag: ``Seconds_Behind_Master`` over ``health:lag_s``, or (when the source
   answered) more than ``health:gtid_behind`` transactions behind its source's
   binlog in any domain. Errant transactions (when the source answered): the
   replica wrote transactions of its own that its source never had.
5. Every link uses TLS and verifies the master's certificate
   (``Master_SSL_Allowed`` and ``Master_SSL_Verify_Server_Cert``); the master's
   Binlog Dump threads all carry a cipher.
6. Certificates: one within ``health:cert_days`` of expiry, or expired; one
   that cannot be read (the TLS login to read it failed) is its own kind.
7. Writable servers: only the master of record (both masters of a pair). A
   replica that is writable is a problem; two writable servers outside a pair
   are the worst one (named first in the verdict).
8. The master of record read-only while no switch is in progress.
9. A tunnel of the server that is down.

The verdict is ``healthy`` or ``unhealthy: <the first problem>`` with the
count of the others; ``problems`` lists every one as ``{"server", "kind",
"detail"}`` (``kind`` is the beacon's event name).

The beacon (``_beacons/mysqlrepl.py``) applies rules 1 to 9 to the servers of
its own minion, each interval, and fires on change only
(:func:`beacon_events`): a ``(server, kind)`` that appears fires
``salt/beacon/<minion>/mysqlrepl/<kind>``; one that goes away fires
``.../<kind>/cleared``; one that stays fires nothing, however its detail moves
(a lag growing, days to expiry shrinking).

Invariant: every problem names its server and comes from what that server (or
its source) answered now; nothing is assumed for a server that did not answer
beyond ``unreachable``.
"""

import datetime

DEFAULTS = {"lag_s": 30, "gtid_behind": 1000, "cert_days": 14}

# the order problems are listed in (the verdict names the first)
KINDS = ("two_writable", "unreachable", "master_read_only", "writable_replica", "wrong_source", "errant",
         "io_stopped", "sql_stopped", "lag", "no_tls", "not_verified", "cert_expiry", "cert_unreadable",
         "tunnel_down", "check_failed")


def _source(cfg, name):
    if cfg.get("two_masters"):
        return cfg["sources"][name]
    return None if name == cfg["master"] else cfg["master"]


def _is_master(cfg, name):
    return name in (cfg["masters"] if cfg.get("two_masters") else [cfg["master"]])


def _gtid_list(text):
    """``"0-11-5,1-12-3"`` -> ``{(0, 11): 5, (1, 12): 3}`` (as ``mysqlrepl_switch.parse_gtid_list``;
    this module loads no sibling)."""
    out = {}
    for part in (text or "").replace("\n", "").split(","):
        part = part.strip()
        if part:
            domain, sid, seq = (int(x) for x in part.split("-"))
            out[(domain, sid)] = max(seq, out.get((domain, sid), 0))
    return out


def gtid_behind(replica_pos, master_pos):
    """
    Transactions ``replica_pos`` (its ``gtid_slave_pos``) lacks of
    ``master_pos`` (its source's ``gtid_binlog_pos``), per domain: ``{domain:
    count}`` for the domains it is behind in (sequence numbers grow by one per
    transaction within a domain).
    """
    def per_domain(text):
        out = {}
        for (domain, _server_id), seq in _gtid_list(text).items():
            out[domain] = max(seq, out.get(domain, 0))
        return out

    have, want = per_domain(replica_pos), per_domain(master_pos)
    return {d: seq - have.get(d, 0) for d, seq in sorted(want.items()) if seq > have.get(d, 0)}


def openssl_time(text):
    """``Ssl_server_not_after`` (``"Dec  8 02:28:47 2027 GMT"``) as ISO 8601 UTC, ``None`` when empty."""
    text = " ".join(str(text or "").split())
    if not text:
        return None
    when = datetime.datetime.strptime(text.replace(" GMT", ""), "%b %d %H:%M:%S %Y")
    return when.replace(tzinfo=datetime.timezone.utc).isoformat()


def errant(replica_state, source_state, server_id):
    """
    Transactions a replica wrote itself (its ``server_id`` in its
    ``gtid_binlog_state``) beyond what its source has of them: ``["d-s-n"]``.
    Only its own server_id is compared, so a source read a moment earlier
    than the replica cannot make replicated transactions look errant. These
    are what a switch to that replica refuses (MariaDB's errant-GTID rule).
    """
    mine, theirs = _gtid_list(replica_state), _gtid_list(source_state)
    return sorted(f"{d}-{sid}-{n}" for (d, sid), n in mine.items()
                  if sid == int(server_id) and n > theirs.get((d, sid), 0))


def days_text(days):
    """``365 days`` / ``28 minutes`` (rotation drills use fractions of a day)."""
    return f"{days:.1f} days" if abs(days) >= 1 else f"{days * 1440:.0f} minutes"


def days_left(not_after, now):
    """Days (float) from ``now`` until ``not_after`` (ISO 8601, UTC), negative once expired."""
    end = datetime.datetime.fromisoformat(str(not_after).replace("Z", "+00:00"))
    if end.tzinfo is None:
        end = end.replace(tzinfo=datetime.timezone.utc)
    return (end - now).total_seconds() / 86400.0


def link_cipher(cfg, name, source, answers):
    """
    The cipher of ``name``'s link as its source's Binlog Dump threads show it
    (matched by the replica's address; a link through a tunnel arrives from
    127.0.0.1; when none matches, the one cipher all of them have), ``""``
    when that thread has none, ``None`` when it cannot be told.
    """
    src = answers.get(source) or {}
    dumps = src.get("binlog_dumps") or []
    if not dumps:
        return None
    routed = ((cfg.get("reach") or {}).get(name) or {}).get(source)
    hosts = {cfg["servers"][name]["address"]}
    if routed and routed.get("tunnel"):
        hosts |= {"127.0.0.1", "localhost"}
    ciphers = {d.get("cipher") or "" for d in dumps if (d.get("host") or "").split(":")[0] in hosts}
    if not ciphers:
        # the replica connects from another address than its own (several on one host, NAT):
        # every link of this master has the one cipher, or it cannot be told
        ciphers = {d.get("cipher") or "" for d in dumps}
    if len(ciphers) == 1:
        return ciphers.pop()
    return None


def server_row(cfg, name, answer, answers, now, server_at, limits=None):
    """
    One server's line: roles, threads, lag, TLS, certificate, errors, tunnels,
    and its ``problems`` (rules 1 to 6, 8, 9; rule 7's pair-wide part is
    :func:`topology_problems`). ``server_at(cfg, name, rs)``: the server a
    link points at (``mysqlrepl_replication.server_at``).
    """
    limits = dict(DEFAULTS, **(limits or {}))
    srv = cfg["servers"][name]
    source = _source(cfg, name)
    master = _is_master(cfg, name)
    row = {
        "server": name, "minion": srv["minion"],
        "role": ("master" if master and not cfg.get("two_masters") else
                 f"pair master, replica of {source}" if master else f"replica of {source}"),
        "seen": None, "read_only": None, "io": None, "sql": None, "seconds_behind": None,
        "gtid_behind": None, "tls": None, "cipher": None, "cert_days_left": None,
        "last_io_error": None, "last_sql_error": None, "tunnels": None, "problems": [],
    }
    problems = row["problems"]

    def problem(kind, detail):
        problems.append({"server": name, "kind": kind, "detail": detail})

    # 1. unreachable
    if not isinstance(answer, dict) or "error" in answer:
        row["seen"] = "unreachable"
        error = answer.get("error") if isinstance(answer, dict) else answer
        problem("unreachable", f"{name} cannot be read: {error}")
        return row
    variables = answer.get("variables") or {}
    rs = answer.get("replica")
    row["read_only"] = variables.get("read_only")
    writable = row["read_only"] == "OFF"
    upstream = server_at(cfg, name, rs)
    label = None if rs is None else (upstream or f"{rs['host']}:{rs['port']} (outside the topology)")
    if rs is None:
        row["seen"] = "master (writable, replicates from nobody)" if writable else "read-only, replicates from nobody"
    else:
        row["seen"] = f"replica of {label}" + (" (writable)" if writable else "")
    # 2. the right source
    if source is None and rs is not None:
        problem("wrong_source", f"{name} is the master of record but replicates from {label}")
    elif source is not None and upstream != source:
        problem("wrong_source", f"{name} should replicate from {source}, "
                + ("replicates from nobody" if rs is None else f"replicates from {label}"))
    if rs is not None:
        # 3. threads
        row["io"], row["sql"] = rs.get("io_running"), rs.get("sql_running")
        row["last_io_error"] = (f"{rs['last_io_errno']}: {rs['last_io_error']}"
                                if rs.get("last_io_errno") else None)
        row["last_sql_error"] = (f"{rs['last_sql_errno']}: {rs['last_sql_error']}"
                                 if rs.get("last_sql_errno") else None)
        if row["io"] != "Yes":
            problem("io_stopped", f"{name}: IO thread {row['io']}"
                    + (f" ({row['last_io_error']})" if row["last_io_error"] else ""))
        if row["sql"] != "Yes":
            problem("sql_stopped", f"{name}: SQL thread {row['sql']}"
                    + (f" ({row['last_sql_error']})" if row["last_sql_error"] else ""))
        # 4. lag
        behind = rs.get("seconds_behind")
        row["seconds_behind"] = None if behind is None else int(behind)
        src_answer = answers.get(upstream) if upstream else None
        if isinstance(src_answer, dict) and "error" not in src_answer:
            row["gtid_behind"] = gtid_behind((answer.get("gtid") or {}).get("slave_pos"),
                                             (src_answer.get("gtid") or {}).get("binlog_pos"))
            own = variables.get("server_id")
            extra = errant((answer.get("gtid") or {}).get("binlog_state"),
                           (src_answer.get("gtid") or {}).get("binlog_state"), own) if own else []
            if extra:
                problem("errant", f"{name} has transactions {upstream} never had: {', '.join(extra[:5])} (written on "
                                  f"{name} itself): a switch to {name} is refused; reconcile them or re-seed "
                                  f"{name} (salt-run mysqlrepl.seed replica={name} force=True)")
        if row["seconds_behind"] is not None and row["seconds_behind"] > limits["lag_s"]:
            problem("lag", f"{name} is {row['seconds_behind']} s behind {upstream or 'its master'}")
        elif row["gtid_behind"] and max(row["gtid_behind"].values()) > limits["gtid_behind"]:
            problem("lag", f"{name} lacks {sum(row['gtid_behind'].values())} transactions of "
                           f"{upstream} ({', '.join(f'domain {d}: {n}' for d, n in row['gtid_behind'].items())})")
        # 5. TLS
        if rs.get("ssl_allowed") != "Yes":
            row["tls"] = "none"
            problem("no_tls", f"{name}'s link to {upstream or rs['host']} does not use TLS")
        elif rs.get("ssl_verify_server_cert") != "Yes":
            row["tls"] = "encrypted, master not verified"
            problem("not_verified", f"{name}'s link to {upstream or rs['host']} does not verify the master's "
                                    "certificate")
        else:
            row["tls"] = "verified"
        if upstream:
            row["cipher"] = link_cipher(cfg, name, upstream, answers)
    for dump in answer.get("binlog_dumps") or []:
        if not dump.get("cipher"):
            problem("no_tls", f"{name} sends its binlog without TLS to {dump.get('user')}@{dump.get('host')}")
    # 6. certificates
    days = []
    for what, cert in sorted((answer.get("certs") or {}).items()):
        if not cert or cert.get("error"):
            problem("cert_unreadable", f"{name}: cannot read the {what} certificate "
                                       f"({(cert or {}).get('error')})")
            continue
        left = days_left(cert["not_after"], now)
        days.append(left)
        if left <= 0:
            problem("cert_expiry", f"{name}: {what} certificate expired on {cert['not_after']}")
        elif left <= limits["cert_days"]:
            problem("cert_expiry", f"{name}: {what} certificate expires in {days_text(left)} ({cert['not_after']}); "
                                   "the highstate renews it tls:renew_days before expiry: is the CA minion's run "
                                   "failing?")
    row["cert_days_left"] = round(min(days), 4) if days else None
    # 7 (one server's part): a replica that is writable
    if writable and not master:
        problem("writable_replica", f"{name} is writable but the master of record is "
                                    f"{cfg['master'] if not cfg.get('two_masters') else ' and '.join(cfg['masters'])}")
    # 8. the master of record read-only, no switch going on
    if master and not writable and not cfg.get("switching"):
        problem("master_read_only", f"{name} is the master of record but read-only (no switch in progress)")
    # 9. tunnels
    tunnels = answer.get("tunnels")
    if tunnels is not None:
        row["tunnels"] = [{"tunnel": t.get("tunnel"), "side": t.get("side"), "up": t.get("up")} for t in tunnels]
        for t in tunnels:
            if not t.get("up"):
                problem("tunnel_down", f"{name}: tunnel {t.get('tunnel')} ({t.get('side')} side) is down"
                        + (f": {t['problem']}" if t.get("problem") else ""))
    return row


def topology_problems(cfg, rows):
    """Rule 7 across servers: writable servers the topology allows only one of (a pair: two)."""
    allowed = set(cfg["masters"]) if cfg.get("two_masters") else {cfg["master"]}
    writable = sorted(r["server"] for r in rows.values() if r["read_only"] == "OFF")
    if len(writable) >= 2 and any(n not in allowed for n in writable):
        return [{"server": ",".join(writable), "kind": "two_writable",
                 "detail": f"{len(writable)} servers are writable ({', '.join(writable)}): only "
                           f"{' and '.join(sorted(allowed))} may be"}]
    return []


def report(cfg, answers, now, server_at, limits=None):
    """
    The whole answer: ``{"healthy", "verdict", "problems", "servers"}``,
    ``answers`` being ``{name: status answer or {"error": text}}`` for every
    server of the topology (a missing one counts as unreachable).
    """
    rows = {}
    for name in sorted(cfg["servers"]):
        rows[name] = server_row(cfg, name, answers.get(name, {"error": "no answer"}), answers, now, server_at,
                                limits)
    problems = topology_problems(cfg, rows)
    for row in rows.values():
        problems += row["problems"]
    problems.sort(key=lambda p: (KINDS.index(p["kind"]), p["server"]))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        verdict = f"unhealthy: {problems[0]['detail']}{more}"
    else:
        verdict = f"healthy: {len(rows)} servers, every link running and verified"
    return {"healthy": not problems, "verdict": verdict, "problems": problems, "servers": rows}


def view(cfg):
    """
    What :func:`report` needs of a validated pillar, and no more: every minion
    sends it with its answer, so it stays small (server addresses and minions,
    roles, tunnel routes, the switch mark, thresholds; no paths, no secrets).
    """
    servers = {n: {k: s.get(k) for k in ("name", "minion", "address", "port", "tunnel_host")}
               for n, s in cfg["servers"].items()}
    reach = {}
    for frm, routes in (cfg.get("reach") or {}).items():
        tunnelled = {to: r for to, r in routes.items() if r.get("tunnel")}
        if tunnelled:
            reach[frm] = tunnelled
    return {"topology": cfg["topology"], "master": cfg.get("master"), "masters": cfg.get("masters"),
            "two_masters": cfg.get("two_masters"), "sources": cfg.get("sources"),
            "switching": cfg.get("switching"), "health": cfg.get("health"), "servers": servers, "reach": reach}


def local_problems(cfg, answers, now, server_at, limits=None):
    """Rules 1 to 9 for the servers in ``answers`` only (a minion's own: the beacon)."""
    problems = []
    for name in sorted(answers):
        if name in cfg["servers"]:
            problems += server_row(cfg, name, answers[name], answers, now, server_at, limits)["problems"]
    return problems


# roles change during a planned switch before the minions' pillar names the new master
# (it is refreshed at the switch's end): these fire only when two checks in a row see them
CONFIRMED = ("wrong_source", "master_read_only", "writable_replica")


def beacon_events(previous, problems, confirm=2):
    """
    ``previous``: what the last interval returned as state (``{}`` the first
    time); ``problems``: what this one sees. Returns ``(events, state)``:

    * an event (``tag`` = kind) per ``(server, kind)`` that is new; kinds in
      :data:`CONFIRMED` (roles, which a switch moves for a moment) only once
      ``confirm`` checks in a row saw them;
    * a ``<kind>/cleared`` event per one fired before that is gone (for those
      kinds, gone ``confirm`` checks in a row);
    * nothing while a fault stays, however its detail moves.

    Several problems of one kind on one server are one event (details joined).
    """
    fired = dict(previous.get("fired") or {})
    pending = dict(previous.get("pending") or {})
    absent = dict(previous.get("absent") or {})
    current = {}
    for p in problems:
        key = f"{p['server']}|{p['kind']}"
        if key in current:
            current[key] = dict(current[key], detail=f"{current[key]['detail']}; {p['detail']}")
        else:
            current[key] = dict(p)
    events = []
    for key, p in sorted(current.items()):
        absent.pop(key, None)
        if key in fired:
            fired[key] = p
            continue
        seen = pending.get(key, 0) + 1
        if p["kind"] in CONFIRMED and seen < confirm:
            pending[key] = seen
            continue
        pending.pop(key, None)
        fired[key] = p
        events.append(dict(p, tag=p["kind"]))
    for key in [k for k in pending if k not in current]:
        del pending[key]
    for key, p in sorted(fired.items()):
        if key in current:
            continue
        gone = absent.get(key, 0) + 1
        if p["kind"] in CONFIRMED and gone < confirm:
            absent[key] = gone
            continue
        absent.pop(key, None)
        del fired[key]
        events.append({"tag": f"{p['kind']}/cleared", "server": p["server"], "kind": p["kind"],
                       "detail": f"cleared: {p['detail']}"})
    return events, {"fired": fired, "pending": pending, "absent": absent}
