"""
``salt-run mysqlrepl.health`` on the session's real topology (db1 master, db2
and db3 replicas over verified TLS): each field checked against the servers'
own ``SHOW SLAVE STATUS`` and variables, then one fault at a time (a replica's
SQL thread stopped by an error, an IO thread failing on a wrong password, a
replica delayed by ``MASTER_DELAY``, a writable replica, a minion that does
not answer), each with its verdict and exit code, each undone before the next.
"""

import datetime
import os
import pathlib
import subprocess
import sys
import time

import pytest
from cryptography import x509

from tests.support.topology import replica_status, wait_for

pytestmark = [pytest.mark.integration]


def health(salt_run_cli, *args):
    ret = salt_run_cli.run("mysqlrepl.health", *args)
    assert isinstance(ret.data, dict) and "verdict" in ret.data, ret
    return ret


def kinds(ret):
    return {(p["server"], p["kind"]) for p in ret.data["problems"]}


def master_of(mariadb_servers):
    writable = [s for s in mariadb_servers.values() if s.query("SELECT @@read_only AS ro")[0]["ro"] == 0]
    assert len(writable) == 1, [s.name for s in writable]
    return writable[0]


def replicas_running(mariadb_servers, master):
    for srv in mariadb_servers.values():
        if srv is master:
            continue
        wait_for(lambda s=srv: (replica_status(s) or {}).get("Slave_SQL_Running") == "Yes"
                 and replica_status(s).get("Slave_IO_Running") == "Yes", what=f"{srv.name} replicating")


def test_a_healthy_topology_field_by_field(topology, mariadb_servers, salt_run_cli):
    master = master_of(mariadb_servers)
    replicas_running(mariadb_servers, master)
    ret = health(salt_run_cli)
    data = ret.data
    assert ret.returncode == 0 and data["healthy"] is True, data["problems"]
    assert data["verdict"] == "healthy: 3 servers, every link running and verified"
    ciphers = {r["host"]: r["cipher"] for r in master.query(
        "SELECT t.PROCESSLIST_HOST AS host, s.VARIABLE_VALUE AS cipher FROM performance_schema.threads t "
        "JOIN performance_schema.status_by_thread s ON s.THREAD_ID = t.THREAD_ID "
        "WHERE t.PROCESSLIST_COMMAND = 'Binlog Dump' AND s.VARIABLE_NAME = 'Ssl_cipher'")}
    for name, srv in mariadb_servers.items():
        row = data["servers"][name]
        ro = srv.query("SELECT @@read_only AS ro")[0]["ro"]
        assert row["read_only"] == ("ON" if ro else "OFF"), name
        # the certificate the server was started with (no rotation yet); the runner reads the one
        # it presents over TLS (Ssl_server_not_after is empty on the socket)
        pem = pathlib.Path(srv.query("SELECT @@ssl_cert AS c")[0]["c"]).read_bytes()
        not_after = x509.load_pem_x509_certificate(pem).not_valid_after_utc
        expected_days = (not_after - datetime.datetime.now(datetime.timezone.utc)).total_seconds() / 86400
        assert abs(row["cert_days_left"] - expected_days) < 0.1, (name, row["cert_days_left"], not_after)
        if srv is master:
            assert row["role"] == "master" and row["seen"] == "master (writable, replicates from nobody)"
            assert row["io"] is None and row["tls"] is None
            continue
        rs = replica_status(srv)
        assert row["role"] == row["seen"] == f"replica of {master.name}", row
        assert (row["io"], row["sql"]) == (rs["Slave_IO_Running"], rs["Slave_SQL_Running"])
        assert row["seconds_behind"] == rs["Seconds_Behind_Master"]
        assert row["tls"] == "verified" and rs["Master_SSL_Verify_Server_Cert"] == "Yes"
        # on loopback every replica connects from 127.0.0.1: the one cipher of the master's links
        assert row["cipher"] and row["cipher"] == ciphers.get(srv.address, ciphers.get("127.0.0.1")), \
            (row["cipher"], ciphers)
        assert row["gtid_behind"] == {} and row["last_io_error"] is None and row["last_sql_error"] is None


def test_the_terminal_output_starts_with_the_verdict(topology, salt_master):
    """Without --out, salt-run prints through the formula's outputter: the verdict, then a table."""
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "salt-run"), "-c",
                           str(salt_master.config_dir), "mysqlrepl.health"],
                          capture_output=True, text=True, timeout=120, check=False)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[0] == "test: healthy: 3 servers, every link running and verified", \
        proc.stdout + proc.stderr
    assert lines[2].split()[:3] == ["SERVER", "ROLE", "(RECORD)"] and len(lines) >= 6, proc.stdout


def test_a_sql_thread_stopped_by_an_error(topology, mariadb_servers, salt_run_cli):
    master = master_of(mariadb_servers)
    replica = next(s for s in mariadb_servers.values() if s is not master)
    master.query("CREATE DATABASE IF NOT EXISTS health")
    master.query("CREATE TABLE IF NOT EXISTS health.t (id INT PRIMARY KEY)")
    master.query("DELETE FROM health.t")
    pos = master.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert replica.query("SELECT MASTER_GTID_WAIT(%s, 30) AS w", (pos,))[0]["w"] == 0
    # root writes through read_only; not logged, so only this replica has the row
    replica.session("SET SESSION sql_log_bin = 0", "INSERT INTO health.t VALUES (7)")
    master.query("INSERT INTO health.t VALUES (7)")
    wait_for(lambda: replica_status(replica)["Slave_SQL_Running"] == "No", what="SQL thread stopped")
    try:
        ret = health(salt_run_cli)
        assert ret.returncode == 1 and kinds(ret) == {(replica.name, "sql_stopped")}, ret.data["problems"]
        row = ret.data["servers"][replica.name]
        assert row["sql"] == "No" and row["last_sql_error"].startswith("1062: "), row
        assert ret.data["verdict"].startswith(f"unhealthy: {replica.name}: SQL thread No (1062: ")
    finally:
        replica.session("SET SESSION sql_log_bin = 0", "DELETE FROM health.t WHERE id = 7")
        replica.query("START SLAVE")
    replicas_running(mariadb_servers, master)


def test_an_io_thread_failing_on_a_wrong_password(topology, mariadb_servers, salt_run_cli, salt_cli):
    master = master_of(mariadb_servers)
    replica = [s for s in mariadb_servers.values() if s is not master][-1]
    replica.session("STOP SLAVE", "CHANGE MASTER TO MASTER_PASSWORD = 'not-the-password'", "START SLAVE")
    try:
        wait_for(lambda: replica_status(replica)["Last_IO_Errno"] == 1045, what="IO thread denied")
        ret = health(salt_run_cli)
        assert ret.returncode == 1 and kinds(ret) == {(replica.name, "io_stopped")}, ret.data["problems"]
        assert "1045" in ret.data["servers"][replica.name]["last_io_error"]
    finally:
        # the highstate's replication state re-sends the password on 1045
        fixed = salt_cli.run("mysqlrepl.replication_apply", minion_tgt=replica.name)
        assert fixed.data["result"] is True, fixed
    replicas_running(mariadb_servers, master)


def test_a_replica_delayed_by_master_delay_lags(topology, mariadb_servers, salt_run_cli):
    master = master_of(mariadb_servers)
    replica = next(s for s in mariadb_servers.values() if s is not master)
    replica.session("STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 120", "START SLAVE")
    try:
        master.query("CREATE DATABASE IF NOT EXISTS health")
        master.query("CREATE TABLE IF NOT EXISTS health.t (id INT PRIMARY KEY)")
        master.query("INSERT INTO health.t VALUES (100 + FLOOR(RAND() * 1000000))")
        wait_for(lambda: (replica_status(replica)["Seconds_Behind_Master"] or 0) > 3, timeout=30,
                 what="the replica lagging")
        ret = health(salt_run_cli, "lag_s=2")
        assert ret.returncode == 1 and kinds(ret) == {(replica.name, "lag")}, ret.data["problems"]
        row = ret.data["servers"][replica.name]
        assert row["seconds_behind"] > 2 and row["gtid_behind"], row
        assert health(salt_run_cli).returncode == 0  # under the pillar's 30 s: healthy
    finally:
        replica.session("STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 0", "START SLAVE")
    replicas_running(mariadb_servers, master)


def test_a_writable_replica(topology, mariadb_servers, salt_run_cli):
    master = master_of(mariadb_servers)
    replica = next(s for s in mariadb_servers.values() if s is not master)
    replica.query("SET GLOBAL read_only = 0")
    try:
        ret = health(salt_run_cli)
        assert ret.returncode == 1
        assert kinds(ret) == {(",".join(sorted([master.name, replica.name])), "two_writable"),
                              (replica.name, "writable_replica")}, ret.data["problems"]
        assert ret.data["verdict"].startswith("unhealthy: 2 servers are writable")
    finally:
        replica.query("SET GLOBAL read_only = 1")


def test_a_minion_that_does_not_answer(topology, mariadb_servers, salt_minions, salt_run_cli):
    master = master_of(mariadb_servers)
    name = next(n for n in sorted(mariadb_servers) if mariadb_servers[n] is not master)
    started = time.monotonic()
    with salt_minions[name].stopped():
        ret = health(salt_run_cli, "timeout=5")
    assert ret.returncode == 1 and kinds(ret) == {(name, "unreachable")}, ret.data["problems"]
    assert ret.data["servers"][name]["seen"] == "unreachable"
    assert f"minion {name} did not answer" in ret.data["verdict"]
    assert time.monotonic() - started < 120
