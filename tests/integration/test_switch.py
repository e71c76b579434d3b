"""
Planned switchover on real servers through the real salt-master:
``salt-run mysqlrepl.switch`` and ``salt-run state.orchestrate mysqlrepl.orch.switch``.

The tests in this module run in file order on the topology the setup
orchestration brought up (db1 master); each leaves db1 as the master again.
"""

import json
import pathlib
import time

import pymysql
import pytest

from tests.support import workload
from tests.support.topology import (NAMES, all_ok, apply, changes_of, fingerprint, orch_failures,
                                    orch_steps, run_return, wait_for)

pytestmark = [pytest.mark.integration]


def switch(salt_run_cli, new_master, *extra):
    ret = salt_run_cli.run("mysqlrepl.switch", f"new_master={new_master}", *extra)
    data = run_return(ret)
    assert isinstance(data, dict), ret
    return data


def read_only(srv):
    """@@read_only of a server, None when it does not answer."""
    try:
        return srv.query("SELECT @@read_only AS v")[0]["v"]
    except pymysql.err.MySQLError:
        return None


def master_of(servers):
    """The one writable server (asserts there is exactly one)."""
    writable = [n for n, s in servers.items() if read_only(s) == 0]
    assert len(writable) == 1, f"writable: {writable}"
    return writable[0]


def failed_checks(data):
    return {c["check"]: c["detail"] for c in data.get("prechecks", []) if not c["ok"]}


def all_links_verified(servers, master):
    m = servers[master]
    for name, srv in servers.items():
        if name == master:
            continue
        rows = srv.query("SHOW SLAVE STATUS")
        assert rows, f"{name} does not replicate"
        rs = rows[0]
        assert (rs["Master_Host"], rs["Master_Port"]) == (m.address, m.port), (name, rs["Master_Host"])
        assert rs["Slave_IO_Running"] == "Yes" and rs["Slave_SQL_Running"] == "Yes", (name, rs)
        assert rs["Master_SSL_Allowed"] == "Yes" and rs["Master_SSL_Verify_Server_Cert"] == "Yes", (name, rs)
    ciphers = [r["cipher"] for r in m.query(
        "SELECT s.VARIABLE_VALUE AS cipher FROM performance_schema.threads t "
        "LEFT JOIN performance_schema.status_by_thread s ON s.THREAD_ID = t.THREAD_ID "
        "AND s.VARIABLE_NAME = 'Ssl_cipher' WHERE t.PROCESSLIST_COMMAND LIKE 'Binlog Dump%%'")]
    assert len(ciphers) == len(servers) - 1 and all(ciphers), ciphers


@pytest.fixture(autouse=True)
def back_to_db1(request, mariadb_servers):
    """After each test, db1 is the master again (so one failure does not fail every later test)."""
    yield
    if "switch_ready" not in request.fixturenames:
        return
    writable = [n for n, s in mariadb_servers.items() if read_only(s) == 0]
    salt_run_cli = request.getfixturevalue("salt_run_cli")
    record = run_return(salt_run_cli.run("mysqlrepl.record", "topology=test")).get("record") or {}
    if record.get("switching") and writable == [record.get("master")]:
        salt_run_cli.run("mysqlrepl.record_set", f"master={writable[0]}", "topology=test")
    if writable != ["db1"]:
        salt_run_cli.run("mysqlrepl.switch", "new_master=db1")


@pytest.fixture(scope="module")
def switch_ready(topology, mariadb_servers, app_minion, salt_cli):
    """The topology, the app schema and account, the app minion's pillar."""
    workload.create_schema(mariadb_servers["db1"])
    ret = salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=app_minion.id)
    assert ret.returncode == 0, ret
    yield topology


def test_dry_run_changes_nothing(switch_ready, salt_run_cli, mariadb_servers):
    before = fingerprint(mariadb_servers)
    data = switch(salt_run_cli, "db2", "dry_run=True")
    assert data["result"] is True, data
    assert failed_checks(data) == {}
    assert any("MASTER_GTID_WAIT" in step for step in data["plan"]), data["plan"]
    assert data["changes"]["db1"]["read_only"] == "OFF -> ON"
    assert data["changes"]["db3"]["replicates from"] == "db1 -> db2"
    assert fingerprint(mariadb_servers) == before
    rec = run_return(salt_run_cli.run("mysqlrepl.record", "topology=test"))
    assert rec["record"] is None, rec


def test_switch_and_back(switch_ready, salt_run_cli, salt_cli, mariadb_servers, app_minion, event_listener,
                         salt_master):
    since = time.time()
    data = switch(salt_run_cli, "db2")
    assert data["result"] is True, json.dumps(data, indent=1, default=str)
    # each step on the event bus (events may arrive a moment after the runner's return)
    want = {f"salt/mysqlrepl/switch/{step}" for step in
            ("precheck/start", "precheck/ok", "critical/start", "critical/done", "repointed", "done")}

    def tags():
        return {e.tag for e in event_listener.get_events([(salt_master.id, "salt/mysqlrepl/switch/*")],
                                                         after_time=since)}

    wait_for(lambda: want <= tags(), timeout=15, what=f"switch events {sorted(want - tags())}")
    assert master_of(mariadb_servers) == "db2"
    all_links_verified(mariadb_servers, "db2")
    assert data["critical_section"]["outcome"] == "promoted"
    assert data["timings"]["block_ms"] < 1000
    # the prechecks' facts came with the topology read (no operation held the lock since),
    # and every server's state in the result came from the follower jobs
    assert data["facts_read"].startswith("beside the topology"), data["facts_read"]
    # (only the new master's is read after them, beside the pillar refresh)
    assert data["timings"]["server_states_s"] <= data["timings"]["pillar_refresh_s"], data["timings"]
    assert len(data["servers"]["db2"]["binlog_dump_ciphers"]) == 2, data["servers"]["db2"]
    assert data["servers"]["db1"]["replicates_from"] and data["servers"]["db3"]["tls_verified"] is True
    assert data["servers"]["db2"]["replicates_from"] is None and data["servers"]["db2"]["read_only"] == "OFF"
    rec = run_return(salt_run_cli.run("mysqlrepl.record", "topology=test"))
    assert rec["record"]["master"] == "db2" and "switching" not in rec["record"], rec
    # db minions follow the record; a highstate changes nothing
    ret = salt_cli.run("-L", "pillar.get", "mysqlrepl:master", "unmask=True", minion_tgt=",".join(NAMES))
    assert ret.data == {n: "db2" for n in NAMES}, ret
    ret = apply(salt_cli)
    assert all_ok(ret) == {} and changes_of(ret) == {n: {} for n in NAMES}, changes_of(ret)

    data = switch(salt_run_cli, "db1")
    assert data["result"] is True, json.dumps(data, indent=1, default=str)
    assert master_of(mariadb_servers) == "db1"
    all_links_verified(mariadb_servers, "db1")


# ---------------------------------------------------------------------------
# under load: writers that know nothing of the switch, a probe on every server
# ---------------------------------------------------------------------------

def endpoints(servers):
    return {n: (s.address, s.port) for n, s in servers.items()}


def server_ids(servers):
    return {s.query("SELECT @@server_id AS v")[0]["v"]: n for n, s in servers.items()}


def caught_up(servers, master):
    pos = servers[master].query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    for name, srv in servers.items():
        if name != master:
            res = srv.query("SELECT MASTER_GTID_WAIT(%s, 60) AS r", (pos,))[0]["r"]
            assert res == 0, f"{name} did not reach {pos}"


def check_rows(servers, writers):
    """Every acknowledged sequence exactly once on every server; equal checksums."""
    for writer in writers:
        acked = [seq for seq, _sid, _t in writer.acked]
        assert acked == list(range(1, len(acked) + 1)), f"writer {writer.writer}: acks out of order"
        for name, srv in servers.items():
            rows = srv.query("SELECT seq, COUNT(*) AS n FROM app.seqlog WHERE writer = %s GROUP BY seq",
                             (writer.writer,))
            counts = {r["seq"]: r["n"] for r in rows}
            lost = sorted(set(acked) - set(counts))
            dup = sorted(seq for seq, n in counts.items() if n > 1)
            extra = sorted(set(counts) - set(acked))
            assert not lost and not dup and not extra, (
                f"{name}, writer {writer.writer}: lost {lost[:10]}, duplicated {dup[:10]}, unacked {extra[:10]}")
    sums = {n: tuple(r["Checksum"] for r in s.query("CHECKSUM TABLE app.seqlog, app.probe"))
            for n, s in servers.items()}
    assert len(set(sums.values())) == 1, sums


def check_probe(servers, probe, expected_masters):
    """The probe's rows (written where writes were taken) form one run per master, in switch order."""
    assert probe.double == [], f"two servers took the same probe round: {probe.double[:5]}"
    ids = server_ids(servers)
    rows = [(r["server_id"], r["t"]) for r in servers["db1"].query(
        "SELECT server_id, t FROM app.probe WHERE t >= FROM_UNIXTIME(%s)", (probe.started,))]
    assert len(rows) > probe.rounds // 2, (len(rows), probe.rounds)
    runs = [ids[sid] for sid, _a, _b, _n in workload.runs_of_server_ids(rows)]
    # the probe may miss a short tenure entirely, never interleave two masters
    it = iter(expected_masters)
    assert all(any(run == want for want in it) for run in runs), (runs, expected_masters)


def hosts_entry(app_minion, name="masterdb"):
    for line in app_minion.hosts_file.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2 and name in parts[1:]:
            return parts[0]
    return None


def test_orchestration_switch_apps_follow(switch_ready, salt_run_cli, salt_cli, mariadb_servers, app_minion):
    servers = mariadb_servers
    eps = endpoints(servers)
    port = servers["db1"].port

    def resolve():
        address = hosts_entry(app_minion)
        return (address, port) if address else None

    # the hosts entry apps use exists before the first switch (rendered from pillar)
    ret = salt_cli.run("state.apply", "mysqlrepl.app", minion_tgt=app_minion.id)
    assert ret.returncode == 0, ret
    assert hosts_entry(app_minion) == servers["db1"].address
    writer_a = workload.Writer(eps, "A")
    writer_b = workload.Writer(eps, "B", resolve=resolve)
    probe = workload.Probe(eps)
    for thread in (writer_a, writer_b, probe):
        thread.start()
    try:
        masters = ["db1"]
        for new in ("db2", "db1"):
            wait_for(lambda: len(writer_b.acked) > 20, what="writer B running")
            old = masters[-1]
            started = time.time()
            ret = salt_run_cli.run("state.orchestrate", "mysqlrepl.orch.switch",
                                   f'pillar={{"mysqlrepl": {{"new_master": "{new}"}}}}')
            ended = time.time()
            assert probe.double == [], f"two servers took the same probe round: {probe.double[:5]}"
            assert ret.returncode == 0 and orch_failures(ret) == {}, ret
            # modules already synced: neither the master nor a minion is synced again; the runner
            # updates the app minion (no second apply by the orchestration)
            steps = orch_steps(ret)
            assert set(steps) == {"mysqlrepl-sync-master", "mysqlrepl-switch"}, steps
            assert steps["mysqlrepl-sync-master"]["changes"] == {}, steps["mysqlrepl-sync-master"]
            synced = steps["mysqlrepl-switch"]["changes"]["return"]["sync"]
            assert synced["synced"] == {} and set(NAMES) <= set(synced["current"]), synced
            apps = steps["mysqlrepl-switch"]["changes"]["return"]["apps"]
            assert apps["minions"] == [app_minion.id] and apps["failed"] == {}, apps
            assert "No minions matched" not in ret.stdout and "No minions matched" not in ret.stderr
            masters.append(new)
            assert hosts_entry(app_minion) == servers[new].address
            ret = salt_cli.run("pillar.get", "infra:hosts_entries:masterdb", "unmask=True",
                               minion_tgt=app_minion.id)
            assert ret.data == servers[new].address, ret
            # apps reach the new master once the orchestration ends
            ids = server_ids(servers)
            wait_for(lambda: any(ids[sid] == new and t > ended for _s, sid, t in writer_b.acked),
                     timeout=5, what=f"writer B on {new}")
            # nothing lands on the old master once the new one took writes
            first_new = min(t for _s, sid, t in writer_a.acked + writer_b.acked
                            if ids[sid] == new and t >= started)
            late = [seq for seq, sid, t in writer_a.acked + writer_b.acked if ids[sid] == old and t > first_new]
            assert late == [], f"commits on {old} after {new} took writes: {late[:10]}"
    finally:
        for thread in (writer_a, writer_b, probe):
            thread.stop()
    assert writer_a.failure is None and writer_b.failure is None, (writer_a.failure, writer_b.failure)
    caught_up(servers, "db1")
    check_rows(servers, [writer_a, writer_b])
    check_probe(servers, probe, masters)
    all_links_verified(servers, "db1")
    ret = apply(salt_cli)
    assert all_ok(ret) == {} and changes_of(ret) == {n: {} for n in NAMES}, changes_of(ret)


def test_twenty_switchovers_under_writer(switch_ready, salt_run_cli, mariadb_servers):
    servers = mariadb_servers
    eps = endpoints(servers)
    writer = workload.Writer(eps, "C")
    probe = workload.Probe(eps)
    writer.start()
    probe.start()
    masters = ["db1"]
    results = []
    try:
        for new in ["db2", "db3", "db1"] * 7:
            wait_for(lambda: len(writer.acked) > 10 + len(results) * 10, what="writer running")
            data = switch(salt_run_cli, new)
            # checked first, whatever the switch says: never two writable masters
            assert probe.double == [], f"two servers took the same probe round: {probe.double[:5]}"
            assert data["result"] is True, json.dumps(data, indent=1, default=str)
            masters.append(new)
            results.append(data)
            ids = server_ids(servers)
            wait_for(lambda: any(ids[sid] == new for _s, sid, _t in writer.acked[-5:]),
                     timeout=10, what=f"writer on {new}")
    finally:
        writer.stop()
        probe.stop()
    assert writer.failure is None, writer.failure
    assert len(results) >= 20
    caught_up(servers, "db1")
    check_rows(servers, [writer])
    check_probe(servers, probe, masters)
    all_links_verified(servers, "db1")


# ---------------------------------------------------------------------------
# faults: refused before any change, or handled by the failure rules
# ---------------------------------------------------------------------------

def others(servers, *names):
    return {n: s for n, s in servers.items() if n not in names}


def assert_db1_master_db2_replica(servers):
    assert master_of(servers) == "db1"
    wait_for(lambda: (lambda rs: rs and rs[0]["Slave_IO_Running"] == "Yes"
                      and rs[0]["Slave_SQL_Running"] == "Yes")(servers["db2"].query("SHOW SLAVE STATUS")),
             timeout=30, what="db2 replicating")
    all_links_verified(servers, "db1")


def refused(salt_run_cli, servers, check, needle, new="db2", keep=()):
    """The switch is refused by ``check`` (its reason holding ``needle``) and changes nothing."""
    before = fingerprint(others(servers, *keep))
    record = run_return(salt_run_cli.run("mysqlrepl.record", "topology=test"))["record"]
    data = switch(salt_run_cli, new)
    assert data["result"] is False, data
    failed = failed_checks(data)
    assert check in failed and needle in failed[check], (failed, data["comment"])
    assert data["comment"].startswith("refused, nothing changed"), data["comment"]
    assert fingerprint(others(servers, *keep)) == before
    assert run_return(salt_run_cli.run("mysqlrepl.record", "topology=test"))["record"] == record
    return failed


def test_refused_new_master_down(switch_ready, salt_run_cli, mariadb_servers):
    db2 = mariadb_servers["db2"]
    db2.stop()
    try:
        refused(salt_run_cli, mariadb_servers, "reachable", "db2", keep=("db2",))
    finally:
        db2.start()
    assert_db1_master_db2_replica(mariadb_servers)


def test_refused_new_master_lagging(switch_ready, salt_run_cli, mariadb_servers):
    db2 = mariadb_servers["db2"]
    db2.query("STOP SLAVE SQL_THREAD")
    try:
        refused(salt_run_cli, mariadb_servers, "new master replicates from the current master", "SQL thread No")
    finally:
        db2.query("START SLAVE SQL_THREAD")
    assert_db1_master_db2_replica(mariadb_servers)


def test_refused_errant_gtid(switch_ready, salt_run_cli, mariadb_servers):
    db1, db2 = mariadb_servers["db1"], mariadb_servers["db2"]
    # root writes through read_only: a local transaction on the replica
    db2.query("CREATE TABLE IF NOT EXISTS app.errant_marker (i INT)")
    sid = db2.query("SELECT @@server_id AS v")[0]["v"]
    try:
        refused(salt_run_cli, mariadb_servers, "no errant transactions", f"-{sid}-")
    finally:
        # the usual repair: the master gets a transaction with the replica's server_id
        # (a replica skips events of its own server_id), then the marker goes everywhere
        db1.session(f"SET SESSION server_id = {sid}", "CREATE TABLE IF NOT EXISTS app.errant_marker (i INT)")
        db1.query("DROP TABLE app.errant_marker")
    caught_up(mariadb_servers, "db1")
    data = switch(salt_run_cli, "db2", "dry_run=True")
    assert data["result"] is True, failed_checks(data)


def test_refused_new_master_not_a_replica(switch_ready, salt_run_cli, salt_cli, mariadb_servers):
    db2 = mariadb_servers["db2"]
    db2.session("STOP SLAVE", "RESET SLAVE ALL")
    refused(salt_run_cli, mariadb_servers, "new master replicates from the current master", "replicates from nobody",
            keep=("db2",))
    ret = apply(salt_cli)  # the highstate puts the link back
    assert all_ok(ret) == {}, all_ok(ret)
    assert_db1_master_db2_replica(mariadb_servers)


def test_refused_read_only_admin_through_public(switch_ready, salt_run_cli, mariadb_servers):
    db1 = mariadb_servers["db1"]
    db1.query("GRANT READ_ONLY ADMIN ON *.* TO PUBLIC")
    try:
        refused(salt_run_cli, mariadb_servers, "no app user can write through read_only",
                f"{workload.APP_USER}@%: READ_ONLY ADMIN granted to PUBLIC")
    finally:
        db1.query("REVOKE READ_ONLY ADMIN ON *.* FROM PUBLIC")
    caught_up(mariadb_servers, "db1")


def test_refused_event_with_root_definer(switch_ready, salt_run_cli, mariadb_servers):
    db1 = mariadb_servers["db1"]
    db1.query("CREATE EVENT app.ev_root ON SCHEDULE EVERY 1 HOUR DO DELETE FROM app.probe WHERE 1 = 0")
    try:
        refused(salt_run_cli, mariadb_servers, "no event can write through read_only", "app.ev_root runs as root@localhost")
    finally:
        db1.query("DROP EVENT app.ev_root")
    caught_up(mariadb_servers, "db1")


def test_refused_when_a_minion_does_not_answer(switch_ready, salt_run_cli, salt_minions, mariadb_servers):
    salt_minions["db3"].terminate()
    try:
        refused(salt_run_cli, mariadb_servers, "reachable", "db3")
    finally:
        salt_minions["db3"].start()


def test_refused_when_new_master_purged_what_a_replica_needs(switch_ready, salt_run_cli, mariadb_servers):
    db1, db2, db3 = (mariadb_servers[n] for n in NAMES)
    # db3 applies an hour late (its threads run), db2 then purges its older binary logs
    db3.session("STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 3600", "START SLAVE")
    try:
        db1.query("INSERT INTO app.seqlog (writer, seq, server_id) VALUES ('P', 1, @@server_id)")  # root
        pos = db1.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
        assert db2.query("SELECT MASTER_GTID_WAIT(%s, 60) AS r", (pos,))[0]["r"] == 0
        db2.query("FLUSH BINARY LOGS")
        newest = db2.query("SHOW MASTER STATUS")[0]["File"]
        # the older log goes once the binlog checkpoint has moved past it
        wait_for(lambda: db2.query(f"PURGE BINARY LOGS TO '{newest}'") is not None
                 and [r["Log_name"] for r in db2.query("SHOW BINARY LOGS")] == [newest],
                 timeout=30, what=f"db2's binary logs purged to {newest}")
        failed = refused(salt_run_cli, mariadb_servers, "replicas' positions still in the new master's binary logs",
                         "db3 is at seq", keep=())
        assert set(failed) == {"replicas' positions still in the new master's binary logs"}, failed
        assert newest in failed["replicas' positions still in the new master's binary logs"]
    finally:
        db3.session("STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 0", "START SLAVE")
    caught_up(mariadb_servers, "db1")
    data = switch(salt_run_cli, "db2", "dry_run=True")
    assert data["result"] is True, failed_checks(data)


def test_highstate_keeps_master_read_only_while_another_server_is_writable(switch_ready, salt_cli, mariadb_servers):
    db1, db3 = mariadb_servers["db1"], mariadb_servers["db3"]
    db1.query("SET GLOBAL read_only = 1")
    db3.query("SET GLOBAL read_only = 0")
    try:
        ret = apply(salt_cli, minions=["db1", "db2"])  # not db3: its own state would fix it
        bad = all_ok(ret)
        assert set(bad) == {"db1"}, bad
        assert any("db3 writable" in c and "stays read-only" in c for _i, c in bad["db1"]), bad
        assert read_only(db1) == 1 and read_only(db3) == 0
    finally:
        db3.query("SET GLOBAL read_only = 1")
    ret = apply(salt_cli, minions=["db1", "db2"])
    assert all_ok(ret) == {}, all_ok(ret)
    assert_db1_master_db2_replica(mariadb_servers)


def test_hung_critical_section_job_is_killed_before_deciding(switch_ready, salt_run_cli, salt_cli, salt_master,
                                                             mariadb_servers, topology):
    import os  # pylint: disable=import-outside-toplevel
    import signal  # pylint: disable=import-outside-toplevel

    from _utils.mysqlrepl_switch import time_limits  # pylint: disable=import-outside-toplevel

    db1, db2 = mariadb_servers["db1"], mariadb_servers["db2"]
    sw = topology["pillar"]["mysqlrepl"].get("switch", {})
    # the hold outlasts finding the job (a salt CLI call takes seconds on a loaded machine: with
    # 2 s the switch had gone on before saltutil.running saw it)
    hold = 10
    # just long enough for the minion to start the block (it refuses a limit the block could outlast)
    limit = int(time_limits(sw.get("lock_budget", 1), sw.get("catchup_timeout", 5), hold)["worst_s"]) + 5
    # its own CLI, allowed to outlive the runner's wait plus settling the job and reading the servers
    bg = Background(salt_master.salt_run_cli(timeout=limit + 120), "db2", "hold_after=new_stop_replica",
                    f"hold_s={hold}", f"critical_timeout={limit}")
    wait_for(lambda: (db2.query("SHOW SLAVE STATUS") or [{}])[0].get("Slave_SQL_Running") == "No",
             timeout=30, what="STOP SLAVE on db2")
    jobs = salt_cli.run("saltutil.running", minion_tgt="db2").data
    pid = next(j["pid"] for j in jobs if j["fun"] == "mysqlrepl.switch_critical")
    os.kill(pid, signal.SIGSTOP)  # the job hangs: no read timeout or deadline can end it
    data = bg.result()
    job = data["critical_job"]
    assert job["killed"] is True and job["ended"] is True, job
    assert data["result"] is False and data["comment"].startswith("stopped"), data["comment"]
    assert "was killed and is gone" in data["comment"], data["comment"]
    assert read_only(db1) == 1 and read_only(db2) == 1  # nobody writable, and it stays so
    time.sleep(2)
    assert read_only(db1) == 1 and read_only(db2) == 1
    record = run_return(salt_run_cli.run("mysqlrepl.record", "topology=test"))["record"]
    assert record["master"] == "db1" and "stopped" in record["switching"]["phase"], record
    # the operator decides: db1 stays the master
    rec = run_return(salt_run_cli.run("mysqlrepl.record_set", "master=db1", "topology=test"))
    assert rec["result"] is True, rec
    ret = apply(salt_cli)
    assert all_ok(ret) == {}, all_ok(ret)
    assert_db1_master_db2_replica(mariadb_servers)


def test_critical_timeout_too_short_aborts_before_any_change(switch_ready, salt_run_cli, mariadb_servers):
    before = fingerprint(mariadb_servers)
    data = switch(salt_run_cli, "db2", "critical_timeout=10")
    crit = data["critical_section"]
    assert data["result"] is False and crit["outcome"] == "aborted", data
    assert "could outlast the runner's 10s" in crit["reason"] and crit["steps"] == [], crit
    assert fingerprint(mariadb_servers) == before
    assert master_of(mariadb_servers) == "db1"


class Background:
    """``salt-run mysqlrepl.switch`` in a thread (for faults injected while it holds)."""

    def __init__(self, salt_run_cli, *args):
        import threading  # pylint: disable=import-outside-toplevel

        self.data = None
        self.thread = threading.Thread(target=self._run, args=(salt_run_cli, args), daemon=True)
        self.thread.start()

    def _run(self, salt_run_cli, args):
        self.data = switch(salt_run_cli, *args)

    def result(self):
        self.thread.join(300)
        assert self.data is not None
        return self.data


def test_long_write_on_old_master_aborts_within_budget(switch_ready, salt_run_cli, mariadb_servers):
    import threading  # pylint: disable=import-outside-toplevel

    db1 = mariadb_servers["db1"]
    done = {}

    def long_insert():
        conn = pymysql.connect(host=db1.address, port=db1.port, user=workload.APP_USER,
                               password=workload.APP_PASSWORD, autocommit=True, ssl_disabled=True)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO app.seqlog (writer, seq, server_id) SELECT 'L', 1, SLEEP(10)")
        conn.close()
        done["at"] = time.monotonic()

    thread = threading.Thread(target=long_insert, daemon=True)
    thread.start()
    time.sleep(0.5)
    record = run_return(salt_run_cli.run("mysqlrepl.record", "topology=test"))["record"]
    data = switch(salt_run_cli, "db2")
    assert data["result"] is False, data
    crit = data["critical_section"]
    assert crit["outcome"] == "aborted" and "budget" in crit["reason"], crit
    step = crit["steps"][0]
    assert step["step"] == "old_read_only" and not step["ok"] and 900 <= step["ms"] < 2500, step
    assert [s["step"] for s in crit["steps"]] == ["old_read_only"]
    assert master_of(mariadb_servers) == "db1"
    assert run_return(salt_run_cli.run("mysqlrepl.record", "topology=test"))["record"] == record
    thread.join(20)
    assert "at" in done  # the long write committed once the switch had let go
    assert_db1_master_db2_replica(mariadb_servers)


def test_sql_thread_stopped_after_read_only_rolls_back(switch_ready, salt_run_cli, mariadb_servers):
    db1, db2 = mariadb_servers["db1"], mariadb_servers["db2"]
    bg = Background(salt_run_cli, "db2", "hold_after=old_read_only", "hold_s=3")
    wait_for(lambda: read_only(db1) == 1, timeout=30, what="db1 read-only")
    db2.query("STOP SLAVE SQL_THREAD")
    db1.query("INSERT INTO app.seqlog (writer, seq, server_id) VALUES ('R', 1, @@server_id)")  # root
    data = bg.result()
    crit = data["critical_section"]
    assert data["result"] is False and crit["outcome"] == "aborted", data
    assert "did not apply" in crit["reason"] and "SQL No" in crit["reason"], crit["reason"]
    assert read_only(db1) == 0 and read_only(db2) == 1
    db2.query("START SLAVE SQL_THREAD")
    caught_up(mariadb_servers, "db1")
    assert_db1_master_db2_replica(mariadb_servers)


def test_new_master_killed_after_stop_slave_rolls_back(switch_ready, salt_run_cli, mariadb_servers):
    db1, db2 = mariadb_servers["db1"], mariadb_servers["db2"]
    bg = Background(salt_run_cli, "db2", "hold_after=new_stop_replica", "hold_s=3")
    wait_for(lambda: (db2.query("SHOW SLAVE STATUS") or [{}])[0].get("Slave_SQL_Running") == "No",
             timeout=30, what="STOP SLAVE on db2")
    db2.kill9()
    data = bg.result()
    crit = data["critical_section"]
    assert data["result"] is False and crit["outcome"] == "aborted", data
    assert "down (it restarts read-only)" in crit["reason"], crit["reason"]
    assert read_only(db1) == 0
    db2.start()
    assert read_only(db2) == 1
    caught_up(mariadb_servers, "db1")
    assert_db1_master_db2_replica(mariadb_servers)


def test_old_master_killed_after_read_only_goes_forward(switch_ready, salt_run_cli, salt_cli, mariadb_servers):
    db1, db2 = mariadb_servers["db1"], mariadb_servers["db2"]
    want = db1.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    bg = Background(salt_run_cli, "db2", "hold_after=old_gtid_pos", "hold_s=3")
    wait_for(lambda: read_only(db1) == 1, timeout=30, what="db1 read-only")
    db1.kill9()
    data = bg.result()
    crit = data["critical_section"]
    # every GTID captured at read_only time is on db2: it goes forward
    assert crit["outcome"] == "promoted" and crit["pos"] == want, crit
    assert data["result"] is False and "db1" in data["comment"], data["comment"]
    assert data["servers"]["db1"]["reachable"] is False
    assert read_only(db2) == 0
    assert run_return(salt_run_cli.run("mysqlrepl.record", "topology=test"))["record"]["master"] == "db2"
    db1.start()
    assert read_only(db1) == 1  # a master that restarts comes back read-only
    ret = apply(salt_cli)
    bad = all_ok(ret)
    assert set(bad) == {"db1"} and "rejoin" in " ".join(c for _i, c in bad["db1"]), bad
    data = run_return(salt_run_cli.run("mysqlrepl.rejoin", "server=db1"))
    assert data["result"] is True, data
    all_links_verified(mariadb_servers, "db2")
    data = switch(salt_run_cli, "db1")
    assert data["result"] is True, data["comment"]
    assert_db1_master_db2_replica(mariadb_servers)


def test_state_survives_restart_of_master_and_servers(switch_ready, salt_run_cli, salt_cli, salt_master,
                                                      salt_minions, mariadb_servers, app_minion):
    data = switch(salt_run_cli, "db2")
    assert data["result"] is True, data["comment"]
    salt_master.terminate()
    for srv in mariadb_servers.values():
        srv.restart()
    salt_master.start()
    def pinged():
        ret = salt_cli.run("-L", "test.ping", "--timeout=5", minion_tgt=",".join(NAMES))
        return (ret.data or {}) == {n: True for n in NAMES}

    wait_for(pinged, timeout=90, interval=2, what="minions back")
    assert {n: read_only(s) for n, s in mariadb_servers.items()} == {n: 1 for n in NAMES}
    assert run_return(salt_run_cli.run("mysqlrepl.record", "topology=test"))["record"]["master"] == "db2"
    ret = salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=app_minion.id)
    ret = salt_cli.run("pillar.get", "infra:hosts_entries:masterdb", "unmask=True", minion_tgt=app_minion.id)
    assert ret.data == mariadb_servers["db2"].address, ret
    ret = apply(salt_cli)
    assert all_ok(ret) == {}, all_ok(ret)
    assert changes_of(ret) == {"db1": {}, "db2": {"mysqlrepl-replication": {"db2": {
        "read_only": {"old": "ON", "new": "OFF"}}}}, "db3": {}}, changes_of(ret)
    all_links_verified(mariadb_servers, "db2")
    data = switch(salt_run_cli, "db1")
    assert data["result"] is True, data["comment"]


def test_semi_sync_from_pillar_survives_a_switch(switch_ready, salt_run_cli, salt_cli, write_pillar,
                                                  mariadb_servers, harness_root):
    from tests.support.topology import build_pillar  # pylint: disable=import-outside-toplevel

    def status(srv, name):
        rows = srv.query("SHOW GLOBAL STATUS LIKE %s", (name,))
        return rows[0]["Value"] if rows else None

    write_pillar(build_pillar(mariadb_servers, harness_root, replication={"semi_sync": True}))
    try:
        ret = apply(salt_cli)
        assert all_ok(ret) == {}, all_ok(ret)
        db1 = mariadb_servers["db1"]
        assert status(db1, "Rpl_semi_sync_master_status") == "ON"
        assert db1.query("SELECT @@rpl_semi_sync_master_wait_point AS v")[0]["v"] == "AFTER_SYNC"
        for name in ("db2", "db3"):
            wait_for(lambda n=name: status(mariadb_servers[n], "Rpl_semi_sync_slave_status") == "ON",
                     timeout=15, what=f"semi-sync replica {name}")
        yes = int(status(db1, "Rpl_semi_sync_master_yes_tx"))
        db1.query("INSERT INTO app.seqlog (writer, seq, server_id) VALUES ('S', 1, @@server_id)")
        assert int(status(db1, "Rpl_semi_sync_master_yes_tx")) == yes + 1  # acknowledged by a replica
        ret = apply(salt_cli)
        assert changes_of(ret) == {n: {} for n in NAMES}, changes_of(ret)
        data = switch(salt_run_cli, "db2")
        assert data["result"] is True, data["comment"]
        db2 = mariadb_servers["db2"]
        wait_for(lambda: status(db2, "Rpl_semi_sync_master_clients") == "2", timeout=15,
                 what="both replicas semi-sync clients of db2")
        yes = int(status(db2, "Rpl_semi_sync_master_yes_tx"))
        db2.query("INSERT INTO app.seqlog (writer, seq, server_id) VALUES ('S', 2, @@server_id)")
        assert int(status(db2, "Rpl_semi_sync_master_yes_tx")) == yes + 1
        data = switch(salt_run_cli, "db1")
        assert data["result"] is True, data["comment"]
    finally:
        write_pillar(build_pillar(mariadb_servers, harness_root))
        ret = apply(salt_cli)
        assert all_ok(ret) == {}, all_ok(ret)
    assert all(status(s, "Rpl_semi_sync_master_status") == "OFF" for s in mariadb_servers.values())


def test_switch_secrets_stay_out_of_logs_and_caches(switch_ready, salt_master, salt_minions, app_minion,
                                                    mariadb_servers, salt_run_cli):
    """After every switch above: neither password in Salt's logs, job cache, minion caches or the servers' logs."""
    import os  # pylint: disable=import-outside-toplevel
    import pathlib  # pylint: disable=import-outside-toplevel

    record = pathlib.Path(salt_master.config["cachedir"]) / "mysqlrepl" / "test.json"
    if not record.exists():  # run alone: switch here so there is something to search
        for new in ("db2", "db1"):
            assert switch(salt_run_cli, new)["result"] is True
    assert record.exists()

    from tests.support.topology import PASSWORD, SWITCH_PASSWORD  # pylint: disable=import-outside-toplevel

    needles = (PASSWORD.encode(), SWITCH_PASSWORD.encode())
    daemons = [salt_master, app_minion, *salt_minions.values()]
    paths = []
    for daemon in daemons:
        for dirpath, _dirs, files in os.walk(daemon.config["root_dir"]):
            if "extmods" in pathlib.Path(dirpath).parts:
                continue
            paths += [pathlib.Path(dirpath) / f for f in files]
    for srv in mariadb_servers.values():
        paths += [srv.general_log, srv.error_log]
        paths += [p for p in srv.datadir.iterdir() if p.name.startswith(("mysql-bin.", "relay-bin."))]
    # (the master record, <cachedir>/mysqlrepl/test.json, is among the files searched)
    hits = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        hits += [str(path) for n in needles if n in data]
    # Salt's own cache of compiled pillars (minion_data_cache) holds every pillar secret by
    # design; it is root-only and outside what the formula writes
    # (and the pillar files themselves, which the harness keeps under the master's root)
    pillar_cache = pathlib.Path(salt_master.config["cachedir"]) / "pillar"
    pillar_roots = [pathlib.Path(p) for p in salt_master.config["pillar_roots"]["base"]]
    allowed = [str(pillar_cache)] + [str(p) for p in pillar_roots]
    assert [h for h in hits if not any(h.startswith(a + "/") for a in allowed)] == []


def test_sync_minions_syncs_only_a_minion_whose_modules_differ(topology, salt_run_cli, salt_cli, repo_root):
    """The orchestrations' minion sync: nothing when every db minion runs the served modules;
    a minion whose synced module differs is synced alone, and its file is the served one again."""
    tgt = "tgt=I@mysqlrepl:*"
    data = run_return(salt_run_cli.run("mysqlrepl.sync_minions", tgt))
    assert data["result"] is True and data["synced"] == {}, data
    assert set(NAMES) <= set(data["current"]), data
    ret = salt_cli.run("config.get", "extension_modules", minion_tgt="db3")
    synced = pathlib.Path(ret.data) / "modules" / "mysqlrepl.py"
    served = (repo_root / "_modules" / "mysqlrepl.py").read_bytes()
    assert synced.read_bytes() == served
    synced.write_bytes(served + b"\n# stale copy\n")
    try:
        ret = salt_run_cli.run("mysqlrepl.sync_minions", tgt)
        data = run_return(ret)
        assert ret.returncode == 0 and data["result"] is True, data
        assert list(data["synced"]) == ["db3"], data
        assert data["synced"]["db3"]["why"] == "differs: modules/mysqlrepl.py", data
        assert "db1" in data["current"] and "db2" in data["current"], data
        assert synced.read_bytes() == served
    finally:
        if synced.read_bytes() != served:
            synced.write_bytes(served)
