"""
The planned switchover's plan, without Salt: the prechecks over the facts the
minions read (``mysqlrepl.switch_facts``), the events to move, the steps and
changes a switch makes, the calls that repoint the servers after the write
block, and what the servers' states say when the critical section's answer is
lost. The runner (``_runners/mysqlrepl.py``) reads the facts and acts;
``tests/unit/test_switch_plan.py`` drives every rule.
"""

import importlib.util
import os


def _load_rules():
    """``mysqlrepl_switch`` (GTID rules) from beside this file, loaded afresh: never a
    stale copy from ``sys.modules`` in a long-running salt process after a sync."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mysqlrepl_switch.py")
    spec = importlib.util.spec_from_file_location("_mysqlrepl_switchplan_rules", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_rules = _load_rules()


def _check(checks, name, ok, detail):
    checks.append({"check": name, "ok": bool(ok), "detail": detail})


def prechecks(cfg, facts, old, new, record):
    """
    Every precheck, each ``{"check", "ok", "detail"}``; nothing is changed by
    any of them. ``facts``: ``{server: switch_facts() dict, or an error text}``;
    ``record``: the master record file's content (``{}`` when none).
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
        for domain, have, first in _rules.purged_domains(pos, kept.get("start_state")):
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
    errant = _rules.errant_gtids(fn["gtid"]["binlog_state"], fo["gtid"]["binlog_state"])
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


def events_to_move(facts, old, new):
    """Events enabled on the old master that the new one holds disabled (replicated): enable them there."""
    enabled = {(e["db"], e["name"]) for e in facts[old]["events"] if e["status"] == "ENABLED"}
    return sorted([e["db"], e["name"]] for e in facts[new]["events"]
                  if (e["db"], e["name"]) in enabled and e["status"] != "ENABLED")


def plan(cfg, old, new, events):
    """The switch's steps (text) and the changes per server, for ``dry_run`` and the result."""
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


def lost_answer(states, new):
    """
    The critical section's answer is lost and its job is over: what the
    servers' states (``{name: {"read_only", "reachable", ...}}``) say. Once the
    new master is seen writable and no server is unknown, the job cannot undo
    it: promoted. Otherwise the switch stops. Returns ``{"promoted", "writable",
    "unknown", "seen"}`` (``seen``: text for the result and the record).
    """
    writable = sorted(n for n, st in states.items() if st.get("read_only") == "OFF")
    unknown = sorted(n for n, st in states.items() if st.get("reachable") is False)
    seen = (f"writable now: {', '.join(writable) or 'none'}"
            + (f"; unknown (unreachable): {', '.join(unknown)}" if unknown else ""))
    return {"promoted": writable == [new] and not unknown, "writable": writable, "unknown": unknown,
            "seen": seen}


def follower_jobs(cfg, old, new, demote_at, events=()):
    """
    After the write block, what each minion does for the new master in one job
    (``mysqlrepl.switch_followers``): ``({minion: {"servers": {name: kwargs},
    "finish": bool}}, problems)``. The minion of ``new`` finishes it (RESET
    SLAVE ALL); the old master is demoted at ``demote_at`` (the position read
    from it in the block) — without it (the block's answer was lost) it is left
    read-only and not replicating, and a problem says so; every other server
    is repointed from ``old``.
    """
    jobs, problems = {}, []
    for name, srv in sorted(cfg["servers"].items()):
        job = jobs.setdefault(srv["minion"], {"servers": {}, "finish": False})
        if name == new:
            job["finish"] = True
        elif name == old:
            if not demote_at:
                problems.append(f"{old} not demoted: the write block's answer was lost, so its position at "
                                f"read_only time is unknown; it stays read-only and not replicating: run "
                                f"salt-run mysqlrepl.rejoin server={old}"
                                + (f"; and check events {list(events)} are enabled on {new}" if events else ""))
                continue
            job["servers"][name] = {"demote": True, "demote_at": demote_at}
        else:
            job["servers"][name] = {"repoint_from": old}
    return {m: j for m, j in jobs.items() if j["servers"] or j["finish"]}, problems


def follower_results(jobs, answers, new):
    """
    The answers of the ``follower_jobs`` (``{minion: (ok, answer or error text)}``):
    ``{"repointed": {name: replication_apply result}, "waits": {name: result},
    "finish": result, "problems": [text], "states": {name: mysqlrepl.status
    answer, as the job read it last}}``; every server without a good answer
    is a problem, named.
    """
    out = {"repointed": {}, "waits": {}, "finish": None, "problems": [], "states": {}}
    for minion, job in sorted(jobs.items()):
        ok, ans = answers.get(minion, (False, "no answer"))
        if ok and isinstance(ans, dict):
            out["states"].update(ans.get("states") or {})
        if not ok or not isinstance(ans, dict):
            if job["finish"]:
                out["problems"].append(f"{new}: RESET SLAVE ALL failed: {ans}")
            for name in sorted(job["servers"]):
                out["problems"].append(f"{name}: {ans}")
                out["repointed"][name] = {"result": False, "comment": str(ans)}
            continue
        if job["finish"]:
            fin = ans.get("finish") or {"error": "no answer"}
            out["finish"] = fin
            if "error" in fin:
                out["problems"].append(f"{new}: RESET SLAVE ALL failed: {fin['error']}")
        for name in sorted(job["servers"]):
            got = (ans.get("servers") or {}).get(name) or {}
            applied = got.get("apply") or {"error": "no answer"}
            if "error" in applied:
                applied = {"result": False, "comment": applied["error"]}
            out["repointed"][name] = applied
            if not applied.get("result"):
                out["problems"].append(f"{name}: {applied.get('comment')}")
                continue
            waited = got.get("wait") or {"error": "did not wait"}
            out["waits"][name] = waited
            if "error" in waited:
                out["problems"].append(f"{name} did not catch up with {new}: {waited['error']}")
    return out


EARLY_FACTS_MAX_AGE_S = 5


def early_facts(cfg, answers, seen, held, age_s, max_age_s=EARLY_FACTS_MAX_AGE_S):
    """
    The servers' facts read beside the topology, before the topology's lock
    was taken (``answers``: ``{minion: mysqlrepl.switch_facts local=True}``),
    when they can stand for facts read under it; else ``None``: the prechecks
    read them again under the lock.

    ``seen``: the topology's lock record read (without the lock) before the
    facts were read (``None``: no lock file yet; ``"unreadable"``); ``held``:
    what taking the lock found (``{"previous": record, "created": bool}``);
    ``age_s``: seconds from that first read to taking the lock.

    They stand only when (1) no operation held the lock while they were read
    or took it since: either there was no lock file then and this switch made
    it, or the record then said its holder had let go (``released``) and the
    lock was found with that same record (same ``seq``); (2) they are at most
    ``max_age_s`` old; (3) every server of ``cfg`` was read by the minion that
    owns it, without error. An unreadable record, a holder that died holding
    the lock (no ``released``) or a record without ``seq`` never count.
    """
    if not answers or not isinstance(held, dict) or age_s > max_age_s:
        return None
    if seen is None:
        if not held.get("created"):
            return None
    elif not (isinstance(seen, dict) and isinstance(seen.get("seq"), int) and seen.get("released")
              and held.get("previous") == seen):
        return None
    out = {}
    for name, srv in cfg["servers"].items():
        got = (answers.get(srv["minion"]) or {}).get(name)
        if not isinstance(got, dict) or "error" in got or got.get("server") != name:
            return None
        out[name] = got
    return out


def server_summary(ok, st):
    """
    A server's line in the switch's result from its ``mysqlrepl.status``
    answer (``ok`` False: ``st`` is the error text): read_only, GTID position,
    link, threads, TLS verified both ways, and the cipher of each Binlog Dump.
    """
    if not ok or not isinstance(st, dict) or "error" in st:
        return {"reachable": False, "error": st.get("error") if isinstance(st, dict) else st}
    rs = st["replica"]
    return {
        "read_only": st["variables"].get("read_only"),
        "gtid_binlog_pos": st["gtid"]["binlog_pos"],
        "replicates_from": None if rs is None else f"{rs['host']}:{rs['port']}",
        "threads": None if rs is None else f"IO {rs['io_running']}, SQL {rs['sql_running']}",
        "tls_verified": None if rs is None else (rs["ssl_allowed"] == "Yes"
                                                  and rs["ssl_verify_server_cert"] == "Yes"),
        "binlog_dump_ciphers": [d.get("cipher") for d in st.get("binlog_dumps") or []],
    }


# ---------------------------------------------------------------------------
# syncing only where the formula's modules differ (the orchestrations)
# ---------------------------------------------------------------------------

SYNC_FORMS = ("modules", "states", "utils")


def sync_forms():
    """The module types a db minion runs from the formula (``_modules``, ``_states``, ``_utils``)."""
    return SYNC_FORMS


def stale_minions(served, answers):
    """
    ``served``: ``{"modules/x.py": sha256}`` of the salt-master's file server
    (``_modules``, ``_states``, ``_utils``); ``answers``: ``{minion: what
    mysqlrepl.formula_hashes returned}``. Returns ``{minion: reason}`` for every
    minion whose synced files differ (a file missing, different, or one the
    file server no longer has: ``saltutil.sync_all`` would remove it), and for
    every minion whose answer is not a dict of hashes (its module is missing,
    old or broken: syncing is what fixes that).
    """
    out = {}
    for minion, got in sorted(answers.items()):
        if not isinstance(got, dict) or not all(isinstance(v, str) for v in got.values()):
            out[minion] = f"no hashes ({str(got)[:120]})"
            continue
        differ = sorted(p for p in served if got.get(p) != served[p])
        extra = sorted(p for p in got if p not in served)
        if differ or extra:
            out[minion] = ", ".join(
                ([f"differs: {', '.join(differ[:5])}" + (" ..." if len(differ) > 5 else "")] if differ else [])
                + ([f"not served: {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else "")] if extra else []))
    return out
