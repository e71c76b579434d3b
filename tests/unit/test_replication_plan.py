"""
Replication planning (``_utils/mysqlrepl_replication.py``) without servers: every
exit of ``plan()`` — refusals change nothing, the master guard, demotion rules,
what is sent and when the password travels.
"""

import copy

import pytest

import _utils.mysqlrepl_config as conf
import _utils.mysqlrepl_replication as rp

PILLAR = {
    "topology": "production",
    "master": "db1",
    "ca": {"minion": "db1"},
    "replication": {"password": "s3cret", "require": "x509", "heartbeat_period": 2, "connect_retry": 5},
    "servers": {
        "db1": {"address": "10.0.0.11", "server_id": 11},
        "db2": {"address": "10.0.0.12", "server_id": 12},
        "db3": {"address": "10.0.0.13", "server_id": 13},
    },
}
CFG = conf.load(copy.deepcopy(PILLAR))
DB1, DB2 = CFG["servers"]["db1"], CFG["servers"]["db2"]


def live_link(srv=DB2, master=DB1, **over):
    """A healthy link of ``srv`` to ``master`` exactly as pillar wants it."""
    want = rp.desired_link(dict(CFG, master=master["name"]), srv)
    rs = dict(want, ssl_allowed="Yes", io_running="Yes", sql_running="Yes", last_io_errno=0,
              last_io_error="", last_sql_errno=0, last_sql_error="")
    rs.update(over)
    return rs


def replica_facts(**over):
    facts = {"read_only": "ON", "gtid_slave_pos": "0-11-5", "gtid_binlog_pos": "0-11-5", "rs": live_link(),
             "was_master": False, "wrote_past": False, "enabled_events": [], "heartbeat": 2.0,
             "password_stale": False}
    facts.update(over)
    return facts


def kinds(result):
    return [a[0] for a in result["actions"]]


# -- rule 1: a switch in progress ---------------------------------------------------------

def test_a_switch_in_progress_leaves_links_to_that_switch():
    cfg = dict(CFG, switching={"jid": "J1", "from": "db1", "to": "db2", "since": "t"})
    out = rp.plan(cfg, DB2, replica_facts(rs=live_link(io_running="No")))
    assert out["result"] is False and out["actions"] == [] and "in progress" in out["comment"]
    assert rp.plan(cfg, DB2, replica_facts(rs=live_link(io_running="No")), switch_jid="J1")["result"] is True


# -- rule 2: the live topology differs from pillar ----------------------------------------

def test_a_replica_of_another_server_is_refused_and_named():
    rs = live_link(host="10.0.0.13", port=3306)
    out = rp.plan(CFG, DB2, replica_facts(rs=rs))
    assert out["result"] is False and out["actions"] == []
    assert out["comment"].startswith("db2 replicates from 10.0.0.13:3306 (db3) but pillar says the master is db1")


def test_a_master_of_record_that_replicates_is_refused():
    out = rp.plan(CFG, DB1, {"read_only": "ON", "rs": live_link(srv=DB1, master=DB2)}, guard={})
    assert out["result"] is False and out["actions"] == [] and "pillar says db1 is the master" in out["comment"]


def test_a_switch_may_move_replicas_of_the_old_master():
    cfg = dict(CFG, master="db3")
    out = rp.plan(cfg, DB2, replica_facts(), repoint_from="db1", switch_jid="J")
    assert out["result"] is True and out["changes"]["host"] == {"old": "10.0.0.11", "new": "10.0.0.13"}
    assert kinds(out) == ["stop", "change_master", "start"]  # the link keeps its password


# -- rule 3: the master of record -----------------------------------------------------------

def test_a_writable_master_is_left_alone():
    out = rp.plan(CFG, DB1, {"read_only": "OFF", "rs": None})
    assert out == {"result": True, "changes": {}, "comment": "db1 is the writable master", "actions": []}
    assert not rp.needs_master_guard(CFG, DB1, "OFF", None)


def test_a_highstate_needs_the_guard_before_making_the_master_writable():
    assert rp.needs_master_guard(CFG, DB1, "ON", None)
    assert not rp.needs_master_guard(CFG, DB1, "ON", "switch-jid")
    assert not rp.needs_master_guard(CFG, DB2, "ON", None)
    with pytest.raises(ValueError):
        rp.plan(CFG, DB1, {"read_only": "ON", "rs": None})


@pytest.mark.parametrize("guard, text", [
    ({"stale": "the master record now names db2, not db1", "writable": [], "unknown": []}, "now names db2"),
    ({"stale": None, "writable": ["db3"], "unknown": []}, "db3 writable: db1 (master of record) stays read-only"),
    ({"stale": None, "writable": [], "unknown": ["db2: 2003 cannot connect"]},
     "cannot tell whether another server is writable (db2: 2003 cannot connect)"),
])
def test_the_guard_keeps_the_master_read_only(guard, text):
    for test in (False, True):
        out = rp.plan(CFG, DB1, {"read_only": "ON", "rs": None}, test=test, guard=guard)
        assert out["result"] is False and out["actions"] == [] and out["changes"] == {}
        assert text in out["comment"]


def test_the_guard_passed_makes_the_master_writable():
    guard = {"stale": None, "writable": [], "unknown": []}
    out = rp.plan(CFG, DB1, {"read_only": "ON", "rs": None}, guard=guard)
    assert out["actions"] == [("read_only", False)] and out["changes"] == {"read_only": {"old": "ON", "new": "OFF"}}
    dry = rp.plan(CFG, DB1, {"read_only": "ON", "rs": None}, test=True, guard=guard)
    assert dry["result"] is None and dry["actions"] == [] and dry["changes"] == out["changes"]
    # the switch promotes without the highstate guard
    assert rp.plan(CFG, DB1, {"read_only": "ON", "rs": None}, switch_jid="J")["actions"] == [("read_only", False)]


# -- rule 4: a writable replica that does not replicate acts as a master --------------------

@pytest.mark.parametrize("over", [
    {"rs": live_link(io_running="No", sql_running="No")},
    {"rs": None, "gtid_slave_pos": "0-11-5"},
])
def test_a_writable_server_that_does_not_replicate_is_never_demoted_here(over):
    out = rp.plan(CFG, DB2, replica_facts(read_only="OFF", **over))
    assert out["result"] is False and out["actions"] == [] and "refusing to demote it" in out["comment"]


def test_a_writable_replica_that_replicates_is_made_read_only():
    out = rp.plan(CFG, DB2, replica_facts(read_only="OFF"))
    assert out["actions"] == [("read_only", True)] and out["changes"] == {"read_only": {"old": "OFF", "new": "ON"}}


# -- rule 5: the old master wrote past the captured position --------------------------------

def test_a_demotion_past_the_captured_position_is_refused():
    cfg = dict(CFG, master="db2")
    facts = replica_facts(rs=None, gtid_binlog_pos="0-11-9", wrote_past=True)
    out = rp.plan(cfg, DB1, facts, demote=True, demote_at="0-11-8", switch_jid="J")
    assert out["result"] is False and out["actions"] == [] and "wrote past the switch's position 0-11-8" in out["comment"]
    ok = rp.plan(cfg, DB1, dict(facts, wrote_past=False), demote=True, demote_at="0-11-9", switch_jid="J")
    assert kinds(ok) == ["stop", "change_master", "password", "start"]
    assert ok["actions"][1][1]["demote"] is True and "demoted, keeps its GTIDs" in ok["changes"]["link"]["new"]


# -- rules 6 and 7: no link ----------------------------------------------------------------

def test_a_former_master_is_refused_until_rejoin():
    out = rp.plan(CFG, DB2, replica_facts(rs=None, was_master=True, gtid_binlog_pos="0-12-4"))
    assert out["result"] is False and out["actions"] == [] and "it was a master" in out["comment"]
    assert "mysqlrepl.rejoin server=db2" in out["comment"]


def test_a_never_seeded_replica_is_not_touched():
    out = rp.plan(CFG, DB2, replica_facts(rs=None, gtid_slave_pos=""))
    assert out["result"] is False and out["actions"] == [] and "never been seeded" in out["comment"]


def test_a_seeded_replica_gets_its_link_and_the_password():
    out = rp.plan(CFG, DB2, replica_facts(rs=None, gtid_slave_pos=""), seeded=True)
    assert kinds(out) == ["stop", "change_master", "password", "start"]
    assert out["changes"]["link"] == {"old": None, "new": "10.0.0.11:3306 TLS verified, GTID"}
    assert out["actions"][1][1] == {"want": rp.desired_link(CFG, DB2), "demote": False}


# -- rule 8: make the link match -----------------------------------------------------------

def test_a_link_as_pillar_says_changes_nothing():
    out = rp.plan(CFG, DB2, replica_facts())
    assert out == {"result": True, "changes": {}, "actions": [], "comment": "replicates from db1 as pillar says"}
    assert rp.plan(CFG, DB2, replica_facts(), test=True)["result"] is True


def test_stopped_threads_are_started_without_touching_the_link():
    rs = live_link(io_running="No", sql_running="No")
    out = rp.plan(CFG, DB2, replica_facts(rs=rs))
    assert kinds(out) == ["start"] and out["changes"]["threads"]["new"] == "IO Yes, SQL Yes"


def test_a_drifted_option_is_changed_without_sending_the_password():
    out = rp.plan(CFG, DB2, replica_facts(rs=live_link(ssl_verify_server_cert="No")))
    assert out["changes"] == {"ssl_verify_server_cert": {"old": "No", "new": "Yes"}}
    assert kinds(out) == ["stop", "change_master", "start"]
    dry = rp.plan(CFG, DB2, replica_facts(rs=live_link(ssl_verify_server_cert="No")), test=True)
    assert dry["result"] is None and dry["actions"] == [] and "would fix ssl_verify_server_cert" in dry["comment"]


@pytest.mark.parametrize("over, why", [
    ({"password_stale": True}, "master.info holds another password"),
    ({"rs": live_link(last_io_errno=1045, last_io_error="Access denied")}, "the master refuses the password"),
    ({"password_stale": None, "rs": live_link(user="old")}, "master.info unreadable (MySQL)"),
])
def test_the_password_is_resent_when_the_link_lacks_it(over, why):
    out = rp.plan(CFG, DB2, replica_facts(**over))
    assert "password" in kinds(out), why
    assert PILLAR["replication"]["password"] not in repr(out)


def test_an_unreadable_master_info_sends_the_password_with_any_change():
    out = rp.plan(CFG, DB2, replica_facts(password_stale=None, rs=live_link(connect_retry=60)))
    assert kinds(out) == ["stop", "change_master", "password", "start"]


def test_events_and_heartbeat():
    out = rp.plan(CFG, DB2, replica_facts(enabled_events=[{"db": "app", "name": "purge"}], heartbeat=30.0))
    assert out["changes"]["events"] == {"old": ["app.purge ENABLED"], "new": "DISABLE ON SLAVE"}
    assert out["changes"]["heartbeat_period"] == {"old": 30.0, "new": 2}
    assert kinds(out) == ["disable_events", "stop", "change_master", "start"]


def test_threads_text():
    assert rp.threads_text(None) == "no replication configured"
    rs = live_link(sql_running="No", last_sql_errno=1062, last_sql_error="Duplicate entry")
    assert rp.threads_text(rs) == "IO Yes, SQL No (1062: Duplicate entry)"


# -- two-master pairs (seed 001) and tunnels ------------------------------------------------

PAIR_CFG = conf.load(dict(copy.deepcopy(PILLAR), master=None, masters=["db1", "db2"],
                          servers=dict(copy.deepcopy(PILLAR["servers"]),
                                       db3={"address": "10.0.0.13", "server_id": 13, "source": "db2"})))
P1, P2, P3 = (PAIR_CFG["servers"][n] for n in ("db1", "db2", "db3"))


def pair_link(srv, source, **over):
    want = rp.desired_link(PAIR_CFG, srv, source)
    rs = dict(want, ssl_allowed="Yes", io_running="Yes", sql_running="Yes", last_io_errno=0,
              last_io_error="", last_sql_errno=0, last_sql_error="")
    rs.update(over)
    return rs


def pair_facts(**over):
    facts = {"read_only": "OFF", "gtid_slave_pos": "", "gtid_binlog_pos": "1-11-9", "rs": None,
             "enabled_events": [], "heartbeat": 2.0, "password_stale": False, "peer_replicates": True,
             "pair_position": "1-11-7"}
    facts.update(over)
    return facts


OK_GUARD = {"stale": None, "writable": [], "unknown": []}


def test_sources_in_a_pair_each_master_from_the_other_and_replicas_from_theirs():
    assert [rp.source_of(PAIR_CFG, n) for n in ("db1", "db2", "db3")] == ["db2", "db1", "db2"]
    assert [rp.source_of(CFG, n) for n in ("db1", "db2", "db3")] == [None, "db1", "db1"]
    assert rp.guarded_peers(PAIR_CFG, "db1") == ["db3"] and rp.guarded_peers(CFG, "db1") == ["db2", "db3"]
    assert rp.needs_master_guard(PAIR_CFG, P2, "ON", None) and not rp.needs_master_guard(PAIR_CFG, P3, "ON", None)
    assert not rp.needs_master_guard(PAIR_CFG, P2, "OFF", None)


def test_the_first_master_links_to_the_second_at_the_pair_position_then_is_writable():
    out = rp.plan(PAIR_CFG, P1, pair_facts(read_only="ON"), guard=OK_GUARD)
    assert out["result"] is True
    assert kinds(out) == ["stop", "slave_pos", "change_master", "password", "start", "await_replica",
                          "read_only"]
    assert out["actions"][-2] == ("await_replica", 12)
    assert out["actions"][1] == ("slave_pos", "1-11-7") and out["actions"][-1] == ("read_only", False)
    assert out["actions"][2][1]["want"]["host"] == "10.0.0.12"
    assert out["changes"]["gtid_slave_pos"] == {"old": "", "new": "1-11-7"}
    test = rp.plan(PAIR_CFG, P1, pair_facts(read_only="ON"), test=True, guard=OK_GUARD)
    assert test["result"] is None and test["actions"] == [] and set(test["changes"]) == set(out["changes"])


def test_the_first_master_waits_until_the_second_replicates_from_it():
    out = rp.plan(PAIR_CFG, P1, pair_facts(peer_replicates=False), guard=OK_GUARD)
    assert out["result"] is False and out["actions"] == []
    assert "salt-run mysqlrepl.seed replica=db2" in out["comment"]


def test_the_second_master_is_seeded_first():
    out = rp.plan(PAIR_CFG, P2, pair_facts(read_only="ON", gtid_slave_pos="", peer_replicates=False),
                  guard=OK_GUARD)
    assert out["result"] is False and out["actions"] == [] and "never been seeded from db1" in out["comment"]


def test_a_paired_master_that_replicates_and_is_writable_has_nothing_to_do():
    out = rp.plan(PAIR_CFG, P2, pair_facts(rs=pair_link(P2, "db1"), gtid_slave_pos="1-11-9"))
    assert out == {"result": True, "changes": {}, "actions": [],
                   "comment": "writable, replicates from db1 as pillar says"}


def test_a_paired_master_is_made_writable_only_after_its_link_and_when_no_replica_is_writable():
    facts = pair_facts(rs=pair_link(P2, "db1", sql_running="No"), read_only="ON", gtid_slave_pos="1-11-9")
    out = rp.plan(PAIR_CFG, P2, facts, guard=OK_GUARD)
    assert kinds(out) == ["start", "await_replica", "read_only"]
    out = rp.plan(PAIR_CFG, P2, facts, guard={"writable": ["db3"], "unknown": []})
    assert out["result"] is False and out["actions"] == [] and "db3 writable" in out["comment"]
    out = rp.plan(PAIR_CFG, P2, facts, guard={"writable": [], "unknown": ["db3: timed out"]})
    assert out["result"] is False and "cannot tell" in out["comment"]
    with pytest.raises(ValueError):
        rp.plan(PAIR_CFG, P2, facts, guard=None)


def test_a_paired_master_replicating_from_a_replica_is_refused():
    rs = pair_link(P2, "db1", host="10.0.0.13")
    out = rp.plan(PAIR_CFG, P2, pair_facts(rs=rs, gtid_slave_pos="1-11-9"), guard=OK_GUARD)
    assert out["result"] is False and out["actions"] == []
    assert "(db3) but pillar says it replicates from db1" in out["comment"]


def test_a_replica_of_the_second_master_links_to_it_read_only():
    out = rp.plan(PAIR_CFG, P3, replica_facts(rs=None, gtid_slave_pos="1-11-5"))
    assert kinds(out) == ["stop", "change_master", "password", "start"]
    assert out["actions"][1][1]["want"]["host"] == "10.0.0.12"


@pytest.mark.parametrize("domain, own_current, peer_binlog, want", [
    (1, "", "1-11-7,2-12-3", "1-11-7"),               # own domain from the other's binlog only
    (1, "2-12-1,5-50-9", "1-11-7,2-12-3", "1-11-7,2-12-1,5-50-9"),  # the others from what it has
    (1, "1-11-2", "2-12-3", ""),                      # the other has none of ours: from its start
    (5, "0-11-900,5-15-40", "0-11-900,1-12-3,5-15-38", "0-11-900,5-15-38"),  # own domain 5, not 0
])
def test_pair_position(domain, own_current, peer_binlog, want):
    assert rp.pair_position(domain, own_current, peer_binlog) == want


def test_the_second_master_listed_first_while_the_other_takes_writes_is_refused():
    facts = pair_facts(read_only="OFF", gtid_slave_pos="")
    out = rp.plan(PAIR_CFG, P2, facts, guard=OK_GUARD)
    assert out["result"] is False and out["actions"] == [] and "Put db2 first in mysqlrepl:masters" in out["comment"]


def test_a_replica_behind_a_tunnel_links_to_its_masters_tunnel_name():
    cfg = conf.load(dict(copy.deepcopy(PILLAR), servers=dict(
        copy.deepcopy(PILLAR["servers"]),
        db3={"address": "10.0.0.13", "server_id": 13, "tunnels": [{"peer": "db1", "port": 4406}]})))
    db3 = cfg["servers"]["db3"]
    want = rp.desired_link(cfg, db3)
    assert (want["host"], want["port"]) == ("db1.production.mysqlrepl.internal", 4406)
    facts = replica_facts(rs=dict(live_link(db3), host=want["host"], port=4406))
    assert rp.plan(cfg, db3, facts)["changes"] == {}
    # pointed at db1 directly (the tunnel is new): the same master, repointed to the tunnel
    out = rp.plan(cfg, db3, replica_facts(rs=dict(live_link(db3), host="10.0.0.11", port=3306)))
    assert out["result"] is True and kinds(out) == ["stop", "change_master", "start"]
    assert out["changes"]["host"] == {"old": "10.0.0.11", "new": "db1.production.mysqlrepl.internal"}
    # pointed at db2 is another server: refused
    out = rp.plan(cfg, db3, replica_facts(rs=dict(live_link(db3), host="10.0.0.12", port=3306)))
    assert out["result"] is False and "(db2) but pillar says the master is db1" in out["comment"]


def test_a_seed_of_the_second_master_links_it_and_leaves_it_read_only():
    facts = pair_facts(read_only="ON", gtid_slave_pos="1-11-9", rs=None)
    out = rp.plan(PAIR_CFG, P2, facts, seeded=True, guard=None)
    assert kinds(out) == ["stop", "change_master", "password", "start"] and "read_only" not in out["changes"]


def test_a_replica_whose_tunnel_left_pillar_is_repointed_to_its_master_directly():
    db2 = CFG["servers"]["db2"]
    rs = dict(live_link(db2), host="db1.production.mysqlrepl.internal", port=4406)
    out = rp.plan(CFG, db2, replica_facts(rs=rs))
    assert out["result"] is True and kinds(out) == ["stop", "change_master", "start"]
    assert out["changes"]["host"] == {"old": "db1.production.mysqlrepl.internal", "new": "10.0.0.11"}
    # another server's tunnel name is another server
    out = rp.plan(CFG, db2, replica_facts(rs=dict(rs, host="db3.production.mysqlrepl.internal")))
    assert out["result"] is False and "(db3) but pillar says the master is db1" in out["comment"]


def test_sessions_older_than_the_pair_settings_hold_the_pair_back():
    stale = ["42 app@10.0.0.50", "43 app@10.0.0.50"]
    for name, facts in (("db1", pair_facts(stale_sessions=stale)),  # the first master, before linking
                        ("db2", pair_facts(rs=pair_link(P2, "db1"), read_only="ON", gtid_slave_pos="1-11-9",
                                           stale_sessions=stale))):  # the second, before writable
        out = rp.plan(PAIR_CFG, PAIR_CFG["servers"][name], facts, guard=OK_GUARD)
        assert out["result"] is False and out["actions"] == [], name
        assert "2 client session(s) opened before" in out["comment"] and "42 app@10.0.0.50" in out["comment"]
    # a running pair is not held back by them (its sessions were checked when it came up)
    out = rp.plan(PAIR_CFG, P2, pair_facts(rs=pair_link(P2, "db1"), gtid_slave_pos="1-11-9",
                                           stale_sessions=stale))
    assert out["result"] is True and out["actions"] == []
