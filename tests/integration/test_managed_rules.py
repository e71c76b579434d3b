"""
The managed-server rules (``_utils/mysqlrepl_managed.py``) against real
servers, no Salt: the RDS-like MariaDB of ``tests/support/rds.py`` and a plain
one. The role comes from the procedures the admin sees; every statement the
guard refuses is one the RDS-like admin is denied, and what it lets through
runs; retention set and read back through the procedures; a dump with
DEFINERs and global settings fails as is and imports once filtered.

Servers on 127.0.0.<octet+69> (RDS-like) and <octet+70> (plain), octet =
MYSQLREPL_TEST_FIRST_OCTET (default 11).
"""

import os
import shutil
import subprocess
import tempfile

import pymysql
import pytest

import _utils.mysqlrepl_managed as mg
from tests.support import mariadb, rds

FIRST_OCTET = int(os.environ.get("MYSQLREPL_TEST_FIRST_OCTET", "11"))

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("mariadb-dump") or os.geteuid() != 0,
                       reason="needs root and the MariaDB binaries"),
]


@pytest.fixture(scope="module")
def env():
    mariadb.become_subreaper()
    base = tempfile.mkdtemp(prefix="mrm-", dir="/tmp")
    os.chmod(base, 0o755)
    plain = mariadb.MariaDBServer("plain", f"127.0.0.{FIRST_OCTET + 70}", 3306, base, FIRST_OCTET + 70)
    try:
        mariadb.check_port_free(plain.address, plain.port)
        plain.init()
        (plain.conf_d / "50-plain.cnf").write_text("[mysqld]\nlog_bin = mysql-bin\nbinlog_format = ROW\n",
                                                   encoding="utf-8")
        plain.start()
        # routines and triggers come with the dump: RDS's parameter group allows their import
        with rds.rds_like_server(base, address=f"127.0.0.{FIRST_OCTET + 69}", trust_function_creators=True) as r:
            yield {"base": base, "rds": r, "plain": plain}
    finally:
        try:
            if plain.running():
                mariadb.stop_servers([plain])
        finally:
            mariadb.reap_zombies(("mariadbd",))
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def admin(env):
    rds.install(env["rds"].server, trust_function_creators=True)
    conn = env["rds"].connect_admin(autocommit=True, cursorclass=pymysql.cursors.DictCursor)
    yield conn
    conn.close()


def routines(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT ROUTINE_NAME AS r FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'mysql'")
        return [row["r"] for row in cur.fetchall()]


def test_the_role_comes_from_the_procedures_the_admin_sees(env, admin):
    found = mg.detect(routines(admin))
    assert found["managed"] and found["ssl_import"] and found["replica_status"], found
    names = mg.procedures("mariadb", (10, 11), found)
    assert names["set_source"] == "rds_set_external_master_gtid"
    assert not mg.detect(routines(env["plain"].connect(cursorclass=pymysql.cursors.DictCursor)))["managed"]
    # the optional SSL import procedures absent: read, not assumed
    rds.install(env["rds"].server, ssl_material=False, trust_function_creators=True)
    assert not mg.detect(routines(admin))["ssl_import"]


REFUSED = [
    "CHANGE MASTER TO MASTER_HOST='h'", "START SLAVE", "STOP SLAVE", "RESET SLAVE ALL",
    "SET GLOBAL read_only = 1", "SET sql_log_bin = 0", "FLUSH TABLES WITH READ LOCK", "FLUSH LOGS",
    "SHOW SLAVE STATUS", "PURGE BINARY LOGS BEFORE NOW()", "SELECT 1 INTO OUTFILE '/tmp/mrm-x'",
]
ALLOWED = [
    "SELECT @@version", "CREATE DATABASE IF NOT EXISTS mr_ok", "CREATE TABLE IF NOT EXISTS mr_ok.t (id INT)",
    "INSERT INTO mr_ok.t VALUES (1)", "SET time_zone = '+00:00'",
    mg.call("rds_show_configuration"),
]


@pytest.mark.parametrize("sql", REFUSED)
def test_what_the_guard_refuses_the_rds_like_admin_is_denied(admin, sql):
    assert mg.refused_statement(sql)
    with pytest.raises(pymysql.err.MySQLError) as err:
        with admin.cursor() as cur:
            cur.execute(sql)
    assert err.value.args[0] in (1227, 1045, 1095, 1142), err.value


@pytest.mark.parametrize("sql", ALLOWED, ids=lambda s: s if isinstance(s, str) else s[0])
def test_what_the_guard_lets_through_runs(admin, sql):
    assert mg.refused_statement(sql) is None
    with admin.cursor() as cur:
        cur.execute(*(sql if isinstance(sql, tuple) else (sql,)))


def test_retention_is_set_and_read_back_through_the_procedures(admin):
    def current():
        with admin.cursor() as cur:
            cur.execute(*mg.call("rds_show_configuration"))
            rows = {r["name"]: r["value"] for r in cur.fetchall()}
        return rows[mg.RETENTION]

    plan = mg.retention_plan(current(), 24)
    assert plan["set"] == 24 and "NULL -> 24" in plan["comment"]
    with admin.cursor() as cur:
        cur.execute(*mg.call("rds_set_configuration", mg.RETENTION, plan["set"]))
    assert mg.retention_plan(current(), 24)["set"] is None


def _dump(plain, path):
    plain.session(
        "CREATE DATABASE IF NOT EXISTS shop",
        "CREATE TABLE IF NOT EXISTS shop.items (id INT PRIMARY KEY, n INT)",
        "CREATE TABLE IF NOT EXISTS shop.audit (id INT AUTO_INCREMENT PRIMARY KEY, item INT)",
        "DELETE FROM shop.items", "DELETE FROM shop.audit",
        "DROP TRIGGER IF EXISTS shop.items_ai",
        "CREATE DEFINER=`root`@`localhost` TRIGGER shop.items_ai AFTER INSERT ON shop.items "
        "FOR EACH ROW INSERT INTO shop.audit (item) VALUES (NEW.id)",
        "DROP PROCEDURE IF EXISTS shop.total",
        "CREATE DEFINER=`root`@`localhost` PROCEDURE shop.total() SELECT SUM(n) AS total FROM shop.items",
        "INSERT INTO shop.items VALUES (1, 10), (2, 20), (3, 30)",
    )
    with open(path, "wb") as out:
        subprocess.run(["mariadb-dump", f"--socket={plain.socket}", "--user=root", "--single-transaction",
                        "--master-data=1", "--gtid", "--routines", "--triggers", "--databases", "shop"],
                       stdout=out, check=True)


def _load(env, path):
    r = env["rds"]
    opt = os.path.join(env["base"], "admin.cnf")
    with open(opt, "w", encoding="utf-8") as fh:
        fh.write(f"[client]\nuser={r.admin_user}\npassword={r.admin_password}\nhost={r.address}\nport={r.port}\n"
                 f"ssl-ca={r.tls['ca']}\nssl-verify-server-cert\n")
    os.chmod(opt, 0o600)
    with open(path, "rb") as src:
        return subprocess.run(["mariadb", f"--defaults-extra-file={opt}"], stdin=src, capture_output=True,
                              check=False)


def test_a_dump_imports_once_filtered_and_not_before(env, admin):
    raw = os.path.join(env["base"], "shop.sql")
    _dump(env["plain"], raw)
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS shop")
    failed = _load(env, raw)
    assert failed.returncode != 0 and b"ERROR 1227" in failed.stderr, failed.stderr
    filtered = os.path.join(env["base"], "shop.filtered.sql")
    with open(raw, encoding="utf-8") as src, open(filtered, "w", encoding="utf-8") as out:
        for line in src:
            kept = mg.import_line(line)
            if kept is not None:
                out.write(kept)
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS shop")
    done = _load(env, filtered)
    assert done.returncode == 0, done.stderr
    with admin.cursor() as cur:
        cur.execute("SELECT SUM(n) AS s, (SELECT COUNT(*) FROM shop.audit) AS a FROM shop.items")
        row = cur.fetchone()
        assert (int(row["s"]), row["a"]) == (60, 3)
        cur.execute("INSERT INTO shop.items VALUES (4, 40)")  # the trigger runs as the admin now
        cur.execute("CALL shop.total()")
        assert int(cur.fetchone()["total"]) == 100
        cur.execute("SELECT DEFINER AS d FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'shop'")
        assert cur.fetchone()["d"].startswith(f"{env['rds'].admin_user}@")
