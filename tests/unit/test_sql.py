"""
SQL text per flavor. MySQL 8 has no server on the test machines: its syntax is
checked here as text only (README says so).
"""
import hashlib
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "_utils"))
import mysqlrepl_sql as sql  # noqa: E402

MARIADB = sql.parse_version("10.11.19-MariaDB-0+deb12u1")
MYSQL8 = sql.parse_version("8.0.36")
MYSQL8_OLD = sql.parse_version("8.0.21")


def test_parse_version():
    assert MARIADB.flavor == "mariadb" and MARIADB.number == (10, 11, 19)
    assert MYSQL8.flavor == "mysql" and MYSQL8.number == (8, 0, 36)
    assert sql.parse_version("5.5.5-10.6.12-MariaDB-log").number == (10, 6, 12)
    with pytest.raises(ValueError):
        sql.parse_version("garbage")


def test_native_password_hash_matches_server_algorithm():
    # PASSWORD('secret') on MariaDB/MySQL 5.x
    assert sql.native_password_hash("secret") == "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
    assert sql.native_password_hash("x") == "*" + hashlib.sha1(hashlib.sha1(b"x").digest()).hexdigest().upper()


def test_mariadb_user_uses_hash_not_clear_text():
    stmts = sql.create_replication_user(MARIADB, "repl", "%", "p'w", "x509")
    text = " ".join(s for s, _ in stmts)
    assert "p'w" not in text and all("p'w" not in repr(a) for _, a in stmts)
    assert "IDENTIFIED BY PASSWORD %s REQUIRE X509" in stmts[0][0]
    assert stmts[0][1] == (sql.native_password_hash("p'w"),)
    # statements are always %-formatted by the connection layer
    assert stmts[2][0] == "GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%%'"
    assert stmts[2][0] % () == "GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'"


def test_mysql8_user_syntax():
    stmts = sql.create_replication_user(MYSQL8, "repl", "%", "pw", "ssl")
    assert stmts[0][0] == ("CREATE USER IF NOT EXISTS 'repl'@'%%' IDENTIFIED WITH caching_sha2_password "
                           "BY %s REQUIRE SSL")
    assert stmts[1][0].startswith("ALTER USER 'repl'@'%%' IDENTIFIED WITH caching_sha2_password BY %s")


def test_require_subject_quotes_and_issuer():
    clause = sql.require_clause("subject", "/O=W3C/CN=o'brien 100%", "/CN=ca")
    assert clause == "REQUIRE SUBJECT '/O=W3C/CN=o\\'brien 100%%' AND ISSUER '/CN=ca'"
    with pytest.raises(ValueError):
        sql.require_clause("subject")
    with pytest.raises(ValueError):
        sql.require_clause("none")


def test_change_master_mariadb_sends_every_ssl_option_and_gtid():
    stmt, args = sql.change_master(MARIADB, "10.0.0.1", 3306, "repl", "/ca", "/crt", "/key")
    for opt in ("MASTER_SSL = %s", "MASTER_SSL_CA = %s", "MASTER_SSL_CAPATH = %s", "MASTER_SSL_CERT = %s",
                "MASTER_SSL_KEY = %s", "MASTER_SSL_CIPHER = %s", "MASTER_SSL_CRL = %s",
                "MASTER_SSL_CRLPATH = %s", "MASTER_SSL_VERIFY_SERVER_CERT = %s", "MASTER_CONNECT_RETRY = %s",
                "MASTER_HEARTBEAT_PERIOD = %s"):
        assert opt in stmt
    assert stmt.endswith("MASTER_USE_GTID = slave_pos")
    assert "PASSWORD" not in stmt and len(args) == stmt.count("%s")
    assert stmt.count("%s") == len(args)
    demote, _ = sql.change_master(MARIADB, "h", 1, "u", "a", "b", "c", demote=True)
    assert demote.endswith("MASTER_DEMOTE_TO_SLAVE = 1")


def test_change_master_mysql8_uses_source_syntax():
    stmt, args = sql.change_master(MYSQL8, "10.0.0.1", 3306, "repl", "/ca", "/crt", "/key")
    assert stmt.startswith("CHANGE REPLICATION SOURCE TO SOURCE_HOST = %s")
    assert "SOURCE_SSL_VERIFY_SERVER_CERT = %s" in stmt
    assert "SOURCE_AUTO_POSITION = 1" in stmt
    assert "MASTER_" not in stmt
    assert stmt.count("%s") == len(args)


def test_replica_verbs_by_version():
    assert sql.start_replica(MARIADB)[0] == "START SLAVE"
    assert sql.start_replica(MYSQL8)[0] == "START REPLICA"
    assert sql.start_replica(MYSQL8_OLD)[0] == "START SLAVE"
    assert sql.show_replica_status(MYSQL8)[0] == "SHOW REPLICA STATUS"
    assert sql.reset_replica_all(MYSQL8)[0] == "RESET REPLICA ALL"


def test_normalize_replica_status_both_flavors():
    assert sql.normalize_replica_status(None) is None
    assert sql.normalize_replica_status({"Master_Host": ""}) is None
    m = sql.normalize_replica_status({"Master_Host": "h", "Master_Port": 3306, "Slave_IO_Running": "Yes",
                                               "Slave_SQL_Running": "Yes", "Using_Gtid": "Slave_Pos"})
    assert (m["host"], m["io_running"], m["using_gtid"]) == ("h", "Yes", "Slave_Pos")
    y = sql.normalize_replica_status({"Source_Host": "h", "Source_Port": 3306, "Replica_IO_Running": "No",
                                              "Replica_SQL_Running": "Yes", "Auto_Position": 1})
    assert (y["host"], y["io_running"], y["using_gtid"]) == ("h", "No", "Auto_Position")


def test_read_only_with_bounded_lock_wait():
    assert sql.set_read_only(True, 2) == ("SET STATEMENT lock_wait_timeout=2 FOR SET GLOBAL read_only = 1", None)
    assert sql.set_read_only(False) == ("SET GLOBAL read_only = 0", None)


def test_set_global_refuses_injection():
    with pytest.raises(ValueError):
        sql.set_global("x; DROP TABLE y", 1)
    assert sql.set_global("sync_binlog", 1) == ("SET GLOBAL sync_binlog = %s", (1,))


def test_mysql_before_8_0_23_uses_master_spelling_with_auto_position():
    stmt, args = sql.change_master(MYSQL8_OLD, "h", 3306, "repl", "/ca", "/crt", "/key")
    assert stmt.startswith("CHANGE MASTER TO MASTER_HOST = %s")
    assert "MASTER_AUTO_POSITION = 1" in stmt and "MASTER_USE_GTID" not in stmt
    assert stmt.count("%s") == len(args)


def test_gtid_reads_and_waits_per_flavor():
    assert "gtid_binlog_pos" in sql.gtid_position(MARIADB)[0]
    assert "gtid_executed" in sql.gtid_position(MYSQL8)[0]
    assert sql.master_gtid_wait(MARIADB, "0-1-5", 3)[0].startswith("SELECT MASTER_GTID_WAIT(")
    assert sql.master_gtid_wait(MYSQL8, "uuid:1-5", 3)[0].startswith("SELECT WAIT_FOR_EXECUTED_GTID_SET(")
    aliases = [re.findall(r" AS (\w+)", sql.gtid_state(v)[0]) for v in (MARIADB, MYSQL8)]
    assert aliases[0] == aliases[1] == ["binlog_pos", "binlog_state", "slave_pos", "current_pos"]


def test_the_password_travels_alone():
    # a running statement's text is visible to PROCESS holders: the password goes in
    # a statement with nothing else, sent only when a link needs it
    # (and the heartbeat period, which any CHANGE MASTER without it resets)
    for version in (MARIADB, MYSQL8_OLD):
        stmt, args = sql.change_master_password(version, "pw", 2)
        assert stmt == "CHANGE MASTER TO MASTER_PASSWORD = %s, MASTER_HEARTBEAT_PERIOD = %s"
        assert args == ("pw", 2.0)
    stmt, args = sql.change_master_password(MYSQL8, "pw", 1)
    assert stmt == "CHANGE REPLICATION SOURCE TO SOURCE_PASSWORD = %s, SOURCE_HEARTBEAT_PERIOD = %s"
    assert args == ("pw", 1.0)
