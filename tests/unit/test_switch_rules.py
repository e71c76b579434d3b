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
    # a lost new master is settled over one fresh connection: connect, KILL, the
    # session gone (at most SESSION_GONE_S and one more read), read_only
    assert lim["lost_s"] == 4 * sw.FRESH_IO_S + sw.SESSION_GONE_S
    # past the deadline: one promotion statement, settling it if lost, and two
    # rollback statements, each statement bounded by io_s
    assert lim["worst_s"] == 36 + 3 * 16 + lim["lost_s"] and lim["runner_s"] > lim["worst_s"]
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


class NewMaster:
    """
    The new master as fresh connections see it, after the block's own connection
    to it was lost while its ``SET GLOBAL read_only=0`` may still be running in
    session ``running``: that statement lands (read_only becomes 0) right after
    the next statement any fresh connection sends, unless the session was killed
    first. ``down``: the server is gone; ``refuse``: connecting fails otherwise;
    ``fail[name]``: that statement raises; ``listed``: how many process-list
    reads still show the killed session; ``lands=False``: the running statement
    stays stuck (it neither lands nor ends while the test looks).
    """

    def __init__(self, read_only=1, running=42, down=False, refuse=None, fail=None, listed=0, lands=True):
        self.read_only = read_only
        self.running = running
        self.lands = lands
        self.down = down
        self.refuse = refuse
        self.fail = fail or {}
        self.listed = listed
        self.sent = []
        self.closed = 0

    def connect(self):
        if self.down:
            return None
        if self.refuse:
            raise self.refuse
        return sw.endpoint("db2", self, self._run)

    def close(self):
        self.closed += 1

    def _run(self, conn, statement):  # pylint: disable=unused-argument
        name = statement[0]
        self.sent.append(statement)
        try:
            if name in self.fail:
                raise self.fail.pop(name)
            if name == "kill":
                if statement[1] != self.running:
                    raise _err(1094, f"Unknown thread id: {statement[1]}")
                self.running = None
                return []
            if name == "session":
                if statement[1] == self.running or self.listed > 0:
                    self.listed -= 1
                    return [{"id": statement[1], "command": "Killed", "state": "closing"}]
                return []
            if name == "ro":
                return [{"ro": self.read_only}]
            return []
        finally:
            if self.running is not None and self.lands:  # the late statement lands
                self.read_only = 0
                self.running = None


def statements(fresh=None):
    st = {"budget_s": 1, "catchup_s": 2, "old_read_only": ("old_ro",), "old_writable": ("old_rw",),
          "gtid_pos": ("pos",), "wait": lambda pos: ("wait", pos), "stop_replica": ("stop",),
          "start_replica": ("start",), "new_writable": ("new_rw",), "replica_status": ("status",),
          "enable_events": [("event",)], "kill": lambda i: ("kill", i), "session": lambda i: ("session", i),
          "read_only": ("ro",)}
    if fresh is not None:
        st["fresh_new"] = fresh.connect
    return st


def run(old, new, st=None, session_id=42, **kw):
    return sw.critical_section(sw.endpoint("db1", None, old.run), sw.endpoint("db2", None, new.run, session_id),
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


def lost_new():
    # the block's own connection is gone: nothing sent on it after read_only=0 can work
    return Script({"wait": [{"result": 0}]}, fail={"new_rw": _err(2013, "Lost connection"),
                                                   "start": _err(2006, "MySQL server has gone away")})


def test_new_master_lost_after_stop_rolls_back_when_it_is_down():
    old = Script({"pos": [{"pos": "0-11-7"}]})
    out = run(old, lost_new(), statements(NewMaster(down=True)))
    assert out["outcome"] == "aborted" and "down (it restarts read-only)" in out["reason"]
    assert "restart its replication by hand" in out["reason"]  # nothing to send it to
    assert old.sent[-1] == "old_rw"


def test_new_master_lost_but_writable_counts_as_promoted():
    old = Script({"pos": [{"pos": "0-11-7"}]})
    fresh = NewMaster(read_only=0, running=None)
    out = run(old, lost_new(), statements(fresh))
    assert out["outcome"] == "promoted" and out["new_writable"]
    assert "old_rw" not in old.sent  # never two writable


def test_lost_new_master_session_is_killed_before_read_only_is_read():
    """
    The block's session may still be running SET GLOBAL read_only=0 when its
    connection is lost: it is killed (by the id read when it was opened) and
    seen gone before read_only is read, so a rollback cannot be followed by a
    late promotion. (Without the kill, the late statement lands after the probe
    read 1: the old master is made writable and then the new one too.)
    """
    old = Script({"pos": [{"pos": "0-11-7"}]})
    fresh = NewMaster(read_only=1, running=42)
    out = run(old, lost_new(), statements(fresh), session_id=42)
    # then the rollback restarts replication through the fresh connection
    assert [s[0] for s in fresh.sent] == ["kill", "session", "ro", "start"]
    assert "by hand" not in out["reason"] and not out["replica_stopped"]
    assert fresh.sent[0] == ("kill", 42) and fresh.sent[1] == ("session", 42)
    assert fresh.read_only == 1, "the late read_only=0 landed"
    assert out["outcome"] == "aborted" and old.sent[-1] == "old_rw"
    assert "session that was asked (42) is over" in out["reason"]
    assert not (old.sent[-1] == "old_rw" and fresh.read_only == 0), "two writable masters"
    step = [s for s in out["steps"] if s["step"] == "new_settle_lost"][0]
    assert step["ok"] and step["session_id"] == 42 and step["session"] == "gone" and step["read_only"] == 1
    assert fresh.closed == 1


def test_lost_new_master_session_already_gone_counts_as_over():
    old = Script({"pos": [{"pos": "0-11-7"}]})
    fresh = NewMaster(read_only=1, running=None)  # the session died with its connection
    out = run(old, lost_new(), statements(fresh), session_id=42)
    assert out["outcome"] == "aborted" and old.sent[-1] == "old_rw"
    assert [s[0] for s in fresh.sent] == ["kill", "session", "ro", "start"]


def test_lost_new_master_waits_until_the_killed_session_is_gone():
    now = [0.0]
    slept = []

    def sleep(sec):
        slept.append(sec)
        now[0] += sec

    old = Script({"pos": [{"pos": "0-11-7"}]})
    fresh = NewMaster(read_only=1, running=42, listed=3)  # still listed (rolling back) for 3 reads
    out = run(old, lost_new(), statements(fresh), clock=lambda: now[0], sleep=sleep)
    assert [s[0] for s in fresh.sent] == ["kill", "session", "session", "session", "session", "ro", "start"]
    assert len(slept) == 3 and out["outcome"] == "aborted"


def test_lost_new_master_session_still_listed_stops_with_old_read_only():
    now = [0.0]

    def sleep(sec):
        now[0] += sec

    old = Script({"pos": [{"pos": "0-11-7"}]})
    fresh = NewMaster(read_only=1, running=42, listed=10 ** 6)
    out = run(old, lost_new(), statements(fresh), clock=lambda: now[0], sleep=sleep)
    assert out["outcome"] == "stopped" and "old_rw" not in old.sent
    assert "still listed" in out["reason"] and "could still land" in out["reason"]
    assert now[0] <= sw.SESSION_GONE_S + 0.1


@pytest.mark.parametrize("why,fresh,session_id", [
    ("KILL refused", NewMaster(fail={"kill": _err(1095, "You are not owner of thread 42")}, lands=False), 42),
    ("process list unreadable", NewMaster(fail={"session": _err(2013, "Lost connection")}, lands=False), 42),
    ("session id unknown", NewMaster(running=None), None),
])
def test_lost_new_master_session_not_known_over_keeps_old_read_only(why, fresh, session_id):
    old = Script({"pos": [{"pos": "0-11-7"}]})
    out = run(old, lost_new(), statements(fresh), session_id=session_id)
    assert out["outcome"] == "stopped", why
    assert "old_rw" not in old.sent and "may be writable" in out["reason"], out["reason"]


def test_lost_new_master_kill_refused_but_statement_took_is_promoted():
    old = Script({"pos": [{"pos": "0-11-7"}]})
    fresh = NewMaster(fail={"kill": _err(1095, "You are not owner of thread 42")})  # it lands meanwhile
    out = run(old, lost_new(), statements(fresh))
    assert out["outcome"] == "promoted" and "old_rw" not in old.sent


def test_new_master_unknown_state_keeps_old_read_only():
    old = Script({"pos": [{"pos": "0-11-7"}]})
    fresh = NewMaster(fail={"ro": _err(2013, "Lost connection")})
    out = run(old, lost_new(), statements(fresh))
    assert out["outcome"] == "stopped"
    assert "old_rw" not in old.sent


def test_new_master_probe_error_is_unknown_and_keeps_old_read_only():
    # e.g. 1040 Too many connections on the fresh connection: not proof that it is down
    old = Script({"pos": [{"pos": "0-11-7"}]})
    fresh = NewMaster(refuse=_err(1040, "Too many connections"))
    out = run(old, lost_new(), statements(fresh))
    assert out["outcome"] == "stopped" and "old_rw" not in old.sent
    # and with no way to open a fresh connection at all
    old = Script({"pos": [{"pos": "0-11-7"}]})
    out = run(old, lost_new(), statements())
    assert out["outcome"] == "stopped" and "old_rw" not in old.sent


def test_old_master_lost_at_read_only_is_stopped_and_may_be_writable():
    old = Script(fail={"old_ro": _err(2013, "Lost connection")})
    new = Script()
    out = run(old, new)
    assert out["outcome"] == "stopped" and out["old_read_only"] is None
    assert new.sent == [] and "unknown" in out["reason"]


def test_rollback_lost_on_old_master_says_it_may_be_writable():
    old = Script({"pos": [{"pos": "0-11-7"}]}, fail={"old_rw": _err(2013, "Lost connection")})
    new = Script({"wait": [{"result": -1}]})
    out = run(old, new)
    assert out["outcome"] == "stopped" and out["old_read_only"] is None
    assert "db1 may be writable" in out["reason"] and "every server is read-only" not in out["reason"]
    # refused (not lost): it answered, so it is read-only
    old = Script({"pos": [{"pos": "0-11-7"}]}, fail={"old_rw": _err(1227, "Access denied")})
    out = run(old, Script({"wait": [{"result": -1}]}))
    assert out["outcome"] == "stopped" and "every server is read-only" in out["reason"]


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
