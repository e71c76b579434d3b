"""
Accounts on one server: the replication account, the switch's admin account and
anonymous accounts, compared with pillar. Nothing here talks to Salt or to a
server: the execution module reads the rows, :func:`plan` says what differs
(the shape ``mysqlrepl.users_check`` returns), and the module recreates what the
plan names with ``sql_log_bin=0`` (accounts are per server, never replicated).

Passwords are compared as client-side mysql_native_password hashes (the
module passes ``password_hash``); a plan never holds a password or a hash.
"""

REPL_KEYS = ("account", "require", "password", "grant")


def recreate_replication_account(out):
    """Does the plan ``out`` ask for the replication account to be (re)created?"""
    return any(k in out for k in REPL_KEYS)


def _grants_text(grant_rows):
    return " ".join(next(iter(r.values())) for r in grant_rows or []).upper()


def plan(cfg, facts, password_hash, want_type, subject=None):
    """
    ``facts``: ``is_mariadb``; ``repl`` (the replication account's row: ``ssl_type``,
    ``x509_subject``, ``auth``; ``None`` if missing) and ``repl_grants`` (SHOW GRANTS
    rows); ``admin`` / ``admin_grants`` likewise (only read when ``admin:password``
    is set); ``anonymous`` (rows with ``host``). ``password_hash(text)``: the
    client-side hash; ``want_type``: the ``ssl_type`` pillar's ``require`` means;
    ``subject``: the required subject in ``subject`` mode.

    Returns ``{}`` when all is well, else keys among ``account``, ``require``,
    ``password``, ``grant`` (replication account: recreate it), ``admin`` (recreate
    the admin account) and ``anonymous`` (drop them), each with a text or an
    old/new pair that never shows a password.
    """
    repl = cfg["replication"]
    out = {}
    row = facts.get("repl")
    if row is None:
        out["account"] = f"create {repl['user']}@{repl['host']} ({want_type})"
    else:
        if row["ssl_type"] != want_type or (subject and row["x509_subject"] != subject):
            old, new = row["ssl_type"] or "NONE", want_type
            if subject:  # REQUIRE SUBJECT: say which subject, not SPECIFIED -> SPECIFIED
                old, new = f"{old} {row['x509_subject'] or ''}".strip(), f"{new} {subject}"
            out["require"] = {"old": old, "new": new}
        if facts["is_mariadb"] and row["auth"] != password_hash(repl["password"]):
            out["password"] = "differs (not shown)"
        grants = _grants_text(facts.get("repl_grants"))
        if "REPLICATION SLAVE" not in grants and "REPLICATION REPLICA" not in grants:
            out["grant"] = "REPLICATION SLAVE missing"
    admin = cfg["admin"]
    if admin.get("password"):
        row = facts.get("admin")
        if row is None:
            out["admin"] = f"create {admin['user']}@{admin['host']} (X509)"
        elif row["ssl_type"] != "X509" or (facts["is_mariadb"] and row["auth"] != password_hash(admin["password"])):
            out["admin"] = "requirements or password differ (not shown)"
        elif facts["is_mariadb"] and "READ_ONLY ADMIN" not in _grants_text(facts.get("admin_grants")):
            out["admin"] = "READ_ONLY ADMIN missing"
    if facts.get("anonymous"):
        out["anonymous"] = [f"''@{r['host']}" for r in facts["anonymous"]]
    return out
