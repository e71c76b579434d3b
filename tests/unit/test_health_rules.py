"""
The operator's view (``_utils/mysqlrepl_health.py``) without servers: each
rule's problem from ``mysqlrepl.status``-shaped answers, the verdict's order,
and nothing reported for a healthy topology.
"""

import copy
import datetime

import _utils.mysqlrepl_config as conf
import _utils.mysqlrepl_health as hl
import _utils.mysqlrepl_replication as rp

PILLAR = {
    "topology": "production",
    "master": "db1",
    "ca": {"minion": "db1"},
    "replication": {"password": "s3cret"},
    "servers": {
        "db1": {"address": "10.0.0.11", "server_id": 11},
        "db2": {"address": "10.0.0.12", "server_id": 12},
        "db3": {"address": "10.0.0.13", "server_id": 13},
    },
}
CFG = conf.load(copy.deepcopy(PILLAR))
NOW = datetime.datetime(2026, 12, 8, tzinfo=datetime.timezone.utc)
FAR = "2027-12-08T00:00:00+00:00"


def link(to="db1", **over):
    srv = CFG["servers"][to]
    rs = {"host": srv["address"], "port": srv["port"], "io_running": "Yes", "sql_running": "Yes",
          "ssl_allowed": "Yes", "ssl_verify_server_cert": "Yes", "seconds_behind": 0,
          "last_io_errno": 0, "last_io_error": "", "last_sql_errno": 0, "last_sql_error": ""}
    rs.update(over)
    return rs


def answer(read_only="ON", rs=None, slave_pos="0-11-100", binlog_pos="0-11-100", dumps=None, certs=None, **extra):
    out = {"variables": {"read_only": read_only}, "replica": rs,
           "gtid": {"slave_pos": slave_pos, "binlog_pos": binlog_pos},
           "binlog_dumps": dumps or [],
           "certs": certs if certs is not None else {"server": {"not_after": FAR},
                                                      "replication": {"not_after": FAR}}}
    out.update(extra)
    return out


def healthy():
    return {
        "db1": answer(read_only="OFF", dumps=[{"user": "repl", "host": "10.0.0.12", "cipher": "TLS_AES_256_GCM_SHA384"},
                                              {"user": "repl", "host": "10.0.0.13", "cipher": "TLS_AES_256_GCM_SHA384"}]),
        "db2": answer(rs=link()),
        "db3": answer(rs=link()),
    }


def run(answers, cfg=CFG, **limits):
    return hl.report(cfg, answers, NOW, rp.server_at, limits or None)


def kinds(out):
    return [(p["server"], p["kind"]) for p in out["problems"]]


def test_a_healthy_topology_has_no_problem_and_says_so():
    out = run(healthy())
    assert out["healthy"] is True and out["problems"] == [] and out["verdict"].startswith("healthy: 3 servers")
    db2 = out["servers"]["db2"]
    assert (db2["role"], db2["seen"], db2["io"], db2["sql"], db2["tls"]) == (
        "replica of db1", "replica of db1", "Yes", "Yes", "verified")
    assert db2["cipher"] == "TLS_AES_256_GCM_SHA384" and db2["gtid_behind"] == {}
    assert out["servers"]["db1"]["seen"] == "master (writable, replicates from nobody)"
    assert 364 < db2["cert_days_left"] < 366


def test_an_unreachable_server_is_named_with_its_error():
    answers = healthy()
    answers["db3"] = {"error": "Minion did not return"}
    out = run(answers)
    assert kinds(out) == [("db3", "unreachable")] and "Minion did not return" in out["verdict"]
    assert out["servers"]["db3"]["seen"] == "unreachable"


def test_a_missing_answer_counts_as_unreachable():
    answers = healthy()
    del answers["db2"]
    assert kinds(run(answers)) == [("db2", "unreachable")]


def test_a_stopped_sql_thread_is_reported_with_its_error():
    answers = healthy()
    answers["db2"]["replica"] = link(sql_running="No", last_sql_errno=1062, last_sql_error="Duplicate entry '7'")
    out = run(answers)
    assert kinds(out) == [("db2", "sql_stopped")]
    assert "1062: Duplicate entry '7'" in out["verdict"] and out["servers"]["db2"]["last_sql_error"].startswith("1062")


def test_an_io_thread_failing_on_a_password_is_reported():
    answers = healthy()
    answers["db3"]["replica"] = link(io_running="Connecting", last_io_errno=1045, last_io_error="Access denied")
    out = run(answers)
    assert kinds(out) == [("db3", "io_stopped")] and "1045: Access denied" in out["problems"][0]["detail"]


def test_lag_in_seconds_over_the_threshold():
    answers = healthy()
    answers["db2"]["replica"] = link(seconds_behind=120)
    assert kinds(run(answers)) == [("db2", "lag")]
    assert kinds(run(answers, lag_s=300)) == []


def test_lag_in_transactions_when_seconds_do_not_show_it():
    answers = healthy()
    answers["db1"]["gtid"]["binlog_pos"] = "0-11-5000"
    out = run(answers)
    assert kinds(out) == [("db2", "lag"), ("db3", "lag")]
    assert out["servers"]["db2"]["gtid_behind"] == {0: 4900} and "lacks 4900 transactions" in out["verdict"]


def test_a_link_without_tls_or_without_verification():
    answers = healthy()
    answers["db2"]["replica"] = link(ssl_allowed="No")
    answers["db3"]["replica"] = link(ssl_verify_server_cert="No")
    assert kinds(run(answers)) == [("db2", "no_tls"), ("db3", "not_verified")]


def test_a_binlog_dump_without_cipher_is_reported_on_the_master():
    answers = healthy()
    answers["db1"]["binlog_dumps"][1]["cipher"] = ""
    out = run(answers)
    assert kinds(out) == [("db1", "no_tls")] and out["servers"]["db3"]["cipher"] == ""


def test_certificates_near_expiry_or_expired():
    answers = healthy()
    answers["db2"]["certs"]["server"]["not_after"] = "2026-12-15T00:00:00+00:00"
    answers["db3"]["certs"]["replication"]["not_after"] = "2026-12-01T00:00:00+00:00"
    out = run(answers)
    assert kinds(out) == [("db2", "cert_expiry"), ("db3", "cert_expiry")]
    assert "expires in 7.0 days" in out["problems"][0]["detail"] and "expired" in out["problems"][1]["detail"]
    assert kinds(run(answers, cert_days=3)) == [("db3", "cert_expiry")]


def test_a_writable_replica_and_two_writable_servers():
    answers = healthy()
    answers["db2"]["variables"]["read_only"] = "OFF"
    out = run(answers)
    assert kinds(out) == [("db1,db2", "two_writable"), ("db2", "writable_replica")]
    assert out["verdict"].startswith("unhealthy: 2 servers are writable (db1, db2): only db1 may be")


def test_the_master_read_only_without_a_switch():
    answers = healthy()
    answers["db1"]["variables"]["read_only"] = "ON"
    assert kinds(run(answers)) == [("db1", "master_read_only")]
    switching = dict(CFG, switching={"from": "db1", "to": "db2", "jid": "J", "since": "t"})
    assert kinds(run(answers, cfg=switching)) == []


def test_a_replica_of_the_wrong_server_or_of_nobody():
    answers = healthy()
    answers["db3"]["replica"] = link(to="db2")
    answers["db2"]["replica"] = None
    out = run(answers)
    assert kinds(out) == [("db2", "wrong_source"), ("db3", "wrong_source")]
    assert out["servers"]["db3"]["seen"] == "replica of db2"
    assert "db2 should replicate from db1, replicates from nobody" in out["problems"][0]["detail"]


def test_a_link_outside_the_topology_is_named_by_address():
    answers = healthy()
    answers["db3"]["replica"] = dict(link(), host="192.0.2.50")
    out = run(answers)
    assert "192.0.2.50:3306 (outside the topology)" in out["servers"]["db3"]["seen"]


def test_a_tunnel_that_is_down():
    answers = healthy()
    answers["db2"]["tunnels"] = [{"tunnel": "db2-db1", "side": "near", "up": False, "problem": "autossh not running"}]
    out = run(answers)
    assert kinds(out) == [("db2", "tunnel_down")] and "autossh not running" in out["verdict"]
    assert out["servers"]["db2"]["tunnels"] == [{"tunnel": "db2-db1", "side": "near", "up": False}]


def test_a_pair_allows_two_writable_masters_but_not_three():
    pair = conf.load(dict(copy.deepcopy(PILLAR), master=None, masters=["db1", "db2"]))
    answers = {
        "db1": answer(read_only="OFF", rs=link(to="db2")),
        "db2": answer(read_only="OFF", rs=link(to="db1")),
        "db3": answer(rs=link()),
    }
    out = run(answers, cfg=pair)
    assert out["healthy"], out["problems"]
    assert out["servers"]["db1"]["role"] == "pair master, replica of db2"
    answers["db3"]["variables"]["read_only"] = "OFF"
    assert kinds(run(answers, cfg=pair))[0] == ("db1,db2,db3", "two_writable")


def test_problems_are_ordered_by_gravity_whatever_the_server():
    answers = healthy()
    answers["db2"]["replica"] = link(seconds_behind=999)
    answers["db3"] = {"error": "down"}
    out = run(answers)
    assert kinds(out) == [("db3", "unreachable"), ("db2", "lag")] and "(and 1 more)" in out["verdict"]


def test_gtid_behind_counts_per_domain():
    assert hl.gtid_behind("0-11-5,1-12-9", "0-11-8,1-12-9,2-13-4") == {0: 3, 2: 4}
    assert hl.gtid_behind("", "") == {}


# -- the beacon: local servers, events on change -------------------------------------------

def test_the_beacon_sees_only_its_own_servers():
    answers = healthy()
    answers["db2"]["replica"] = link(seconds_behind=100)
    answers["db2"]["variables"]["read_only"] = "OFF"
    local = {"db2": answers["db2"]}
    problems = hl.local_problems(CFG, local, NOW, rp.server_at)
    assert [(p["server"], p["kind"]) for p in problems] == [("db2", "lag"), ("db2", "writable_replica")]


def test_a_healthy_minion_fires_nothing_ever():
    events, state = hl.beacon_events({}, hl.local_problems(CFG, {"db2": healthy()["db2"]}, NOW, rp.server_at))
    assert events == [] and state == {"fired": {}, "pending": {}, "absent": {}}
    assert hl.beacon_events(state, [])[0] == []


def test_a_fault_fires_once_while_it_stays_then_cleared_once():
    lag = {"server": "db2", "kind": "lag", "detail": "db2 is 40 s behind db1"}
    events, state = hl.beacon_events({}, [lag])
    assert events == [dict(lag, tag="lag")]
    worse = dict(lag, detail="db2 is 90 s behind db1")
    events, state = hl.beacon_events(state, [worse])
    assert events == []
    events, state = hl.beacon_events(state, [])
    assert events == [{"tag": "lag/cleared", "server": "db2", "kind": "lag", "detail": "cleared: db2 is 90 s behind db1"}]
    assert state["fired"] == {}


def test_a_second_kind_on_the_same_server_fires_its_own_event():
    stopped = {"server": "db2", "kind": "sql_stopped", "detail": "db2: SQL thread No (1062: dup)"}
    lag = {"server": "db2", "kind": "lag", "detail": "db2 is 40 s behind db1"}
    _events, state = hl.beacon_events({}, [lag])
    events, _state = hl.beacon_events(state, [lag, stopped])
    assert [e["tag"] for e in events] == ["sql_stopped"]


def test_two_problems_of_one_kind_are_one_event():
    a = {"server": "db1", "kind": "no_tls", "detail": "db1 sends its binlog without TLS to r@h1"}
    b = {"server": "db1", "kind": "no_tls", "detail": "db1 sends its binlog without TLS to r@h2"}
    events, state = hl.beacon_events({}, [a, b])
    assert len(events) == 1 and events[0]["detail"].endswith("r@h1; db1 sends its binlog without TLS to r@h2")


def test_a_cipher_is_told_by_address_or_by_being_the_only_one():
    answers = healthy()
    for dump in answers["db1"]["binlog_dumps"]:
        dump["host"] = "127.0.0.1"  # replicas seen from another address than pillar's
    assert run(answers)["servers"]["db2"]["cipher"] == "TLS_AES_256_GCM_SHA384"
    answers["db1"]["binlog_dumps"][0]["cipher"] = "TLS_AES_128_GCM_SHA256"
    assert run(answers)["servers"]["db2"]["cipher"] is None


def test_the_view_each_minion_sends_is_enough_for_the_report_and_holds_no_secret():
    view = hl.view(CFG)
    assert "s3cret" not in repr(view) and "tls_files" not in repr(view)
    assert run(healthy(), cfg=view) == run(healthy())
    answers = healthy()
    answers["db3"]["replica"] = link(to="db2")
    assert run(answers, cfg=view) == run(answers)



def test_role_faults_fire_only_when_two_checks_in_a_row_see_them():
    """A planned switch moves roles before the minions' pillar names the new master: one check
    seeing it is no alarm; a writable replica that stays is."""
    odd = {"server": "db2", "kind": "master_read_only", "detail": "db2 is the master of record but read-only"}
    events, state = hl.beacon_events({}, [odd])
    assert events == [] and state["pending"] == {"db2|master_read_only": 1}
    events, state = hl.beacon_events(state, [])
    assert events == [] and state["pending"] == {}
    _events, state = hl.beacon_events({}, [odd])
    events, state = hl.beacon_events(state, [odd])
    assert [e["tag"] for e in events] == ["master_read_only"]
    events, state = hl.beacon_events(state, [])
    assert events == [] and state["absent"] == {"db2|master_read_only": 1}
    events, state = hl.beacon_events(state, [odd])
    assert events == [] and state["absent"] == {}
    _events, state = hl.beacon_events(state, [])
    events, state = hl.beacon_events(state, [])
    assert [e["tag"] for e in events] == ["master_read_only/cleared"]


def test_transactions_a_replica_wrote_itself_are_errant():
    answers = healthy()
    for name, sid in (("db1", 11), ("db2", 12), ("db3", 13)):
        answers[name]["variables"]["server_id"] = str(sid)
    answers["db1"]["gtid"]["binlog_state"] = "0-11-100"
    answers["db2"]["gtid"]["binlog_state"] = "0-11-100,0-12-101"
    answers["db3"]["gtid"]["binlog_state"] = "0-11-101"  # read a moment after db1: not errant
    out = run(answers)
    assert kinds(out) == [("db2", "errant")] and "0-12-101" in out["verdict"]
    assert hl.errant("0-11-100,0-12-5", "0-11-90,0-12-5", 12) == []


def test_a_certificate_that_cannot_be_read_is_not_an_expiry():
    answers = healthy()
    answers["db2"]["certs"]["server"] = {"error": "cannot connect: 4151: Access denied, this account is locked"}
    out = run(answers)
    assert kinds(out) == [("db2", "cert_unreadable")] and "account is locked" in out["verdict"]


def test_a_drill_certificate_says_minutes():
    answers = healthy()
    answers["db2"]["certs"]["server"]["not_after"] = "2026-12-08T00:28:00+00:00"
    assert "expires in 28 minutes" in run(answers)["verdict"]


def _outputter(name):
    import importlib.util  # pylint: disable=import-outside-toplevel
    import pathlib  # pylint: disable=import-outside-toplevel
    path = pathlib.Path(__file__).resolve().parents[2] / "_output" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_out_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_terminal_table_starts_with_the_verdict_and_marks_the_unknown():
    answers = healthy()
    answers["db2"]["replica"] = link(sql_running="No", last_sql_errno=1062, last_sql_error="dup")
    answers["db1"] = {"error": "down"}
    text = _outputter("mysqlrepl_health").render(dict(run(answers), topology="production"))
    lines = text.splitlines()
    assert lines[0].startswith("production: unhealthy: db1 cannot be read: down (and 1 more)")
    assert lines[2].split()[:3] == ["SERVER", "ROLE", "(RECORD)"]
    db2 = next(line for line in lines if line.startswith("db2 "))
    assert "Yes/No" in db2 and "0s/?trx" in db2, db2
    assert "  db2 last_sql_error: 1062: dup" in lines and "  - [sql_stopped] db2: SQL thread No (1062: dup)" in lines


def test_a_progress_event_prints_its_message_alone():
    out = _outputter("mysqlrepl_progress").output({"suffix": "progress", "event": {"message": "db3 <- db1: 1 MB"}})
    assert out == "db3 <- db1: 1 MB"
