"""
The switch's paths that test_switch.py does not walk, through the real
``salt-run`` CLI as users run it: every failing ``salt-run mysqlrepl.*`` exits
1 and says why; the lag precheck refuses on its own; ``record_set`` refuses
while another server is writable; the topology lock refuses a second
operation and names the holder; ``switch:kill_app_sessions``; the old master
left alone when it wrote past the captured position; a lost answer decided
from the servers' states; the new master's session killed at promotion.

Runs on the session topology (db1 master); after each test db1 is the
master again, the pillar is the default one and db2/db3 replicate from db1,
so one failure does not cascade.
"""

import os
import re
import signal
import threading

import pymysql
import pytest

from tests.support import workload
from tests.support.topology import NAMES, apply, build_pillar, fingerprint, run_return, wait_for

pytestmark = [pytest.mark.integration]

SALT_TIMEOUT = 120

TOPO = "topology=test"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def salt_run(salt_run_cli, fun, *args):
    """``salt-run mysqlrepl.<fun> ...``: (process exit code, returned data)."""
    ret = salt_run_cli.run(f"mysqlrepl.{fun}", *args)
    data = run_return(ret)
    assert isinstance(data, dict), ret
    return ret.returncode, data


def assert_failed(code, data, needle):
    """A failing runner: exit code 1, result False, retcode 1, and the reason in its comment."""
    assert code == 1, (code, data)
    assert data["result"] is False and data.get("retcode") == 1, data
    assert needle in data["comment"], data["comment"]


def read_only(srv):
    try:
        return srv.query("SELECT @@read_only AS v")[0]["v"]
    except pymysql.err.MySQLError:
        return None


def writable(servers):
    return sorted(n for n, s in servers.items() if read_only(s) == 0)


def link(srv):
    rows = srv.query("SHOW SLAVE STATUS")
    if not rows:
        return None
    rs = rows[0]
    return (rs["Master_Host"], rs["Master_Port"], rs["Slave_IO_Running"], rs["Slave_SQL_Running"],
            rs["Master_SSL_Verify_Server_Cert"])


def replicates_from(servers, name, master):
    m = servers[master]
    return link(servers[name]) == (m.address, m.port, "Yes", "Yes", "Yes")


def caught_up(servers, master):
    pos = servers[master].query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    for name, srv in servers.items():
        if name != master:
            assert srv.query("SELECT MASTER_GTID_WAIT(%s, 60) AS r", (pos,))[0]["r"] == 0, f"{name} at {pos}"


def failed_checks(data):
    return {c["check"]: c["detail"] for c in data.get("prechecks", []) if not c["ok"]}


def record(salt_run_cli):
    return run_return(salt_run_cli.run("mysqlrepl.record", TOPO))["record"]


def own_cli(salt_master, timeout=SALT_TIMEOUT):
    """A salt-run CLI of its own: one CLI object must not run two commands at once (they mix results)."""
    return salt_master.salt_run_cli(timeout=timeout)


class Background:
    """``salt-run mysqlrepl.<fun>`` in a thread, on its own CLI (faults are injected while it holds)."""

    def __init__(self, salt_master, fun, *args, timeout=SALT_TIMEOUT):
        self.out = None
        self.thread = threading.Thread(target=self._run, args=(own_cli(salt_master, timeout), fun, args),
                                       daemon=True)
        self.thread.start()

    def _run(self, salt_run_cli, fun, args):
        self.out = salt_run(salt_run_cli, fun, *args)

    def result(self, timeout=300):
        self.thread.join(timeout)
        assert self.out is not None, "the background salt-run did not finish"
        return self.out


def log_after(srv, offset):
    return srv.general_log.read_bytes()[offset:].decode(errors="replace")


def block_position_read(srv, offset):
    """
    In db1's general log since ``offset``: the block's read_only=1, then its read of
    @@GLOBAL.gtid_binlog_pos (the position it captured) -- not the prechecks' reads.
    """
    text = log_after(srv, offset)
    at = text.find("FOR SET GLOBAL read_only = 1")
    return at >= 0 and "SELECT @@GLOBAL.gtid_binlog_pos AS pos" in text[at:]


def minion_job_pid(salt_cli, minion, fun):
    jobs = salt_cli.run("saltutil.running", minion_tgt=minion).data or []
    pids = [j["pid"] for j in jobs if j.get("fun") == fun]
    return pids[0] if pids else None


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ready(topology, mariadb_servers, app_minion, salt_cli):
    """The topology, the app schema and account."""
    workload.create_schema(mariadb_servers["db1"])
    ret = salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=app_minion.id)
    assert ret.returncode == 0, ret
    return topology


@pytest.fixture(autouse=True)
def back_to_db1(request, mariadb_servers, harness_root):
    """After each test: default pillar, db1 the only writable master, db2 and db3 replicating from it."""
    state = {"pillar": False}
    yield state
    if "ready" not in request.fixturenames:
        return
    salt_run_cli = request.getfixturevalue("salt_run_cli")
    if state["pillar"]:
        request.getfixturevalue("write_pillar")(build_pillar(mariadb_servers, harness_root))
    rec = record(salt_run_cli) or {}
    now = writable(mariadb_servers)
    if rec.get("switching") and now == [rec.get("master")]:
        salt_run(salt_run_cli, "record_set", f"master={now[0]}", TOPO)
    rec = record(salt_run_cli) or {}
    master = rec.get("master", "db1")
    for name in NAMES:  # a former master left read-only and not replicating
        if name != master and link(mariadb_servers[name]) is None and read_only(mariadb_servers[name]) == 1:
            salt_run(salt_run_cli, "rejoin", f"server={name}", TOPO)
    if writable(mariadb_servers) != ["db1"] or master != "db1":
        code, data = salt_run(salt_run_cli, "switch", "new_master=db1")
        assert code == 0, data["comment"]
    if not all(replicates_from(mariadb_servers, n, "db1") for n in ("db2", "db3")):
        # a failed test may leave a replica's threads stopped: a highstate restarts them
        apply(request.getfixturevalue("salt_cli"))
    for name in ("db2", "db3"):
        wait_for(lambda n=name: replicates_from(mariadb_servers, n, "db1"), timeout=30,
                 what=f"{name} replicating from db1")
    assert writable(mariadb_servers) == ["db1"]


# ---------------------------------------------------------------------------
# exit codes
# ---------------------------------------------------------------------------

def test_failing_runners_exit_1_and_say_why(ready, salt_run_cli, mariadb_servers):
    before = fingerprint(mariadb_servers)
    # a call that succeeds exits 0 (so the checks below can tell)
    code, data = salt_run(salt_run_cli, "record", TOPO)
    assert code == 0 and data["result"] is True, data
    assert_failed(*salt_run(salt_run_cli, "switch", "new_master=db1"), "db1 is already the master of record")
    assert_failed(*salt_run(salt_run_cli, "switch", "new_master=db9"), "unknown server 'db9'")
    assert_failed(*salt_run(salt_run_cli, "seed", "replica=db1"), "db1 is the master of record")
    assert_failed(*salt_run(salt_run_cli, "seed", "replica=db9"), "unknown server 'db9'")
    assert_failed(*salt_run(salt_run_cli, "rejoin", "server=db1"), "'db1' is not a replica of the topology")
    assert_failed(*salt_run(salt_run_cli, "record_set", "master=db9"), "unknown server 'db9'")
    assert_failed(*salt_run(salt_run_cli, "record", "topology=../etc"), "invalid topology name")
    assert_failed(*salt_run(salt_run_cli, "topology", "topology=nosuch"), "has a mysqlrepl pillar")
    assert fingerprint(mariadb_servers) == before


def test_record_of_an_unknown_topology_exits_1(ready, salt_run_cli):
    code, data = salt_run(salt_run_cli, "record", "topology=nosuch")
    assert_failed(code, data, "nosuch")


# ---------------------------------------------------------------------------
# prechecks: the lag check on its own
# ---------------------------------------------------------------------------

def test_lagging_new_master_with_both_threads_running_is_refused_by_the_lag_check(
        ready, salt_run_cli, mariadb_servers):
    db1, db2 = mariadb_servers["db1"], mariadb_servers["db2"]
    # db2 applies an hour late with both threads running; db1's next event is stamped
    # 10 minutes ago, so db2 is that far behind as soon as its SQL thread holds it
    db2.session("STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 3600", "START SLAVE")
    try:
        db1.session("SET TIMESTAMP = UNIX_TIMESTAMP() - 600",
                    "INSERT INTO app.seqlog (writer, seq, server_id) VALUES ('G', 1, @@server_id)")

        def lagging():
            rs = db2.query("SHOW SLAVE STATUS")[0]
            lag = rs["Seconds_Behind_Master"]
            return rs["Slave_IO_Running"] == "Yes" and rs["Slave_SQL_Running"] == "Yes" and lag and lag > 60

        wait_for(lagging, timeout=30, what="db2 lagging with both threads running")
        before = fingerprint(mariadb_servers)
        rec = record(salt_run_cli)
        code, data = salt_run(salt_run_cli, "switch", "new_master=db2")
        assert_failed(code, data, "refused, nothing changed")
        failed = failed_checks(data)
        # the lag check alone refuses: every other check passes
        assert set(failed) == {"lag"}, failed
        assert re.search(r"db2 is \d+s behind db1 \(limit 5s, mysqlrepl:switch:max_lag\)", failed["lag"]), failed
        assert fingerprint(mariadb_servers) == before
        assert record(salt_run_cli) == rec  # (none on a fresh harness; test_switch.py leaves one)
    finally:
        db2.session("STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 0", "START SLAVE")
    caught_up(mariadb_servers, "db1")


# ---------------------------------------------------------------------------
# record_set
# ---------------------------------------------------------------------------

def test_record_set_refuses_while_another_server_is_writable(ready, salt_run_cli, mariadb_servers):
    db3 = mariadb_servers["db3"]
    rec = record(salt_run_cli)
    db3.query("SET GLOBAL read_only = 0")
    try:
        assert_failed(*salt_run(salt_run_cli, "record_set", "master=db1", TOPO),
                      "refusing to name db1 the master: db3 is writable; nothing changed")
        # naming the writable one is refused too while db1 takes writes
        assert_failed(*salt_run(salt_run_cli, "record_set", "master=db3", TOPO),
                      "refusing to name db3 the master: db1 is writable; nothing changed")
        assert record(salt_run_cli) == rec
    finally:
        db3.query("SET GLOBAL read_only = 1")
    assert writable(mariadb_servers) == ["db1"]


# ---------------------------------------------------------------------------
# the topology lock
# ---------------------------------------------------------------------------

def test_a_second_operation_is_refused_while_a_switch_holds_the_topology(ready, salt_run_cli, salt_master,
                                                                           mariadb_servers):
    db1 = mariadb_servers["db1"]
    bg = Background(salt_master, "switch", "new_master=db2", "hold_after=old_read_only", "hold_s=20")
    wait_for(lambda: read_only(db1) == 1, timeout=60, what="db1 read-only (the switch holds)")
    second = {"switch": salt_run(salt_run_cli, "switch", "new_master=db3")}
    assert_failed(*second["switch"], "another mysqlrepl operation holds topology test")

    def attempt(key, fun, *args):
        second[key] = salt_run(own_cli(salt_master), fun, *args)

    threads = [threading.Thread(target=attempt, args=a, daemon=True) for a in (
        ("seed", "seed", "replica=db3", "force=True"),
        ("record_set", "record_set", "master=db1", TOPO))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert bg.thread.is_alive(), "the held switch ended before the second operations were refused"
    code, data = bg.result()
    assert code == 0 and data["result"] is True, data["comment"]
    holder = f'"operation": "switch to db2 (jid {data["jid"]})"'
    for key in ("switch", "seed", "record_set"):
        assert_failed(*second[key], "another mysqlrepl operation holds topology test")
        assert holder in second[key][1]["comment"], (key, second[key][1]["comment"])
    assert second["switch"][1]["prechecks"] == []  # refused before reading any server
    assert writable(mariadb_servers) == ["db2"]
    assert replicates_from(mariadb_servers, "db3", "db2")  # the refused seed did not touch it


# ---------------------------------------------------------------------------
# switch:kill_app_sessions
# ---------------------------------------------------------------------------

def test_kill_app_sessions_ends_app_sessions_only(ready, salt_run_cli, mariadb_servers, write_pillar,
                                                  harness_root, back_to_db1, topology):
    from tests.support.topology import ADMIN_PASSWORD  # pylint: disable=import-outside-toplevel

    db1 = mariadb_servers["db1"]
    sw = dict(topology["pillar"]["mysqlrepl"]["switch"], kill_app_sessions=True)
    back_to_db1["pillar"] = True
    write_pillar(build_pillar(mariadb_servers, harness_root, switch=sw))

    def session_id(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            return cur.fetchone()[0]

    def alive(conn):
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except pymysql.err.MySQLError:
            return False

    apps = [pymysql.connect(host=db1.address, port=db1.port, user=workload.APP_USER,
                            password=workload.APP_PASSWORD, ssl_disabled=True, autocommit=True)
            for _ in range(2)]
    admins = [db1.connect(),  # root@localhost
              db1.connect(user="opadmin", password=ADMIN_PASSWORD)]  # mysqlrepl:switch:admin_users
    try:
        app_ids = {session_id(c) for c in apps}
        admin_ids = {session_id(c) for c in admins}
        dumps = {r["ID"] for r in db1.query(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%%'")}
        assert len(dumps) == 2, dumps
        code, data = salt_run(salt_run_cli, "switch", "new_master=db2")
        assert code == 0 and data["result"] is True, data["comment"]
        assert any("KILL the app sessions" in step for step in data["plan"]), data["plan"]
        killed = set(data["critical_section"]["killed_sessions"])
        assert app_ids <= killed, (app_ids, killed)
        assert not killed & (admin_ids | dumps), (killed, admin_ids, dumps)
        assert not any(alive(c) for c in apps)
        assert all(alive(c) for c in admins)
    finally:
        for conn in apps + admins:
            try:
                conn.close()
            except Exception:  # pylint: disable=broad-except
                pass


# ---------------------------------------------------------------------------
# the old master wrote past the captured position: not demoted
# ---------------------------------------------------------------------------

def old_master_left_alone_then_rejoined(salt_run_cli, mariadb_servers):
    """db2 alone writable and recorded; db1 left read-only and not replicating, db3 on db2;
    then `rejoin` checks db1 and makes it a replica of db2."""
    db1 = mariadb_servers["db1"]
    assert writable(mariadb_servers) == ["db2"]
    assert read_only(db1) == 1 and link(db1) is None  # left alone: read-only, not replicating
    assert replicates_from(mariadb_servers, "db3", "db2")
    rec = record(salt_run_cli)
    assert rec["master"] == "db2" and "switching" not in rec, rec
    code, data = salt_run(salt_run_cli, "rejoin", "server=db1", TOPO)
    assert code == 0 and data["result"] is True, data
    wait_for(lambda: replicates_from(mariadb_servers, "db1", "db2"), timeout=30, what="db1 replicating from db2")


def test_old_master_that_wrote_past_the_captured_position_is_not_demoted(ready, salt_run_cli, salt_master,
                                                                          mariadb_servers):
    """
    An exempt account (root) writes on db1 through read_only after the block read
    db1's position: db1 is left read-only and not replicating, the result says so,
    and ``rejoin`` (which checks db2 has all of db1's transactions) brings it back.
    (The row reaches db2 by replication before its STOP SLAVE, so rejoin succeeds;
    demotion is refused on the position alone.)
    """
    db1, db2 = mariadb_servers["db1"], mariadb_servers["db2"]
    offset = db1.general_log.stat().st_size
    bg = Background(salt_master, "switch", "new_master=db2", "hold_after=old_gtid_pos", "hold_s=5")
    wait_for(lambda: block_position_read(db1, offset), timeout=60, what="the block's read of db1's position")
    captured = db1.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert read_only(db1) == 1
    db1.query("INSERT INTO app.seqlog (writer, seq, server_id) VALUES ('X', 1, @@server_id)")  # root: exempt
    past = db1.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert past != captured
    assert db2.query("SELECT MASTER_GTID_WAIT(%s, 3) AS r", (past,))[0]["r"] == 0
    code, data = bg.result()
    assert data["critical_section"]["outcome"] == "promoted", data["critical_section"]
    assert data["critical_section"]["pos"] == captured
    assert_failed(code, data, f"db1 wrote past the switch's position {captured} (now {past}): not demoted")
    assert data["repointed"]["db1"]["result"] is False
    old_master_left_alone_then_rejoined(salt_run_cli, mariadb_servers)


# ---------------------------------------------------------------------------
# the new master's block session killed at promotion (its id read at open)
# ---------------------------------------------------------------------------

def test_new_master_session_lost_at_promotion_is_killed_then_rolled_back(ready, salt_run_cli, salt_master,
                                                                          mariadb_servers):
    db2 = mariadb_servers["db2"]
    offset = db2.general_log.stat().st_size
    bg = Background(salt_master, "switch", "new_master=db2", "hold_after=new_stop_replica", "hold_s=4")
    wait_for(lambda: (db2.query("SHOW SLAVE STATUS") or [{}])[0].get("Slave_SQL_Running") == "No",
             timeout=60, what="STOP SLAVE on db2")
    # the block's session on db2 is the one that read its own CONNECTION_ID() at open
    found = re.findall(r"(\d+) Query\s+SELECT CONNECTION_ID\(\) AS id\s*$", log_after(db2, offset), re.M)
    assert len(found) == 1, found
    sid = int(found[0])
    db2.query(f"KILL {sid}")  # (spelled so that the block's own KILL CONNECTION shows apart in the log)
    code, data = bg.result()
    crit = data["critical_section"]
    assert code == 1 and crit["outcome"] == "aborted", crit
    step = next(s for s in crit["steps"] if s["step"] == "new_settle_lost")
    assert step["session_id"] == sid and step["session"] == "gone" and step["read_only"] == 1, step
    assert f"read-only and the session that was asked ({sid}) is over" in crit["reason"], crit["reason"]
    # the block killed that session itself (over a fresh connection) before reading read_only
    after = log_after(db2, offset)
    assert re.search(rf"\d+ Query\s+KILL CONNECTION {sid}\s*$", after, re.M), after[-2000:]
    assert writable(mariadb_servers) == ["db1"]
    wait_for(lambda: replicates_from(mariadb_servers, "db2", "db1"), timeout=30, what="db2 replicating again")


# ---------------------------------------------------------------------------
# the critical job's answer lost after promotion: decided from the servers
# ---------------------------------------------------------------------------

def test_lost_answer_with_new_master_writable_goes_forward_without_demoting(
        ready, salt_run_cli, salt_cli, salt_master, mariadb_servers, topology):
    from _utils.mysqlrepl_switch import time_limits  # pylint: disable=import-outside-toplevel

    db1, db2 = mariadb_servers["db1"], mariadb_servers["db2"]
    sw = topology["pillar"]["mysqlrepl"]["switch"]
    hold = 5
    # the shortest wait the minion accepts (it refuses one the block could outlast)
    limit = int(time_limits(sw.get("lock_budget", 1), sw["catchup_timeout"], hold)["worst_s"]) + 5
    bg = Background(salt_master, "switch", "new_master=db2", "hold_after=new_writable", f"hold_s={hold}",
                    f"critical_timeout={limit}", timeout=limit + 120)
    # the job is found while it starts; it is killed once db2 is writable (while it holds)
    pid = wait_for(lambda: minion_job_pid(salt_cli, "db2", "mysqlrepl.switch_critical"), timeout=90,
                   interval=0.5, what="the switch_critical job on db2")
    wait_for(lambda: read_only(db2) == 0, timeout=60, interval=0.05, what="db2 writable (the block holds after it)")
    os.kill(pid, signal.SIGKILL)  # the job dies after promoting: its answer never comes
    code, data = bg.result(timeout=limit + 120)
    job = data["critical_job"]
    assert job["ended"] is True and job["answer"] is None, job
    crit = data["critical_section"]
    assert crit["outcome"] == "promoted" and crit["pos"] is None, crit
    assert "the minion's answer was lost" in crit["reason"], crit["reason"]
    # forward, but the old master is not demoted (its position at read_only time is unknown)
    assert_failed(code, data, "db1 not demoted: the write block's answer was lost")
    assert "salt-run mysqlrepl.rejoin server=db1" in data["comment"]
    assert "db1" not in data["repointed"], data["repointed"]
    old_master_left_alone_then_rejoined(salt_run_cli, mariadb_servers)
