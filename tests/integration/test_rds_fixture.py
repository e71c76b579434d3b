"""
The RDS-like test server itself (tests/support/rds.py) against real servers: what its
master user may and may not do, that each ``mysql.rds_*`` procedure does what RDS
documents (including its errors), the heartbeat, reinstalling.

Two servers of this module's own, no Salt harness: the RDS-like one on 127.0.0.<octet+67>
and a plain MariaDB ("on-prem", with its own CA) on 127.0.0.<octet+68>, octet =
MYSQLREPL_TEST_FIRST_OCTET (default 11: 78 and 79), so a session 10 octets away never
meets them. install() runs again before every test, as the formula's tests will do.
"""

import concurrent.futures
import os
import shutil
import tempfile
import time

import pymysql
import pytest

from tests.support import mariadb, rds

FIRST_OCTET = int(os.environ.get("MYSQLREPL_TEST_FIRST_OCTET", "11"))
RDS_ADDR = f"127.0.0.{FIRST_OCTET + 67}"
ONPREM_ADDR = f"127.0.0.{FIRST_OCTET + 68}"
REPL_USER = "repl_rds"
REPL_PASSWORD = "Repl-rds_pw_3c2b1a"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not all(shutil.which(b) for b in ("mariadbd", "mariadb-install-db", "mariadb"))
                       or os.geteuid() != 0, reason="needs root and the MariaDB server binaries"),
]


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env():
    """The RDS-like server and an on-prem master (TLS, binlog, a REQUIRE X509 replication user)."""
    mariadb.become_subreaper()
    base = tempfile.mkdtemp(prefix="mrr-", dir="/tmp")  # short: unix socket paths
    os.chmod(base, 0o755)
    onprem = mariadb.MariaDBServer("onprem", ONPREM_ADDR, 3306, base, FIRST_OCTET + 68)
    try:
        mariadb.check_port_free(onprem.address, onprem.port)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(_start_onprem, onprem)
            with rds.rds_like_server(base, address=RDS_ADDR, heartbeat_interval=1) as rds1:
                onprem_tls = fut.result()
                yield {"base": base, "rds": rds1, "onprem": onprem, "onprem_tls": onprem_tls}
    finally:
        try:
            if onprem.running():
                mariadb.stop_servers([onprem])
        finally:
            mariadb.reap_zombies(("mariadbd",))
            shutil.rmtree(base, ignore_errors=True)


def _start_onprem(server):
    server.init()
    tdir = server.root / "tls"
    tls = rds.make_ca(tdir, cn="on-prem test CA")
    tls.update(rds.issue_cert(tls, tdir, "server", f"db-{server.address}", ip_addresses=[server.address],
                              owner=server.os_user))
    # the RDS-like replica's client certificate (imported with rds_import_binlog_ssl_material)
    client = rds.issue_cert(tls, tdir, "rds-client", "rds-like replica")
    tls.update({"client_cert": client["cert"], "client_key": client["key"]})
    (server.conf_d / "50-onprem.cnf").write_text(
        "[mysqld]\nlog_bin = mysql-bin\nbinlog_format = ROW\n"
        f"ssl_ca = {tls['ca']}\nssl_cert = {tls['cert']}\nssl_key = {tls['key']}\n", encoding="utf-8")
    server.start()
    server.session(
        "SET SESSION sql_log_bin = 0",
        f"CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY PASSWORD '{rds.password_hash(REPL_PASSWORD)}' REQUIRE X509",
        f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{REPL_USER}'@'%'",
    )
    return tls


@pytest.fixture
def rds1(env):
    """Fresh RDS state before each test (install() is idempotent), heartbeat every second."""
    return rds.install(env["rds"].server, heartbeat_interval=1)


@pytest.fixture
def onprem(env):
    return env["onprem"]


@pytest.fixture
def admin(rds1):
    conn = rds1.connect_admin()
    yield conn
    conn.close()


def _error(fn, *args):
    with pytest.raises(pymysql.err.MySQLError) as exc:
        fn(*args)
    return exc.value.args[0], exc.value.args[1]


def _exec(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall()) if cur.description else []


def _status(rds1):
    rows = rds1.call("rds_replica_status")[0]
    return rows[0] if rows else None


def _wait_applied(rds1, sql, expected, timeout=30):
    return rds.wait_for(lambda: rds1.server.query(sql) == expected, timeout=timeout,
                        what=f"{sql} == {expected} on the RDS-like server")


def _db(onprem, rds1, name):
    """A fresh database ``name`` on both sides (not binlogged): each test replicates its own."""
    for srv in (onprem, rds1.server):
        srv.session("SET SESSION sql_log_bin = 0", f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}",
                    f"CREATE TABLE {name}.t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")


def _master_pos(server):
    row = server.query("SHOW MASTER STATUS")[0]
    return row["File"], row["Position"]


# ------------------------------------------------------------------------------------------
# the master user
# ------------------------------------------------------------------------------------------
def test_master_user_has_exactly_rds_grants(rds1):
    grants = rds1.server.query(f"SHOW GRANTS FOR '{rds.ADMIN_USER}'@'%'")
    assert len(grants) == 1, grants
    text = next(iter(grants[0].values()))
    assert text.startswith("GRANT ") and text.endswith(" WITH GRANT OPTION"), text
    privileges = set(text[len("GRANT "):text.index(" ON *.* TO ")].split(", "))
    expected = set(rds.ADMIN_PRIVILEGES) - {"REPLICATION CLIENT"} | {"BINLOG MONITOR"}  # 10.5+ name
    assert privileges == expected
    # what RDS does not give (§1), the 10.5+ split-outs included
    for absent in ("SUPER", "RELOAD", "FILE", "SHUTDOWN", "BINLOG ADMIN", "REPLICATION SLAVE ADMIN",
                   "SLAVE MONITOR", "READ_ONLY ADMIN", "CONNECTION ADMIN", "SET USER", "FEDERATED ADMIN",
                   "BINLOG REPLAY", "REPLICATION MASTER ADMIN"):
        assert absent not in privileges
    assert "IDENTIFIED BY PASSWORD '*" in text  # stored as a hash: the clear text never went to the server
    definer = next(iter(rds1.server.query(f"SHOW CREATE USER `{rds.DEFINER}`@`localhost`")[0].values()))
    assert "ACCOUNT LOCK" in definer, definer


def test_master_user_logs_in_over_tls_and_plain_tcp(rds1):
    for tls, cipher in ((True, True), (False, False)):
        conn = rds1.connect_admin(tls=tls)
        try:
            row = _exec(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")[0]
            assert bool(row["Value"]) is cipher, (tls, row)
            assert _exec(conn, "SELECT CURRENT_USER() AS u")[0]["u"] == f"{rds.ADMIN_USER}@%"
        finally:
            conn.close()


@pytest.mark.parametrize("sql, code", [
    ("SET GLOBAL read_only = 1", 1227),
    ("SET GLOBAL gtid_slave_pos = ''", 1227),
    ("SET GLOBAL binlog_format = 'ROW'", 1227),
    ("SET SESSION sql_log_bin = 0", 1227),
    ("FLUSH TABLES WITH READ LOCK", 1227),
    ("FLUSH LOGS", 1227),
    ("FLUSH BINARY LOGS", 1227),
    ("RESET MASTER", 1227),
    ("PURGE BINARY LOGS BEFORE NOW()", 1227),
    ("CHANGE MASTER TO MASTER_HOST = '127.0.0.1'", 1227),
    ("START SLAVE", 1227),
    ("STOP SLAVE", 1227),
    ("RESET SLAVE ALL", 1227),
    ("SHOW SLAVE STATUS", 1227),
    ("SHOW REPLICA STATUS", 1227),
    ("SELECT 1 INTO OUTFILE '/tmp/rds-like-outfile'", 1227),  # FILE
    ("SELECT LOAD_FILE('/etc/hostname') IS NULL AS refused", None),
    ("SHUTDOWN", 1227),
])
def test_master_user_is_refused(admin, sql, code):
    if code is None:  # LOAD_FILE without FILE: NULL, no error
        assert _exec(admin, sql) == [{"refused": 1}]
        return
    got, msg = _error(_exec, admin, sql)
    assert got == code, msg
    assert not os.path.exists("/tmp/rds-like-outfile")


def test_master_user_cannot_kill_others_but_rds_kill_can(rds1, admin):
    victim = rds1.server.connect()  # root's session: not the master user's
    other = rds1.connect_admin(tls=False)
    try:
        victim_id = victim.thread_id()
        assert _error(_exec, admin, f"KILL {victim_id}")[0] == 1095  # "You are not owner of thread"
        # rds_kill_query stops a running statement of another session ...
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(_exec, other, "SELECT SLEEP(30) AS s")
            rds.wait_for(lambda: rds1.server.query(
                "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s AND INFO LIKE 'SELECT SLEEP%%'",
                (other.thread_id(),)), timeout=10, what="the sleeping query")
            started = time.monotonic()
            rds.call(admin, "rds_kill_query", other.thread_id())
            assert _error(fut.result, 10)[0] == 1317  # Query execution was interrupted
            assert time.monotonic() - started < 10
        # ... rds_kill_query_id by QUERY_ID, rds_kill the whole connection (root's too)
        rds.call(admin, "rds_kill", victim_id)
        assert _error(_exec, victim, "SELECT 1")[0] in (2006, 2013, 1927)
        # RDS's own threads stay out of reach (the event scheduler, the definer's)
        sched = rds1.server.query("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'event_scheduler'")
        assert sched, "event scheduler not running"
        code, msg = _error(rds.call, admin, "rds_kill", sched[0]["ID"])
        assert code == 1095, msg
        assert _error(rds.call, admin, "rds_kill", 987654321)[0] == 1094  # unknown thread id
    finally:
        victim.close()
        other.close()


def test_rds_kill_query_id(rds1, admin):
    other = rds1.connect_admin(tls=False)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(_exec, other, "SELECT SLEEP(30) AS s")
            rows = rds.wait_for(lambda: rds1.server.query(
                "SELECT QUERY_ID AS q FROM information_schema.PROCESSLIST WHERE ID = %s "
                "AND INFO LIKE 'SELECT SLEEP%%'", (other.thread_id(),)), timeout=10, what="the sleeping query")
            rds.call(admin, "rds_kill_query_id", rows[0]["q"])
            assert _error(fut.result, 10)[0] == 1317
        assert _exec(other, "SELECT 2 AS x") == [{"x": 2}]  # the connection survives a query kill
    finally:
        other.close()


# ------------------------------------------------------------------------------------------
# procedures: presence, definer, configuration
# ------------------------------------------------------------------------------------------
def test_procedures_installed_with_definer_rdsadmin(rds1, env):
    rows = rds1.server.query(
        "SELECT ROUTINE_NAME AS n, DEFINER AS d, SECURITY_TYPE AS s FROM information_schema.ROUTINES "
        "WHERE ROUTINE_SCHEMA = 'mysql' AND ROUTINE_NAME LIKE 'rds\\_%' ORDER BY 1")
    assert [r["n"] for r in rows] == sorted(rds.PROCEDURES)
    assert {(r["d"], r["s"]) for r in rows} == {(f"{rds.DEFINER}@localhost", "DEFINER")}
    # what the formula will look for (§ Must handle 2), as the master user sees it
    conn = rds1.connect_admin()
    try:
        seen = _exec(conn, "SELECT ROUTINE_NAME AS n FROM information_schema.ROUTINES "
                           "WHERE ROUTINE_SCHEMA = 'mysql' AND ROUTINE_NAME LIKE 'rds\\_%'")
        assert {r["n"] for r in seen} == set(rds.PROCEDURES)
    finally:
        conn.close()
    # the SSL material procedures are optional (§1 caveat)
    bare = rds.install(rds1.server, ssl_material=False)
    try:
        assert set(bare.procedures) == set(rds.PROCEDURES) - set(rds.SSL_MATERIAL_PROCEDURES)
        code, msg = _error(bare.call, "rds_import_binlog_ssl_material", "{}")
        assert code == 1305, msg  # PROCEDURE mysql.rds_import_binlog_ssl_material does not exist
        assert not rds1.server.query("SHOW TABLES FROM mysql LIKE 'rds\\_binlog\\_ssl\\_material'")
        # the set procedure still works, with or without ssl
        for ssl in (0, 1):
            bare.call("rds_set_external_master", env["onprem"].address, 3306, REPL_USER, REPL_PASSWORD,
                      "mysql-bin.000001", 4, ssl)
            assert _status(bare)["Master_SSL_Allowed"] == ("Yes" if ssl else "No")
    finally:
        rds.install(rds1.server, heartbeat_interval=1)


def test_configuration_round_trip(rds1, admin):
    def show():
        return {r["name"]: r["value"] for r in rds.call(admin, "rds_show_configuration")[0]}

    assert show() == {"binlog retention hours": None, "source delay": "0", "target delay": "0"}
    desc = rds.call(admin, "rds_show_configuration")[0][0]["description"]
    assert desc == ("binlog retention hours specifies the duration in hours before binary logs are "
                    "automatically deleted.")
    rds.call(admin, "rds_set_configuration", "binlog retention hours", 24)
    assert show()["binlog retention hours"] == "24"
    assert rds1.server.query("SELECT @@binlog_expire_logs_seconds AS s") == [{"s": 24 * 3600}]
    rds.call(admin, "rds_set_configuration", "target delay", 3600)
    assert show() == {"binlog retention hours": "24", "source delay": "0", "target delay": "3600"}
    # documented limits: retention 0 is refused, 168 is the maximum; delays <= 86400
    for name, value in (("binlog retention hours", 0), ("binlog retention hours", 169),
                        ("source delay", 86401), ("target delay", -1), ("no such setting", 1)):
        code, msg = _error(rds.call, admin, "rds_set_configuration", name, value)
        assert code == 1644, (name, value, msg)
    assert show()["binlog retention hours"] == "24"
    rds.call(admin, "rds_set_configuration", "binlog retention hours", None)  # back to the default
    assert show()["binlog retention hours"] is None
    assert rds1.server.query("SELECT @@binlog_expire_logs_seconds AS s") == [{"s": 0}]
    # wrong argument count: MariaDB's own 1318 (§1: seen on real RDS)
    assert _error(_exec, admin, "CALL mysql.rds_set_configuration('binlog retention hours')")[0] == 1318


def test_purge_binary_logs_follows_retention(rds1, admin):
    rds1.server.query("FLUSH BINARY LOGS")
    rds.call(admin, "rds_set_configuration", "binlog retention hours", 1)
    assert rds.purge_binary_logs(rds1.server) == []  # everything is younger than an hour
    rds.call(admin, "rds_set_configuration", "binlog retention hours", None)
    purged = rds.purge_binary_logs(rds1.server)  # NULL: RDS purges as soon as possible
    assert purged
    logs = rds1.server.query("SHOW BINARY LOGS")
    assert len(logs) == 1 and logs[0]["Log_name"].startswith(f"{rds.BINLOG_BASENAME}.")


def test_server_settings(rds1):
    row = rds1.server.query(
        "SELECT @@log_bin AS lb, @@log_bin_basename AS base, @@binlog_format AS fmt, @@event_scheduler AS ev, "
        "@@log_bin_trust_function_creators AS tfc, @@sync_binlog AS sb, @@log_slave_updates AS lsu, "
        "@@have_ssl AS tls, (SELECT COUNT(*) FROM mysql.time_zone_name) AS tz")[0]
    assert row["lb"] == 1 and row["base"].endswith(f"/{rds.BINLOG_BASENAME}")
    assert (row["fmt"], row["ev"], row["tfc"], row["sb"], row["lsu"], row["tls"]) == (
        "ROW", "ON", 0, 1, 1, "YES")
    assert row["tz"] > 0  # §3: RDS ships zone data
    assert rds1.server.query("SELECT CONVERT_TZ('2024-01-01 00:00:00', 'UTC', 'Asia/Tokyo') AS t")[0]["t"]
    tfc = rds.install(rds1.server, trust_function_creators=True, heartbeat_interval=1)
    assert tfc.server.query("SELECT @@log_bin_trust_function_creators AS t") == [{"t": 1}]


# ------------------------------------------------------------------------------------------
# heartbeat
# ------------------------------------------------------------------------------------------
def test_heartbeat_advances_and_is_binlogged_in_statement_format(rds1):
    def value():
        rows = rds1.server.query("SELECT value FROM mysql.rds_heartbeat2 WHERE id = 1")
        return rows[0]["value"] if rows else None

    first = rds.wait_for(value, timeout=10, what="a first heartbeat")
    assert abs(first / 1000 - time.time()) < 60  # epoch ms
    rds.wait_for(lambda: (value() or 0) > first, timeout=10, what="the heartbeat to advance")
    assert rds1.server.query("SELECT @@global.binlog_format AS f") == [{"f": "ROW"}]
    log_file = _master_pos(rds1.server)[0]
    events = rds1.server.query(f"SHOW BINLOG EVENTS IN '{log_file}'")
    beats = [e for e in events if "rds_heartbeat2" in (e["Info"] or "")]
    assert beats, events[-5:]
    for event in beats:  # a Query event carrying the statement (ROW would be Table_map/Write_rows)
        assert event["Event_type"] == "Query", event
        assert "INSERT INTO mysql.rds_heartbeat2(id, value) values (1," in event["Info"]
        assert "ON DUPLICATE KEY UPDATE value = " in event["Info"]
    assert not [e for e in events if e["Event_type"] in ("Write_rows_v1", "Update_rows_v1")
                and "rds_heartbeat2" in (e["Info"] or "")]


def test_outside_replica_stops_on_heartbeat_without_wild_ignore(rds1, onprem):
    """§1: the rds_* tables are absent elsewhere -> 1146; replicate_wild_ignore_table = mysql.rds\\_% fixes it."""
    rds1.server.query("CREATE USER IF NOT EXISTS 'out_repl'@'%%' IDENTIFIED BY PASSWORD %s",
                      (rds.password_hash(REPL_PASSWORD),))
    rds1.server.query("GRANT REPLICATION SLAVE ON *.* TO 'out_repl'@'%'")
    log_file, pos = _master_pos(rds1.server)
    try:
        onprem.session(
            f"CHANGE MASTER TO MASTER_HOST='{rds1.address}', MASTER_PORT={rds1.port}, MASTER_USER='out_repl', "
            f"MASTER_PASSWORD='{REPL_PASSWORD}', MASTER_LOG_FILE='{log_file}', MASTER_LOG_POS={pos}, "
            "MASTER_USE_GTID=no, MASTER_SSL=1, MASTER_SSL_CA='', MASTER_SSL_CERT='', MASTER_SSL_KEY='', "
            "MASTER_CONNECT_RETRY=1",
            "START SLAVE")
        status = rds.wait_for(lambda: (onprem.query("SHOW SLAVE STATUS") or [{}])[0].get("Last_SQL_Errno"),
                              timeout=15, what="the outside replica's SQL error")
        assert status == 1146
        assert "rds_heartbeat2" in onprem.query("SHOW SLAVE STATUS")[0]["Last_SQL_Error"]
        onprem.session("STOP SLAVE", r"SET GLOBAL replicate_wild_ignore_table = 'mysql.rds\_%'", "START SLAVE")
        before = onprem.query("SELECT @@gtid_slave_pos AS p")[0]["p"]
        rds.wait_for(lambda: onprem.query("SELECT @@gtid_slave_pos AS p")[0]["p"] != before, timeout=15,
                     what="heartbeats to pass through the filter")
        row = onprem.query("SHOW SLAVE STATUS")[0]
        assert (row["Slave_SQL_Running"], row["Last_SQL_Errno"]) == ("Yes", 0), row
    finally:
        onprem.session("STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL replicate_wild_ignore_table = ''",
                       "SET GLOBAL gtid_slave_pos = ''")


# ------------------------------------------------------------------------------------------
# replication into the RDS-like server
# ------------------------------------------------------------------------------------------
def test_external_master_file_position(rds1, admin, onprem):
    _db(onprem, rds1, "rds_fp")
    log_file, pos = _master_pos(onprem)
    # not configured yet: the documented stop error
    code, msg = _error(rds.call, admin, "rds_stop_replication")
    assert (code, msg) == (1644, rds.MSG_NOT_CONFIGURED_STOP)
    rds.call(admin, "rds_set_external_master", onprem.address, onprem.port, REPL_USER, REPL_PASSWORD,
             log_file, pos, 0)
    hist = rds1.server.query("SELECT action, called_by_user, master_host, master_port, master_user, "
                             "master_log_file, master_log_pos, master_ssl FROM mysql.rds_history")
    assert hist == [{"action": "set master", "called_by_user": hist[0]["called_by_user"],
                     "master_host": onprem.address, "master_port": 3306, "master_user": REPL_USER,
                     "master_log_file": log_file, "master_log_pos": pos, "master_ssl": 0}]
    assert hist[0]["called_by_user"].startswith(f"{rds.ADMIN_USER}@")
    assert rds1.server.query("SELECT action, replication_log_file, replication_stop_point "
                             "FROM mysql.rds_replication_status") == [
        {"action": "set master", "replication_log_file": log_file, "replication_stop_point": pos}]
    st = _status(rds1)
    assert (st["Master_Host"], st["Master_Log_File"], st["Read_Master_Log_Pos"], st["Using_Gtid"],
            st["Master_SSL_Allowed"], st["Master_SSL_Verify_Server_Cert"]) == (
        onprem.address, log_file, pos, "No", "No", "No")
    # the password never lands in the RDS-like server's binlog
    binlog = rds1.server.query(f"SHOW BINLOG EVENTS IN '{_master_pos(rds1.server)[0]}'")
    assert not [e for e in binlog if REPL_PASSWORD in (e["Info"] or "")]

    # with the replica's client certificate imported, ssl_encryption=1 works against REQUIRE X509
    tls = env_tls(onprem)
    rds.call(admin, "rds_import_binlog_ssl_material",
             rds.ssl_material_json(tls["ca"], tls["client_cert"], tls["client_key"]))
    rds.call(admin, "rds_set_external_master", onprem.address, onprem.port, REPL_USER, REPL_PASSWORD,
             log_file, pos, 1)
    st = _status(rds1)
    assert (st["Master_SSL_Allowed"], st["Master_SSL_Verify_Server_Cert"]) == ("Yes", "No")
    assert st["Master_SSL_Cert"].startswith(str(rds.files_dir(rds1.server)))
    assert rds.call(admin, "rds_start_replication") == [[{"Message": "Slave running normally."}]]
    onprem.query("INSERT INTO rds_fp.t VALUES (1, 'a'), (2, 'b')")
    _wait_applied(rds1, "SELECT COUNT(*) AS n FROM rds_fp.t", [{"n": 2}])
    st = _status(rds1)
    assert (st["Slave_IO_Running"], st["Slave_SQL_Running"]) == ("Yes", "Yes")
    # (REQUIRE X509 on the master: the imported client certificate was presented)

    assert rds.call(admin, "rds_stop_replication") == [[{"Message": "Slave is down or disabled"}]]
    st = _status(rds1)
    assert (st["Slave_IO_Running"], st["Slave_SQL_Running"]) == ("No", "No")
    actions = [r["action"] for r in rds1.server.query("SELECT action FROM mysql.rds_history "
                                                      "ORDER BY action_timestamp")]
    assert actions == ["set master", "set master", "start slave", "stop slave"]

    # removed material: ssl_encryption=1 still encrypts but presents no client cert -> X509 refuses
    rds.call(admin, "rds_remove_binlog_ssl_material")
    rds.call(admin, "rds_set_external_master", onprem.address, onprem.port, REPL_USER, REPL_PASSWORD,
             *_master_pos(onprem), 1)
    assert _status(rds1)["Master_SSL_Cert"] == ""

    rds.call(admin, "rds_reset_external_master")
    assert _status(rds1) is None
    assert _error(rds.call, admin, "rds_start_replication")[0] == 1644


def env_tls(onprem):
    """The on-prem server's PKI paths (written by _start_onprem)."""
    tdir = onprem.root / "tls"
    return {"ca": tdir / "ca.crt", "client_cert": tdir / "rds-client.crt", "client_key": tdir / "rds-client.key"}


def test_external_master_gtid_and_skip_repl_error(rds1, admin, onprem):
    _db(onprem, rds1, "rds_gtid")
    tls = env_tls(onprem)
    # AWS-style material: raw newlines inside the strings, literal \n after each END line
    material = rds.ssl_material_json(tls["ca"], tls["client_cert"], tls["client_key"], aws_style=True)
    assert "\n" in material and "-----\\n\"" in material
    rds.call(admin, "rds_import_binlog_ssl_material", material)
    gtid = onprem.query("SELECT @@gtid_binlog_pos AS g")[0]["g"]
    # local rows the master's next writes collide with (not binlogged: a replica's own drift)
    rds1.server.session("SET SESSION sql_log_bin = 0",
                        "INSERT INTO rds_gtid.t VALUES (2, 'local'), (3, 'local')")
    rds.call(admin, "rds_set_external_master_gtid", onprem.address, onprem.port, REPL_USER, REPL_PASSWORD,
             gtid, 1)
    st = _status(rds1)
    assert (st["Using_Gtid"], st["Master_SSL_Allowed"]) == ("Slave_Pos", "Yes")
    assert rds1.server.query("SELECT @@gtid_slave_pos AS p") == [{"p": gtid}]
    assert rds1.server.query("SELECT master_gtid FROM mysql.rds_history") == [{"master_gtid": gtid}]

    # no error yet: nothing to skip
    code, msg = _error(rds.call, admin, "rds_skip_repl_error")  # configured but stopped
    assert code == 1644, msg
    rds.call(admin, "rds_start_replication")
    assert rds.call(admin, "rds_skip_repl_error") == [
        [{"Message": "Slave is running normally. No errors to skip."}]]

    onprem.query("INSERT INTO rds_gtid.t VALUES (1, 'm1')")
    onprem.query("INSERT INTO rds_gtid.t VALUES (2, 'm2')")  # duplicate key on the replica
    onprem.query("INSERT INTO rds_gtid.t VALUES (3, 'm3')")  # and again
    onprem.query("INSERT INTO rds_gtid.t VALUES (4, 'm4')")
    rds.wait_for(lambda: _status(rds1)["Last_SQL_Errno"] == 1062, timeout=20, what="the duplicate key stop")

    # one call skips one transaction: the next one fails again -> a warning says so
    conn = rds1.connect_admin()
    try:
        assert rds.call(conn, "rds_skip_repl_error") == [[{"Message": "Statement in error has been skipped"}]]
        warnings = _exec(conn, "SHOW WARNINGS")
        assert [w["Message"] for w in warnings] == [
            "Slave has encountered a new error. Please use SHOW SLAVE STATUS to see the error."], warnings
    finally:
        conn.close()
    st = _status(rds1)
    assert (st["Slave_SQL_Running"], st["Last_SQL_Errno"]) == ("No", 1062)
    assert rds1.server.query("SELECT id, v FROM rds_gtid.t ORDER BY id") == [
        {"id": 1, "v": "m1"}, {"id": 2, "v": "local"}, {"id": 3, "v": "local"}]
    rds.call(admin, "rds_skip_repl_error")
    _wait_applied(rds1, "SELECT id, v FROM rds_gtid.t ORDER BY id",
                  [{"id": 1, "v": "m1"}, {"id": 2, "v": "local"}, {"id": 3, "v": "local"}, {"id": 4, "v": "m4"}])
    st = _status(rds1)
    assert (st["Slave_IO_Running"], st["Slave_SQL_Running"], st["Last_SQL_Errno"]) == ("Yes", "Yes", 0)
    assert rds1.server.query("SELECT @@gtid_slave_pos AS p") == [
        {"p": onprem.query("SELECT @@gtid_binlog_pos AS g")[0]["g"]}]


def test_next_master_log(rds1, admin, onprem):
    _db(onprem, rds1, "rds_next")
    log_file, pos = _master_pos(onprem)
    index = int(log_file.rsplit(".", 1)[1])
    code, msg = _error(rds.call, admin, "rds_next_master_log", index)  # not configured
    assert code == 1644, msg
    tls = env_tls(onprem)
    rds.call(admin, "rds_import_binlog_ssl_material",
             rds.ssl_material_json(tls["ca"], tls["client_cert"], tls["client_key"], aws_style=False))
    rds.call(admin, "rds_set_external_master_gtid", onprem.address, onprem.port, REPL_USER, REPL_PASSWORD,
             onprem.query("SELECT @@gtid_binlog_pos AS g")[0]["g"], 1)
    code, msg = _error(rds.call, admin, "rds_next_master_log", index)  # GTID mode: no file to move on from
    assert code == 1644, msg
    rds.call(admin, "rds_set_external_master", onprem.address, onprem.port, REPL_USER, REPL_PASSWORD,
             log_file, pos, 1)
    # the source "failed over": what was left of log_file is lost, writes go on in the next file
    onprem.query("FLUSH BINARY LOGS")
    onprem.query("INSERT INTO rds_next.t VALUES (1, 'after flush')")
    rds.call(admin, "rds_next_master_log", index)  # starts the next file at 4, and replication
    _wait_applied(rds1, "SELECT v FROM rds_next.t", [{"v": "after flush"}])
    st = _status(rds1)
    assert st["Master_Log_File"] == f"{log_file.rsplit('.', 1)[0]}.{index + 1:06d}"
    assert (st["Slave_IO_Running"], st["Slave_SQL_Running"], st["Using_Gtid"]) == ("Yes", "Yes", "No")
    rds.call(admin, "rds_reset_external_master")
    code, msg = _error(rds.call, admin, "rds_next_master_log", index + 1)
    assert code == 1644, msg


def test_set_external_master_refusals(rds1, admin, onprem):
    # injection through a text argument: RDS answers with a message, changes nothing
    for args in (("h', MASTER_HOST='evil", 3306, REPL_USER, REPL_PASSWORD, "mysql-bin.000001", 4, 0),
                 (onprem.address, 3306, "u', MASTER_SSL='0", REPL_PASSWORD, "mysql-bin.000001", 4, 0),
                 (onprem.address, 3306, REPL_USER, REPL_PASSWORD, "f', MASTER_LOG_POS=4 --", 4, 0),
                 (None, 3306, REPL_USER, REPL_PASSWORD, "mysql-bin.000001", 4, 0)):
        assert rds.call(admin, "rds_set_external_master", *args) == [[{"Message": rds.MSG_INVALID_ARGUMENTS}]]
    assert _status(rds1) is None
    assert rds1.server.query("SELECT COUNT(*) AS n FROM mysql.rds_history") == [{"n": 0}]
    # a password with quotes is a password, quoted safely
    tricky = "pw'with\"quotes\\"
    rds.call(admin, "rds_set_external_master", onprem.address, 3306, REPL_USER, tricky, "mysql-bin.000001", 4, 0)
    assert _status(rds1)["Master_Host"] == onprem.address
    # inside an open transaction: 1694, as mydumper met on RDS (autocommit must be 1)
    conn = rds1.connect_admin(autocommit=False)
    try:
        _exec(conn, "START TRANSACTION")
        _exec(conn, "SELECT COUNT(*) FROM mysql.rds_configuration FOR UPDATE")
        for proc, args in (("rds_reset_external_master", ()),
                           ("rds_set_external_master_gtid", (onprem.address, 3306, REPL_USER, REPL_PASSWORD,
                                                             "0-1-1", 0))):
            code, msg = _error(rds.call, conn, proc, *args)
            assert code == 1694, (proc, msg)
        conn.rollback()
    finally:
        conn.close()
    assert _status(rds1)["Master_Host"] == onprem.address  # unchanged
    # a failure after sql_log_bin went off: the definer's handler turns it back on for the session
    code, msg = _error(rds.call, admin, "rds_set_external_master_gtid", onprem.address, 3306, REPL_USER,
                       REPL_PASSWORD, "not-a-gtid", 0)
    assert code != 1644, msg
    assert _exec(admin, "SELECT @@session.sql_log_bin AS b") == [{"b": 1}]
    # replication running: CHANGE MASTER's own refusal comes through
    rds.call(admin, "rds_set_external_master_gtid", onprem.address, 3306, REPL_USER, REPL_PASSWORD,
             onprem.query("SELECT @@gtid_binlog_pos AS g")[0]["g"], 0)
    rds1.server.query("START SLAVE")
    try:
        code, msg = _error(rds.call, admin, "rds_set_external_master", onprem.address, 3306, REPL_USER,
                           REPL_PASSWORD, "mysql-bin.000001", 4, 0)
        assert code == 1198, msg  # "This operation cannot be performed as you have a running slave"
    finally:
        rds1.server.query("STOP SLAVE")


# ------------------------------------------------------------------------------------------
# reinstall
# ------------------------------------------------------------------------------------------
def test_reinstall_restores_what_the_master_user_broke(rds1, admin, onprem):
    rds.call(admin, "rds_set_configuration", "binlog retention hours", 48)
    rds.call(admin, "rds_set_external_master", onprem.address, 3306, REPL_USER, REPL_PASSWORD,
             "mysql-bin.000001", 4, 0)
    # emulation gap (facts): ALTER ROUTINE on *.* lets the master user drop them ...
    _exec(admin, "DROP PROCEDURE mysql.rds_set_configuration")
    _exec(admin, "DELETE FROM mysql.rds_heartbeat2")
    code, msg = _error(rds.call, admin, "rds_set_configuration", "binlog retention hours", 24)
    assert code == 1305, msg
    # ... but not put one back with RDS's definer
    code, msg = _error(_exec, admin, f"CREATE DEFINER=`{rds.DEFINER}`@`localhost` PROCEDURE "
                                     "mysql.rds_set_configuration(name VARCHAR(100), value INT) BEGIN END")
    assert code == 1227, msg
    _exec(admin, "CREATE PROCEDURE mysql.rds_fake() BEGIN END")  # a stray one of the master user's

    again = rds.install(rds1.server, heartbeat_interval=1)
    names = {r["n"] for r in rds1.server.query("SELECT ROUTINE_NAME AS n FROM information_schema.ROUTINES "
                                               "WHERE ROUTINE_SCHEMA = 'mysql'")}
    assert {n for n in names if n.startswith("rds_")} == set(rds.PROCEDURES)
    assert {r["name"]: r["value"] for r in again.call("rds_show_configuration")[0]}[
        "binlog retention hours"] is None
    assert _status(again) is None  # the external master is forgotten
    assert rds1.server.query("SELECT @@gtid_slave_pos AS p") == [{"p": ""}]
    again.call("rds_set_configuration", "binlog retention hours", 24)
    rds.wait_for(lambda: rds1.server.query("SELECT value FROM mysql.rds_heartbeat2"), timeout=10,
                 what="the heartbeat after reinstall")
    assert admin.open  # an open session of the master user survives a reinstall
    assert rds.call(admin, "rds_show_configuration")[0][0]["value"] == "24"
    assert (again.tls, again.endpoint) == (rds1.tls, rds.ENDPOINT)  # read back from the running server


def test_uninstall_then_install(rds1):
    rds.uninstall(rds1.server)
    srv = rds1.server
    assert not srv.query("SELECT 1 FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'mysql' "
                         "AND ROUTINE_NAME LIKE 'rds\\_%'")
    assert not srv.query("SHOW TABLES FROM mysql LIKE 'rds\\_%'")
    assert not srv.query("SELECT 1 FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'mysql'")
    assert not srv.query(f"SELECT 1 FROM mysql.user WHERE user IN ('{rds.ADMIN_USER}', '{rds.DEFINER}')")
    code, msg = _error(rds1.connect_admin)
    assert code in (1045, 1698), msg  # 10.11 here: an unknown user gets 1698, TLS or not
    back = rds.install(srv, heartbeat_interval=1)
    assert back.call("rds_show_configuration")[0]
