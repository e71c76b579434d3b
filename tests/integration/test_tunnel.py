"""
Replication through supervised SSH tunnels and a two-master pair (seeds 000, 001),
on real parts: a real ``sshd`` per far side (plain daemon on the far server's
loopback address), real ``autossh`` run from the unit the formula writes (the
tests' service provider), the setup orchestration and highstates through the
real salt-master.

The topology: db1 is the master; db2 is a replica that reaches db1 only through
an ``ssh -L`` tunnel it opens to db1's sshd (seed 000); db1 is behind a
firewall and opens an ``ssh -R`` tunnel to db3's sshd, through which db3
replicates from it (seed 001). Later db1 and db3 become a two-master pair over
that tunnel, db2 staying a replica of db1.

This module runs in a pytest session of its own (``-m separate_session``,
``tests/run`` does it): it writes its own pillar for the session's minions.
"""

import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time

import pymysql
import pytest

from tests.support.sshd import SSHD
from tests.support.topology import (PASSWORD, all_ok, apply, build_pillar, changes_of, orch_steps,
                                    replica_status, wait_for)
from tests.support import workload

pytestmark = [pytest.mark.integration, pytest.mark.separate_session]

USER = "mysqlrepl-tunnel"
TOPOLOGY = "test"
# every forwarded port of the session is distinct on the machine (all "hosts" are one)
DB2_TUNNEL = {"peer": "db1", "port": 14406, "seed_port": 14407, "peer_port": 14416, "peer_seed_port": 14417}
DB1_TUNNEL = {"peer": "db3", "port": 14426, "seed_port": 14427, "peer_port": 14436, "peer_seed_port": 14437}


def tunnel_name(server):
    return f"{server}.{TOPOLOGY}.mysqlrepl.internal"


@pytest.fixture(scope="module")
def hosts_file_restored():
    """The formula adds tunnel names to /etc/hosts (what the servers resolve): put it back."""
    before = pathlib.Path("/etc/hosts").read_bytes()
    yield
    pathlib.Path("/etc/hosts").write_bytes(before)


@pytest.fixture(scope="module")
def tunnel_user_removed():
    """The formula creates the system user mysqlrepl-tunnel; remove it if this session made it."""
    try:
        pwd.getpwnam(USER)
        existed = True
    except KeyError:
        existed = False
    yield
    if not existed:
        subprocess.run(["userdel", USER], check=False)


@pytest.fixture(scope="module")
def sshds(mariadb_servers, harness_root):
    """A real sshd on db1's and db3's addresses (the far sides), stopped by PID."""
    daemons = {}
    try:
        for name in ("db1", "db3"):
            srv = mariadb_servers[name]
            octet = int(srv.address.rsplit(".", 1)[1])
            daemons[name] = SSHD(name, srv.address, 22000 + octet, harness_root / "sshd", USER).start()
        yield daemons
    finally:
        for daemon in daemons.values():
            daemon.stop()


def tunnel_pillar(mariadb_servers, harness_root, sshds, **overrides):
    pillar = build_pillar(mariadb_servers, harness_root, **overrides)
    top = pillar["mysqlrepl"]
    top["tunnel"] = {"dir": str(harness_root / "tunnel"), "unit_dir": str(harness_root / "units"),
                     "alive_interval": 1, "alive_count": 3, "connect_timeout": 5}
    servers = top["servers"]
    for name, daemon in sshds.items():
        servers[name]["sshd"] = daemon.pillar()
    servers["db2"]["tunnels"] = [dict(DB2_TUNNEL)]
    servers["db1"]["tunnels"] = [dict(DB1_TUNNEL)]
    return pillar


@pytest.fixture(scope="module")
def tunnelled(mariadb_servers, harness_root, write_pillar, salt_run_cli, salt_cli, salt_minions, sshds,
              hosts_file_restored, tunnel_user_removed):
    """The topology brought up by the setup orchestration, through the tunnels."""
    pillar = tunnel_pillar(mariadb_servers, harness_root, sshds)
    write_pillar(pillar)
    started = time.monotonic()
    ret = salt_run_cli.run("state.orchestrate", "mysqlrepl.orch.setup")
    elapsed = time.monotonic() - started
    yield {"pillar": pillar, "setup_ret": ret, "setup_s": elapsed}
    # the tunnels' services, stopped by the provider (SIGTERM to autossh's pid)...
    salt_cli.run("service.stop", "mysqlrepl-tunnel-db2-db1", minion_tgt="db2")
    salt_cli.run("service.stop", "mysqlrepl-tunnel-db1-db3", minion_tgt="db1")
    # ...and any autossh of this session's tunnels still running (a failed run), by PID
    for pid in autossh_pids(harness_root):
        os.kill(pid, signal.SIGTERM)


def autossh_pids(harness_root):
    """PIDs of autossh processes that use this session's tunnel keys."""
    mark = str(harness_root / "tunnel")
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"autossh") and any(mark.encode() in a for a in argv):
            out.append(int(entry))
    return out


def test_setup_orchestration_brings_the_tunnelled_topology_up(tunnelled, mariadb_servers, sshds):
    ret = tunnelled["setup_ret"]
    steps = orch_steps(ret)
    failed = {k: v.get("comment") for k, v in steps.items() if v.get("result") is not True}
    assert ret.returncode == 0 and not failed, (
        f"{failed}\n{ret.stdout[-4000:]}\n--- db1 sshd:\n{sshds['db1'].log_text()[-2000:]}"
        f"\n--- db3 sshd:\n{sshds['db3'].log_text()[-2000:]}")
    # db2 through its -L forward, db3 through the -R forward db1 opened on db3's host
    for name, port in (("db2", DB2_TUNNEL["port"]), ("db3", DB1_TUNNEL["peer_port"])):
        rs = replica_status(mariadb_servers[name])
        assert (rs["Master_Host"], rs["Master_Port"]) == (tunnel_name("db1"), port), name
        assert rs["Slave_IO_Running"] == "Yes" and rs["Slave_SQL_Running"] == "Yes", rs
        assert rs["Master_SSL_Allowed"] == "Yes" and rs["Master_SSL_Verify_Server_Cert"] == "Yes"


def test_rows_arrive_through_both_tunnels_encrypted(tunnelled, mariadb_servers):
    db1 = mariadb_servers["db1"]
    db1.query("CREATE DATABASE IF NOT EXISTS tun")
    db1.query("CREATE TABLE IF NOT EXISTS tun.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20))")
    db1.query("INSERT INTO tun.t (v) VALUES ('through'), ('the'), ('tunnel')")
    pos = db1.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    for name in ("db2", "db3"):
        row = mariadb_servers[name].query("SELECT MASTER_GTID_WAIT(%s, 30) AS w", (pos,))[0]
        assert row["w"] == 0, name
        assert mariadb_servers[name].query("SELECT COUNT(*) AS n FROM tun.t")[0]["n"] >= 3
    # the master's Binlog Dump threads (both links arrive through sshd, from 127.0.0.1) are TLS
    rows = db1.query(
        "SELECT s.VARIABLE_VALUE AS cipher FROM performance_schema.threads t "
        "JOIN performance_schema.status_by_thread s ON s.THREAD_ID = t.THREAD_ID "
        "WHERE t.PROCESSLIST_COMMAND = 'Binlog Dump' AND s.VARIABLE_NAME = 'Ssl_cipher'")
    assert len(rows) == 2 and all(r["cipher"] for r in rows), rows


def test_status_shows_each_tunnel_up_with_its_processes(tunnelled, salt_cli):
    ret = salt_cli.run("-L", "mysqlrepl.tunnel_status", minion_tgt="db1,db2,db3")
    by = ret.data
    near = {t["tunnel"]: t for t in by["db2"] if t["side"] == "near"}
    t = near["db2-db1"]
    assert t["up"] and t["forward_answers"] and t["seed_forward_answers"], t
    assert t["autossh_pid"] and t["ssh_pid"] and t["last_restart"], t
    sides = {(t["tunnel"], t["side"]): t["up"] for m in ("db1", "db3") for t in by[m]}
    assert sides == {("db2-db1", "peer"): True, ("db1-db3", "near"): True, ("db1-db3", "peer"): True}
    status = salt_cli.run("mysqlrepl.status", minion_tgt="db2").data
    assert [t["tunnel"] for t in status["tunnels"]] == ["db2-db1"]


def test_files_have_the_modes_and_lines_the_far_side_needs(tunnelled, harness_root, sshds):
    key = harness_root / "tunnel" / "db2" / "id_ed25519"
    st = key.stat()
    assert oct(st.st_mode & 0o777) == "0o600" and st.st_uid == pwd.getpwnam(USER).pw_uid
    ak = sshds["db1"].authorized_keys
    assert oct(ak.stat().st_mode & 0o777) == "0o644" and ak.stat().st_uid == 0
    lines = [line for line in ak.read_text().splitlines() if not line.startswith("#")]
    assert len(lines) == 1 and lines[0].startswith('restrict,port-forwarding,command="/bin/false",')
    known = (harness_root / "tunnel" / "db2" / "known_hosts").read_text().split()
    assert known[0] == f"sshd.{tunnel_name('db1')}"
    assert known[1:3] == (sshds["db1"].host_key.with_suffix(".pub")).read_text().split()[:2]
    assert pwd.getpwnam(USER).pw_shell == "/usr/sbin/nologin"


def test_a_second_highstate_changes_nothing(tunnelled, salt_cli):
    ret = apply(salt_cli)
    assert not all_ok(ret), all_ok(ret)
    assert changes_of(ret) == {"db1": {}, "db2": {}, "db3": {}}
