"""
An "RDS-like" MariaDB 10.11 for the tests of the managed-cloud (Amazon RDS for
MariaDB) endpoints, built from the facts in ``/work/shared/rds-facts.md``
(section numbers below are that file's).

A plain :class:`tests.support.mariadb.MariaDBServer` becomes RDS-like with
:func:`write_config` (a drop-in in its ``conf.d``, read at start) and
:func:`install` (SQL, idempotent: call it again before every test).
:func:`rds_like_server` does both for one extra server on its own loopback
address (default 127.0.0.77) and stops it by PID at the end::

    with rds.rds_like_server() as rds1:          # RdsLike
        rds1.call("rds_set_configuration", "binlog retention hours", 24)
        conn = rds1.connect_admin()              # the master user, TCP + TLS

What it emulates
----------------
- The master user (§1 "Master user, RDS for MariaDB"): ``ADMIN_USER``@'%'
  (password ``ADMIN_PASSWORD`` unless given; sent as a hash, so the clear text
  reaches neither the binlog nor the general log) with exactly the privileges
  listed there and WITH GRANT OPTION ("grant option" is on the list); login
  over TCP, with or without TLS. **RELOAD is left out by default**
  (``grant_reload=True`` adds it): RDS's RELOAD "doesn't grant access to FLUSH
  LOGS or FLUSH TABLES WITH READ LOCK", stock MariaDB's does (and RESET MASTER
  too), so granting it would let through exactly what RDS refuses; without it
  FTWRL / FLUSH LOGS are refused (1227) as on RDS, at the cost of also refusing
  the FLUSH forms RDS may allow. What the list lacks gives the [TEST] errors of
  §1: SHOW SLAVE STATUS, CHANGE MASTER, START/STOP SLAVE, SET GLOBAL, SET
  sql_log_bin -> 1227, KILL of another user's thread -> 1095, SELECT ... INTO
  OUTFILE -> 1227 (FILE).
- The ``mysql.rds_*`` procedures of §1 that RDS for MariaDB has (names and
  parameter lists: ``PROCEDURES``), definer ``rdsadmin``@``localhost`` (a
  locked account with ALL, RDS's own definer, §1 "real body", §6.4), SQL
  SECURITY DEFINER, CHANGE MASTER built as text and run with PREPARE/EXECUTE
  (§6). Behaviour: rds_set_external_master(_gtid) validate their arguments
  (an injection attempt or a NULL gives the result row ``Message = Invalid
  arguments`` and changes nothing, like RDS's body), switch sql_log_bin off
  around CHANGE MASTER like RDS's body (so inside an open transaction they fail
  with 1694, mydumper #1844), always pass MASTER_SSL_VERIFY_SERVER_CERT=0 and
  every other MASTER_SSL_* option (the imported material's files when
  ssl_encryption=1), MASTER_USE_GTID=no / slave_pos (after SET GLOBAL
  gtid_slave_pos = gtid), and log 'set master' rows; rds_stop_replication
  unconfigured -> 1644 with §1's text; rds_skip_repl_error skips one event
  group (sql_slave_skip_counter=1), warns (SQLSTATE 01000) when the next one
  fails too, 1644 "Slave is down or disabled" when there is nothing running to
  skip; rds_next_master_log(n) moves to <base>.<n+1> at 4 (base from the file
  given to rds_set_external_master; the live Master_Log_File is out of SQL's
  reach, so n is not checked) and refuses GTID mode; 'source delay' applies
  MASTER_DELAY when a master is configured; rds_kill* refuse RDS's own threads
  (event scheduler, replication, rdsadmin) with 1095; a wrong argument count is
  MariaDB's own 1318 (§1: the same on RDS).
  ``rds_import_binlog_ssl_material`` (accepts AWS's not-quite-JSON as well as
  JSON) / ``rds_remove_binlog_ssl_material`` are optional (``ssl_material=False``
  leaves them out, §1 caveat).
- Tables (§1 "rds_* tables"): ``mysql.rds_configuration`` (name, value,
  description; 'binlog retention hours' NULL, 'source delay' 0, 'target delay'
  0), ``mysql.rds_history`` and ``mysql.rds_replication_status`` ('set
  master' rows, plus 'start slave' / 'stop slave' / 'reset master' in the
  history; column lists are guesses, as the facts say), ``mysql.rds_heartbeat2``,
  ``mysql.rds_sysinfo`` (empty); the emulation's own
  ``mysql.rds_binlog_ssl_material`` (paths of the imported PEM files).
  Procedure writes to them are binlogged (RDS's own replicas must ignore them,
  so RDS binlogs them): an outside replica without ``replicate_wild_ignore_table
  = mysql.rds\\_%`` stops with 1146.
- The heartbeat (§1): an EVENT ``mysql.rds_emulated_heartbeat`` (definer
  rdsadmin, event scheduler on) runs every ``heartbeat_interval`` seconds
  (default 5: the facts give no interval) ``INSERT INTO
  mysql.rds_heartbeat2(id, value) values (1,<epoch ms>) ON DUPLICATE KEY UPDATE
  value = <epoch ms>`` with the value as a literal, in STATEMENT format
  whatever ``binlog_format`` is (default ROW), binlogged.
- Binlog retention (§1, §5): 'binlog retention hours' (1..168; 0 refused; NULL
  = default) also sets ``binlog_expire_logs_seconds``; RDS's "purge as soon as
  possible" housekeeping is :func:`purge_binary_logs`, which a test calls when
  it wants it (an automatic purge would make tests flaky).
- Server settings (drop-in): binlog ``mysql-bin-changelog.NNNNNN`` (§1
  rds_next_master_log), log_slave_updates, sync_binlog=1 and
  innodb_flush_log_at_trx_commit=1 (§5), TLS with a certificate whose CN is the
  endpoint name (§4), event scheduler, performance_schema (the procedures read
  its replication tables), ``secure_file_priv`` a 0700 directory for the
  imported SSL material (emulation gaps); time zone tables loaded (§3, without
  binlog); ``log_bin_trust_function_creators`` 0 unless
  ``trust_function_creators`` (§3: a parameter-group setting on RDS).

Left out (and why)
------------------
- MySQL-only procedures (§1): rds_set_external_master_with_auto_position and
  the 8.4 ``*_source`` names; procedures the facts do not list
  (rds_set_external_master_with_delay, rds_start_replication_until,
  rds_set_source_delay, ...) are not invented.
- Protection of the ``mysql`` schema (§1: only RDS for MySQL 8.0.36+ documents
  it) and of rdsadmin: MariaDB has no partial revokes, so the master user can
  DML/DROP the rds_* tables, DROP the procedures (emulation gaps; install()
  restores them) and, with CREATE USER, alter other accounts.
- RDS's wording of messages the facts do not quote (unknown configuration
  name, value out of range, "Slave running normally.", ...): those texts are
  marked "emulation's wording" in ``_proc_bodies``; code 1644 (SIGNAL '45000')
  is what a formula should rely on (§ Must handle 3).
- Purging binlogs on its own (above), Multi-AZ failover, rds_sysinfo rows,
  rds_import_binlog_ssl_material refusing non-TLS sessions (AWS only says to
  use TLS), deleting the imported PEM files on remove (SQL cannot delete files:
  install()/uninstall() do), RDS's hostname-only certificate (the IP is in the
  SAN too unless ``ip_in_san=False``: the tests cannot resolve a DNS name).
- A master user able to FLUSH TABLES etc. (see RELOAD above); SHOW CREATE
  ROUTINE (11.4+ only); the RDS default time_zone (UTC) and parameter group.
"""

import contextlib
import dataclasses
import datetime
import hashlib
import ipaddress
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
import time

import pymysql
import pymysql.cursors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import mariadb

# one extra server next to db1..db3 (127.0.0.11-13, 21-23, 31-33)
ADDRESS = "127.0.0.77"
PORT = 3306
ENDPOINT = "rds-like.mysqlrepl.test"  # certificate CN (§4: "the DB instance endpoint as the CN")

ADMIN_USER = "rdsmaster"
ADMIN_HOST = "%"
ADMIN_PASSWORD = "Rds-m4ster_pw_5e1f0a"
DEFINER = "rdsadmin"  # @localhost, locked, ALL: RDS's own definer (§1, §6.4)
BINLOG_BASENAME = "mysql-bin-changelog"  # §1 rds_next_master_log: mysql-bin-changelog.012345
HEARTBEAT_EVENT = "rds_emulated_heartbeat"
HEARTBEAT_INTERVAL = 5  # s; the facts give none
MAX_RETENTION_HOURS = 168  # §1: max 168 for RDS MySQL (the Troubleshooting page says 720)
MAX_DELAY = 86400  # §1: 'source delay' / 'target delay' <= 86400
DROPIN = "40-rds-like.cnf"

# §1 "Master user, RDS for MariaDB" (10.11: no SHOW CREATE ROUTINE), in MariaDB's spelling;
# "grant option" is WITH GRANT OPTION, "reload" is left out unless grant_reload (module doc)
ADMIN_PRIVILEGES = (
    "ALTER", "ALTER ROUTINE", "CREATE", "CREATE ROUTINE", "CREATE TEMPORARY TABLES", "CREATE USER",
    "CREATE VIEW", "DELETE", "DROP", "EVENT", "EXECUTE", "INDEX", "INSERT", "LOCK TABLES", "PROCESS",
    "REFERENCES", "REPLICATION CLIENT", "REPLICATION SLAVE", "SELECT", "SHOW DATABASES", "SHOW VIEW",
    "TRIGGER", "UPDATE",
)

# name -> parameter list, as installed (RDS for MariaDB, §1)
PROCEDURES = {
    "rds_set_configuration": "IN name VARCHAR(100), IN value INT",
    "rds_show_configuration": "",
    "rds_set_external_master": (
        "IN host_name VARCHAR(255), IN host_port INT, IN replication_user_name VARCHAR(128), "
        "IN replication_user_password TEXT, IN mysql_binary_log_file_name VARCHAR(255), "
        "IN mysql_binary_log_file_location BIGINT UNSIGNED, IN ssl_encryption TINYINT"
    ),
    "rds_set_external_master_gtid": (
        "IN host_name VARCHAR(255), IN host_port INT, IN replication_user_name VARCHAR(128), "
        "IN replication_user_password TEXT, IN gtid VARCHAR(4096), IN ssl_encryption TINYINT"
    ),
    "rds_start_replication": "",
    "rds_stop_replication": "",
    "rds_reset_external_master": "",
    "rds_skip_repl_error": "",
    "rds_next_master_log": "IN curr_master_log INT UNSIGNED",
    "rds_kill": "IN processID BIGINT UNSIGNED",
    "rds_kill_query": "IN queryID BIGINT UNSIGNED",
    "rds_kill_query_id": "IN queryID BIGINT UNSIGNED",
    "rds_replica_status": "",
    "rds_import_binlog_ssl_material": "IN ssl_material MEDIUMTEXT",
    "rds_remove_binlog_ssl_material": "",
}
SSL_MATERIAL_PROCEDURES = ("rds_import_binlog_ssl_material", "rds_remove_binlog_ssl_material")

CONFIGURATION_ROWS = (
    ("binlog retention hours", None,
     "binlog retention hours specifies the duration in hours before binary logs are automatically deleted."),
    ("source delay", "0",
     "source delay specifies replication delay in seconds between current instance and its master."),
    ("target delay", "0",
     "target delay specifies replication delay in seconds between current instance and its future "
     "read-replica."),
)

# messages (§1 quotes the first; the others are the emulation's wording)
MSG_NOT_CONFIGURED_STOP = ("You can't stop replication because the replica isn't configured. "
                           "First call mysql.rds_set_external_master.")
MSG_NOT_CONFIGURED_START = ("You can't start replication because the replica isn't configured. "
                            "First call mysql.rds_set_external_master.")
MSG_INVALID_ARGUMENTS = "Invalid arguments"

TABLES_DDL = (
    """CREATE TABLE mysql.rds_configuration (
        name VARCHAR(100) NOT NULL,
        value VARCHAR(100) DEFAULT NULL,
        description VARCHAR(300) NOT NULL,
        PRIMARY KEY (name)) ENGINE=InnoDB""",
    """CREATE TABLE mysql.rds_history (
        action_timestamp TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        called_by_user VARCHAR(352) NOT NULL,
        action VARCHAR(20) NOT NULL,
        mysql_version VARCHAR(50) NOT NULL,
        master_host VARCHAR(255) DEFAULT NULL,
        master_port INT DEFAULT NULL,
        master_user VARCHAR(128) DEFAULT NULL,
        master_log_file VARCHAR(255) DEFAULT NULL,
        master_log_pos BIGINT UNSIGNED DEFAULT NULL,
        master_ssl TINYINT DEFAULT NULL,
        master_gtid VARCHAR(4096) DEFAULT NULL) ENGINE=InnoDB""",
    """CREATE TABLE mysql.rds_replication_status (
        action_timestamp TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        called_by_user VARCHAR(352) NOT NULL,
        action VARCHAR(20) NOT NULL,
        mysql_version VARCHAR(50) NOT NULL,
        master_host VARCHAR(255) DEFAULT NULL,
        master_port INT DEFAULT NULL,
        replication_log_file VARCHAR(255) DEFAULT NULL,
        replication_stop_point BIGINT UNSIGNED DEFAULT NULL,
        replication_gtid VARCHAR(4096) DEFAULT NULL) ENGINE=InnoDB""",
    """CREATE TABLE mysql.rds_heartbeat2 (
        id INT NOT NULL,
        value BIGINT DEFAULT NULL,
        PRIMARY KEY (id)) ENGINE=InnoDB""",
    """CREATE TABLE mysql.rds_sysinfo (
        name VARCHAR(25) NOT NULL,
        value VARCHAR(50) DEFAULT NULL,
        PRIMARY KEY (name)) ENGINE=InnoDB""",
)
# the emulation's own: where rds_import_binlog_ssl_material put the PEM files (paths, not contents)
SSL_MATERIAL_DDL = """CREATE TABLE mysql.rds_binlog_ssl_material (
        id TINYINT NOT NULL,
        ssl_ca VARCHAR(512) NOT NULL,
        ssl_cert VARCHAR(512) NOT NULL,
        ssl_key VARCHAR(512) NOT NULL,
        imported_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        PRIMARY KEY (id)) ENGINE=InnoDB"""
TABLES = ("rds_configuration", "rds_history", "rds_replication_status", "rds_heartbeat2", "rds_sysinfo",
          "rds_binlog_ssl_material")


def files_dir(server):
    """The server's ``secure_file_priv`` (0700): the imported SSL material lives in its ``ssl/``."""
    return server.root / "rdsdbdata"


def tls_dir(server):
    return server.root / "rds-tls"


# ---------------------------------------------------------------------------
# throwaway CA (§4: the test CA stands in for global-bundle.pem)
# ---------------------------------------------------------------------------


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, data, mode):
    path = pathlib.Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)
    return path


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(directory, cn="mysqlrepl RDS-like test CA"):
    """A CA in ``directory`` (ca.crt, ca.key 0600). Returns {"ca": path, "ca_key": path}."""
    directory = pathlib.Path(directory)
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return {
        "ca": _write(directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644),
        "ca_key": _write(directory / "ca.key", _key_pem(key), 0o600),
    }


def issue_cert(ca, directory, stem, cn, dns_names=(), ip_addresses=(), owner=None):
    """
    A leaf certificate signed by ``ca`` (from :func:`make_ca`) for server and client use
    (serverAuth + clientAuth): ``<stem>.crt`` and ``<stem>.key`` (0600, chowned to ``owner``,
    an OS user name, when given). Returns {"cert": path, "key": path}.
    """
    directory = pathlib.Path(directory)
    ca_cert = x509.load_pem_x509_certificate(pathlib.Path(ca["ca"]).read_bytes())
    ca_key = serialization.load_pem_private_key(pathlib.Path(ca["ca_key"]).read_bytes(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    sans = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    paths = {
        "cert": _write(directory / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644),
        "key": _write(directory / f"{stem}.key", _key_pem(key), 0o600),
    }
    if owner:
        pw = pwd.getpwnam(owner)
        os.chown(paths["key"], pw.pw_uid, pw.pw_gid)
    return paths


def ssl_material_json(ca_path, cert_path, key_path, aws_style=True):
    """
    The ``ssl_material`` argument of rds_import_binlog_ssl_material (§1). ``aws_style``: like
    AWS's own example, raw newlines inside the strings and a literal ``\\n`` after each END
    line (not strict JSON); else strict JSON (newlines escaped).
    """
    pems = {k: pathlib.Path(p).read_text(encoding="ascii").strip() for k, p in
            (("ssl_ca", ca_path), ("ssl_cert", cert_path), ("ssl_key", key_path))}
    if aws_style:
        return "{" + ",".join(f'"{k}":"{v}\\n"' for k, v in pems.items()) + "}"
    import json  # pylint: disable=import-outside-toplevel

    return json.dumps({k: v + "\n" for k, v in pems.items()})


# ---------------------------------------------------------------------------
# server configuration (read at start)
# ---------------------------------------------------------------------------


def write_config(server, tls=None, binlog_format="ROW", gtid_domain_id=None, extra=None):
    """
    Write the RDS-like drop-in ``conf.d/40-rds-like.cnf`` and create the 0700
    ``secure_file_priv`` directory (owned by the server's OS user). ``tls``:
    {"ca", "cert", "key"} paths (the key readable by the server's OS user) or None.
    ``extra``: more ``[mysqld]`` lines {option: value}. Takes effect at the next
    (re)start. Returns the drop-in's path.
    """
    pw = pwd.getpwnam(server.os_user)
    fdir = files_dir(server)
    for path in (fdir, fdir / "ssl"):
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    options = {
        "log_bin": BINLOG_BASENAME,
        "log_slave_updates": "ON",
        "binlog_format": binlog_format,
        "sync_binlog": 1,
        "innodb_flush_log_at_trx_commit": 1,
        "event_scheduler": "ON",
        "performance_schema": "ON",  # the procedures read its replication_* tables
        "secure_file_priv": f"{fdir}/",
        "relay_log": "relaylog",
    }
    if gtid_domain_id is not None:
        options["gtid_domain_id"] = int(gtid_domain_id)
    if tls:
        options.update({"ssl_ca": tls["ca"], "ssl_cert": tls["cert"], "ssl_key": tls["key"]})
    options.update(extra or {})
    text = "# RDS-like server (tests/support/rds.py)\n[mysqld]\n" + "".join(
        f"{k} = {v}\n" for k, v in options.items())
    path = server.conf_d / DROPIN
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o644)
    return path


# ---------------------------------------------------------------------------
# SQL of the emulation
# ---------------------------------------------------------------------------


def _q(value):
    """SQL string literal (for constants baked into the procedure bodies)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def password_hash(password):
    """mysql_native_password hash (``*HEX``): the clear text never goes to the server."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode("utf-8")).digest()).hexdigest().upper()


# -- pieces shared by the bodies -------------------------------------------------------------

# sql_log_bin off like RDS's body (-> 1694 inside a transaction), restored on any error
_LOG_BIN_DECL = """
    DECLARE v_old_log_bin INT DEFAULT @@session.sql_log_bin;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        SET @rds_cmd = NULL;
        SET @@session.sql_log_bin = v_old_log_bin;
        RESIGNAL;
    END;"""
_LOG_BIN_OFF = "SET @@session.sql_log_bin = 0;"
# both, for bodies with no other declarations
_LOG_BIN_OFF_ALL = _LOG_BIN_DECL + "\n    " + _LOG_BIN_OFF

_LOG_BIN_RESTORE = "SET @@session.sql_log_bin = v_old_log_bin;"

# run @rds_cmd (dynamic SQL: CHANGE MASTER options only take literals, §6.2)
_EXEC_CMD = """
    PREPARE rds_stmt FROM @rds_cmd;
    SET @rds_cmd = NULL;
    EXECUTE rds_stmt;
    DEALLOCATE PREPARE rds_stmt;"""

_CONFIGURED = """(SELECT COUNT(*) FROM performance_schema.replication_connection_configuration
                  WHERE CHANNEL_NAME = '' AND HOST <> '') > 0"""

_SQL_STATE = """(SELECT c.SERVICE_STATE FROM performance_schema.replication_applier_status_by_coordinator c
                 WHERE c.CHANNEL_NAME = '')"""
_SQL_ERRNO = """(SELECT c.LAST_ERROR_NUMBER FROM performance_schema.replication_applier_status_by_coordinator c
                 WHERE c.CHANNEL_NAME = '')"""
_SQL_IDLE = """(SELECT COUNT(*) FROM information_schema.PROCESSLIST p
                WHERE p.COMMAND = 'Slave_SQL' AND p.STATE LIKE 'Slave has read all relay log%') > 0"""
_IO_RUNNING = """(SELECT COUNT(*) FROM information_schema.PROCESSLIST p WHERE p.COMMAND = 'Slave_IO') > 0"""


def _ssl_clause(ssl_material):
    """SQL expression: the MASTER_SSL_* options of CHANGE MASTER (every one, always: mariadb-facts)."""
    off = ("', MASTER_SSL=0, MASTER_SSL_CA='''', MASTER_SSL_CAPATH='''', MASTER_SSL_CERT='''', "
           "MASTER_SSL_KEY='''', MASTER_SSL_CIPHER='''', MASTER_SSL_CRL='''', MASTER_SSL_CRLPATH='''', "
           "MASTER_SSL_VERIFY_SERVER_CERT=0'")
    if not ssl_material:
        on = off.replace("MASTER_SSL=0", "MASTER_SSL=1", 1)
        return f"IF(ssl_encryption, {on}, {off})"
    on = ("CONCAT(', MASTER_SSL=1, MASTER_SSL_CA=', QUOTE(IFNULL(v_ca, '')), ', MASTER_SSL_CAPATH='''', "
          "MASTER_SSL_CERT=', QUOTE(IFNULL(v_cert, '')), ', MASTER_SSL_KEY=', QUOTE(IFNULL(v_key, '')), "
          "', MASTER_SSL_CIPHER='''', MASTER_SSL_CRL='''', MASTER_SSL_CRLPATH='''', "
          "MASTER_SSL_VERIFY_SERVER_CERT=0')")
    return f"IF(ssl_encryption, {on}, {off})"


def _ssl_decl(ssl_material):
    return "DECLARE v_ca, v_cert, v_key VARCHAR(512) DEFAULT NULL;" if ssl_material else ""


def _ssl_lookup(ssl_material):
    if not ssl_material:
        return ""
    return "\n    ".join(
        f"SET v_{k} = (SELECT m.ssl_{k} FROM mysql.rds_binlog_ssl_material m WHERE m.id = 1);"
        for k in ("ca", "cert", "key"))


def _set_master_body(gtid, ssl_material, connect_retry):
    """Body of rds_set_external_master(_gtid): validate, CHANGE MASTER (dynamic), history rows."""
    ident_ok = "'^[A-Za-z0-9_.%@-]+$'"
    host_ok = "'^[A-Za-z0-9_.:-]+$'"
    file_ok = "'^[A-Za-z0-9_.-]+$'"
    checks = [
        "host_name IS NULL", f"host_name NOT REGEXP {host_ok}",
        "host_port IS NULL", "host_port < 1", "host_port > 65535",
        "replication_user_name IS NULL", f"replication_user_name NOT REGEXP {ident_ok}",
        "replication_user_password IS NULL", "ssl_encryption IS NULL",
    ]
    if gtid:
        checks += ["gtid IS NULL"]
        position = "', MASTER_USE_GTID=slave_pos'"
        gtid_stmt = "SET GLOBAL gtid_slave_pos = gtid;"
        hist_cols = "master_gtid"
        hist_vals = "gtid"
        status_cols = "replication_gtid"
    else:
        checks += ["mysql_binary_log_file_name IS NULL", f"mysql_binary_log_file_name NOT REGEXP {file_ok}",
                   "mysql_binary_log_file_location IS NULL"]
        position = ("CONCAT(', MASTER_LOG_FILE=', QUOTE(mysql_binary_log_file_name), "
                    "', MASTER_LOG_POS=', mysql_binary_log_file_location, ', MASTER_USE_GTID=no')")
        gtid_stmt = ""
        hist_cols = "master_log_file, master_log_pos"
        hist_vals = "mysql_binary_log_file_name, mysql_binary_log_file_location"
        status_cols = "replication_log_file, replication_stop_point"
    invalid = " OR ".join(checks)
    return f"""
proc: BEGIN
    {_ssl_decl(ssl_material)}
    {_LOG_BIN_DECL.strip()}
    {_LOG_BIN_OFF}
    {_ssl_lookup(ssl_material)}
    IF {invalid} THEN
        {_LOG_BIN_RESTORE}
        SELECT {_q(MSG_INVALID_ARGUMENTS)} AS Message;
        LEAVE proc;
    END IF;
    {gtid_stmt}
    SET @rds_cmd = CONCAT('CHANGE MASTER TO MASTER_HOST=', QUOTE(host_name),
        ', MASTER_PORT=', host_port,
        ', MASTER_USER=', QUOTE(replication_user_name),
        ', MASTER_PASSWORD=', QUOTE(replication_user_password),
        {position},
        {_ssl_clause(ssl_material)},
        ', MASTER_CONNECT_RETRY={int(connect_retry)}');
    {_EXEC_CMD.strip()}
    {_LOG_BIN_RESTORE}
    INSERT INTO mysql.rds_history (called_by_user, action, mysql_version, master_host, master_port,
                                   master_user, master_ssl, {hist_cols})
        VALUES (USER(), 'set master', VERSION(), host_name, host_port, replication_user_name,
                ssl_encryption, {hist_vals});
    INSERT INTO mysql.rds_replication_status (called_by_user, action, mysql_version, master_host,
                                              master_port, {status_cols})
        VALUES (USER(), 'set master', VERSION(), host_name, host_port, {hist_vals});
END proc"""


def _proc_bodies(ssl_material, connect_retry, skip_wait, max_retention_hours):
    """{procedure name: body} (the text after the parameter list)."""
    wait_steps = max(1, int(round(skip_wait / 0.1)))
    bodies = {}

    bodies["rds_set_configuration"] = f"""
proc: BEGIN
    DECLARE v_sql_state VARCHAR(3) DEFAULT NULL;
    IF name = 'binlog retention hours' THEN
        IF value IS NOT NULL AND (value < 1 OR value > {int(max_retention_hours)}) THEN
            -- emulation's wording
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT =
                'For binlog retention hours the value must be between 1 and {int(max_retention_hours)}';
        END IF;
        UPDATE mysql.rds_configuration c SET c.value = value WHERE c.name = name;
        SET GLOBAL binlog_expire_logs_seconds = IFNULL(value, 0) * 3600;
    ELSEIF name IN ('source delay', 'target delay') THEN
        IF value IS NULL OR value < 0 OR value > {MAX_DELAY} THEN
            -- emulation's wording
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'The delay value must be between 0 and {MAX_DELAY}';
        END IF;
        IF name = 'source delay' AND {_CONFIGURED} THEN
            -- like rds_set_source_delay: CHANGE MASTER TO MASTER_DELAY (SQL thread stopped meanwhile)
            SET v_sql_state = {_SQL_STATE};
            IF v_sql_state = 'ON' THEN
                STOP SLAVE SQL_THREAD;
            END IF;
            SET @rds_cmd = CONCAT('CHANGE MASTER TO MASTER_DELAY=', value);
            {_EXEC_CMD.strip()}
            IF v_sql_state = 'ON' THEN
                START SLAVE SQL_THREAD;
            END IF;
        END IF;
        UPDATE mysql.rds_configuration c SET c.value = value WHERE c.name = name;
    ELSE
        -- emulation's wording
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Invalid configuration name';
    END IF;
END proc"""

    bodies["rds_show_configuration"] = """
BEGIN
    SELECT c.name, c.value, c.description FROM mysql.rds_configuration c ORDER BY c.name;
END"""

    bodies["rds_set_external_master"] = _set_master_body(False, ssl_material, connect_retry)
    bodies["rds_set_external_master_gtid"] = _set_master_body(True, ssl_material, connect_retry)

    bodies["rds_start_replication"] = f"""
BEGIN
    DECLARE i INT DEFAULT 0;
    IF NOT {_CONFIGURED} THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = {_q(MSG_NOT_CONFIGURED_START)};
    END IF;
    START SLAVE;
    WHILE i < 20 AND NOT ({_SQL_STATE} = 'ON' AND {_IO_RUNNING}) DO
        DO SLEEP(0.1);
        SET i = i + 1;
    END WHILE;
    INSERT INTO mysql.rds_history (called_by_user, action, mysql_version)
        VALUES (USER(), 'start slave', VERSION());
    -- emulation's wording
    SELECT IF({_SQL_STATE} = 'ON' AND {_IO_RUNNING}, 'Slave running normally.',
              'Slave has encountered an error. Call mysql.rds_replica_status to see the error.') AS Message;
END"""

    bodies["rds_stop_replication"] = f"""
BEGIN
    IF NOT {_CONFIGURED} THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = {_q(MSG_NOT_CONFIGURED_STOP)};
    END IF;
    STOP SLAVE;
    INSERT INTO mysql.rds_history (called_by_user, action, mysql_version)
        VALUES (USER(), 'stop slave', VERSION());
    -- emulation's wording
    SELECT 'Slave is down or disabled' AS Message;
END"""

    bodies["rds_reset_external_master"] = f"""
BEGIN
    {_LOG_BIN_OFF_ALL.strip()}
    IF {_CONFIGURED} THEN
        STOP SLAVE;
        RESET SLAVE ALL;
    END IF;
    {_LOG_BIN_RESTORE}
    INSERT INTO mysql.rds_history (called_by_user, action, mysql_version)
        VALUES (USER(), 'reset master', VERSION());
END"""

    bodies["rds_skip_repl_error"] = f"""
proc: BEGIN
    DECLARE i INT DEFAULT 0;
    DECLARE v_state VARCHAR(3) DEFAULT {_SQL_STATE};
    DECLARE v_errno INT DEFAULT IFNULL({_SQL_ERRNO}, 0);
    IF v_state IS NULL OR NOT {_CONFIGURED} OR (v_state = 'OFF' AND v_errno = 0) THEN
        -- AWS: "an error message stating that the replica is down or disabled"
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Slave is down or disabled';
    END IF;
    IF v_state = 'ON' THEN
        -- no SQL error: nothing to skip (emulation's wording)
        SELECT 'Slave is running normally. No errors to skip.' AS Message;
        LEAVE proc;
    END IF;
    SET GLOBAL sql_slave_skip_counter = 1;
    START SLAVE;
    -- the next event may fail too: watch until the SQL thread stops again (then warn, as RDS
    -- does) or has applied all it has, for skip_wait s at most
    WHILE i < {wait_steps} AND NOT ({_SQL_STATE} = 'OFF' AND IFNULL({_SQL_ERRNO}, 0) <> 0)
          AND NOT {_SQL_IDLE} DO
        DO SLEEP(0.1);
        SET i = i + 1;
    END WHILE;
    SELECT 'Statement in error has been skipped' AS Message;
    IF {_SQL_STATE} = 'OFF' AND IFNULL({_SQL_ERRNO}, 0) <> 0 THEN
        SIGNAL SQLSTATE '01000' SET MESSAGE_TEXT =
            'Slave has encountered a new error. Please use SHOW SLAVE STATUS to see the error.';
    END IF;
END proc"""

    bodies["rds_next_master_log"] = f"""
BEGIN
    -- The live Master_Log_File is out of SQL's reach (SHOW SLAVE STATUS cannot be read into
    -- variables, master.info is not world-readable so LOAD_FILE gives NULL): the base name comes
    -- from the file rds_set_external_master was given, the index from the caller (as on RDS).
    DECLARE v_file VARCHAR(255) DEFAULT (
        SELECT s.replication_log_file FROM mysql.rds_replication_status s
        WHERE s.action = 'set master' ORDER BY s.action_timestamp DESC LIMIT 1);
    DECLARE v_ext VARCHAR(64) DEFAULT SUBSTRING_INDEX(v_file, '.', -1);
    IF NOT {_CONFIGURED} THEN
        -- emulation's wording (after the documented one of rds_stop_replication)
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT =
            'You can''t change the master log because the replica isn''t configured. '
            'First call mysql.rds_set_external_master.';
    END IF;
    IF v_file IS NULL OR (SELECT c.USING_GTID FROM performance_schema.replication_connection_configuration c
                          WHERE c.CHANNEL_NAME = '') <> 'NO' THEN
        -- emulation's wording
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT =
            'rds_next_master_log needs file/position replication: first call mysql.rds_set_external_master.';
    END IF;
    IF curr_master_log IS NULL THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Invalid argument: curr_master_log';
    END IF;
    STOP SLAVE;
    SET @rds_cmd = CONCAT('CHANGE MASTER TO MASTER_LOG_FILE=',
        QUOTE(CONCAT(LEFT(v_file, LENGTH(v_file) - LENGTH(v_ext)),
                     LPAD(curr_master_log + 1, GREATEST(6, LENGTH(v_ext)), '0'))),
        ', MASTER_LOG_POS=4');
    {_EXEC_CMD.strip()}
    START SLAVE;
END"""

    protected = "('rdsadmin', 'system user', 'event_scheduler')"
    for name, kill, column in (("rds_kill", "KILL CONNECTION", "ID"), ("rds_kill_query", "KILL QUERY", "ID"),
                               ("rds_kill_query_id", "KILL QUERY ID", "QUERY_ID")):
        arg = "processID" if name == "rds_kill" else "queryID"
        bodies[name] = f"""
BEGIN
    IF (SELECT COUNT(*) FROM information_schema.PROCESSLIST p
        WHERE p.{column} = {arg} AND p.USER IN {protected}) > 0 THEN
        -- RDS's own threads are not the master user's (emulation's wording: MariaDB's 1095)
        SET @rds_msg = CONCAT('You are not owner of thread ', {arg});
        SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1095, MESSAGE_TEXT = @rds_msg;
    END IF;
    {kill} {arg};
END"""

    bodies["rds_replica_status"] = """
BEGIN
    SHOW REPLICA STATUS;
END"""

    if ssl_material:
        def extract(key):
            # the value after "<key>": up to the next double quote; literal \\n (JSON escape) -> newline
            return (f"""REPLACE(REPLACE(SUBSTRING_INDEX(SUBSTRING(
                SUBSTRING(ssl_material, LOCATE('"{key}"', ssl_material) + {len(key) + 2}),
                LOCATE('"', SUBSTRING(ssl_material, LOCATE('"{key}"', ssl_material) + {len(key) + 2})) + 1),
                '"', 1), '\\\\n', '\\n'), '\\\\/', '/')""")

        write_files = []
        for key in ("ssl_ca", "ssl_cert", "ssl_key"):
            write_files.append(f"""
    SET @rds_cmd = CONCAT('SELECT ', QUOTE(v_{key}), ' INTO DUMPFILE ',
                          QUOTE(CONCAT(@@global.secure_file_priv, 'ssl/', v_id, '-{key}.pem')));
    {_EXEC_CMD.strip()}""")
        bodies["rds_import_binlog_ssl_material"] = f"""
BEGIN
    DECLARE v_id VARCHAR(32) DEFAULT CAST(UUID_SHORT() AS CHAR);
    DECLARE v_ssl_ca, v_ssl_cert, v_ssl_key MEDIUMTEXT DEFAULT NULL;
    {_LOG_BIN_DECL.strip()}
    {_LOG_BIN_OFF}
    IF ssl_material IS NULL OR LOCATE('"ssl_ca"', ssl_material) = 0 OR LOCATE('"ssl_cert"', ssl_material) = 0
       OR LOCATE('"ssl_key"', ssl_material) = 0 THEN
        -- emulation's wording
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Invalid ssl_material: ssl_ca, ssl_cert and ssl_key are required';
    END IF;
    SET v_ssl_ca = {extract("ssl_ca")};
    SET v_ssl_cert = {extract("ssl_cert")};
    SET v_ssl_key = {extract("ssl_key")};
    IF LOCATE('-----BEGIN', v_ssl_ca) = 0 OR LOCATE('-----BEGIN', v_ssl_cert) = 0
       OR LOCATE('-----BEGIN', v_ssl_key) = 0 THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Invalid ssl_material: not PEM';
    END IF;
    {"".join(write_files).strip()}
    REPLACE INTO mysql.rds_binlog_ssl_material (id, ssl_ca, ssl_cert, ssl_key)
        VALUES (1, CONCAT(@@global.secure_file_priv, 'ssl/', v_id, '-ssl_ca.pem'),
                   CONCAT(@@global.secure_file_priv, 'ssl/', v_id, '-ssl_cert.pem'),
                   CONCAT(@@global.secure_file_priv, 'ssl/', v_id, '-ssl_key.pem'));
    {_LOG_BIN_RESTORE}
END"""
        bodies["rds_remove_binlog_ssl_material"] = f"""
BEGIN
    {_LOG_BIN_OFF_ALL.strip()}
    DELETE FROM mysql.rds_binlog_ssl_material;
    {_LOG_BIN_RESTORE}
END"""
    return bodies


def _heartbeat_event(interval):
    """§1: the literal-valued INSERT ... ON DUPLICATE KEY UPDATE, in STATEMENT format, binlogged."""
    return f"""CREATE DEFINER=`{DEFINER}`@`localhost` EVENT mysql.{HEARTBEAT_EVENT}
ON SCHEDULE EVERY {int(interval)} SECOND
COMMENT 'RDS-like heartbeat (tests/support/rds.py)'
DO BEGIN
    DECLARE v BIGINT DEFAULT FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000);
    SET @@session.binlog_format = 'STATEMENT';
    SET @rds_hb = CONCAT('INSERT INTO mysql.rds_heartbeat2(id, value) values (1,', v,
                         ') ON DUPLICATE KEY UPDATE value = ', v);
    PREPARE rds_hb_stmt FROM @rds_hb;
    EXECUTE rds_hb_stmt;
    DEALLOCATE PREPARE rds_hb_stmt;
END"""


# ---------------------------------------------------------------------------
# install / uninstall
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class RdsLike:
    """An installed RDS-like server: the master user's login and what install() put in place."""

    server: mariadb.MariaDBServer
    admin_user: str
    admin_password: str
    admin_host: str
    procedures: tuple
    heartbeat_interval: int
    endpoint: str = ENDPOINT
    tls: dict = None  # {"ca", "cert", "key", ...} paths (server side) or None

    @property
    def address(self):
        return self.server.address

    @property
    def port(self):
        return self.server.port

    def connect_admin(self, tls=True, **kw):
        """PyMySQL connection as the master user over TCP (TLS verified against the test CA when ``tls``)."""
        params = {"host": self.server.address, "port": self.server.port, "user": self.admin_user,
                  "password": self.admin_password, "autocommit": True, "connect_timeout": 10,
                  "charset": "utf8mb4", "cursorclass": pymysql.cursors.DictCursor}
        if tls:
            if not self.tls:
                raise RuntimeError(f"{self.server.name}: no TLS configured")
            params.update({"ssl_ca": str(self.tls["ca"]), "ssl_verify_cert": True})
        else:
            params["ssl_disabled"] = True
        params.update(kw)
        return pymysql.connect(**params)

    def call(self, procedure, *args, tls=True):
        """``CALL mysql.<procedure>(args)`` as the master user: every result set, each a list of dicts."""
        conn = self.connect_admin(tls=tls)
        try:
            return call(conn, procedure, *args)
        finally:
            conn.close()


def call(conn, procedure, *args):
    """``CALL mysql.<procedure>(%s, ...)`` on ``conn`` (autocommit!): every result set, each a list of rows."""
    placeholders = ", ".join(["%s"] * len(args))
    results = []
    with conn.cursor() as cur:
        cur.execute(f"CALL mysql.{procedure}({placeholders})", args)
        while True:
            if cur.description:
                results.append(list(cur.fetchall()))
            if not cur.nextset():
                break
    return results


def _session(server):
    """Root over the socket, binlog off for the session: install's DDL never reaches a replica."""
    conn = server.connect(cursorclass=pymysql.cursors.DictCursor)
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_log_bin = 0")
        # a master user's open transaction on an rds_* table must not hang install() for a day
        cur.execute("SET SESSION lock_wait_timeout = 60")
    return conn


def _run(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall()) if cur.description else []


def _load_time_zones(server, conn):
    """§3: RDS ships zone data; load it once, without binlog."""
    if _run(conn, "SELECT COUNT(*) AS n FROM mysql.time_zone_name")[0]["n"]:
        return False
    gen = subprocess.run(["mariadb-tzinfo-to-sql", "--skip-write-binlog", "/usr/share/zoneinfo"],
                         capture_output=True, check=True, timeout=120, stdin=subprocess.DEVNULL)
    load = subprocess.run(["mariadb", f"--socket={server.socket}", "--user=root", "mysql"],
                          input=gen.stdout, capture_output=True, check=False, timeout=300)
    if load.returncode != 0:
        raise RuntimeError(f"{server.name}: loading time zones failed: {load.stderr.decode()[-500:]}")
    return True


def _server_tls(server, conn):
    """{"ca", "cert", "key"[, "ca_key"]} the running server uses, or None without TLS."""
    row = _run(conn, "SELECT @@ssl_ca AS ca, @@ssl_cert AS cert, @@ssl_key AS `key`")[0]
    if not row["ca"] or not row["cert"]:
        return None
    tls = {k: pathlib.Path(v) for k, v in row.items() if v}
    ca_key = tls_dir(server) / "ca.key"
    if ca_key.exists() and tls["ca"] == tls_dir(server) / "ca.crt":
        tls["ca_key"] = ca_key
    return tls


def _cert_cn(path):
    cert = x509.load_pem_x509_certificate(pathlib.Path(path).read_bytes())
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def _reset_replication(conn):
    """Forget any external master: threads stopped, RESET SLAVE ALL, gtid_slave_pos and filters empty."""
    _run(conn, "STOP SLAVE")
    _run(conn, "RESET SLAVE ALL")
    _run(conn, "SET GLOBAL gtid_slave_pos = ''")
    _run(conn, "SET GLOBAL sql_slave_skip_counter = 0")
    _run(conn, "SET GLOBAL replicate_wild_ignore_table = ''")


def _clear_ssl_files(server):
    ssl = files_dir(server) / "ssl"
    if ssl.is_dir():
        for path in ssl.iterdir():
            path.unlink()


def install(server, admin_user=ADMIN_USER, admin_password=ADMIN_PASSWORD, admin_host=ADMIN_HOST,
            ssl_material=True, heartbeat_interval=HEARTBEAT_INTERVAL, connect_retry=60, skip_wait=5.0,
            max_retention_hours=MAX_RETENTION_HOURS, trust_function_creators=False, grant_reload=False,
            time_zones=True, endpoint=None, tls=None):
    """
    Make a running ``server`` (with :func:`write_config`'s drop-in) RDS-like, from any
    state: the definer ``rdsadmin``@``localhost`` and the master user
    ``admin_user``@``admin_host`` are dropped and re-created (the password as a hash),
    the rds_* tables re-created with their defaults, every ``mysql.rds_%`` procedure
    dropped and ours created, the heartbeat event re-created, the external master
    forgotten (RESET SLAVE ALL, gtid_slave_pos ''), imported SSL material deleted,
    ``binlog_expire_logs_seconds`` 0, ``log_bin_trust_function_creators`` per
    ``trust_function_creators``. None of it is binlogged. User data and other
    accounts are left alone. ``ssl_material=False`` leaves out
    rds_import_binlog_ssl_material / rds_remove_binlog_ssl_material;
    ``connect_retry``: MASTER_CONNECT_RETRY the set procedures give;
    ``skip_wait``: seconds rds_skip_repl_error watches for a next error (it returns as soon as
    the SQL thread has caught up). ``tls`` / ``endpoint`` default to what the running server
    uses (its ssl_* files, its certificate's CN). Returns :class:`RdsLike`.
    """
    heartbeat_interval = int(heartbeat_interval)
    if heartbeat_interval < 1:
        raise ValueError("heartbeat_interval: whole seconds >= 1")
    conn = _session(server)
    try:
        row = _run(conn, "SELECT @@log_bin AS log_bin, @@secure_file_priv AS sfp, @@performance_schema AS ps")[0]
        fdir = f"{files_dir(server)}/"
        if not row["log_bin"] or row["sfp"] != fdir or not row["ps"]:
            raise RuntimeError(f"{server.name}: not started with the RDS-like drop-in (log_bin={row['log_bin']}, "
                               f"secure_file_priv={row['sfp']}): write_config() and (re)start first")
        _run(conn, f"DROP EVENT IF EXISTS mysql.{HEARTBEAT_EVENT}")
        _reset_replication(conn)
        _clear_ssl_files(server)

        # accounts
        _run(conn, f"DROP USER IF EXISTS `{DEFINER}`@`localhost`")
        _run(conn, f"CREATE USER `{DEFINER}`@`localhost` ACCOUNT LOCK")
        _run(conn, f"GRANT ALL PRIVILEGES ON *.* TO `{DEFINER}`@`localhost` WITH GRANT OPTION")
        _run(conn, "DROP USER IF EXISTS %s@%s", (admin_user, admin_host))
        _run(conn, "CREATE USER %s@%s IDENTIFIED BY PASSWORD %s", (admin_user, admin_host,
                                                                   password_hash(admin_password)))
        privileges = ADMIN_PRIVILEGES + (("RELOAD",) if grant_reload else ())
        _run(conn, f"GRANT {', '.join(privileges)} ON *.* TO %s@%s WITH GRANT OPTION", (admin_user, admin_host))

        # tables
        for table in TABLES:
            _run(conn, f"DROP TABLE IF EXISTS mysql.{table}")
        for ddl in TABLES_DDL + ((SSL_MATERIAL_DDL,) if ssl_material else ()):
            _run(conn, ddl)
        for name, value, description in CONFIGURATION_ROWS:
            _run(conn, "INSERT INTO mysql.rds_configuration (name, value, description) VALUES (%s, %s, %s)",
                 (name, value, description))

        # procedures: every mysql.rds_% one goes (the master user may have made some), ours come back
        for r in _run(conn, "SELECT ROUTINE_NAME AS n, ROUTINE_TYPE AS t FROM information_schema.ROUTINES "
                            "WHERE ROUTINE_SCHEMA = 'mysql' AND ROUTINE_NAME LIKE 'rds\\_%'"):
            _run(conn, f"DROP {r['t']} IF EXISTS mysql.`{r['n']}`")
        bodies = _proc_bodies(ssl_material, connect_retry, skip_wait, max_retention_hours)
        names = tuple(n for n in PROCEDURES if ssl_material or n not in SSL_MATERIAL_PROCEDURES)
        for name in names:
            _run(conn, f"CREATE DEFINER=`{DEFINER}`@`localhost` PROCEDURE mysql.{name}({PROCEDURES[name]}) "
                       f"SQL SECURITY DEFINER {bodies[name]}")

        # server settings the procedures and the parameter group own
        _run(conn, "SET GLOBAL binlog_expire_logs_seconds = 0")
        _run(conn, "SET GLOBAL log_bin_trust_function_creators = %s", (1 if trust_function_creators else 0,))
        if time_zones:
            _load_time_zones(server, conn)

        # heartbeat last: its first write comes right away
        _run(conn, _heartbeat_event(heartbeat_interval))
        _run(conn, "SET GLOBAL event_scheduler = ON")
        if tls is None:
            tls = _server_tls(server, conn)
    finally:
        conn.close()
    if endpoint is None:
        endpoint = _cert_cn(tls["cert"]) if tls else ENDPOINT
    return RdsLike(server=server, admin_user=admin_user, admin_password=admin_password, admin_host=admin_host,
                   procedures=names, heartbeat_interval=heartbeat_interval, endpoint=endpoint, tls=tls)


def uninstall(server, admin_user=ADMIN_USER, admin_host=ADMIN_HOST):
    """Undo :func:`install` (the drop-in stays): event, procedures, tables, accounts, external master."""
    conn = _session(server)
    try:
        _run(conn, f"DROP EVENT IF EXISTS mysql.{HEARTBEAT_EVENT}")
        _reset_replication(conn)
        for r in _run(conn, "SELECT ROUTINE_NAME AS n, ROUTINE_TYPE AS t FROM information_schema.ROUTINES "
                            "WHERE ROUTINE_SCHEMA = 'mysql' AND ROUTINE_NAME LIKE 'rds\\_%'"):
            _run(conn, f"DROP {r['t']} IF EXISTS mysql.`{r['n']}`")
        for table in TABLES:
            _run(conn, f"DROP TABLE IF EXISTS mysql.{table}")
        _run(conn, "DROP USER IF EXISTS %s@%s", (admin_user, admin_host))
        _run(conn, f"DROP USER IF EXISTS `{DEFINER}`@`localhost`")
        _run(conn, "SET GLOBAL binlog_expire_logs_seconds = 0")
    finally:
        conn.close()
    _clear_ssl_files(server)


def purge_binary_logs(server):
    """
    RDS's housekeeping (§1, §5): with 'binlog retention hours' NULL, rotate and purge every
    binlog but the current one; with N hours, purge those older than N hours. Returns the
    binlog names purged.
    """
    conn = _session(server)
    try:
        rows = _run(conn, "SELECT value FROM mysql.rds_configuration WHERE name = 'binlog retention hours'")
        hours = rows[0]["value"] if rows else None
        before = [r["Log_name"] for r in _run(conn, "SHOW BINARY LOGS")]
        if hours is None:
            _run(conn, "FLUSH BINARY LOGS")
            current = _run(conn, "SHOW MASTER STATUS")[0]["File"]
            # the previous file goes once its binlog checkpoint moved on (a moment after the flush)
            deadline = time.monotonic() + 10
            while True:
                _run(conn, "PURGE BINARY LOGS TO %s", (current,))
                if len(_run(conn, "SHOW BINARY LOGS")) == 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        else:
            _run(conn, "PURGE BINARY LOGS BEFORE NOW() - INTERVAL %s HOUR", (int(hours),))
        after = {r["Log_name"] for r in _run(conn, "SHOW BINARY LOGS")}
    finally:
        conn.close()
    return [name for name in before if name not in after]


# ---------------------------------------------------------------------------
# one extra server for the tests
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def rds_like_server(base_dir=None, name="rds1", address=ADDRESS, port=PORT, server_id=None,
                    endpoint=ENDPOINT, ip_in_san=True, binlog_format="ROW", gtid_domain_id=None,
                    extra_config=None, **install_kw):
    """
    Start ONE MariaDB (tests/support/mariadb.py) on ``address:port`` under ``base_dir``
    (default: a fresh ``/tmp/mrr-*`` removed afterwards; a given dir must be traversable
    by the server's OS user, which pytest's tmp_path is not), with its own test CA and
    a certificate named ``endpoint`` (CN and SAN; the IP too when ``ip_in_san``),
    :func:`write_config` and :func:`install` (``install_kw``). Yields :class:`RdsLike`
    (``.tls`` = {"ca", "ca_key", "cert", "key"}; :func:`issue_cert` makes more certs
    from it); the server is stopped by PID at the end.
    """
    mariadb.become_subreaper()  # a stopped server must not stay a zombie (tests/support/mariadb.py)
    own_dir = base_dir is None
    if own_dir:
        base_dir = tempfile.mkdtemp(prefix="mrr-", dir="/tmp")  # short: unix socket paths
        os.chmod(base_dir, 0o755)
    if server_id is None:
        server_id = int(address.rsplit(".", 1)[1])
    server = mariadb.MariaDBServer(name, address, port, base_dir, server_id)
    started = False
    try:
        mariadb.check_port_free(address, port)
        server.init()
        tdir = tls_dir(server)
        tls = make_ca(tdir)
        tls.update(issue_cert(tls, tdir, "server", endpoint, dns_names=[endpoint],
                              ip_addresses=[address] if ip_in_san else [], owner=server.os_user))
        write_config(server, tls=tls, binlog_format=binlog_format, gtid_domain_id=gtid_domain_id,
                     extra=extra_config)
        server.start()
        started = True
        info = install(server, endpoint=endpoint, tls=tls, **install_kw)
        yield info
    finally:
        try:
            if started or server.running():
                mariadb.stop_servers([server])
        finally:
            mariadb.reap_zombies(("mariadbd",))
            if own_dir:
                shutil.rmtree(base_dir, ignore_errors=True)


def wait_for(predicate, timeout=30.0, interval=0.2, what="condition"):
    """Poll ``predicate`` until it returns something true; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
