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
