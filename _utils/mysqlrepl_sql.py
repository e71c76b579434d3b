"""
Every SQL statement mysqlrepl sends, in one place.

Functions return ``(sql, args)`` tuples (``args`` is a tuple for PyMySQL's
``%s`` placeholders, or ``None``), chosen from the server's flavor and version
as returned by :func:`parse_version`. Nothing here does I/O.

Values always travel as placeholders, except where the server grammar does
not accept one (account names, REQUIRE SUBJECT), which are quoted with
:func:`quote_string`.

Every statement is a ``%``-format string: the connection layer always formats
it (with an empty tuple when there are no arguments), so a literal ``%`` is
written ``%%``.
"""

import hashlib
import re

MARIADB = "mariadb"
MYSQL = "mysql"


class Version(tuple):
    """``(flavor, (major, minor, patch))`` with helpers."""

    @property
    def flavor(self):
        return self[0]

    @property
    def number(self):
        return self[1]

    @property
    def is_mariadb(self):
        return self[0] == MARIADB


def parse_version(version_string):
    """
    Parse ``SELECT VERSION()`` output.

    ``10.11.19-MariaDB-0+deb12u1`` -> ``Version(("mariadb", (10, 11, 19)))``;
    ``8.0.36`` -> ``Version(("mysql", (8, 0, 36)))``.
    """
    match = re.match(r"^(\d+)\.(\d+)\.(\d+)", version_string or "")
    if not match:
        raise ValueError(f"cannot parse server version {version_string!r}")
    number = tuple(int(x) for x in match.groups())
    flavor = MARIADB if "mariadb" in version_string.lower() else MYSQL
    if flavor == MARIADB and number[0] == 5 and number[1] == 5 and "-10." in version_string:
        # old "5.5.5-10.x.y-MariaDB" replication-compat prefix
        number = tuple(int(x) for x in re.search(r"-(\d+)\.(\d+)\.(\d+)", version_string).groups())
    return Version((flavor, number))


def quote_string(value):
    """
    Quote a string literal for places that take no placeholder (account names,
    REQUIRE SUBJECT); ``%`` is doubled for the driver's formatting.
    """
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'").replace("%", "%%") + "'"


def account(user, host):
    """``'user'@'host'``"""
    return f"{quote_string(user)}@{quote_string(host)}"


def native_password_hash(password):
    """
    mysql_native_password hash, computed client-side so the clear text never
    reaches the server (and so never its binary or general log).
    """
    stage1 = hashlib.sha1(password.encode("utf-8")).digest()
    return "*" + hashlib.sha1(stage1).hexdigest().upper()


# --------------------------------------------------------------------------
# Server inspection
# --------------------------------------------------------------------------

SELECT_VERSION = ("SELECT VERSION() AS version", None)


def global_variables(names):
    """Read several global variables; rows of ``(Variable_name, Value)``."""
    placeholders = ", ".join(["%s"] * len(names))
    return (
        "SELECT VARIABLE_NAME AS name, VARIABLE_VALUE AS value "
        "FROM information_schema.GLOBAL_VARIABLES "
        f"WHERE VARIABLE_NAME IN ({placeholders})",
        tuple(n.upper() for n in names),
    )


def variable_is_read_only(version, names):
    """MariaDB only: which variables cannot be SET GLOBAL (need a restart)."""
    if not version.is_mariadb:
        return None
    placeholders = ", ".join(["%s"] * len(names))
    return (
        "SELECT VARIABLE_NAME AS name, READ_ONLY AS read_only "
        "FROM information_schema.SYSTEM_VARIABLES "
        f"WHERE VARIABLE_NAME IN ({placeholders})",
        tuple(n.upper() for n in names),
    )


def set_global(name, value):
    """``SET GLOBAL name = value`` (name is validated, value is a placeholder)."""
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise ValueError(f"invalid variable name {name!r}")
    return (f"SET GLOBAL {name} = %s", (value,))


def set_read_only(on, lock_wait_timeout=None):
    """
    ``SET GLOBAL read_only``; with ``lock_wait_timeout`` the global read lock it
    takes waits at most that long (MariaDB ``SET STATEMENT ... FOR``).
    """
    stmt = f"SET GLOBAL read_only = {1 if on else 0}"
    if lock_wait_timeout is not None:
        stmt = f"SET STATEMENT lock_wait_timeout={int(lock_wait_timeout)} FOR {stmt}"
    return (stmt, None)


SLAVE_HEARTBEAT_PERIOD = ("SHOW GLOBAL STATUS LIKE 'Slave_heartbeat_period'", None)
SESSION_NO_BINLOG = ("SET SESSION sql_log_bin = 0", None)
SESSION_NO_GENERAL_LOG = ("SET SESSION sql_log_off = 1", None)
FLUSH_SSL = ("FLUSH NO_WRITE_TO_BINLOG SSL", None)
def gtid_position(version):
    """The server's own GTID position: what a replica must reach to be caught up."""
    if version.is_mariadb:
        return ("SELECT @@GLOBAL.gtid_binlog_pos AS pos", None)
    return ("SELECT @@GLOBAL.gtid_executed AS pos", None)


def gtid_state(version):
    """GTID positions under flavor-neutral names (MySQL has one executed set)."""
    if version.is_mariadb:
        return (
            "SELECT @@GLOBAL.gtid_binlog_pos AS binlog_pos, @@GLOBAL.gtid_binlog_state AS binlog_state, "
            "@@GLOBAL.gtid_slave_pos AS slave_pos, @@GLOBAL.gtid_current_pos AS current_pos",
            None,
        )
    return (
        "SELECT @@GLOBAL.gtid_executed AS binlog_pos, @@GLOBAL.gtid_executed AS binlog_state, "
        "@@GLOBAL.gtid_executed AS slave_pos, @@GLOBAL.gtid_executed AS current_pos",
        None,
    )


def set_gtid_slave_pos(pos):
    return ("SET GLOBAL gtid_slave_pos = %s", (pos,))


def master_gtid_wait(version, pos, timeout):
    """Wait until ``pos`` is applied; the result column is 0 when reached (else timeout)."""
    if version.is_mariadb:
        return ("SELECT MASTER_GTID_WAIT(%s, %s) AS result", (pos, float(timeout)))
    return ("SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s) AS result", (pos, float(timeout)))


def show_replica_status(version):
    if version.is_mariadb or version.number < (8, 0, 22):
        return ("SHOW SLAVE STATUS", None)
    return ("SHOW REPLICA STATUS", None)


def start_replica(version):
    if version.is_mariadb or version.number < (8, 0, 22):
        return ("START SLAVE", None)
    return ("START REPLICA", None)


def restart_io_thread(version):
    """Reconnect the replica's IO thread (it reads semi-sync settings at connect)."""
    noun = "SLAVE" if version.is_mariadb or version.number < (8, 0, 22) else "REPLICA"
    return [(f"STOP {noun} IO_THREAD", None), (f"START {noun} IO_THREAD", None)]


def replica_hosts(version):
    """The replicas connected to this server (their ``Server_id``): a two-master pair's
    master is made writable only once the other one replicates from it."""
    if version.is_mariadb or version.number < (8, 0, 22):
        return ("SHOW SLAVE HOSTS", None)
    return ("SHOW REPLICAS", None)


def stop_replica(version):
    if version.is_mariadb or version.number < (8, 0, 22):
        return ("STOP SLAVE", None)
    return ("STOP REPLICA", None)


def _source_options(prefix, host, port, user, ssl_ca, ssl_cert, ssl_key,
                    verify_server_cert, connect_retry, heartbeat_period):
    """``(option, value)`` pairs with every TLS option, spelled with ``prefix`` (MASTER / SOURCE)."""
    return [
        (f"{prefix}_HOST", host), (f"{prefix}_PORT", int(port)), (f"{prefix}_USER", user),
        (f"{prefix}_SSL", 1), (f"{prefix}_SSL_CA", ssl_ca), (f"{prefix}_SSL_CAPATH", ""),
        (f"{prefix}_SSL_CERT", ssl_cert), (f"{prefix}_SSL_KEY", ssl_key),
        (f"{prefix}_SSL_CIPHER", ""), (f"{prefix}_SSL_CRL", ""), (f"{prefix}_SSL_CRLPATH", ""),
        (f"{prefix}_SSL_VERIFY_SERVER_CERT", 1 if verify_server_cert else 0),
        (f"{prefix}_CONNECT_RETRY", int(connect_retry)),
        (f"{prefix}_HEARTBEAT_PERIOD", float(heartbeat_period)),
    ]


def change_master(version, host, port, user, ssl_ca, ssl_cert, ssl_key,
                  verify_server_cert=True, connect_retry=5, heartbeat_period=2,
                  use_gtid="slave_pos", demote=False):
    """
    Point a replica at a master over verified TLS with GTID auto-positioning.

    Every MASTER_SSL_* option is always sent: ``RESET SLAVE ALL`` does not
    forget SSL options in memory, so an omitted option would keep a stale value.

    The password is never part of this statement: a running statement's text, literals
    included, is shown by SHOW PROCESSLIST, information_schema.PROCESSLIST and
    performance_schema to any account with PROCESS (resp. SELECT on
    performance_schema), and MariaDB does not mask it. Send it, only when the
    link is new or the password changed, with :func:`change_master_password`,
    the one statement that carries it. Omitted options keep their value.
    """
    if version.is_mariadb:
        verb, prefix = "CHANGE MASTER TO", "MASTER"
        tail = f", MASTER_USE_GTID = {'slave_pos' if use_gtid == 'slave_pos' else 'current_pos'}"
        if demote:
            tail += ", MASTER_DEMOTE_TO_SLAVE = 1"
    elif version.number < (8, 0, 23):
        # MySQL before 8.0.23: the MASTER_* spelling, auto-position for GTID
        verb, prefix = "CHANGE MASTER TO", "MASTER"
        tail = ", MASTER_AUTO_POSITION = 1, GET_MASTER_PUBLIC_KEY = 1"
    else:
        verb, prefix = "CHANGE REPLICATION SOURCE TO", "SOURCE"
        tail = ", SOURCE_AUTO_POSITION = 1, GET_SOURCE_PUBLIC_KEY = 1"
    opts = _source_options(prefix, host, port, user, ssl_ca, ssl_cert, ssl_key,
                           verify_server_cert, connect_retry, heartbeat_period)
    sql = f"{verb} " + ", ".join(f"{k} = %s" for k, _ in opts) + tail
    return (sql, tuple(v for _, v in opts))


def change_master_password(version, password, heartbeat_period):
    """
    The only statement that carries the replication password, with nothing else
    in it but the heartbeat period (a CHANGE MASTER without MASTER_HEARTBEAT_PERIOD
    resets it to slave_net_timeout/2; every other option keeps its value), so
    the one text a PROCESS holder could catch while it runs (~1.5 ms) is
    ``CHANGE MASTER TO MASTER_PASSWORD = '…', MASTER_HEARTBEAT_PERIOD = …``.
    Sent only for a new link or a changed password (a repointed link keeps the
    one it has).
    """
    if version.is_mariadb or version.number < (8, 0, 23):
        prefix, verb = "MASTER", "CHANGE MASTER TO"
    else:
        prefix, verb = "SOURCE", "CHANGE REPLICATION SOURCE TO"
    return (f"{verb} {prefix}_PASSWORD = %s, {prefix}_HEARTBEAT_PERIOD = %s",
            (password, float(heartbeat_period)))


def reset_replica_all(version):
    if version.is_mariadb or version.number < (8, 0, 22):
        return ("RESET SLAVE ALL", None)
    return ("RESET REPLICA ALL", None)


def normalize_replica_status(row):
    """
    Map a SHOW SLAVE/REPLICA STATUS row to flavor-neutral keys.
    Returns ``None`` when the server has no replication configured.
    """
    if not row or not (row.get("Master_Host") or row.get("Source_Host")):
        return None

    def pick(*keys):
        for key in keys:
            if key in row:
                return row[key]
        return None

    return {
        "host": pick("Master_Host", "Source_Host"),
        "port": int(pick("Master_Port", "Source_Port") or 0),
        "user": pick("Master_User", "Source_User"),
        "io_running": pick("Slave_IO_Running", "Replica_IO_Running"),
        "sql_running": pick("Slave_SQL_Running", "Replica_SQL_Running"),
        "ssl_allowed": pick("Master_SSL_Allowed", "Source_SSL_Allowed"),
        "ssl_ca": pick("Master_SSL_CA_File", "Source_SSL_CA_File") or "",
        "ssl_cert": pick("Master_SSL_Cert", "Source_SSL_Cert") or "",
        "ssl_key": pick("Master_SSL_Key", "Source_SSL_Key") or "",
        "ssl_verify_server_cert": pick("Master_SSL_Verify_Server_Cert",
                                       "Source_SSL_Verify_Server_Cert"),
        "using_gtid": (pick("Using_Gtid") or ("Auto_Position" if pick("Auto_Position") else "No")),
        "connect_retry": int(pick("Connect_Retry") or 0),
        "seconds_behind": pick("Seconds_Behind_Master", "Seconds_Behind_Source"),
        "last_io_errno": int(pick("Last_IO_Errno") or 0),
        "last_io_error": pick("Last_IO_Error") or "",
        "last_sql_errno": int(pick("Last_SQL_Errno") or 0),
        "last_sql_error": pick("Last_SQL_Error") or "",
        "gtid_io_pos": pick("Gtid_IO_Pos") or "",
        "server_id": pick("Master_Server_Id", "Source_Server_Id"),
    }


# --------------------------------------------------------------------------
# Accounts
# --------------------------------------------------------------------------

def select_account(user, host):
    """The account's auth and TLS requirements, same columns on both flavors."""
    return (
        "SELECT User AS user, Host AS host, plugin, authentication_string AS auth, "
        "ssl_type, CAST(x509_subject AS CHAR) AS x509_subject, "
        "CAST(x509_issuer AS CHAR) AS x509_issuer "
        "FROM mysql.user WHERE User = %s AND Host = %s",
        (user, host),
    )


def show_grants(user, host):
    return (f"SHOW GRANTS FOR {account(user, host)}", None)


def require_clause(mode, subject=None, issuer=None):
    """``REQUIRE SSL`` / ``REQUIRE X509`` / ``REQUIRE SUBJECT '...' AND ISSUER '...'``."""
    if mode == "ssl":
        return "REQUIRE SSL"
    if mode == "x509":
        return "REQUIRE X509"
    if mode == "subject":
        if not subject:
            raise ValueError("require=subject needs a subject")
        clause = f"REQUIRE SUBJECT {quote_string(subject)}"
        if issuer:
            clause += f" AND ISSUER {quote_string(issuer)}"
        return clause
    raise ValueError(f"unknown require mode {mode!r}")


def expected_ssl_type(mode):
    """The ``mysql.user.ssl_type`` value each require mode leaves."""
    return {"ssl": "ANY", "x509": "X509", "subject": "SPECIFIED"}[mode]


def create_replication_user(version, user, host, password, mode, subject=None, issuer=None):
    """
    Create (or re-create the attributes of) the replication account.

    MariaDB gets the client-side hash (``IDENTIFIED BY PASSWORD '*...'``), so the
    clear password is in no log. MySQL 8 uses caching_sha2_password, which has
    no client-computable hash; it rewrites the statement in its logs itself.
    """
    require = require_clause(mode, subject, issuer)
    acct = account(user, host)
    if version.is_mariadb:
        pw_hash = native_password_hash(password)
        return [
            (f"CREATE USER IF NOT EXISTS {acct} IDENTIFIED BY PASSWORD %s {require}", (pw_hash,)),
            (f"ALTER USER {acct} IDENTIFIED BY PASSWORD %s {require}", (pw_hash,)),
            (f"GRANT REPLICATION SLAVE ON *.* TO {acct}", None),
        ]
    return [
        (f"CREATE USER IF NOT EXISTS {acct} IDENTIFIED WITH caching_sha2_password BY %s {require}",
         (password,)),
        (f"ALTER USER {acct} IDENTIFIED WITH caching_sha2_password BY %s {require}", (password,)),
        (f"GRANT REPLICATION SLAVE ON *.* TO {acct}", None),
    ]


SELECT_ANONYMOUS = ("SELECT User AS user, Host AS host FROM mysql.user WHERE User = ''", None)


def drop_user(user, host):
    return (f"DROP USER IF EXISTS {account(user, host)}", None)


def create_admin_user(version, user, host, password):
    """
    The switch's admin account: it sets ``read_only`` on another server of the
    topology over verified TLS (REQUIRE X509: only holders of a certificate of
    the topology CA), reads its GTID position and may end app sessions there.
    Nothing more: no data privileges.
    """
    acct = account(user, host)
    privs = "READ_ONLY ADMIN, CONNECTION ADMIN, PROCESS, BINLOG MONITOR, SLAVE MONITOR"
    if not version.is_mariadb:
        privs = "SYSTEM_VARIABLES_ADMIN, CONNECTION_ADMIN, PROCESS, REPLICATION CLIENT"
        return [
            (f"CREATE USER IF NOT EXISTS {acct} IDENTIFIED WITH caching_sha2_password BY %s REQUIRE X509",
             (password,)),
            (f"ALTER USER {acct} IDENTIFIED WITH caching_sha2_password BY %s REQUIRE X509", (password,)),
            (f"GRANT {privs} ON *.* TO {acct}", None),
        ]
    pw_hash = native_password_hash(password)
    return [
        (f"CREATE USER IF NOT EXISTS {acct} IDENTIFIED BY PASSWORD %s REQUIRE X509", (pw_hash,)),
        (f"ALTER USER {acct} IDENTIFIED BY PASSWORD %s REQUIRE X509", (pw_hash,)),
        (f"GRANT {privs} ON *.* TO {acct}", None),
    ]


# --------------------------------------------------------------------------
# Switchover: prechecks and the critical section
# --------------------------------------------------------------------------

# every account and role with its global privilege bits and default role;
# PUBLIC is the role every account has (MariaDB 10.11)
ACCOUNT_PRIVILEGES = (
    "SELECT User AS user, Host AS host, "
    "CAST(JSON_VALUE(Priv, '$.access') AS UNSIGNED) AS access, "
    "COALESCE(JSON_VALUE(Priv, '$.is_role'), 'false') AS is_role, "
    "JSON_VALUE(Priv, '$.default_role') AS default_role, "
    "COALESCE(JSON_VALUE(Priv, '$.account_locked'), 'false') AS locked "
    "FROM mysql.global_priv",
    None,
)
ROLE_GRANTS = ("SELECT User AS user, Host AS host, Role AS role FROM mysql.roles_mapping", None)

EVENTS = (
    "SELECT EVENT_SCHEMA AS db, EVENT_NAME AS name, DEFINER AS definer, STATUS AS status, "
    "ORIGINATOR AS originator FROM information_schema.EVENTS",
    None,
)


def alter_event(db, name, enable):
    """ENABLE, or DISABLE ON SLAVE (the state MariaDB gives replicated events)."""
    ident = f"`{db.replace('`', '``')}`.`{name.replace('`', '``')}`"
    return (f"ALTER EVENT {ident} {'ENABLE' if enable else 'DISABLE ON SLAVE'}", None)


# open InnoDB transactions: age and rows changed (no statement text: it may carry secrets)
INNODB_TRANSACTIONS = (
    "SELECT t.trx_mysql_thread_id AS id, p.USER AS user, t.trx_state AS state, "
    "TIMESTAMPDIFF(SECOND, t.trx_started, NOW()) AS age_s, t.trx_rows_modified AS rows_modified "
    "FROM information_schema.INNODB_TRX t "
    "LEFT JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id",
    None,
)

METADATA_LOCK_PLUGIN = (
    "SELECT PLUGIN_STATUS AS status FROM information_schema.PLUGINS "
    "WHERE PLUGIN_NAME = 'METADATA_LOCK_INFO'",
    None,
)
INSTALL_METADATA_LOCK_PLUGIN = ("INSTALL SONAME 'metadata_lock_info'", None)

# locks that hold SET GLOBAL read_only up: LOCK TABLES (..NO_WRITE modes), FTWRL
# and BACKUP STAGE holders (backup locks other than a statement's own)
BLOCKING_LOCKS = (
    "SELECT m.THREAD_ID AS id, p.USER AS user, m.LOCK_MODE AS mode, m.LOCK_TYPE AS type, "
    "m.TABLE_SCHEMA AS db, m.TABLE_NAME AS tbl "
    "FROM information_schema.METADATA_LOCK_INFO m "
    "LEFT JOIN information_schema.PROCESSLIST p ON p.ID = m.THREAD_ID "
    "WHERE m.LOCK_MODE IN ('MDL_SHARED_NO_WRITE', 'MDL_SHARED_NO_READ_WRITE', 'MDL_EXCLUSIVE', "
    "'MDL_BACKUP_FTWRL1', 'MDL_BACKUP_FTWRL2', 'MDL_BACKUP_START', 'MDL_BACKUP_FLUSH', "
    "'MDL_BACKUP_WAIT_FLUSH', 'MDL_BACKUP_WAIT_DDL', 'MDL_BACKUP_WAIT_COMMIT', 'MDL_BACKUP_BLOCK_DDL') "
    "AND m.THREAD_ID <> CONNECTION_ID()",
    None,
)
# without the plugin: tables held by LOCK TABLES still show as in use
OPEN_TABLES_IN_USE = ("SHOW OPEN TABLES WHERE In_use > 0", None)

# client sessions (not replication threads, not this one) for the optional kill
APP_SESSIONS = (
    "SELECT ID AS id, USER AS user FROM information_schema.PROCESSLIST "
    "WHERE ID <> CONNECTION_ID() AND COMMAND NOT IN ('Binlog Dump', 'Daemon', 'Slave_IO', 'Slave_SQL', "
    "'Slave_worker') AND USER NOT IN ('system user', 'event_scheduler', 'unauthenticated user')",
    None,
)

SELECT_READ_ONLY = ("SELECT @@GLOBAL.read_only AS ro", None)
# the certificate the server presents now (changes with FLUSH SSL, not with the file)
SSL_SERVER_NOT_AFTER = ("SHOW GLOBAL STATUS LIKE 'Ssl_server_not_after'", None)

# a two-master pair's session-level settings: a session keeps the auto_increment_* and
# gtid_domain_id it connected with, so sessions older than the live change would write
# colliding keys (MariaDB's performance_schema has no variables_by_thread to read them)
CONNECTION_ID = ("SELECT CONNECTION_ID() AS id", None)
SERVER_STARTED = ("SELECT UNIX_TIMESTAMP() - VARIABLE_VALUE AS started FROM information_schema.GLOBAL_STATUS "
                  "WHERE VARIABLE_NAME = 'UPTIME'", None)


def client_sessions_before(conn_id, skip_users=()):
    """Client sessions opened before connection ``conn_id``: not replication or daemon
    threads, nor ``skip_users`` (mysqlrepl's own accounts, which write no rows)."""
    skip = ("system user", "event_scheduler") + tuple(skip_users)
    marks = ", ".join(["%s"] * len(skip))
    return ("SELECT ID AS id, USER AS user, HOST AS host FROM information_schema.PROCESSLIST "
            "WHERE ID < %s AND ID <> CONNECTION_ID() AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', "
            f"'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker') AND USER NOT IN ({marks}) ORDER BY ID",
            (int(conn_id),) + skip)
# this connection's session id (what KILL CONNECTION and the process list name it by)
SESSION_ID = ("SELECT CONNECTION_ID() AS id", None)
SHOW_BINARY_LOGS = ("SHOW BINARY LOGS", None)


def binlog_start_state(log_name):
    """The GTID state at the start of binary log ``log_name`` (what precedes it)."""
    return "SELECT BINLOG_GTID_POS(%s, 4) AS pos", (log_name,)


# --------------------------------------------------------------------------
# Locks and proofs
# --------------------------------------------------------------------------

FLUSH_TABLES_WITH_READ_LOCK = ("FLUSH NO_WRITE_TO_BINLOG TABLES WITH READ LOCK", None)
# what the lock holder reports once it holds the lock
LOCK_POSITION = ("SELECT CONNECTION_ID() AS conn_id, @@GLOBAL.gtid_binlog_pos AS gtid", None)
SHOW_MASTER_STATUS = ("SHOW MASTER STATUS", None)


def set_session_wait_timeout(seconds):
    return (f"SET SESSION wait_timeout = {int(seconds)}, SESSION interactive_timeout = {int(seconds)}",
            None)


def kill_connection(conn_id):
    return (f"KILL CONNECTION {int(conn_id)}", None)


def processlist_by_id(conn_id):
    return ("SELECT ID AS id, USER AS user, COMMAND AS command, TIME AS time, STATE AS state "
            "FROM information_schema.PROCESSLIST WHERE ID = %s", (int(conn_id),))


# Cipher negotiated by each Binlog Dump thread (performance_schema must be on).
BINLOG_DUMP_CIPHERS = (
    "SELECT t.PROCESSLIST_ID AS id, t.PROCESSLIST_USER AS user, t.PROCESSLIST_HOST AS host, "
    "s.VARIABLE_VALUE AS cipher "
    "FROM performance_schema.threads t "
    "LEFT JOIN performance_schema.status_by_thread s "
    "ON s.THREAD_ID = t.THREAD_ID AND s.VARIABLE_NAME = 'Ssl_cipher' "
    "WHERE t.PROCESSLIST_COMMAND LIKE 'Binlog Dump%%'",
    None,
)


def const(name):
    """
    A statement constant of this module by name (Salt's ``__utils__`` exposes
    functions only): ``__utils__["mysqlrepl_sql.const"]("GTID_STATE")``.
    """
    value = globals()[name]
    if not (name.isupper() and isinstance(value, tuple)):
        raise KeyError(name)
    return value
