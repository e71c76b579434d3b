"""
Managed servers (``_utils/mysqlrepl_managed.py``) without servers: the role
by procedures, the procedure names per flavor and version (MySQL's are
generated from the documentation and untested against a real server), the
statements a managed admin may not run, retention, import filtering, error
1236 and skipping.
"""

import pytest

import _utils.mysqlrepl_managed as mg

MARIADB_RDS = {"rds_set_configuration", "rds_show_configuration", "rds_start_replication", "rds_stop_replication",
               "rds_set_external_master", "rds_set_external_master_gtid", "rds_reset_external_master",
               "rds_skip_repl_error", "rds_next_master_log", "rds_kill", "rds_replica_status",
               "rds_import_binlog_ssl_material", "rds_remove_binlog_ssl_material"}
MYSQL84_RDS = {"rds_set_configuration", "rds_show_configuration", "rds_start_replication", "rds_stop_replication",
               "rds_set_external_source_with_auto_position", "rds_reset_external_source", "rds_next_source_log",
               "rds_skip_repl_error"}


# -- rule 1: the role, by procedures -------------------------------------------------------

def test_a_server_with_the_rds_procedures_is_managed_whatever_its_name():
    got = mg.detect(sorted(MARIADB_RDS) + ["some_local_proc"])
    assert got["managed"] and got["ssl_import"] and got["replica_status"] and not got["source_names"]
    assert "some_local_proc" not in got["has"]


def test_a_plain_server_or_a_half_install_is_not_managed():
    assert not mg.detect([])["managed"]
    assert not mg.detect(["rds_set_configuration"])["managed"]


def test_optional_procedures_are_read_not_assumed():
    got = mg.detect(MARIADB_RDS - {"rds_import_binlog_ssl_material", "rds_remove_binlog_ssl_material"})
    assert got["managed"] and not got["ssl_import"]
    names = mg.procedures("mariadb", (10, 11, 9), got)
    assert names["import_ssl"] is None and names["remove_ssl"] is None


# -- rule 2: procedure names per flavor and version --------------------------------------------

def test_mariadb_uses_the_gtid_procedure_and_rds_replica_status_from_10_5():
    names = mg.procedures("mariadb", (10, 11, 9), mg.detect(MARIADB_RDS))
    assert (names["set_source"], names["status"], names["reset_source"]) == (
        "rds_set_external_master_gtid", "rds_replica_status", "rds_reset_external_master")
    assert mg.procedures("mariadb", (10, 4, 30), mg.detect(MARIADB_RDS))["status"] is None


def test_mysql_names_before_and_from_8_4():
    mysql80 = mg.detect(MARIADB_RDS | {"rds_set_external_master_with_auto_position"})
    assert mg.procedures("mysql", (8, 0, 36), mysql80)["set_source"] == "rds_set_external_master_with_auto_position"
    names = mg.procedures("mysql", (8, 4, 3), mg.detect(MYSQL84_RDS))
    assert (names["set_source"], names["reset_source"], names["next_log"]) == (
        "rds_set_external_source_with_auto_position", "rds_reset_external_source", "rds_next_source_log")


def test_a_missing_procedure_is_named():
    with pytest.raises(ValueError) as err:
        mg.procedures("mariadb", (10, 11, 9), mg.detect(MARIADB_RDS - {"rds_set_external_master_gtid"}))
    assert "mysql.rds_set_external_master_gtid" in str(err.value)


# -- the statements ------------------------------------------------------------------------------

def test_calls_bind_their_values_and_the_password_only_travels_inside_one():
    names = mg.procedures("mariadb", (10, 11, 9), mg.detect(MARIADB_RDS))
    sql, args = mg.set_source_call(names, "mariadb", "db1.example", 3306, "repl", "s3cr'et", gtid="0-11-5")
    assert sql == "CALL mysql.rds_set_external_master_gtid(%s, %s, %s, %s, %s, %s)"
    assert args == ("db1.example", 3306, "repl", "s3cr'et", "0-11-5", 1) and "s3cr" not in sql
    assert mg.call("rds_start_replication") == ("CALL mysql.rds_start_replication()", None)
    with pytest.raises(ValueError):
        mg.call("rds_x); DROP TABLE t; --")
    with pytest.raises(ValueError):
        mg.set_source_call(names, "mariadb", "h", 3306, "u", "p")


def test_mysql_set_source_takes_ssl_and_delay():
    names = mg.procedures("mysql", (8, 4, 3), mg.detect(MYSQL84_RDS))
    assert mg.set_source_call(names, "mysql", "h", 3306, "u", "p", delay=60)[1] == ("h", 3306, "u", "p", 1, 60)


@pytest.mark.parametrize("sql", [
    "CHANGE MASTER TO MASTER_HOST='x'", "start slave", "STOP REPLICA", "RESET SLAVE ALL", "RESET MASTER",
    "SET GLOBAL read_only=1", "SET @@GLOBAL.gtid_slave_pos='0-1-1'", "SET sql_log_bin=0",
    "SET SESSION sql_log_bin = 0", "set @@session.sql_log_bin=0", "KILL 12", "KILL QUERY 12",
    "FLUSH TABLES WITH READ LOCK", "FLUSH NO_WRITE_TO_BINLOG TABLES WITH READ LOCK", "FLUSH LOGS",
    "FLUSH BINARY LOGS", "PURGE BINARY LOGS TO 'x'", "SHOW SLAVE STATUS", "SELECT 1 INTO OUTFILE '/tmp/x'",
])
def test_statements_a_managed_admin_may_not_run_are_refused(sql):
    assert mg.refused_statement(sql), sql


@pytest.mark.parametrize("sql", [
    "CALL mysql.rds_start_replication()", "SELECT @@version", "INSERT INTO app.t VALUES (1)",
    "CREATE TABLE app.t (id INT)", "SET time_zone = '+00:00'", "SET NAMES utf8mb4",
    ("CALL mysql.rds_set_configuration(%s, %s)", ("binlog retention hours", 24)),
    "SELECT ROUTINE_NAME FROM information_schema.ROUTINES",
])
def test_what_a_managed_admin_may_run_passes(sql):
    assert mg.refused_statement(sql) is None


# -- rule 3: retention ---------------------------------------------------------------------------

def test_retention_null_or_lower_is_set_and_higher_is_kept():
    assert mg.retention_plan(None, 24) == {"set": 24, "refusal": None, "comment": "binlog retention hours NULL -> 24"}
    assert mg.retention_plan("12", 24)["set"] == 24
    assert mg.retention_plan("48", 24) == {"set": None, "refusal": None,
                                          "comment": "binlog retention hours 48 (pillar: at least 24)"}


@pytest.mark.parametrize("wanted", [0, 169, "24", None, True])
def test_retention_outside_what_rds_accepts_is_refused(wanted):
    out = mg.retention_plan(None, wanted)
    assert out["set"] is None and "must be 1..168" in out["refusal"]


# -- rule 4: importing a dump ----------------------------------------------------------------------

def test_an_import_leaves_out_global_settings_and_sql_log_bin_and_definers():
    assert mg.import_line("SET GLOBAL gtid_slave_pos='0-11-5';\n") is None
    assert mg.import_line("/*!40101 SET @@GLOBAL.GTID_PURGED='x' */;\n") is None
    assert mg.import_line("SET @@SESSION.SQL_LOG_BIN= 0;\n") is None
    assert mg.import_line("CHANGE MASTER TO MASTER_USE_GTID=slave_pos;\n") is None
    assert mg.import_line("-- SET GLOBAL gtid_slave_pos='0-11-5';\n") == "-- SET GLOBAL gtid_slave_pos='0-11-5';\n"
    assert mg.import_line("/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER t1 ...\n") == (
        "/*!50003 CREATE*/ /*!50017*/ /*!50003 TRIGGER t1 ...\n")
    assert mg.import_line("CREATE DEFINER=`app`@`%` PROCEDURE `p`()\n") == "CREATE PROCEDURE `p`()\n"
    assert mg.import_line("INSERT INTO `t` VALUES (1,'DEFINER=x');\n") == "INSERT INTO `t` VALUES (1,'DEFINER=x');\n"


def test_a_dump_of_the_mysql_schema_is_never_imported():
    for line in ("CREATE DATABASE /*!32312 IF NOT EXISTS*/ `mysql` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n",
                 "USE `mysql`;\n"):
        with pytest.raises(ValueError):
            mg.import_line(line)
    assert mg.import_line("USE `app`;\n") == "USE `app`;\n"


# -- rules 5 and 6: error 1236, skipping ---------------------------------------------------------

def test_a_purged_binlog_means_reseed():
    out = mg.explain_1236("Got fatal error 1236 from master when reading data from binary log: 'Could not find "
                          "first log file name in binary log index file'", None)
    assert out["cause"] == "purged" and "re-seed" in out["action"] and "NULL" in out["comment"]


def test_any_other_1236_is_an_operators_decision_never_automatic():
    out = mg.explain_1236("Got fatal error 1236 from master: 'binlog truncated in the middle of event'", 24)
    assert out["cause"] == "unknown" and out["action"] is None and "rds_next_master_log" in out["comment"]


def test_skipping_only_when_allowed_and_under_the_limit():
    err = {"errno": 1062, "error": "Duplicate entry '7'"}
    assert mg.skip_decision(None, True, 3, 0)["skip"] is False
    assert "not allowed" in mg.skip_decision(err, False, 3, 0)["comment"]
    assert mg.skip_decision(err, True, 3, 2) == {
        "skip": True, "comment": "skipping one event on SQL error 1062: Duplicate entry '7' (3 of at most 3)"}
    out = mg.skip_decision(err, True, 3, 3)
    assert out["skip"] is False and "the limit is 3" in out["comment"]
