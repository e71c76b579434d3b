"""
Server settings (``_utils/mysqlrepl_settings.py``) without servers: the comparison
of the drop-in and live variables with pillar, and every exit of ``decide()``.
"""

import _utils.mysqlrepl_settings as st

DESIRED = [("server_id", 12), ("log_bin", "mysql-bin"), ("relay_log", "relay-bin"), ("read_only", "ON"),
           ("sync_binlog", 1), ("innodb_buffer_pool_size", "32M"), ("ssl_cert", "/tls/server.crt")]
LIVE = {"server_id": "12", "log_bin": "ON", "log_bin_basename": "/var/lib/mysql/mysql-bin",
        "relay_log": "relay-bin", "relay_log_basename": "/var/lib/mysql/relay-bin", "read_only": "OFF",
        "sync_binlog": "1", "innodb_buffer_pool_size": str(32 << 20), "ssl_cert": "/tls/server.crt"}
STATIC = {"log_bin", "relay_log", "ssl_cert", "server_id_never"}


def compare(live=None, static=STATIC, current="text", wanted="text", plugin_active=True):
    return st.compare(DESIRED, dict(LIVE, **(live or {})), static, current, wanted, plugin_active)


def test_values_are_compared_normalised():
    assert st.live_value("32M") == str(32 << 20) and st.live_value("yes") == "ON" and st.live_value("False") == "OFF"
    assert st.live_value(None) is None and st.live_value(" abc ") == "abc"
    assert st.set_value("ON") == 1 and st.set_value("off") == 0 and st.set_value("1G") == 1 << 30
    assert st.set_value("ROW") == "ROW"


def test_a_server_as_pillar_says_has_nothing_to_do():
    plan = compare()
    assert plan == {"file": None, "live": {}, "restart": [], "running": True}
    out = st.decide("db2", plan, False, "/etc/x.cnf")
    assert out == {"result": True, "changes": {}, "steps": [], "comment": "server settings are as pillar says"}


def test_read_only_is_never_compared():
    assert "read_only" not in compare({"read_only": "ON"})["live"]


def test_log_bin_and_relay_log_are_compared_by_basename():
    plan = compare({"log_bin_basename": "/var/lib/mysql/other-bin", "relay_log_basename": "/x/relay2"})
    assert plan["live"] == {"log_bin": ["ON", "mysql-bin"], "relay_log": ["relay-bin", "relay-bin"]}
    assert plan["restart"] == ["log_bin", "relay_log"]
    assert "log_bin" in compare({"log_bin": "OFF"})["live"]


def test_unknown_static_set_falls_back_to_the_known_one():
    plan = compare({"ssl_cert": "/old.crt"}, static=None)
    assert plan["restart"] == ["ssl_cert"]


def test_file_missing_or_different_and_plugin():
    assert compare(current=None)["file"] == "missing"
    assert compare(current="old")["file"] == "differs"
    assert compare(plugin_active=False)["plugins"] == ["metadata_lock_info"]


def test_dynamic_changes_go_live_first_then_the_file():
    plan = compare({"sync_binlog": "0"}, current="old", plugin_active=False)
    out = st.decide("db2", plan, False, "/etc/x.cnf")
    assert out["result"] is True
    assert out["steps"] == [("set_live", {"sync_binlog": 1}), ("install_plugins", ["metadata_lock_info"]),
                            ("write_file",)]
    assert out["changes"] == {"config_file": "/etc/x.cnf differs", "variable sync_binlog": {"old": "0", "new": 1},
                              "plugin metadata_lock_info": {"old": "not loaded", "new": "loaded"}}


def test_a_static_change_without_restart_allowed_changes_nothing():
    plan = compare({"sync_binlog": "0", "log_bin": "OFF"}, current="old")
    for test in (False, True):
        out = st.decide("db2", plan, False, "/etc/x.cnf", test=test)
        assert out["result"] is False and out["steps"] == [] and out["changes"] == {}
        assert "needs a restart for log_bin but restart_allowed is false" in out["comment"]
        assert "nothing changed" in out["comment"]


def test_a_static_change_with_restart_allowed_restarts_then_checks_tls():
    plan = compare({"log_bin": "OFF"}, current="old")
    out = st.decide("db2", plan, True, "/etc/x.cnf")
    assert out["steps"] == [("write_file",), ("restart",), ("check_tls",)]
    assert out["changes"]["restart"] == "needed for log_bin"


def test_a_tls_file_change_checks_have_ssl():
    plan = compare({"ssl_cert": "/old.crt"}, static=set())  # dynamic on a server that says so
    out = st.decide("db2", plan, False, "/etc/x.cnf")
    assert out["steps"] == [("set_live", {"ssl_cert": "/tls/server.crt"}), ("check_tls",)]


def test_dry_run_lists_changes_and_runs_nothing():
    plan = compare({"sync_binlog": "0", "log_bin": "OFF"})
    out = st.decide("db2", plan, True, "/etc/x.cnf", test=True)
    assert out["result"] is None and out["steps"] == [] and out["comment"] == "would apply"
    assert out["changes"]["restart"] == "needed for log_bin" and "variable sync_binlog" in out["changes"]
    assert st.decide("db2", compare(), True, "/x", test=True)["result"] is True


def test_an_unreachable_server_fails():
    plan = {"file": "differs", "live": {}, "restart": [], "running": False, "error": "2002 no socket"}
    for test in (False, True):
        out = st.decide("db2", plan, True, "/etc/x.cnf", test=test)
        assert out == {"result": False, "changes": {}, "steps": [],
                       "comment": "server db2 is not reachable: 2002 no socket"}
