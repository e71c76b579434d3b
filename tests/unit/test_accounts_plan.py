"""Accounts (``_utils/mysqlrepl_accounts.py``) without servers: every difference plan() reports."""

import copy

import _utils.mysqlrepl_accounts as acc
import _utils.mysqlrepl_config as conf
import _utils.mysqlrepl_sql as sql

PILLAR = {"master": "db1", "ca": {"minion": "db1"},
          "replication": {"password": "s3cret", "require": "x509"},
          "admin": {"password": "adm1n"},
          "servers": {"db1": {"address": "10.0.0.11"}, "db2": {"address": "10.0.0.12"}}}
CFG = conf.load(copy.deepcopy(PILLAR))
HASH = sql.native_password_hash


def facts(**over):
    base = {"is_mariadb": True,
            "repl": {"ssl_type": "X509", "x509_subject": "", "auth": HASH("s3cret")},
            "repl_grants": [{"Grants for repl@%": "GRANT REPLICATION SLAVE ON *.* TO `repl`@`%`"}],
            "admin": {"ssl_type": "X509", "x509_subject": "", "auth": HASH("adm1n")},
            "admin_grants": [{"g": "GRANT READ_ONLY ADMIN, PROCESS ON *.* TO `mysqlrepl_admin`@`%`"}],
            "anonymous": []}
    base.update(over)
    return base


def plan(**over):
    return acc.plan(CFG, facts(**over), HASH, "X509")


def test_accounts_as_pillar_says():
    assert plan() == {}
    assert not acc.recreate_replication_account({})


def test_missing_account_is_created():
    out = plan(repl=None, repl_grants=[])
    assert out == {"account": "create repl@% (X509)"} and acc.recreate_replication_account(out)


def test_requirement_password_and_grant_differences():
    out = plan(repl={"ssl_type": "ANY", "x509_subject": "", "auth": HASH("old")}, repl_grants=[{"g": "GRANT USAGE"}])
    assert out == {"require": {"old": "ANY", "new": "X509"}, "password": "differs (not shown)",
                   "grant": "REPLICATION SLAVE missing"}
    assert "s3cret" not in repr(out) and HASH("s3cret") not in repr(out)
    assert plan(repl={"ssl_type": "", "x509_subject": "", "auth": HASH("s3cret")})["require"]["old"] == "NONE"


def test_subject_mode_compares_the_subject():
    row = {"ssl_type": "SPECIFIED", "x509_subject": "/CN=other", "auth": HASH("s3cret")}
    out = acc.plan(CFG, facts(repl=row), HASH, "SPECIFIED", subject="/CN=repl")
    assert out == {"require": {"old": "SPECIFIED /CN=other", "new": "SPECIFIED /CN=repl"}}
    assert acc.plan(CFG, facts(repl=dict(row, x509_subject="/CN=repl")), HASH, "SPECIFIED", subject="/CN=repl") == {}


def test_mysql_passwords_are_not_compared_by_hash():
    assert plan(is_mariadb=False, repl={"ssl_type": "X509", "x509_subject": "", "auth": "$A$005$x"},
                admin={"ssl_type": "X509", "x509_subject": "", "auth": "$A$x"}, admin_grants=[]) == {}


def test_admin_account():
    assert plan(admin=None, admin_grants=[]) == {"admin": "create mysqlrepl_admin@% (X509)"}
    assert plan(admin={"ssl_type": "ANY", "x509_subject": "", "auth": HASH("adm1n")})["admin"].startswith(
        "requirements or password differ")
    assert plan(admin_grants=[{"g": "GRANT PROCESS ON *.*"}]) == {"admin": "READ_ONLY ADMIN missing"}
    no_admin = conf.load(dict(copy.deepcopy(PILLAR), admin={}))
    assert acc.plan(no_admin, facts(admin=None), HASH, "X509") == {}


def test_anonymous_accounts_are_dropped():
    assert plan(anonymous=[{"host": "localhost"}, {"host": "db1"}]) == {"anonymous": ["''@localhost", "''@db1"]}
