"""
Ending a two-master pair (``_utils/mysqlrepl_unpair.py``) without servers:
every refusal of :func:`find_pair` and every exit of :func:`critical`, with
scripted connections that record what was sent.
"""

import copy

import _utils.mysqlrepl_config as conf
import _utils.mysqlrepl_replication as rp
import _utils.mysqlrepl_switch as sw
import _utils.mysqlrepl_unpair as up

PILLAR = {
    "topology": "production",
    "master": "db1",
    "ca": {"minion": "db1"},
    "replication": {"password": "s3cret"},
    "servers": {
        "db1": {"address": "10.0.0.11", "server_id": 11},
        "db2": {"address": "10.0.0.12", "server_id": 12},
        "db3": {"address": "10.0.0.13", "server_id": 13},
        "db4": {"address": "10.0.0.14", "server_id": 14},
    },
}
CFG = conf.load(copy.deepcopy(PILLAR))


def link(to, running="Yes"):
    srv = CFG["servers"][to]
    return {"host": srv["address"], "port": srv["port"], "io_running": running, "sql_running": running}


def states(read_only=None, **links):
    """db1 and db2 a live pair, db3 a replica of db2, db4 of db1 (overridable); ``read_only``:
    ``{name: "ON"/"OFF"}`` (default: db1 and db2 writable, the others not)."""
    out = {"db1": link("db2"), "db2": link("db1"), "db3": link("db2"), "db4": link("db1")}
    out.update(links)
    ro = {"db1": "OFF", "db2": "OFF", "db3": "ON", "db4": "ON"}
    ro.update(read_only or {})
    return {n: (rs if isinstance(rs, dict) and "error" in rs else {"replica": rs, "variables": {"read_only": ro[n]}})
            for n, rs in out.items()}


def find(keep="db1", cfg=CFG, read_only=None, **links):
    return up.find_pair(cfg, keep, states(read_only, **links), rp.server_at)


# -- find_pair -----------------------------------------------------------------------------

def test_a_live_pair_is_found_with_the_other_masters_replicas():
    out = find()
    assert (out["result"], out["keep"], out["other"], out["followers"]) == (None, "db1", "db2", ["db3"])
    assert "db2 made read-only" in out["comment"] and "db3 repointed to db1" in out["comment"]


def test_the_other_end_may_be_kept():
    out = find(keep="db2", cfg=dict(CFG, master="db2"), db3=link("db1"), db4=link("db2"))
    assert (out["other"], out["followers"]) == ("db1", ["db3"])


def test_pillar_still_naming_a_pair_is_refused():
    pair = conf.load(dict(copy.deepcopy(PILLAR), master=None, masters=["db1", "db2"]))
    out = up.find_pair(pair, "db1", {}, rp.server_at)
    assert out["result"] is False and "replace masters with master: db1" in out["refusal"]


def test_a_master_that_replicates_from_nobody_needs_nothing():
    out = find(db1=None, db3=link("db1"))
    assert out["result"] is True and "no pair to end" in out["nothing"]


def test_an_unpair_stopped_before_repointing_is_finished_by_a_second_run():
    """The pair ended (db1 no link, db2 read-only under it) but db3 still replicates from db2."""
    out = find(db1=None, read_only={"db2": "ON"})
    assert (out["result"], out.get("finish"), out["other"], out["followers"]) == (None, True, "db2", ["db3"])
    assert "still replicate from db2: repointed to db1" in out["comment"]


def test_a_writable_server_under_the_master_is_not_taken_for_the_former_other():
    """db2 writable: not a finished unpair's other master, so its replica is left to the highstate."""
    out = find(db1=None)
    assert out["result"] is True


def test_a_one_way_link_is_not_a_pair():
    out = find(db2=None)
    assert out["result"] is False and "db2 does not replicate from db1" in out["refusal"]


def test_a_link_to_a_server_outside_the_topology_is_refused():
    out = find(db1={"host": "192.0.2.9", "port": 3306, "io_running": "Yes", "sql_running": "Yes"})
    assert out["result"] is False and "no server of the topology" in out["refusal"]


def test_an_unreadable_kept_or_other_master_is_refused():
    assert "cannot read db1" in find(db1={"error": "refused"})["refusal"]
    out = find(db2={"error": "minion did not answer"})
    assert out["result"] is False and "cannot read db2 (the other master)" in out["refusal"]


def test_an_unreadable_replica_is_named_but_does_not_refuse():
    out = find(db3={"error": "timeout"})
    assert out["result"] is None and out["followers"] == [] and out["unread"] == ["db3"]


def test_a_stopped_link_still_counts_for_the_pair():
    """A second run after a RESET that failed: the kept master's link is stopped, not gone."""
    assert find(db1=link("db2", running="No"))["other"] == "db2"


# -- critical ------------------------------------------------------------------------------

ST = {"other_read_only": "RO_ON", "other_writable": "RO_OFF", "read_only": "SELECT_RO", "gtid_pos": "POS",
      "wait": lambda pos: ("WAIT", pos), "stop_replica": "STOP", "start_replica": "START",
      "reset_replica_all": "RESET", "keep_writable": "KEEP_RO_OFF", "current_pos": "CURRENT",
      "keep_server_id": 11, "reached": sw.position_reached}


class Conn:
    """Answers each statement from ``answers`` (a list is consumed in order; an
    exception instance is raised) and records what was sent."""

    def __init__(self, name, **answers):
        self.name = name
        self.answers = answers
        self.sent = []

    def run(self, statement):
        key = statement[0] if isinstance(statement, tuple) else statement
        self.sent.append(key)
        answer = self.answers.get(key, [])
        if isinstance(answer, list) and answer and not isinstance(answer[0], dict):
            answer = answer.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def pair(keep=None, other=None):
    # the kept master (server_id 11, domain 0) has db2's domain 1 up to 7
    keep_answers = {"WAIT": [{"result": 0}], "SELECT_RO": [{"ro": 0}],
                    "CURRENT": [{"current_pos": "0-11-12,1-12-7"}]}
    other_answers = {"SELECT_RO": [{"ro": 0}], "POS": [{"pos": "0-11-9,1-12-7"}]}
    keep_answers.update(keep or {})
    other_answers.update(other or {})
    return Conn("db1", **keep_answers), Conn("db2", **other_answers)


def steps(out):
    return [(s["step"], s["ok"]) for s in out["steps"]]


def test_the_pair_ends_in_order_and_the_kept_master_stays_writable():
    keep, other = pair()
    out = up.critical(keep, other, ST)
    assert out["outcome"] == "unpaired" and out["pos"] == "0-11-9,1-12-7"
    assert other.sent == ["SELECT_RO", "RO_ON", "POS", "POS"]
    assert keep.sent == ["WAIT", "STOP", "CURRENT", "RESET", "SELECT_RO"]
    assert all(ok for _, ok in steps(out)) and len(out["steps"]) == 6


def test_a_kept_master_made_read_only_meanwhile_is_made_writable():
    keep, other = pair(keep={"SELECT_RO": [{"ro": 1}]})
    assert up.critical(keep, other, ST)["outcome"] == "unpaired"
    assert keep.sent[-1] == "KEEP_RO_OFF"


def test_an_other_master_already_read_only_is_not_set_again_nor_made_writable():
    keep, other = pair(other={"SELECT_RO": [{"ro": 1}]})
    assert up.critical(keep, other, ST)["outcome"] == "unpaired"
    assert "RO_ON" not in other.sent


def test_read_only_that_cannot_be_set_changes_nothing():
    keep, other = pair(other={"RO_ON": [RuntimeError("Lock wait timeout exceeded")]})
    out = up.critical(keep, other, ST)
    assert out["outcome"] == "aborted" and "Lock wait timeout" in out["reason"] and keep.sent == []


def test_a_catch_up_timeout_makes_the_other_writable_again():
    keep, other = pair(keep={"WAIT": [{"result": -1}]})
    out = up.critical(keep, other, ST)
    assert out["outcome"] == "aborted" and "timed out" in out["reason"] and "nothing changed" in out["reason"]
    assert "catchup_timeout=" in out["reason"] and "db2 is writable again" in out["reason"]
    assert other.sent[-1] == "RO_OFF" and keep.sent == ["WAIT"]


def test_a_catch_up_timeout_leaves_an_other_that_was_read_only_read_only():
    keep, other = pair(keep={"WAIT": [{"result": -1}]}, other={"SELECT_RO": [{"ro": 1}]})
    assert up.critical(keep, other, ST)["outcome"] == "aborted"
    assert "RO_OFF" not in other.sent


def test_only_the_other_masters_own_transactions_are_waited_for():
    """Its binlog also holds the kept master's transactions coming back: they are not waited for."""
    keep, other = pair()
    waits = []
    st = dict(ST, wait=lambda pos: waits.append(pos) or ("WAIT", pos))
    assert up.critical(keep, other, st)["outcome"] == "unpaired"
    assert waits == ["1-12-7"]


def test_the_kept_masters_own_writes_arriving_meanwhile_do_not_abort():
    """Both positions move in the kept master's domain while it takes writes: no bypass."""
    keep, other = pair(other={"POS": [[{"pos": "0-11-9,1-12-7"}], [{"pos": "0-11-15,1-12-7"}]]})
    assert up.critical(keep, other, ST)["outcome"] == "unpaired"


def test_a_write_that_bypassed_read_only_restarts_the_link_and_changes_nothing():
    keep, other = pair(other={"POS": [[{"pos": "0-11-9,1-12-7"}], [{"pos": "0-11-9,1-12-8"}]]})
    out = up.critical(keep, other, ST)
    assert out["outcome"] == "aborted" and "wrote past 0-11-9,1-12-7" in out["reason"]
    assert "bypasses read_only" in out["reason"] and "db1 has 0-11-12,1-12-7" in out["reason"]
    assert keep.sent == ["WAIT", "STOP", "CURRENT", "START"] and other.sent[-1] == "RO_OFF"


def test_a_lost_second_read_restarts_the_link():
    keep, other = pair(other={"POS": [[{"pos": "0-11-9"}], OSError("gone")]})
    out = up.critical(keep, other, ST)
    assert out["outcome"] == "aborted" and "cannot read the positions again" in out["reason"]
    assert keep.sent[-1] == "START"


def test_a_failed_rollback_says_what_to_do_by_hand():
    keep, other = pair(keep={"WAIT": [{"result": -1}]}, other={"RO_OFF": [OSError("gone")]})
    out = up.critical(keep, other, ST)
    assert out["outcome"] == "aborted" and "db2 stays read-only" in out["reason"]


def test_a_failed_reset_stops_with_the_link_stopped_and_says_run_again():
    keep, other = pair(keep={"RESET": [RuntimeError("boom")]})
    out = up.critical(keep, other, ST)
    assert out["outcome"] == "stopped" and "run salt-run mysqlrepl.unpair again" in out["reason"]
    assert "RO_OFF" not in other.sent and "START" not in keep.sent


def test_a_failed_promotion_says_the_highstate_finishes_it():
    keep, other = pair(keep={"SELECT_RO": [[{"ro": 1}]], "KEEP_RO_OFF": [RuntimeError("denied")]})
    out = up.critical(keep, other, ST)
    assert out["outcome"] == "stopped" and "the highstate makes it writable" in out["reason"]


# -- the highstate's refusal points at unpair ------------------------------------------------

def test_the_highstate_on_the_kept_master_names_unpair():
    rs = dict(link("db2"), ssl_allowed="Yes")
    out = rp.topology_conflict(CFG, CFG["servers"]["db1"], rs)
    assert "salt-run mysqlrepl.unpair keep=db1" in out


def test_the_highstate_on_a_replica_of_the_other_master_names_unpair():
    out = rp.topology_conflict(CFG, CFG["servers"]["db3"], link("db2"))
    assert "refusing to repoint it" in out and "mysqlrepl.unpair keep=db1" in out
