"""Pillar validation: every bad input names its key; good input is normalised."""
import copy
import os
import sys

import pytest
from salt.exceptions import SaltInvocationError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "_utils"))
import mysqlrepl_config as conf  # noqa: E402

GOOD = {
    "topology": "production",
    "master": "db1",
    "ca": {"minion": "db1", "CN": "db1-masterdb.production.wpdn", "O": "W3C"},
    "replication": {"password": "s3cret", "require": "x509"},
    "servers": {
        "db1": {"address": "10.0.0.11", "server_id": 11},
        "db2": {"address": "10.0.0.12", "server_id": 12},
        "db3": {"address": "db3.example.org", "minion": "db3.example.org"},
    },
}


def _err(raw):
    with pytest.raises(SaltInvocationError) as info:
        conf.load(raw)
    return str(info.value)


def test_good_pillar_is_normalised():
    cfg = conf.load(copy.deepcopy(GOOD), minion_id="db3.example.org")
    assert cfg["local_servers"] == ["db3"]
    assert cfg["servers"]["db1"]["port"] == 3306
    assert cfg["servers"]["db3"]["server_id"] == conf.derive_server_id("production", "db3")
    assert cfg["servers"]["db2"]["cert_names"] == ["10.0.0.12"]
    assert cfg["ca"]["key_file"] == "/etc/pki/mysql/mysql_ca_cert.key"
    assert cfg["servers"]["db1"]["replication_cert"]["cert"].endswith("/server.crt")


def test_derived_server_id_is_stable_and_not_an_index():
    assert conf.derive_server_id("production", "db2") == conf.derive_server_id("production", "db2")
    assert conf.derive_server_id("production", "db2") != conf.derive_server_id("staging", "db2")
    assert 1 <= conf.derive_server_id("x", "y") <= 4294967295


@pytest.mark.parametrize("path", [
    ("master",), ("ca",), ("ca", "minion"), ("replication",), ("replication", "password"),
    ("servers",), ("servers", "db2", "address"),
])
def test_each_required_key_is_named_when_missing(path):
    raw = copy.deepcopy(GOOD)
    node = raw
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    assert _err(raw).startswith("mysqlrepl:" + ":".join(path) + ":")


@pytest.mark.parametrize("path,value", [
    (("servers", "db1", "port"), "3306"),
    (("servers", "db1", "server_id"), True),
    (("restart_allowed",), "yes"),
    (("tls",), ["x"]),
    (("replication", "connect_retry"), 1.5),
])
def test_wrong_type_names_the_key(path, value):
    raw = copy.deepcopy(GOOD)
    node = raw
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    assert _err(raw).startswith("mysqlrepl:" + ":".join(path) + ":")


def test_unknown_master_and_unknown_key():
    raw = copy.deepcopy(GOOD)
    raw["master"] = "db9"
    assert "mysqlrepl:master: unknown server 'db9'" in _err(raw)
    raw = copy.deepcopy(GOOD)
    raw["servers"]["db2"]["restart_alowed"] = True
    assert _err(raw).startswith("mysqlrepl:servers:db2:restart_alowed: unknown key")


def test_server_id_collision_is_refused():
    raw = copy.deepcopy(GOOD)
    raw["servers"]["db2"]["server_id"] = 11
    assert "mysqlrepl:servers:db2:server_id: server_id 11 collides with server db1" in _err(raw)


def test_same_endpoint_twice_is_refused():
    raw = copy.deepcopy(GOOD)
    raw["servers"]["db2"]["address"] = "10.0.0.11"
    assert _err(raw).startswith("mysqlrepl:servers:db2:address:")


def test_subject_mode_needs_canonical_subject():
    raw = copy.deepcopy(GOOD)
    raw["replication"]["require"] = "subject"
    assert _err(raw).startswith("mysqlrepl:replication:subject: missing")
    raw["replication"]["subject"] = "/CN=repl/O=W3C"
    assert "order" in _err(raw)
    raw["replication"]["subject"] = "/O=W3C/CN=repl"
    cfg = conf.load(raw)
    client = cfg["servers"]["db2"]["certs"][-1]
    assert (client["id"], client["cn"], client["subject"], client["usage"]) == ("client", "repl", {"O": "W3C"}, "client")
    assert cfg["servers"]["db2"]["replication_cert"]["cert"].endswith("/client.crt")


def test_empty_pillar_is_refused():
    assert _err({}).startswith("mysqlrepl: missing")


def test_redact_hides_passwords():
    cfg = conf.load(copy.deepcopy(GOOD))
    assert "s3cret" not in repr(conf.redact(cfg))
    assert cfg["replication"]["password"] == "s3cret"


def test_dropin_has_read_only_and_crash_safety():
    cfg = conf.load(copy.deepcopy(GOOD))
    text = conf.render_dropin(cfg, "db2")
    for line in ("server_id = 12", "read_only = ON", "sync_binlog = 1", "log_slave_updates = ON",
                 "binlog_format = ROW", "relay_log_recovery = ON", "report_host = 10.0.0.12",
                 "ssl_key = /etc/mysql/mysqlrepl/server.key", "innodb_flush_log_at_trx_commit = 1"):
        assert line in text.splitlines()
    raw = copy.deepcopy(GOOD)
    raw["servers"]["db2"]["settings"] = {"read_only": "OFF"}
    with pytest.raises(SaltInvocationError, match="managed by mysqlrepl"):
        conf.render_dropin(conf.load(raw), "db2")


def test_record_path_takes_topology_names_only():
    assert conf.record_path("/var/cache/salt/master", "production") == "/var/cache/salt/master/mysqlrepl/production.json"
    for bad in ("", "../etc", "a/b", ".hidden", None, "x" * 65):
        with pytest.raises(ValueError):
            conf.record_path("/c", bad)
