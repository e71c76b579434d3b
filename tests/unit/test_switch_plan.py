"""
The switch's plan without servers or Salt (``_utils/mysqlrepl_switchplan.py``):
every precheck passes on a healthy topology and each one fails, alone and with
its reason, when its own fact goes wrong; the events to move; the steps; the
follower jobs per minion and how their answers become the result; what the
servers' states decide when the critical section's answer is lost.
"""

import copy

import pytest

import _utils.mysqlrepl_switchplan as sp

OLD_ADDR = ("10.0.0.11", 3306)


def cfg(minions=None):
    minions = minions or {"db1": "h1", "db2": "h2", "db3": "h3"}
    return {
        "topology": "prod",
        "master": "db1",
        "servers": {n: {"name": n, "address": f"10.0.0.{11 + i}", "port": 3306, "minion": minions[n]}
                    for i, n in enumerate(sorted(minions))},
        "switch": {"max_lag": 5, "long_trx_seconds": 5, "large_trx_rows": 10000, "lock_budget": 2,
                   "catchup_timeout": 10, "kill_app_sessions": False},
        "replication": {"user": "repl"},
        "admin": {"user": "mysqlrepl_admin", "password": "x"},
    }


def replica(host="10.0.0.11", **kw):
    rs = {"host": host, "port": 3306, "io_running": "Yes", "sql_running": "Yes", "last_sql_errno": 0,
          "last_sql_error": "", "last_io_errno": 0, "last_io_error": "", "ssl_allowed": "Yes",
          "ssl_verify_server_cert": "Yes", "using_gtid": "Slave_Pos", "seconds_behind": 0}
    rs.update(kw)
    return rs


def fact(read_only="ON", rs=None, binlog_state="0-11-100", slave_pos="0-11-100", events=()):
    return {
        "version": ["mariadb", [10, 11, 6]],
        "replica": rs,
        "gtid": {"binlog_state": binlog_state, "slave_pos": slave_pos},
        "binlogs": {"oldest": "bin.000001", "start_state": ""},
        "variables": {"read_only": read_only, "log_bin": "ON", "log_slave_updates": "ON"},
        "repl_account": True, "tls_missing": [], "admin_account": True,
        "transactions": [], "locks": [], "locks_note": "", "lease": None,
        "bypass_accounts": {}, "events": list(events),
    }


def healthy():
    return {"db1": fact(read_only="OFF", slave_pos=""), "db2": fact(rs=replica()), "db3": fact(rs=replica())}


def failed(facts, record=None, c=None):
    checks = sp.prechecks(c or cfg(), facts, "db1", "db2", record or {})
    return {ch["check"]: ch["detail"] for ch in checks if not ch["ok"]}, checks


def test_every_precheck_passes_on_a_healthy_topology():
    bad, checks = failed(healthy())
    assert bad == {}
    names = {c["check"] for c in checks}
    assert names == {"reachable", "no switch in progress", "versions compatible",
                     "new master replicates from the current master", "lag",
                     "other replicas replicate from the current master",
                     "replicas' positions still in the new master's binary logs", "binary log",
                     "accounts and certificates", "no errant transactions", "no long or large transactions",
                     "no locks holding read_only up", "no mysqlrepl.lock lease",
                     "no app user can write through read_only", "no event can write through read_only"}


def _set(path, value):
    def change(facts):
        node = facts
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


CASES = [
    # (what goes wrong, change to the healthy facts, the one check that fails, a word of its reason)
    ("db3 unreachable", _set(["db3"], "cannot connect"), "reachable", "db3: cannot connect"),
    ("mariadb 10.6 replica", _set(["db3", "version"], ["mariadb", [10, 6, 1]]), "versions compatible", "MariaDB"),
    ("mysql", _set(["db3", "version"], ["mysql", [8, 0, 36]]), "versions compatible", "MariaDB only"),
    ("new master replicates from nobody", _set(["db2", "replica"], None),
     "new master replicates from the current master", "replicates from nobody"),
    ("new master replicates elsewhere", _set(["db2", "replica", "host"], "10.0.0.13"),
     "new master replicates from the current master", "not db1"),
    ("no TLS verification", _set(["db2", "replica", "ssl_verify_server_cert"], "No"),
     "new master replicates from the current master", "TLS"),
    ("no GTID", _set(["db2", "replica", "using_gtid"], "No"),
     "new master replicates from the current master", "not using GTID"),
    # both threads running, the new master 30 s behind (MASTER_DELAY): only the lag check refuses
    ("lagging with threads running", _set(["db2", "replica", "seconds_behind"], 30), "lag", "30s behind"),
    ("other replica stuck", _set(["db3", "replica", "sql_running"], "No"),
     "other replicas replicate from the current master", "db3: IO thread Yes, SQL thread No"),
    ("other replica elsewhere", _set(["db3", "replica"], None),
     "other replicas replicate from the current master", "db3 does not replicate from db1"),
    ("binlogs purged", _set(["db2", "binlogs", "start_state"], "0-11-150"),
     "replicas' positions still in the new master's binary logs", "db3 is at seq 100"),
    ("no log_slave_updates", _set(["db2", "variables", "log_slave_updates"], "OFF"),
     "binary log", "log_slave_updates OFF"),
    ("no replication account", _set(["db2", "repl_account"], False), "accounts and certificates",
     "replication account repl missing"),
    ("TLS files missing", _set(["db2", "tls_missing"], ["/etc/pki/x.key"]), "accounts and certificates",
     "TLS files missing"),
    ("no admin account", _set(["db1", "admin_account"], False), "accounts and certificates",
     "admin account mysqlrepl_admin"),
    ("errant transaction", _set(["db2", "gtid", "binlog_state"], "0-11-100,0-12-3"),
     "no errant transactions", "0-12-3"),
    ("old master read-only", _set(["db1", "variables", "read_only"], "ON"), "old master writable",
     "already read-only"),
    ("new master writable", _set(["db2", "variables", "read_only"], "OFF"), "new master read-only",
     "two writable"),
    ("long transaction", _set(["db1", "transactions"], [{"id": 7, "user": "app", "age_s": 60,
                                                          "rows_modified": 1}]),
     "no long or large transactions", "connection 7 (app) open 60s"),
    ("large transaction", _set(["db1", "transactions"], [{"id": 8, "user": "app", "age_s": 0,
                                                           "rows_modified": 20000}]),
     "no long or large transactions", "20000 rows"),
    ("LOCK TABLES", _set(["db1", "locks"], [{"id": 9, "user": "app", "mode": "LOCK TABLES WRITE",
                                              "db": "app", "tbl": "t"}]),
     "no locks holding read_only up", "connection 9 (app) holds LOCK TABLES WRITE on app.t"),
    ("lease", _set(["db3", "lease"], {"until": 1}), "no mysqlrepl.lock lease", "db3"),
    ("bypass account", _set(["db1", "bypass_accounts"], {"app@%": "READ_ONLY ADMIN"}),
     "no app user can write through read_only", "app@%: READ_ONLY ADMIN"),
    ("bypass event", _set(["db1", "events"], [{"db": "app", "name": "ev", "status": "ENABLED",
                                                "definer": "root@localhost", "bypass": "ALL PRIVILEGES"}]),
     "no event can write through read_only", "event app.ev runs as root@localhost"),
]


@pytest.mark.parametrize("what,change,check,reason", CASES, ids=[c[0] for c in CASES])
def test_each_precheck_fails_alone_with_its_reason(what, change, check, reason):
    facts = healthy()
    change(facts)
    bad, _checks = failed(facts)
    assert set(bad) == {check}, (what, bad)
    assert reason in bad[check], (what, bad[check])


def test_lag_unknown_when_a_thread_is_stopped():
    facts = healthy()
    facts["db2"]["replica"].update(io_running="No", seconds_behind=None)
    bad, _ = failed(facts)
    assert "lag is unknown" in bad["lag"]
    assert set(bad) == {"lag", "new master replicates from the current master"}


def test_no_admin_password_in_pillar():
    c = cfg()
    c["admin"]["password"] = None
    bad, _ = failed(healthy(), c=c)
    assert set(bad) == {"accounts and certificates"} and "admin:password is not set" in bad[
        "accounts and certificates"]


def test_switch_in_progress_and_stale_minion_pillar():
    bad, _ = failed(healthy(), record={"master": "db2", "switching": {"from": "db1", "to": "db2",
                                                                       "phase": "stopped: x"}})
    assert set(bad) == {"no switch in progress"} and "stopped: x" in bad["no switch in progress"]
    bad, _ = failed(healthy(), record={"master": "db3"})
    assert set(bad) == {"no switch in progress"} and "refresh the db minions' pillar" in bad[
        "no switch in progress"]
    bad, _ = failed(healthy(), record={"master": "db1"})
    assert bad == {}


def test_unreachable_new_master_stops_the_checks_that_need_it():
    facts = healthy()
    facts["db2"] = "no answer"
    bad, checks = failed(facts)
    assert set(bad) == {"reachable"}
    assert [c["check"] for c in checks] == ["reachable", "no switch in progress"]


def test_events_to_move_and_the_plan():
    ev = {"db": "app", "name": "purge", "definer": "app@%", "bypass": None}
    facts = healthy()
    facts["db1"]["events"] = [dict(ev, status="ENABLED"), dict(ev, name="off", status="DISABLED")]
    facts["db2"]["events"] = [dict(ev, status="SLAVESIDE_DISABLED"), dict(ev, name="off", status="DISABLED")]
    events = sp.events_to_move(facts, "db1", "db2")
    assert events == [["app", "purge"]]
    steps, changes = sp.plan(cfg(), "db1", "db2", events)
    assert any("MASTER_GTID_WAIT" in s for s in steps)
    assert "db2: ALTER EVENT app.purge ENABLE" in steps
    assert changes["db1"] == {"read_only": "OFF -> ON", "replicates from": "nobody -> db2"}
    assert changes["db3"] == {"replicates from": "db1 -> db2"}
    assert changes["db2"]["events enabled"] == ["app.purge"]
    c = cfg()
    c["switch"]["kill_app_sessions"] = True
    assert any("KILL the app sessions" in s for s in sp.plan(c, "db1", "db2", [])[0])


def test_lost_answer_promoted_only_when_the_new_master_alone_is_writable():
    st = {"db1": {"read_only": "ON"}, "db2": {"read_only": "OFF"}, "db3": {"read_only": "ON"}}
    assert sp.lost_answer(st, "db2")["promoted"] is True
    two = copy.deepcopy(st)
    two["db1"]["read_only"] = "OFF"
    out = sp.lost_answer(two, "db2")
    assert out["promoted"] is False and out["writable"] == ["db1", "db2"]
    gone = copy.deepcopy(st)
    gone["db3"] = {"reachable": False}
    out = sp.lost_answer(gone, "db2")
    assert out["promoted"] is False and "unknown (unreachable): db3" in out["seen"]
    none = {n: {"read_only": "ON"} for n in st}
    assert sp.lost_answer(none, "db2")["seen"] == "writable now: none"


def test_follower_jobs_one_per_minion():
    c = cfg({"db1": "h1", "db2": "h2", "db3": "h2", "db4": "h2"})
    jobs, problems = sp.follower_jobs(c, "db1", "db2", "0-11-100")
    assert problems == []
    assert jobs == {"h1": {"servers": {"db1": {"demote": True, "demote_at": "0-11-100"}}, "finish": False},
                    "h2": {"servers": {"db3": {"repoint_from": "db1"}, "db4": {"repoint_from": "db1"}},
                           "finish": True}}


def test_follower_jobs_without_the_position_leave_the_old_master_alone():
    jobs, problems = sp.follower_jobs(cfg(), "db1", "db2", None, [["app", "ev"]])
    assert "h1" not in jobs
    assert len(problems) == 1 and "db1 not demoted" in problems[0] and "app" in problems[0]


def test_follower_results():
    c = cfg({"db1": "h1", "db2": "h2", "db3": "h2", "db4": "h3"})
    jobs, _ = sp.follower_jobs(c, "db1", "db2", "0-11-100")
    answers = {
        "h1": (True, {"finish": None, "pos": "0-12-5", "servers": {
            "db1": {"apply": {"result": True, "comment": "ok"}, "wait": {"seconds": 0.1}}}}),
        "h2": (True, {"finish": {"pos": "0-12-5", "reset": True}, "pos": "0-12-5", "servers": {
            "db3": {"apply": {"result": True, "comment": "ok"}, "wait": {"error": "did not reach 0-12-5"}}}}),
        "h3": (False, "minion h3 did not answer"),
    }
    out = sp.follower_results(jobs, answers, "db2")
    assert out["finish"] == {"pos": "0-12-5", "reset": True}
    assert out["repointed"]["db1"]["result"] is True
    assert out["repointed"]["db4"] == {"result": False, "comment": "minion h3 did not answer"}
    assert out["problems"] == ["db3 did not catch up with db2: did not reach 0-12-5",
                               "db4: minion h3 did not answer"]
    answers["h2"] = (True, {"finish": {"error": "db2 is not writable"}, "servers": {
        "db3": {"apply": {"error": "boom"}}}})
    out = sp.follower_results(jobs, answers, "db2")
    assert "db2: RESET SLAVE ALL failed: db2 is not writable" in out["problems"]
    assert "db3: boom" in out["problems"]
    assert out["states"] == {}  # no job read its servers' state: the runner reads them itself


def _status(read_only="OFF", replica=True, verified="Yes"):
    rs = None if not replica else {"host": "127.0.0.12", "port": 3306, "io_running": "Yes",
                                   "sql_running": "Yes", "ssl_allowed": "Yes",
                                   "ssl_verify_server_cert": verified}
    return {"variables": {"read_only": read_only}, "gtid": {"binlog_pos": "0-12-5"}, "replica": rs,
            "binlog_dumps": [{"cipher": "TLS_AES_256_GCM_SHA384"}]}


def test_follower_results_carry_the_states_the_jobs_read():
    c = cfg({"db1": "h1", "db2": "h2", "db3": "h2"})
    jobs, _ = sp.follower_jobs(c, "db1", "db2", "0-11-100")
    ok = {"apply": {"result": True, "comment": "ok"}, "wait": {"seconds": 0.1}}
    answers = {
        "h1": (True, {"servers": {"db1": ok}, "states": {"db1": _status("ON")}}),
        "h2": (True, {"finish": {"pos": "0-12-5"}, "servers": {"db3": ok},
                      "states": {"db2": _status(replica=False), "db3": {"error": "cannot connect"}}}),
    }
    out = sp.follower_results(jobs, answers, "db2")
    assert sorted(out["states"]) == ["db1", "db2", "db3"] and out["states"]["db3"] == {"error": "cannot connect"}


def test_early_facts_stand_only_when_no_operation_held_the_lock_since():
    c = cfg({"db1": "h1", "db2": "h2", "db3": "h2"})
    answers = {"h1": {"db1": {"server": "db1"}}, "h2": {"db2": {"server": "db2"}, "db3": {"server": "db3"}}}
    want = {"db1": {"server": "db1"}, "db2": {"server": "db2"}, "db3": {"server": "db3"}}
    last = {"seq": 7, "operation": "seed", "pid": 1, "since": "t", "released": "t2"}
    # never taken: no file before, this switch made it
    assert sp.early_facts(c, answers, None, {"previous": None, "created": True}, 1.0) == want
    # let go before the read, and nobody took it since
    assert sp.early_facts(c, answers, last, {"previous": dict(last), "created": False}, 1.0) == want
    # no file before, but another operation made it first (and let go) before this switch took it
    assert sp.early_facts(c, answers, None, {"previous": dict(last), "created": False}, 1.0) is None
    # taken since the read (another seq), held during the read (no released), died holding it
    assert sp.early_facts(c, answers, last, {"previous": dict(last, seq=8), "created": False}, 1.0) is None
    held = {k: v for k, v in last.items() if k != "released"}
    assert sp.early_facts(c, answers, held, {"previous": dict(held, released="t3"), "created": False}, 1.0) is None
    assert sp.early_facts(c, answers, held, {"previous": held, "created": False}, 1.0) is None
    # unreadable records (a file cut short) and records of older runners (no seq) never count
    assert sp.early_facts(c, answers, "unreadable", {"previous": "unreadable", "created": False}, 1.0) is None
    old = {"operation": "seed", "pid": 1, "since": "t", "taken": 1.0, "released": 2.0}
    assert sp.early_facts(c, answers, old, {"previous": old, "created": False}, 1.0) is None
    # too old
    assert sp.early_facts(c, answers, last, {"previous": dict(last), "created": False}, 5.1) is None
    # a server missing, failed, or answered by a minion that does not own it
    ok = {"previous": dict(last), "created": False}
    assert sp.early_facts(c, None, last, ok, 1.0) is None
    assert sp.early_facts(c, {"h1": answers["h1"]}, last, ok, 1.0) is None
    assert sp.early_facts(c, dict(answers, h1={"db1": {"error": "cannot connect"}}), last, ok, 1.0) is None
    assert sp.early_facts(c, {"h1": {"db1": {"server": "db1"}, "db2": {"server": "db2"}, "db3": {"server": "db3"}}},
                          last, ok, 1.0) is None


def test_server_summary():
    assert sp.server_summary(True, _status("ON")) == {
        "read_only": "ON", "gtid_binlog_pos": "0-12-5", "replicates_from": "127.0.0.12:3306",
        "threads": "IO Yes, SQL Yes", "tls_verified": True, "binlog_dump_ciphers": ["TLS_AES_256_GCM_SHA384"]}
    assert sp.server_summary(True, _status(verified="No"))["tls_verified"] is False
    master = sp.server_summary(True, _status(replica=False))
    assert master["replicates_from"] is None and master["tls_verified"] is None
    assert sp.server_summary(False, "db3: timed out") == {"reachable": False, "error": "db3: timed out"}
    assert sp.server_summary(True, {"error": "cannot connect"}) == {"reachable": False, "error": "cannot connect"}


def test_stale_minions():
    served = {"modules/mysqlrepl.py": "a", "utils/mysqlrepl_sql.py": "b"}
    answers = {
        "same": {"modules/mysqlrepl.py": "a", "utils/mysqlrepl_sql.py": "b"},
        "old": {"modules/mysqlrepl.py": "OLD", "utils/mysqlrepl_sql.py": "b"},
        "missing": {"modules/mysqlrepl.py": "a"},
        "extra": {"modules/mysqlrepl.py": "a", "utils/mysqlrepl_sql.py": "b", "utils/gone.py": "c"},
        "no module": "'mysqlrepl.formula_hashes' is not available.",
        "silent": None,
    }
    out = sp.stale_minions(served, answers)
    assert set(out) == {"old", "missing", "extra", "no module", "silent"}
    assert out["old"] == "differs: modules/mysqlrepl.py"
    assert out["missing"] == "differs: utils/mysqlrepl_sql.py"
    assert out["extra"] == "not served: utils/gone.py"
    assert "not available" in out["no module"]
