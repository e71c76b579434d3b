"""Smoke test of the integration harness itself (servers, master, minions, service provider)."""

import socket

import pymysql
import pytest

pytestmark = pytest.mark.integration


def test_servers_listen_on_own_address(mariadb_servers):
    addresses = set()
    for name, server in sorted(mariadb_servers.items()):
        octet = int(server.address.rsplit(".", 1)[1])
        assert server.address.startswith("127.0.0.") and server.server_id == octet
        addresses.add(server.address)
        with socket.create_connection((server.address, server.port), timeout=5):
            pass
        row = server.query("SELECT @@server_id AS sid, @@bind_address AS ba")[0]
        assert row == {"sid": octet, "ba": server.address}, name
    assert len(addresses) == len(mariadb_servers)


def test_root_is_socket_only(mariadb_servers):
    server = mariadb_servers["db2"]
    with pytest.raises(pymysql.err.OperationalError) as exc:
        pymysql.connect(
            host=server.address, port=server.port, user="root", ssl_disabled=True,
            connect_timeout=5,
        )
    # 1130: no root account for a TCP client host at all (only root@localhost, via socket)
    assert exc.value.args[0] in (1045, 1130), exc.value


def test_minions_answer(salt_cli, salt_minions):
    ret = salt_cli.run("-L", "test.ping", minion_tgt=",".join(salt_minions))
    assert ret.returncode == 0, ret
    assert ret.data == {mid: True for mid in salt_minions}


def test_service_restart_through_master(salt_cli, salt_minions, mariadb_servers):
    server = mariadb_servers["db2"]
    old_pid = server.pid()
    assert old_pid

    ret = salt_cli.run("service.restart", server.service_name, minion_tgt="db2")
    assert ret.returncode == 0, ret
    assert ret.data is True, ret

    new_pid = server.pid()
    assert new_pid and new_pid != old_pid
    assert server.query("SELECT @@server_id AS sid")[0]["sid"] == server.server_id

    ret = salt_cli.run("service.status", server.service_name, minion_tgt="db2")
    assert ret.data is True, ret
    # each minion only sees its own server's service
    ret = salt_cli.run("service.available", server.service_name, minion_tgt="db1")
    assert ret.data is False, ret


def test_service_states_through_provider(salt_cli, salt_minions, mariadb_servers):
    server = mariadb_servers["db3"]
    name = server.service_name
    ret = salt_cli.run("state.single", "service.dead", f"name={name}", minion_tgt="db3")
    state = next(iter(ret.data.values()))
    assert state["result"] is True and state["changes"], ret
    assert server.pid() is None

    ret = salt_cli.run("state.single", "service.running", f"name={name}", minion_tgt="db3")
    state = next(iter(ret.data.values()))
    assert state["result"] is True and state["changes"], ret
    assert server.query("SELECT 1 AS one") == [{"one": 1}]

    ret = salt_cli.run("state.single", "service.running", f"name={name}", minion_tgt="db3")
    state = next(iter(ret.data.values()))
    assert state["result"] is True and not state["changes"], ret


def test_write_pillar(write_pillar, salt_cli, salt_minions):
    # pillar persists for the session: put back what an earlier module's fixture wrote
    before = write_pillar.last
    try:
        write_pillar({"mysqlrepl": {"topology": "harness-smoke"}})
        ret = salt_cli.run(
            "-L", "pillar.get", "mysqlrepl:topology", "unmask=True",
            minion_tgt=",".join(salt_minions),
        )
        assert ret.data == {mid: "harness-smoke" for mid in salt_minions}, ret
    finally:
        if before is not None:
            write_pillar(before)
