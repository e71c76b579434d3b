"""
The switch's rules without servers: GTID arithmetic by MariaDB's rules, who can
write through read_only, and every exit of the critical section driven by
scripted connections (the integration tests run it on real servers).
"""

import pymysql
import pytest
from salt.exceptions import CommandExecutionError

import _utils.mysqlrepl_switch as sw


def test_errant_gtids_by_domain_and_server_id():
    old = "0-11-100,0-12-40"
    assert sw.errant_gtids("0-11-100,0-12-40", old) == []
    assert sw.errant_gtids("0-11-90", old) == []  # lagging is not errant
    assert sw.errant_gtids("0-11-100,0-13-5", old) == ["0-13-5"]  # a server_id the old master never saw
    assert sw.errant_gtids("0-11-100,0-12-41", old) == ["0-12-41"]  # beyond the old master's sequence
    assert sw.errant_gtids("1-12-3", old) == ["1-12-3"]  # another domain


def test_position_reached():
    assert sw.position_reached("0-12-50,1-11-3", "0-11-50")
    assert not sw.position_reached("0-12-49", "0-11-50")
    assert not sw.position_reached("0-12-50", "0-11-50,1-11-1")
    assert sw.position_reached("", "")


def test_time_limits_cover_the_block_and_its_rollback():
    lim = sw.time_limits(1, 5)
    assert lim["io_s"] == 16 and lim["deadline_s"] == 36
    # past the deadline: one promotion statement and two rollback statements, each bounded by io_s
    assert lim["worst_s"] == 36 + 3 * 16 and lim["runner_s"] > lim["worst_s"]
    assert sw.time_limits(1, 5, hold_s=10)["worst_s"] > lim["worst_s"]


def test_purged_domains():
    # the master's oldest binary log starts after 0-11-100 (and 1-12-7)
    start = "0-11-100,0-12-40,1-12-7"
    assert sw.purged_domains("0-11-100,1-12-7", start) == []  # exactly at the start: fine
    assert sw.purged_domains("0-12-120,1-12-9", start) == []  # sequences grow per domain
    assert sw.purged_domains("0-11-99,1-12-7", start) == [(0, 99, 100)]
    assert sw.purged_domains("0-11-100", start) == [(1, None, 7)]  # a domain it never had
    assert sw.purged_domains("0-11-5", "") == []  # nothing purged: every log since the first
    assert sw.purged_domains("", "") == []


def _acct(user, host, access=0, role=False, default_role=None, locked=False):
    return {"user": user, "host": host, "access": access, "is_role": "true" if role else "false",
            "default_role": default_role, "locked": "true" if locked else "false"}


BIT = sw.READ_ONLY_ADMIN_BIT


def test_read_only_bypass_paths():
    accounts = [
        _acct("root", "localhost", (1 << 64) - 1),
        _acct("app", "%"),
        _acct("direct", "%", BIT),
        _acct("viarole", "%", default_role="r1"),
        _acct("nested", "%"),
        _acct("r1", "", BIT, role=True),
        _acct("r2", "", 0, role=True),
        _acct("PUBLIC", "", 0, role=True),
        _acct("gone", "%", BIT, locked=True),
    ]
    grants = [{"user": "viarole", "host": "%", "role": "r1"},
              {"user": "nested", "host": "%", "role": "r2"},
              {"user": "r2", "host": "", "role": "r1"}]
    found = sw.read_only_bypass(accounts, grants, {("root", "localhost")})
    assert set(found) == {"direct@%", "viarole@%", "nested@%"}
    assert "default role r1" in found["viarole@%"]
    assert "role r2" in found["nested@%"]
    assert "ALL PRIVILEGES" in sw.definer_can_bypass("root@localhost", accounts, grants)
    assert sw.definer_can_bypass("app@%", accounts, grants) is None
    # granted to PUBLIC: every account that can log in
    accounts[7] = _acct("PUBLIC", "", BIT, role=True)
    found = sw.read_only_bypass(accounts, grants, {("root", "localhost")})
    assert found["app@%"] == "READ_ONLY ADMIN granted to PUBLIC"
    assert "gone@%" not in found and "root@localhost" not in found
    # an event runs as its definer even when the account is locked
    assert sw.definer_can_bypass("gone@%", accounts, grants)


# ---------------------------------------------------------------------------
# critical section with scripted connections
# ---------------------------------------------------------------------------

def _err(code, text="x"):
    exc = CommandExecutionError(f"{code}: {text}")
    exc.__cause__ = pymysql.err.OperationalError(code, text)
    return exc


class Script:
    """A connection that answers statements by name; ``fail[name] = exc`` raises."""

    def __init__(self, answers=None, fail=None):
        self.sent = []
        self.answers = answers or {}
        self.fail = fail or {}

    def run(self, conn, statement):  # pylint: disable=unused-argument
        name = statement[0]
        self.sent.append(name)
        if name in self.fail:
            raise self.fail.pop(name)
        return self.answers.get(name, [])


def statements(probe=None):
    st = {"budget_s": 1, "catchup_s": 2, "old_read_only": ("old_ro",), "old_writable": ("old_rw",),
          "gtid_pos": ("pos",), "wait": lambda pos: ("wait", pos), "stop_replica": ("stop",),
          "start_replica": ("start",), "new_writable": ("new_rw",), "replica_status": ("status",),
          "enable_events": [("event",)]}
    if probe:
        st["probe_new"] = probe
    return st


def run(old, new, st=None, **kw):
    return sw.critical_section(sw.endpoint("db1", None, old.run), sw.endpoint("db2", None, new.run),
                               st or statements(), **kw)


def test_promotion_order():
    old = Script({"pos": [{"pos": "0-11-7"}]})
    new = Script({"wait": [{"result": 0}]})
    out = run(old, new)
    assert out["outcome"] == "promoted" and out["pos"] == "0-11-7"
    assert old.sent == ["old_ro", "pos"]
    assert new.sent == ["wait", "stop", "new_rw", "event"]
    assert out["block_ms"] is not None and out["new_writable"]


def test_budget_overrun_aborts_with_nothing_changed():
    old = Script(fail={"old_ro": _err(1205, "Lock wait timeout exceeded")})
    new = Script()
    out = run(old, new)
    assert out["outcome"] == "aborted" and "budget" in out["reason"]
    assert new.sent == [] and old.sent == ["old_ro"]


def test_catch_up_timeout_rolls_back():
    old = Script({"pos": [{"pos": "0-11-7"}]})
    new = Script({"wait": [{"result": -1}], "status": [{"Slave_SQL_Running": "No"}]})
    out = run(old, new)
    assert out["outcome"] == "aborted" and "did not apply 0-11-7" in out["reason"]
    assert old.sent == ["old_ro", "pos", "old_rw"]  # old master writable again
    assert "new_rw" not in new.sent and "stop" not in new.sent


def test_old_master_lost_after_read_only_stops_everything_read_only():
    old = Script(fail={"pos": _err(2013, "Lost connection")})
    new = Script()
    out = run(old, new)
    assert out["outcome"] == "stopped" and new.sent == []
    assert out["old_read_only"] is True and not out["new_writable"]


def test_new_master_lost_after_stop_rolls_back_when_it_is_down():
    old = Script({"pos": [{"pos": "0-11-7"}]})
    new = Script({"wait": [{"result": 0}]}, fail={"new_rw": _err(2013, "Lost connection")})
    out = run(old, new, statements(probe=lambda: None))
    assert out["outcome"] == "aborted"
    assert old.sent[-1] == "old_rw"


def test_new_master_lost_but_writable_counts_as_promoted():
    old = Script({"pos": [{"pos": "0-11-7"}]})
    new = Script({"wait": [{"result": 0}]}, fail={"new_rw": _err(2013, "Lost connection")})
    out = run(old, new, statements(probe=lambda: 0))
    assert out["outcome"] == "promoted"
    assert "old_rw" not in old.sent  # never two writable


def test_new_master_unknown_state_keeps_old_read_only():
    old = Script({"pos": [{"pos": "0-11-7"}]})
    new = Script({"wait": [{"result": 0}]}, fail={"new_rw": _err(2013, "Lost connection")})
    out = run(old, new, statements(probe=lambda: "unknown"))
    assert out["outcome"] == "stopped"
    assert "old_rw" not in old.sent


def test_new_master_probe_error_is_unknown_and_keeps_old_read_only():
    # e.g. 1040 Too many connections on the probe: not proof that it is down
    old = Script({"pos": [{"pos": "0-11-7"}]})
    new = Script({"wait": [{"result": 0}]}, fail={"new_rw": _err(2013, "Lost connection")})
    out = run(old, new, statements(probe=lambda: "unknown"))
    assert out["outcome"] == "stopped" and "old_rw" not in old.sent


def test_deadline_passed_rolls_back_before_promotion():
    ticks = iter([0.0] + [100.0] * 50)
    old = Script({"pos": [{"pos": "0-11-7"}]})
    new = Script({"wait": [{"result": 0}]})
    st = statements()
    st["deadline_s"] = 30
    out = sw.critical_section(sw.endpoint("db1", None, old.run), sw.endpoint("db2", None, new.run), st,
                              clock=lambda: next(ticks))
    assert out["outcome"] == "aborted" and "longer than 30" in out["reason"]
    assert "new_rw" not in new.sent and new.sent[-1] == "start" and old.sent[-1] == "old_rw"


def test_refused_promotion_restarts_replication_then_old_master():
    old = Script({"pos": [{"pos": "0-11-7"}]})
    new = Script({"wait": [{"result": 0}]}, fail={"new_rw": _err(1227, "Access denied")})
    out = run(old, new)
    assert out["outcome"] == "aborted"
    assert new.sent == ["wait", "stop", "new_rw", "start"]
    assert old.sent[-1] == "old_rw"


def test_hold_pauses_after_the_named_step():
    slept = []
    old = Script({"pos": [{"pos": "0-11-7"}]})
    new = Script({"wait": [{"result": 0}]})
    run(old, new, hold={"after": "old_read_only", "seconds": 3}, sleep=slept.append)
    assert slept == [3.0]


@pytest.mark.parametrize("code,kind", [(1205, "timeout"), (2013, "lost"), (1927, "lost"), (1290, "sql")])
def test_error_kind(code, kind):
    assert sw.error_kind(_err(code)) == kind
