"""
SSL replication from pillar, end to end: three real MariaDB servers on their own
loopback addresses, a real salt-master and minions, the formula driven through
the master (salt-run state.orchestrate / salt state.apply).

The tests in this module run in file order and share one topology.
"""

import copy
import os
import pathlib
import re
import stat
import subprocess
import time

import pymysql
import pytest

from tests.support.topology import (NAMES, all_ok, apply, changes_of, orch_failures,
                                    repl_connect, replica_status, state_returns, wait_for)

pytestmark = [pytest.mark.integration]


# ---------------------------------------------------------------------------
# bring-up
# ---------------------------------------------------------------------------

def test_setup_orchestration_brings_up_tls_replication(topology, mariadb_servers):
    ret = topology["setup_ret"]
    assert ret.returncode == 0, ret
    assert orch_failures(ret) == {}, ret
    db1, db2, db3 = (mariadb_servers[n] for n in NAMES)
    for srv in (db1, db2, db3):
        assert srv.query("SELECT @@have_ssl AS v")[0]["v"] == "YES"
    for replica in (db2, db3):
        rs = replica_status(replica)
        assert rs["Master_Host"] == db1.address
        assert rs["Slave_IO_Running"] == "Yes" and rs["Slave_SQL_Running"] == "Yes", rs
        assert rs["Master_SSL_Allowed"] == "Yes"
        assert rs["Master_SSL_Verify_Server_Cert"] == "Yes"
        assert rs["Using_Gtid"] == "Slave_Pos"
        assert replica.query("SELECT @@read_only AS v")[0]["v"] == 1
    assert replica_status(db1) is None
    assert db1.query("SELECT @@read_only AS v")[0]["v"] == 0
    # nothing was minted locally on the replicas: every GTID they logged came from db1
    for replica in (db2, db3):
        state = replica.query("SELECT @@gtid_binlog_state AS g")[0]["g"]
        assert all(gtid.split("-")[1] == str(db1.server_id) for gtid in filter(None, state.split(","))), state


def test_row_written_on_master_arrives_on_both_replicas(topology, mariadb_servers):
    db1 = mariadb_servers["db1"]
    db1.query("CREATE DATABASE IF NOT EXISTS app")
    db1.query("CREATE TABLE IF NOT EXISTS app.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64)) ENGINE=InnoDB")
    token = f"row-{time.time_ns()}"
    db1.query("INSERT INTO app.t (v) VALUES (%s)", (token,))
    for name in ("db2", "db3"):
        wait_for(lambda n=name: mariadb_servers[n].query("SELECT COUNT(*) AS c FROM app.t WHERE v=%s", (token,))
                 [0]["c"] == 1 if mariadb_servers[n].query("SHOW DATABASES LIKE 'app'") else False,
                 what=f"row on {name}")


def test_every_binlog_dump_thread_is_encrypted(topology, mariadb_servers):
    rows = mariadb_servers["db1"].query(
        "SELECT t.PROCESSLIST_ID AS id, s.VARIABLE_VALUE AS cipher FROM performance_schema.threads t "
        "LEFT JOIN performance_schema.status_by_thread s ON s.THREAD_ID = t.THREAD_ID "
        "AND s.VARIABLE_NAME = 'Ssl_cipher' WHERE t.PROCESSLIST_COMMAND LIKE 'Binlog Dump%'")
    assert len(rows) == 2, rows
    assert all(r["cipher"] for r in rows), rows


def test_replication_user_refused_without_tls_and_without_client_cert(topology, mariadb_servers):
    db1 = mariadb_servers["db1"]
    with pytest.raises(pymysql.err.OperationalError) as no_tls:
        repl_connect(db1, ssl_disabled=True)
    assert no_tls.value.args[0] == 1045, no_tls.value.args
    ca = str(db1.root / "tls" / "ca.crt")
    # REQUIRE X509: TLS verified, but no client certificate
    with pytest.raises(pymysql.err.OperationalError) as no_cert:
        repl_connect(db1, ssl_ca=ca, ssl_verify_cert=True)
    assert no_cert.value.args[0] == 1045, no_cert.value.args
    # with db2's client certificate it gets in
    db2_tls = mariadb_servers["db2"].root / "tls"
    conn = repl_connect(db1, ssl_ca=ca, ssl_cert=str(db2_tls / "server.crt"), ssl_key=str(db2_tls / "server.key"),
                        ssl_verify_cert=True, ssl_verify_identity=True)
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        assert cur.fetchone()[1]
    conn.close()


def test_replica_refuses_a_master_whose_certificate_names_another_host(topology, mariadb_servers):
    db1, db2, db3 = (mariadb_servers[n] for n in NAMES)
    tls1, tls3 = db1.root / "tls", db3.root / "tls"
    saved = {f: (tls1 / f).read_bytes() for f in ("server.crt", "server.key")}
    try:
        # db1 now presents db3's certificate (valid, same CA, but for db3's address only)
        for f in ("server.crt", "server.key"):
            (tls1 / f).write_bytes((tls3 / f).read_bytes())
        db1.query("FLUSH NO_WRITE_TO_BINLOG SSL")
        db2.query("STOP SLAVE")
        db2.query("START SLAVE")
        rs = wait_for(lambda: (lambda r: r if r["Last_IO_Errno"] else None)(replica_status(db2)),
                      what="IO error on db2")
        assert rs["Slave_IO_Running"] != "Yes"
        assert re.search(r"certificate|SSL|verif", rs["Last_IO_Error"], re.I), rs["Last_IO_Error"]
    finally:
        for f, data in saved.items():
            (tls1 / f).write_bytes(data)
        db1.query("FLUSH NO_WRITE_TO_BINLOG SSL")
        db2.query("STOP SLAVE")
        db2.query("START SLAVE")
    wait_for(lambda: replica_status(db2)["Slave_IO_Running"] == "Yes", what="db2 reconnects")


def test_second_run_changes_nothing_and_keeps_servers_untouched(topology, mariadb_servers, salt_cli):
    before = {n: (s.pid(), s.query("SHOW GLOBAL STATUS LIKE 'Uptime'")[0]["Value"],
                  s.query("SELECT @@gtid_binlog_state AS g")[0]["g"]) for n, s in mariadb_servers.items()}
    ret = apply(salt_cli)
    assert all_ok(ret) == {}, ret
    assert changes_of(ret) == {n: {} for n in NAMES}, ret
    for name, srv in mariadb_servers.items():
        pid, uptime, gtid = before[name]
        assert srv.pid() == pid
        assert int(srv.query("SHOW GLOBAL STATUS LIKE 'Uptime'")[0]["Value"]) >= int(uptime)
        assert srv.query("SELECT @@gtid_binlog_state AS g")[0]["g"] == gtid, name


def test_drift_is_listed_by_test_run_fixed_by_real_run(topology, mariadb_servers, salt_cli):
    db1, db2, db3 = (mariadb_servers[n] for n in NAMES)
    db2.query("STOP SLAVE")
    db2.query("CHANGE MASTER TO MASTER_SSL_VERIFY_SERVER_CERT=0")
    db2.query("START SLAVE")
    db1.session("SET SESSION sql_log_bin=0", "ALTER USER 'repl'@'%' REQUIRE NONE")
    os.chmod(db3.root / "tls" / "server.key", 0o644)
    dropin = db2.conf_d / "60-mysqlrepl.cnf"
    dropin.write_text(dropin.read_text().replace("sync_binlog = 1", "sync_binlog = 0"))

    ret = apply(salt_cli, test=True)
    drift = changes_of(ret)
    assert drift["db1"] == {"mysqlrepl-users": {"db1": {"require": {"old": "NONE", "new": "X509"}}}}, drift
    assert set(drift["db2"]) == {"mysqlrepl-server", "mysqlrepl-replication"}, drift
    assert drift["db2"]["mysqlrepl-server"] == {"db2": {"config_file": f"{dropin} differs"}}, drift
    # a hand-typed CHANGE MASTER also resets the heartbeat to its default
    # (slave_net_timeout / 2): that is real drift too
    assert drift["db2"]["mysqlrepl-replication"] == {
        "db2": {"ssl_verify_server_cert": {"old": "No", "new": "Yes"},
                "heartbeat_period": {"old": 30.0, "new": 1}}}, drift
    assert drift["db3"] == {"mysqlrepl-csr": {"db3": {"server.key": "mode 0644 (want 0600)"}}}, drift
    # test=True changed nothing
    assert stat.S_IMODE((db3.root / "tls" / "server.key").stat().st_mode) == 0o644
    assert replica_status(db2)["Master_SSL_Verify_Server_Cert"] == "No"

    ret = apply(salt_cli)
    assert all_ok(ret) == {}, ret
    assert replica_status(db2)["Master_SSL_Verify_Server_Cert"] == "Yes"
    assert stat.S_IMODE((db3.root / "tls" / "server.key").stat().st_mode) == 0o600
    assert "sync_binlog = 1" in dropin.read_text()
    assert db1.query("SELECT ssl_type FROM mysql.user WHERE User='repl'")[0]["ssl_type"] == "X509"

    ret = apply(salt_cli)
    assert changes_of(ret) == {n: {} for n in NAMES}, ret


def test_key_modes_and_ca_key_only_on_ca_minion(topology, mariadb_servers, harness_root):
    ca_key = mariadb_servers["db1"].root / "pki" / "mysql" / "mysql_ca_cert.key"
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    for srv in mariadb_servers.values():
        key = srv.root / "tls" / "server.key"
        st = key.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == __import__("pwd").getpwnam("mysql").pw_uid
    # a distinctive line of the CA key, searched in every minion's and the master's tree
    needle = ca_key.read_text().splitlines()[5].encode()
    hits = _grep_tree(harness_root, needle)
    db1_tree = (mariadb_servers["db1"].root, harness_root / "salt" / "db1")
    assert hits and all(any(str(h).startswith(str(t)) for t in db1_tree) for h in hits), hits
    assert hits == [ca_key], hits


def _grep_tree(root, needle):
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = pathlib.Path(dirpath) / name
            if path.is_socket() or not path.is_file():
                continue
            try:
                if needle in path.read_bytes():
                    hits.append(path)
            except OSError:
                pass
    return hits


def test_certificates_are_renewed_before_expiry_without_restart(topology, mariadb_servers, write_pillar,
                                                                salt_run_cli, salt_cli):
    """With renew_days above what a certificate has left, every certificate is re-issued and
    reloaded live (FLUSH NO_WRITE_TO_BINLOG SSL): no restart, no GTID minted, links stay verified."""
    def serial(srv):
        out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(srv.root / "tls" / "server.crt")],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    before = {n: (s.pid(), serial(s), s.query("SELECT @@gtid_binlog_state AS g")[0]["g"])
              for n, s in mariadb_servers.items()}
    pillar = copy.deepcopy(topology["pillar"])
    pillar["mysqlrepl"]["tls"].update(cert_days=400, renew_days=399)
    write_pillar(pillar)
    try:
        ret = salt_run_cli.run("state.orchestrate", "mysqlrepl.orch.setup")
        assert orch_failures(ret) == {}, ret
        for name, srv in mariadb_servers.items():
            pid, old_serial, gtid = before[name]
            assert srv.pid() == pid, f"{name} was restarted"
            assert serial(srv) != old_serial, f"{name} kept its certificate"
            assert srv.query("SELECT @@gtid_binlog_state AS g")[0]["g"] == gtid, name
        # the server presents the new certificate
        db1 = mariadb_servers["db1"]
        out = subprocess.run(["openssl", "s_client", "-connect", f"{db1.address}:{db1.port}", "-starttls", "mysql",
                              "-CAfile", str(mariadb_servers["db1"].root / "tls" / "ca.crt")],
                             input="", capture_output=True, text=True, timeout=20)
        served = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=out.stdout,
                                capture_output=True, text=True)
        assert served.stdout.strip() == serial(mariadb_servers["db1"]), out.stdout[-500:]
        ret = apply(salt_cli)
        assert changes_of(ret) == {n: {} for n in NAMES}, ret
    finally:
        write_pillar(topology["pillar"])


def test_highstate_names_what_it_waits_for_until_the_ca_signs(topology, mariadb_servers, salt_cli, salt_run_cli):
    """A new key on db3 (lost key): until the CA minion signs its new CSR, db3's run stops at the
    certificate, says so, and touches nothing after it; the orchestration then completes it."""
    db3 = mariadb_servers["db3"]
    (db3.root / "tls" / "server.key").unlink()
    pid = db3.pid()
    ret = apply(salt_cli, minions=("db2", "db3"))
    states = {s["__id__"]: s for s in state_returns(ret)["db3"]}
    assert states["mysqlrepl-csr"]["result"] is True and states["mysqlrepl-csr"]["changes"], states
    tls_state = states["mysqlrepl-tls"]
    assert tls_state["result"] is False
    assert "waiting for: server certificate: CA minion db1 has not signed the current CSR yet" in tls_state["comment"]
    for later in ("mysqlrepl-server", "mysqlrepl-users", "mysqlrepl-replication"):
        assert states[later]["result"] is False and not states[later]["changes"]
        assert "requisite failed" in states[later]["comment"]
    assert changes_of(ret)["db2"] == {}
    ret = salt_run_cli.run("state.orchestrate", "mysqlrepl.orch.setup")
    assert orch_failures(ret) == {}, ret
    assert db3.pid() == pid
    assert replica_status(db3)["Slave_IO_Running"] == "Yes"
    ret = apply(salt_cli)
    assert changes_of(ret) == {n: {} for n in NAMES}, ret
