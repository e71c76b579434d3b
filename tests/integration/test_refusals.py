"""
Refused runs: a bad pillar, a wrong admin password, an unreachable server, a
restart pillar does not allow. Each is a failed state with a clear comment,
and nothing changes on any server.
"""

import copy

import pytest

from tests.support.topology import (ADMIN_PASSWORD, NAMES, PASSWORD, all_ok, apply, changes_of, fingerprint,
                                    run_return, state_returns, wait_for)

pytestmark = [pytest.mark.integration]


@pytest.fixture
def restore_pillar(topology, write_pillar, salt_cli):
    """Put the session's pillar back and converge to it."""
    yield
    write_pillar(topology["pillar"])
    ret = apply(salt_cli)
    assert all_ok(ret) == {}, ret


def _variant(topology, mutate):
    pillar = copy.deepcopy(topology["pillar"])
    mutate(pillar["mysqlrepl"])
    return pillar


def _preflight_comments(ret):
    return {m: next(s["comment"] for s in states if s["__id__"] == "mysqlrepl-preflight")
            for m, states in state_returns(ret).items()}


def _drop(*path):
    def mutate(tree):
        node = tree
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return mutate


def _both(first, second):
    def mutate(tree):
        first(tree)
        second(tree)
    return mutate


def _set(path, value):
    def mutate(tree):
        node = tree
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


BAD_PILLARS = [
    (_drop("master"), "mysqlrepl:master: missing required key"),
    (_drop("ca"), "mysqlrepl:ca: missing required key"),
    (_drop("ca", "minion"), "mysqlrepl:ca:minion: missing required key"),
    (_drop("replication"), "mysqlrepl:replication: missing required key"),
    (_drop("replication", "password"), "mysqlrepl:replication:password: missing required key"),
    (_drop("servers"), "mysqlrepl:servers: missing required key"),
    (_drop("servers", "db2", "address"), "mysqlrepl:servers:db2:address: missing required key"),
    (_set(("servers", "db1", "port"), "3306"), "mysqlrepl:servers:db1:port: must be an integer, got str"),
    (_set(("master",), "db9"), "mysqlrepl:master: unknown server 'db9'"),
    # both set: db1's own server_id follows MYSQLREPL_TEST_FIRST_OCTET
    (_both(_set(("servers", "db1", "server_id"), 4242), _set(("servers", "db2", "server_id"), 4242)),
     "mysqlrepl:servers:db2:server_id: server_id 4242 collides with server db1"),
]


def test_bad_pillar_fails_every_state_naming_the_key_and_changes_nothing(
        topology, mariadb_servers, write_pillar, salt_cli, salt_run_cli, restore_pillar):
    # once a switch ran, the master record (ext_pillar) supplies mysqlrepl:master: the pillar files rule here
    ret = salt_run_cli.run("mysqlrepl.record_set", "master=db1", "clear=True", "topology=test")
    assert run_return(ret)["result"] is True, ret
    before = fingerprint(mariadb_servers)
    for index, (mutate, expected) in enumerate(BAD_PILLARS):
        write_pillar(_variant(topology, mutate))
        if index == 0:
            # the runners say it as plainly as the states
            ret = salt_run_cli.run("mysqlrepl.topology")
            assert ret.data["result"] is False, ret
            assert expected in ret.data["comment"] and "Traceback" not in ret.stdout, ret
        for test in ((True, False) if index == 0 else (False,)):
            ret = apply(salt_cli, test=test)
            for minion, comment in _preflight_comments(ret).items():
                assert comment.startswith(f"invalid pillar: {expected}"), (minion, comment)
            for minion, states in state_returns(ret).items():
                assert all(s["result"] is False for s in states), (expected, minion, states)
                assert all(not s["changes"] for s in states), (expected, minion, states)
    assert fingerprint(mariadb_servers) == before


def test_wrong_admin_password_fails_that_server_only(topology, mariadb_servers, write_pillar, salt_cli,
                                                     restore_pillar):
    before = fingerprint(mariadb_servers)
    write_pillar(_variant(topology, _set(("servers", "db2", "connection"),
                                         {"user": "opadmin", "password": ADMIN_PASSWORD + "-wrong"})))
    ret = apply(salt_cli)
    comments = _preflight_comments(ret)
    assert comments["db2"].startswith("db2: cannot connect to db2 (socket ")
    assert "1045: Access denied for user 'opadmin'@'localhost'" in comments["db2"], comments
    assert ADMIN_PASSWORD not in ret.stdout
    assert all(s["result"] is False and not s["changes"] for s in state_returns(ret)["db2"])
    assert all_ok(ret).keys() == {"db2"}
    assert changes_of(ret) == {n: {} for n in NAMES}
    assert fingerprint(mariadb_servers) == before
    # the right password works (the option is honoured, not ignored)
    write_pillar(_variant(topology, _set(("servers", "db2", "connection"),
                                         {"user": "opadmin", "password": ADMIN_PASSWORD})))
    ret = apply(salt_cli)
    assert all_ok(ret) == {}, ret


def test_unreachable_server_fails_cleanly(topology, mariadb_servers, salt_cli):
    db3 = mariadb_servers["db3"]
    db3.stop()
    try:
        ret = apply(salt_cli)
        comments = _preflight_comments(ret)
        assert comments["db3"].startswith("db3: cannot connect to db3 (socket ")
        assert "No such file" in comments["db3"] or "2002" in comments["db3"] or "Errno" in comments["db3"], comments
        assert all(s["result"] is False and not s["changes"] for s in state_returns(ret)["db3"])
        assert changes_of(ret) == {n: {} for n in NAMES}
        assert all_ok(ret).keys() == {"db3"}
    finally:
        db3.start()
    wait_for(lambda: (db3.query("SHOW SLAVE STATUS") or [{}])[0].get("Slave_IO_Running") == "Yes",
             what="db3 replicating again")


def test_restart_only_when_pillar_allows(topology, mariadb_servers, write_pillar, salt_cli, restore_pillar):
    db2 = mariadb_servers["db2"]
    before = fingerprint(mariadb_servers)

    def with_back_log(allowed):
        def mutate(tree):
            tree["restart_allowed"] = allowed
            tree["servers"]["db2"]["settings"]["back_log"] = 91
        return mutate

    write_pillar(_variant(topology, with_back_log(False)))
    for test in (True, False):
        ret = apply(salt_cli, test=test)
        server_state = next(s for s in state_returns(ret)["db2"] if s["__id__"] == "mysqlrepl-server")
        assert server_state["result"] is False
        assert "needs a restart for back_log but restart_allowed is false" in server_state["comment"]
        assert "nothing changed" in server_state["comment"]
    assert fingerprint(mariadb_servers) == before

    write_pillar(_variant(topology, with_back_log(True)))
    ret = apply(salt_cli, test=True)
    assert changes_of(ret)["db2"]["mysqlrepl-server"] == {
        "db2": {"config_file": f"{db2.conf_d / '60-mysqlrepl.cnf'} differs", "restart": "needed for back_log"}}
    assert fingerprint(mariadb_servers) == before
    pid = db2.pid()
    ret = apply(salt_cli)
    assert all_ok(ret) == {}, ret
    assert db2.pid() != pid
    assert db2.query("SELECT @@back_log AS v")[0]["v"] == 91
    # restarted, it came back read-only and replicating
    assert db2.query("SELECT @@read_only AS v")[0]["v"] == 1
    ret = apply(salt_cli)
    assert changes_of(ret) == {n: {} for n in NAMES}, ret


def test_a_master_switched_by_hand_is_reported_not_repointed(topology, mariadb_servers, salt_cli):
    """db3 repointed to db2 by hand: the state refuses, names both, and leaves db3 where it is."""
    db1, db2, db3 = mariadb_servers["db1"], mariadb_servers["db2"], mariadb_servers["db3"]
    db3.session("STOP SLAVE", f"CHANGE MASTER TO MASTER_HOST='{db2.address}'", "START SLAVE")
    try:
        wait_for(lambda: (db3.query("SHOW SLAVE STATUS") or [{}])[0].get("Slave_IO_Running") == "Yes",
                 what="db3 replicating from db2")
        for test in (True, False):
            ret = apply(salt_cli, test=test)
            state = next(s for s in state_returns(ret)["db3"] if s["__id__"] == "mysqlrepl-replication")
            assert state["result"] is False and not state["changes"], state
            assert state["comment"].startswith(
                f"db3: db3 replicates from {db2.address}:{db2.port} (db2) but pillar says the master is "
                f"db1 ({db1.address}:{db1.port})")
            assert all_ok(ret).keys() == {"db3"}
        assert db3.query("SHOW SLAVE STATUS")[0]["Master_Host"] == db2.address
    finally:
        db3.session("STOP SLAVE", f"CHANGE MASTER TO MASTER_HOST='{db1.address}'", "START SLAVE")
    ret = apply(salt_cli)
    assert all_ok(ret) == {}, ret


def test_a_replica_stopped_on_an_sql_error_stays_failed(topology, mariadb_servers, salt_cli):
    """START SLAVE on a conflicting event looks healthy for a moment: the state must not believe it."""
    db1, db3 = mariadb_servers["db1"], mariadb_servers["db3"]
    db1.query("CREATE DATABASE IF NOT EXISTS app")
    db1.query("CREATE TABLE IF NOT EXISTS app.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64))")
    wait_for(lambda: db3.query("SHOW TABLES FROM app LIKE 't'"), what="app.t on db3")
    db3.session("SET SESSION sql_log_bin = 0", "INSERT INTO app.t (id, v) VALUES (900001, 'local')")
    db1.query("INSERT INTO app.t (id, v) VALUES (900001, 'from-master')")
    wait_for(lambda: db3.query("SHOW SLAVE STATUS")[0]["Last_SQL_Errno"] == 1062, what="1062 on db3")
    try:
        for _ in range(3):
            ret = apply(salt_cli)
            state = next(s for s in state_returns(ret)["db3"] if s["__id__"] == "mysqlrepl-replication")
            assert state["result"] is False, state
            assert "1062" in state["comment"] and "Duplicate entry" in state["comment"], state["comment"]
        ret = apply(salt_cli, test=True)
        state = next(s for s in state_returns(ret)["db3"] if s["__id__"] == "mysqlrepl-replication")
        assert "1062" in state["comment"], state
    finally:
        db3.session("SET SESSION sql_log_bin = 0", "DELETE FROM app.t WHERE id = 900001")
    ret = apply(salt_cli)
    assert all_ok(ret) == {}, ret
    assert db3.query("SELECT v FROM app.t WHERE id = 900001")[0]["v"] == "from-master"


def test_password_rotation_reaches_the_replicas_in_the_same_run(topology, mariadb_servers, write_pillar,
                                                                salt_cli, restore_pillar):
    pillar = copy.deepcopy(topology["pillar"])
    pillar["mysqlrepl"]["replication"]["password"] = PASSWORD + "-rotated"
    write_pillar(pillar)
    ret = apply(salt_cli, test=True)
    for name in ("db2", "db3"):
        assert "password" in changes_of(ret)[name]["mysqlrepl-replication"][name], ret
    ret = apply(salt_cli)
    assert all_ok(ret) == {}, ret
    for name in ("db2", "db3"):
        srv = mariadb_servers[name]
        srv.session("STOP SLAVE", "START SLAVE")
        # a fresh connection to the master authenticates with the new password
        wait_for(lambda s=srv: s.query("SHOW SLAVE STATUS")[0]["Slave_IO_Running"] == "Yes", what=f"{name} IO")
        assert srv.query("SHOW SLAVE STATUS")[0]["Last_IO_Errno"] == 0
    ret = apply(salt_cli)
    assert changes_of(ret) == {n: {} for n in NAMES}, ret
