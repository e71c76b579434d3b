"""
Managed servers (Amazon RDS for MariaDB / MySQL), decided here with no Salt
in it: what a managed server is (by the procedures it has, never by its
name), which ``mysql.rds_*`` procedure does what on its version, the CALLs
(the password travels only inside one), the binlog retention to set, what an
import into it must leave out, what a replication error means and whether
one may be skipped. Facts and sources: ``../shared/rds-facts.md`` (sections
cited as §n). ``tests/unit/test_managed.py`` drives every rule.

A managed server has no minion and no SUPER: the minion that acts for it
(pillar ``servers:<name>:minion``) connects to it as its admin user over
verified TLS (the CA bundle pillar names) and sends only statements that user
may run: CALLs of its procedures, SELECTs, and plain DML/DDL of an import.
Never CHANGE MASTER, START/STOP SLAVE, SET GLOBAL, SET sql_log_bin, KILL of
another user's thread, FLUSH TABLES WITH READ LOCK or FLUSH LOGS (§1, "Must
handle" 1); :func:`refused_statement` is the last check before sending.

Rules:

1. Role (:func:`detect`): a server with ``mysql.rds_set_configuration`` and
   ``mysql.rds_start_replication`` is managed; which optional procedures it
   has (``rds_import_binlog_ssl_material``, ``rds_replica_status``, the
   MySQL 8.4 ``*_source`` names) is read, not assumed (§1 caveat).
2. Procedures (:func:`procedures`): MariaDB: ``rds_set_external_master_gtid``
   (GTID), status through ``rds_replica_status`` (10.5+: SHOW SLAVE STATUS
   is denied); MySQL before 8.4: ``rds_set_external_master_with_auto_position``;
   MySQL 8.4: the ``*_source`` names. Each one must be present.
3. Retention (:func:`retention_plan`): before seeding from a managed master,
   ``binlog retention hours`` must be at least pillar's; lower or NULL is
   set (1..max), and read back.
4. Import into a managed server (:func:`import_line`): no ``mysql`` schema,
   no DEFINER clauses, no ``SET GLOBAL`` / ``SET @@GLOBAL``, no
   ``sql_log_bin``, no ``CHANGE MASTER`` (each would fail with 1227, §3; the
   last one is in ``--master-data=1`` dumps, found against the RDS-like server).
5. Error 1236 (:func:`explain_1236`): "purged binary log" means re-seed;
   anything else after a source failover is an operator's decision
   (``rds_next_master_log``): never advanced automatically (§5).
6. Skipping (:func:`skip_decision`): only through ``rds_skip_repl_error``,
   one error at a time, only when pillar allows it, at most ``limit``.

Invariant: every statement for a managed server comes from this module and
passes :func:`refused_statement`; a decision that refuses returns no action.
"""

import re

# the two procedures every RDS MariaDB/MySQL has (§1); the rest is optional or per version
REQUIRED = ("rds_set_configuration", "rds_start_replication")
RETENTION = "binlog retention hours"
# RDS for MySQL documents 168 h as the maximum (the troubleshooting page says 720)
MAX_RETENTION_HOURS = 168

# statements a managed server's admin may not run (§1 [TEST] errors, "Must handle" 1)
_REFUSED = re.compile(
    r"^\s*(CHANGE\s+(MASTER|REPLICATION\s+SOURCE)\b|START\s+(SLAVE|REPLICA)\b|STOP\s+(SLAVE|REPLICA)\b|"
    r"RESET\s+(SLAVE|REPLICA|MASTER)\b|SET\s+(GLOBAL\b|@@GLOBAL\.|(SESSION\s+|@@SESSION\.|@@)?SQL_LOG_BIN\b)|"
    r"KILL\b|FLUSH\s+(NO_WRITE_TO_BINLOG\s+|LOCAL\s+)?(TABLES\s+WITH\s+READ\s+LOCK|LOGS|BINARY\s+LOGS)\b|"
    r"PURGE\b|SHOW\s+(SLAVE|REPLICA)\s+STATUS\b|LOAD\s+DATA\s+INFILE\b|SHUTDOWN\b|.*\bINTO\s+(OUT|DUMP)FILE\b)",
    re.IGNORECASE,
)


def refused_statement(sql):
    """Why ``sql`` must not be sent to a managed server (``None``: it may be)."""
    text = sql if isinstance(sql, str) else sql[0]
    match = _REFUSED.match(text)
    if match:
        return f"{' '.join(match.group(1).split()[:3]).upper()} needs a privilege a managed server's admin lacks"
    return None


def detect(routines):
    """
    Rule 1. ``routines``: names of the procedures in the ``mysql`` schema
    (``information_schema.ROUTINES``). Returns ``{"managed": bool, "has":
    set, "ssl_import": bool, "replica_status": bool, "source_names": bool}``.
    """
    has = {r for r in routines if r.startswith("rds_")}
    return {
        "managed": all(r in has for r in REQUIRED),
        "has": has,
        "ssl_import": "rds_import_binlog_ssl_material" in has,
        "replica_status": "rds_replica_status" in has,
        "source_names": "rds_set_external_source_with_auto_position" in has,
    }


def procedures(flavor, version, detected):
    """
    Rule 2: ``{operation: procedure}`` for a server of ``flavor`` ("mariadb" /
    "mysql") and ``version`` (tuple), checked against ``detected``. Raises
    ``ValueError`` naming a missing procedure.
    """
    version = tuple(version)
    if flavor == "mariadb":
        names = {"set_source": "rds_set_external_master_gtid", "reset_source": "rds_reset_external_master",
                 "next_log": "rds_next_master_log", "status": "rds_replica_status" if version >= (10, 5) else None}
    elif version >= (8, 4):
        names = {"set_source": "rds_set_external_source_with_auto_position",
                 "reset_source": "rds_reset_external_source", "next_log": "rds_next_source_log", "status": None}
    else:
        names = {"set_source": "rds_set_external_master_with_auto_position",
                 "reset_source": "rds_reset_external_master", "next_log": "rds_next_master_log", "status": None}
    names.update({"start": "rds_start_replication", "stop": "rds_stop_replication",
                  "skip": "rds_skip_repl_error", "set_configuration": "rds_set_configuration",
                  "show_configuration": "rds_show_configuration",
                  "import_ssl": "rds_import_binlog_ssl_material" if detected["ssl_import"] else None,
                  "remove_ssl": "rds_remove_binlog_ssl_material" if detected["ssl_import"] else None})
    missing = sorted(p for op, p in names.items() if p and p not in detected["has"]
                     and op not in ("import_ssl", "remove_ssl"))
    if missing:
        raise ValueError(f"the managed server lacks mysql.{', mysql.'.join(missing)} "
                         f"({flavor} {'.'.join(map(str, version))})")
    return names


def call(procedure, *args):
    """``("CALL mysql.<procedure>(%s, ...)", args)``: values are bound by the driver, never spliced."""
    if not re.match(r"^rds_[a-z_]+$", procedure):
        raise ValueError(f"not an rds procedure: {procedure!r}")
    return (f"CALL mysql.{procedure}({', '.join(['%s'] * len(args))})", tuple(args) or None)


def set_source_call(names, flavor, host, port, user, password, gtid=None, ssl=True, delay=0):
    """
    The CALL that points a managed replica at its source (§1): MariaDB with the
    GTID to start from (``gtid_slave_pos`` semantics), MySQL with auto-position
    and a delay. ``ssl``: the link uses TLS (RDS never verifies the source's
    certificate: §4).
    """
    if flavor == "mariadb":
        if not gtid:
            raise ValueError("a MariaDB managed replica starts from a GTID position: none given")
        return call(names["set_source"], host, int(port), user, password, gtid, 1 if ssl else 0)
    return call(names["set_source"], host, int(port), user, password, 1 if ssl else 0, int(delay))


def retention_plan(current, wanted, max_hours=MAX_RETENTION_HOURS):
    """
    Rule 3. ``current``: the ``binlog retention hours`` value read back (``None``
    = NULL: logs purged as soon as possible); ``wanted``: pillar's hours.
    Returns ``{"set": hours or None, "refusal": text or None, "comment"}``.
    """
    if not isinstance(wanted, int) or isinstance(wanted, bool) or not 1 <= wanted <= max_hours:
        return {"set": None, "refusal": f"binlog retention hours must be 1..{max_hours}, pillar says {wanted!r}",
                "comment": None}
    have = None if current in (None, "", "NULL") else int(current)
    if have is not None and have >= wanted:
        return {"set": None, "refusal": None, "comment": f"binlog retention hours {have} (pillar: at least {wanted})"}
    return {"set": wanted, "refusal": None,
            "comment": f"binlog retention hours {have if have is not None else 'NULL'} -> {wanted}"}


_DEFINER = re.compile(r"\s*DEFINER\s*=\s*(`[^`]*`|'[^']*'|[^\s@]+)@(`[^`]*`|'[^']*'|[^\s*]+)", re.IGNORECASE)
_DROP_LINE = re.compile(
    r"^\s*(/\*!\d+\s+)?SET\s+(GLOBAL\b|@@GLOBAL\.|(SESSION\s+|@@SESSION\.)?SQL_LOG_BIN\b|@@SQL_LOG_BIN\b)",
    re.IGNORECASE)
_MYSQL_SCHEMA = re.compile(r"^\s*(CREATE\s+DATABASE\b.*`mysql`|USE\s+`?mysql`?\s*;)", re.IGNORECASE)


def import_line(line):
    """
    Rule 4: one line of a dump, as it may be imported into a managed server:
    ``None`` to leave it out (``SET GLOBAL``, ``sql_log_bin``, ``CHANGE
    MASTER`` and whatever else :func:`refused_statement` refuses), else the line
    without DEFINER clauses (the objects then belong to the importing admin).
    A dump of the ``mysql`` schema raises ``ValueError``: it is never imported
    (its accounts and grants are the managed server's own).
    """
    if _MYSQL_SCHEMA.match(line):
        raise ValueError("the dump holds the mysql schema: dump the replicated databases only")
    if _DROP_LINE.match(line) or _REFUSED.match(line):
        return None  # e.g. --master-data=1's SET GLOBAL gtid_slave_pos and CHANGE MASTER
    return _DEFINER.sub("", line)


def explain_1236(error_text, retention_hours):
    """
    Rule 5: what an IO error 1236 of a link from a managed master means and what
    to do; never an automatic action.
    """
    text = error_text or ""
    if re.search(r"could not find first log file|purged|not in the master's binlog|which is not in", text, re.I):
        why = ("the managed master purged binary logs the replica still needs"
               + (f" (binlog retention hours {retention_hours})" if retention_hours else
                  " (binlog retention hours is NULL: purged as soon as possible)"))
        return {"cause": "purged", "action": "re-seed the replica (salt-run mysqlrepl.seed force=True)",
                "comment": f"{why}: re-seed it; raise mysqlrepl retention first"}
    return {"cause": "unknown", "action": None,
            "comment": ("error 1236 from the managed master: if its instance failed over (Multi-AZ) with an "
                        "unsynced binary log, CALL mysql.rds_next_master_log is an operator's decision (it can "
                        "lose transactions); otherwise re-seed. Nothing is done automatically")}


def skip_decision(error, allowed, limit, skipped):
    """
    Rule 6. ``error``: the replica's SQL error (``{"errno", "error"}`` or
    ``None``); ``allowed`` / ``limit``: pillar's ``skip_errors``; ``skipped``:
    how many this link has skipped so far. Returns ``{"skip": bool, "comment"}``.
    """
    if not error or not error.get("errno"):
        return {"skip": False, "comment": None}
    what = f"SQL error {error['errno']}: {error.get('error')}"
    if not allowed:
        return {"skip": False, "comment": f"replication stopped on {what}; skipping is not allowed "
                                          "(servers:<name>:skip_errors:allowed); fix the data or re-seed"}
    if skipped >= limit:
        return {"skip": False, "comment": f"replication stopped on {what}; {skipped} error(s) skipped already, "
                                          f"the limit is {limit}: an operator looks at it"}
    return {"skip": True, "comment": f"skipping one event on {what} ({skipped + 1} of at most {limit})"}
