"""
Planned switchover on real servers through the real salt-master:
``salt-run mysqlrepl.switch`` and ``salt-run state.orchestrate mysqlrepl.orch.switch``.

The tests in this module run in file order on the topology the setup
orchestration brought up (db1 master); each leaves db1 as the master again.
"""

import json
import time

import pymysql
import pytest

from tests.support import workload
from tests.support.topology import (NAMES, all_ok, apply, changes_of, fingerprint, orch_failures,
                                    run_return, wait_for)

pytestmark = [pytest.mark.integration]


def switch(salt_run_cli, new_master, *extra):
    ret = salt_run_cli.run("mysqlrepl.switch", f"new_master={new_master}", *extra)
    data = run_return(ret)
    assert isinstance(data, dict), ret
    return data


def master_of(servers):
    """The one writable server (asserts there is exactly one)."""
    writable = [n for n, s in servers.items() if s.query("SELECT @@read_only AS v")[0]["v"] == 0]
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
    rec = salt_run_cli.run("mysqlrepl.record").data
    assert rec["record"] is None, rec


def test_switch_and_back(switch_ready, salt_run_cli, salt_cli, mariadb_servers, app_minion):
    data = switch(salt_run_cli, "db2")
    assert data["result"] is True, json.dumps(data, indent=1, default=str)
    assert master_of(mariadb_servers) == "db2"
    all_links_verified(mariadb_servers, "db2")
    assert data["critical_section"]["outcome"] == "promoted"
    assert data["timings"]["block_ms"] < 1000
    rec = salt_run_cli.run("mysqlrepl.record").data
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
            assert ret.returncode == 0 and orch_failures(ret) == {}, ret
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
