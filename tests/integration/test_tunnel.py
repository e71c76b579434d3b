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

import copy
import os
import pathlib
import pwd
import signal
import socket
import subprocess
import threading
import time

import pymysql
import pytest

from tests.support.secrets import ProcSampler
from tests.support.sshd import SSHD
from tests.support.topology import (ADMIN_PASSWORD, PASSWORD, SWITCH_PASSWORD, all_ok, apply, build_pillar, changes_of, orch_steps,
                                    replica_status, state_returns, wait_for)
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
    """The formula adds tunnel names to /etc/hosts (what the servers resolve): remove this
    session's lines only (another session may have written its own meanwhile)."""
    yield
    hosts = pathlib.Path("/etc/hosts")
    text = hosts.read_text()
    kept = "".join(line for line in text.splitlines(keepends=True)
                   if not (f".{TOPOLOGY}.mysqlrepl.internal" in line and "# mysqlrepl tunnel" in line))
    if kept != text:
        tmp = hosts.with_name(".hosts.test-tunnel.tmp")
        tmp.write_text(kept)
        os.chmod(tmp, hosts.stat().st_mode & 0o7777)
        os.replace(tmp, hosts)


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
def sshds(mariadb_servers, harness_root, testsvc_dir):
    """A real sshd on db1's and db3's addresses (the far sides), a service of their minions
    (the formula reloads it), stopped by PID."""
    daemons = {}
    try:
        for name in ("db1", "db3"):
            srv = mariadb_servers[name]
            octet = int(srv.address.rsplit(".", 1)[1])
            daemons[name] = SSHD(name, srv.address, 22000 + octet, harness_root / "sshd", USER).start(
                testsvc_dir / name)
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
def argv_watch():
    """Every process's argv and environ, sampled from before the setup to the module's last test."""
    sampler = ProcSampler([PASSWORD, ADMIN_PASSWORD, SWITCH_PASSWORD])
    sampler.start()
    yield sampler
    sampler.stop()


@pytest.fixture(scope="module")
def tunnelled(mariadb_servers, harness_root, write_pillar, salt_run_cli, salt_cli, salt_minions, sshds,
              hosts_file_restored, tunnel_user_removed, argv_watch):
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
    assert t["up"] and t["forward_answers"] and t["seed_forward_listens"], t
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
    # the far sshds drop a silent tunnel client (its -R ports are freed): the formula's drop-in,
    # applied by the running sshd to the tunnel user
    for daemon in sshds.values():
        assert "Match User mysqlrepl-tunnel" in (daemon.conf_d / "60-mysqlrepl-tunnel.conf").read_text()
        shown = subprocess.run(["/usr/sbin/sshd", "-T", "-f", str(daemon.config), "-C",
                                f"user={USER},host=localhost,addr=127.0.0.1"], capture_output=True, text=True,
                               check=True).stdout
        assert "clientaliveinterval 1" in shown and "clientalivecountmax 3" in shown and "permittty no" in shown
    # three minions of this one machine added their lines at once: none lost, nothing else touched
    hosts = pathlib.Path("/etc/hosts").read_text()
    assert "localhost" in hosts
    for name in ("db1", "db2", "db3"):
        assert hosts.count(f"\t{tunnel_name(name)}\t") == 1, hosts


def test_a_second_highstate_changes_nothing(tunnelled, salt_cli):
    ret = apply(salt_cli)
    assert not all_ok(ret), all_ok(ret)
    assert changes_of(ret) == {"db1": {}, "db2": {}, "db3": {}}


# -- what goes wrong: a tunnel to the wrong server, a dead ssh --------------------------------

def _tunnel_state(salt_cli, minion, ident):
    states = salt_cli.run("mysqlrepl.tunnel_status", minion_tgt=minion).data
    return next(t for t in states if t["tunnel"] == ident and t["side"] == "near")


def _restart_io(server):
    server.query("STOP SLAVE IO_THREAD")
    server.query("START SLAVE IO_THREAD")


def _relay(port, target):
    return subprocess.Popen(  # pylint: disable=consider-using-with
        ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"TCP:{target.address}:{target.port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_tunnel_pointed_at_another_server_of_the_same_ca_is_refused(tunnelled, salt_cli, mariadb_servers):
    """db2's forward answered by db3 (same CA, its own certificate): the IO thread refuses it.
    Control: the same relay to db1 (the right certificate) is accepted."""
    db1, db2, db3 = mariadb_servers["db1"], mariadb_servers["db2"], mariadb_servers["db3"]
    salt_cli.run("service.stop", "mysqlrepl-tunnel-db2-db1", minion_tgt="db2")
    relay = _relay(DB2_TUNNEL["port"], db1)
    try:
        wait_for(lambda: _answers(DB2_TUNNEL["port"]), timeout=10, what="the relay")
        _restart_io(db2)
        wait_for(lambda: replica_status(db2)["Slave_IO_Running"] == "Yes", timeout=30,
                 what="db2's IO thread through a relay to db1 (the control)")
    finally:
        relay.terminate()
        relay.wait(10)
    relay = _relay(DB2_TUNNEL["port"], db3)
    try:
        wait_for(lambda: _answers(DB2_TUNNEL["port"]), timeout=10, what="the relay")
        _restart_io(db2)
        rs = wait_for(lambda: (lambda r: r if r["Last_IO_Errno"] else None)(replica_status(db2)),
                      timeout=30, what="db2's IO thread to fail")
        assert rs["Slave_IO_Running"] != "Yes"
        assert rs["Last_IO_Errno"] == 2026, rs["Last_IO_Error"]  # SSL connection error
        # nothing of db3 was applied on db2
        assert rs["Slave_SQL_Running"] == "Yes"
    finally:
        relay.terminate()
        relay.wait(10)
    assert salt_cli.run("service.start", "mysqlrepl-tunnel-db2-db1", minion_tgt="db2").data is True
    wait_for(lambda: _answers(DB2_TUNNEL["port"]), timeout=30, what="db2's tunnel")
    _restart_io(db2)
    wait_for(lambda: replica_status(db2)["Slave_IO_Running"] == "Yes", timeout=30, what="db2's IO thread")


def _answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_killing_ssh_under_autossh_loses_nothing(tunnelled, salt_cli, mariadb_servers):
    """kill -9 the ssh process of db2's tunnel while a writer runs on db1."""
    db1, db2 = mariadb_servers["db1"], mariadb_servers["db2"]
    workload.create_schema(db1)
    before = _tunnel_state(salt_cli, "db2", "db2-db1")
    assert before["up"], before
    writer = workload.Writer({"db1": (db1.address, db1.port)}, name="T", interval=0.003)
    writer.start()
    try:
        time.sleep(1)
        os.kill(before["ssh_pid"], signal.SIGKILL)
        killed = time.monotonic()
        after = wait_for(lambda: (lambda t: t if t["up"] and t["ssh_pid"] != before["ssh_pid"] else None)(
            _tunnel_state(salt_cli, "db2", "db2-db1")), timeout=60, what="autossh to start ssh again")
        assert after["autossh_pid"] == before["autossh_pid"]
        wait_for(lambda: replica_status(db2)["Slave_IO_Running"] == "Yes", timeout=60, what="IO thread")
        back = time.monotonic() - killed
        time.sleep(1)
    finally:
        writer.stop()
    assert writer.failure is None and len(writer.acked) > 100, (writer.failure, len(writer.acked))
    pos = db1.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert db2.query("SELECT MASTER_GTID_WAIT(%s, 60) AS w", (pos,))[0]["w"] == 0
    rows = db2.query("SELECT seq FROM app.seqlog WHERE writer = 'T'")
    seqs = [r["seq"] for r in rows]
    acked = {seq for seq, _sid, _t in writer.acked}
    assert not acked - set(seqs), f"lost {sorted(acked - set(seqs))[:10]}"
    assert len(seqs) == len(set(seqs)), "duplicated rows"
    assert back < 30, back


# -- what the tunnel user can do: forward the tunnel's ports, nothing else --------------------

def _ssh(harness_root, sshds, *args, timeout=15):
    key = harness_root / "tunnel" / "db2"
    sshd = sshds["db1"]
    argv = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", f"IdentityFile={key / 'id_ed25519'}", "-o", f"UserKnownHostsFile={key / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", f"HostKeyAlias=sshd.{tunnel_name('db1')}",
            "-o", "ExitOnForwardFailure=yes", "-p", str(sshd.port), "-l", USER, *args, sshd.address]
    return argv


def test_the_tunnel_user_gets_no_shell_and_runs_no_command(tunnelled, harness_root, sshds):
    """Logged in (the key is accepted), the forced command runs through nologin: exit 1."""
    for extra in ([], ["-tt"]):
        argv = _ssh(harness_root, sshds, *extra)
        ret = subprocess.run(argv + ["id; echo SHELL-RAN"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL, check=False)
        out = ret.stdout + ret.stderr
        assert "uid=" not in out and "SHELL-RAN" not in out, ret
        if extra:  # no pty: the session ends there
            assert ret.returncode == 255 and "PTY allocation request failed" in ret.stderr, ret
        else:
            assert ret.returncode == 1 and "This account is currently not available" in out, ret
    assert "Accepted publickey for mysqlrepl-tunnel" in sshds["db1"].log_text()


@pytest.mark.parametrize("target", ["another port", "another address"])
def test_the_tunnel_user_cannot_forward_elsewhere(tunnelled, harness_root, sshds, mariadb_servers, target):
    db1, db3 = mariadb_servers["db1"], mariadb_servers["db3"]
    dest = f"{db1.address}:{sshds['db1'].port}" if target == "another port" else f"{db3.address}:{db3.port}"
    argv = _ssh(harness_root, sshds, "-N", "-v", "-L", f"127.0.0.1:15001:{dest}")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _answers(15001), timeout=15, what="the local end of the -L")
        with socket.create_connection(("127.0.0.1", 15001), timeout=5) as conn:
            conn.settimeout(5)
            assert conn.recv(100) == b""  # the far side refused to open the channel
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert "administratively prohibited" in err, err[-2000:]


def test_the_tunnel_user_cannot_listen_on_another_port(tunnelled, harness_root, sshds):
    argv = _ssh(harness_root, sshds, "-N", "-R", "127.0.0.1:15002:127.0.0.1:9")
    ret = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                         check=False)
    assert ret.returncode == 255 and "remote port forwarding failed" in ret.stderr, ret
    assert not _answers(15002)


# -- drift: test=True names it, a highstate fixes it --------------------------------------------

def test_drift_is_listed_by_test_and_fixed_by_a_highstate(tunnelled, salt_cli, harness_root, sshds):
    known = harness_root / "tunnel" / "db2" / "known_hosts"
    good_known = known.read_text()
    alias, _type, _key = good_known.split()
    known.write_text(f"{alias} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherHostKeyOtherHostKeyOtherHostKey0\n")
    ak = sshds["db3"].authorized_keys
    loose = "\n".join(line.replace("restrict,", "") if not line.startswith("#") else line
                      for line in ak.read_text().splitlines()) + "\n"
    ak.write_text(loose)
    assert salt_cli.run("service.stop", "mysqlrepl-tunnel-db1-db3", minion_tgt="db1").data is True

    ret = apply(salt_cli, test=True)
    changes = changes_of(ret)
    assert changes["db2"] == {"mysqlrepl-tunnels": {"db2": {str(known): "content differs"}}}, changes
    assert changes["db3"]["mysqlrepl-tunnel-access"] == {"db3": {str(ak): "content differs"}}, changes
    # and what the stopped tunnel does: db3's link through it is down
    assert set(changes["db3"]) <= {"mysqlrepl-tunnel-access", "mysqlrepl-replication"}, changes
    assert changes["db1"] == {"mysqlrepl-tunnels": {"db1": {"service mysqlrepl-tunnel-db1-db3": "started"}}}, \
        changes

    ret = apply(salt_cli)
    assert not all_ok(ret), all_ok(ret)
    assert known.read_text() == good_known and "restrict," in ak.read_text()
    assert _tunnel_state(salt_cli, "db1", "db1-db3")["up"]
    assert changes_of(apply(salt_cli, test=True)) == {"db1": {}, "db2": {}, "db3": {}}


# -- seed 001: the two ends of the -R tunnel become a two-master pair --------------------------

@pytest.fixture(scope="module")
def paired(tunnelled, mariadb_servers, harness_root, sshds, write_pillar, salt_cli):
    pillar = tunnel_pillar(mariadb_servers, harness_root, sshds)
    top = pillar["mysqlrepl"]
    del top["master"]
    top["masters"] = ["db1", "db3"]
    # an app session on db1 from before the conversion keeps auto_increment_increment 1
    old_session = mariadb_servers["db1"].connect()
    write_pillar(pillar)
    first = apply(salt_cli)
    old_session.close()
    ret = apply(salt_cli)
    return {"pillar": pillar, "ret": ret, "first": first, "old_session": old_session}


def test_a_session_older_than_the_pair_settings_holds_the_conversion_back(paired):
    """The highstate with the old session open: db1 refuses to link (naming it), db3 stays read-only."""
    bad = all_ok(paired["first"])
    db1 = dict(bad.get("db1") or [])
    assert "client session(s) opened before its pair settings" in db1.get("mysqlrepl-replication", ""), bad
    assert "db3" in bad, bad  # waits for db1, which does not link


def test_a_highstate_turns_the_tunnel_ends_into_a_two_master_pair(paired, mariadb_servers):
    assert not all_ok(paired["ret"]), all_ok(paired["ret"])
    db1, db2, db3 = (mariadb_servers[n] for n in ("db1", "db2", "db3"))
    for srv, increment, offset, domain in ((db1, 2, 1, 0), (db3, 2, 2, 1)):
        row = srv.query("SELECT @@read_only AS ro, @@auto_increment_increment AS i, "
                        "@@auto_increment_offset AS o, @@gtid_domain_id AS d")[0]
        assert (row["ro"], row["i"], row["o"], row["d"]) == (0, increment, offset, domain), (srv.name, row)
    # db1 replicates from db3 through the -L end of its own tunnel, db3 from db1 through the -R end
    rs = replica_status(db1)
    assert (rs["Master_Host"], rs["Master_Port"]) == (tunnel_name("db3"), DB1_TUNNEL["port"])
    assert rs["Master_SSL_Verify_Server_Cert"] == "Yes" and rs["Slave_IO_Running"] == "Yes"
    assert db2.query("SELECT @@read_only AS ro")[0]["ro"] == 1


def _insert_rows(srv, origin, count, errors):
    try:
        conn = srv.connect(autocommit=True)
        with conn.cursor() as cur:
            for i in range(count):
                cur.execute("INSERT INTO tun.pair (origin, n) VALUES (%s, %s)", (origin, i))
        conn.close()
    except Exception as exc:  # pylint: disable=broad-except
        errors.append(f"{origin}: {exc}")


def test_both_masters_take_writes_into_the_same_table_without_collisions(paired, mariadb_servers):
    db1, db2, db3 = (mariadb_servers[n] for n in ("db1", "db2", "db3"))
    db1.query("CREATE TABLE IF NOT EXISTS tun.pair (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
              "origin VARCHAR(8) NOT NULL, n INT NOT NULL) ENGINE=InnoDB")
    pos = db1.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert db3.query("SELECT MASTER_GTID_WAIT(%s, 30) AS w", (pos,))[0]["w"] == 0
    errors = []
    threads = [threading.Thread(target=_insert_rows, args=(srv, srv.name, 1000, errors)) for srv in (db1, db3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    pos1 = db1.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    pos3 = db3.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    for srv in (db1, db2, db3):
        for pos in (pos1, pos3):
            assert srv.query("SELECT MASTER_GTID_WAIT(%s, 60) AS w", (pos,))[0]["w"] == 0, (srv.name, pos)
    sums = {srv.name: srv.query("CHECKSUM TABLE tun.pair")[0]["Checksum"] for srv in (db1, db2, db3)}
    assert len(set(sums.values())) == 1, sums
    rows = db1.query("SELECT origin, COUNT(*) AS n, SUM(id % 2) AS odd FROM tun.pair GROUP BY origin")
    assert {r["origin"]: (r["n"], int(r["odd"])) for r in rows} == {"db1": (1000, 1000), "db3": (1000, 0)}
    for srv in (db1, db2, db3):
        rs = replica_status(srv)
        assert (rs["Slave_IO_Running"], rs["Slave_SQL_Running"], rs["Last_SQL_Errno"]) == ("Yes", "Yes", 0), \
            (srv.name, rs["Last_SQL_Error"])


def test_a_switch_on_a_pair_is_refused_with_what_to_do(paired, salt_run_cli, mariadb_servers):
    ret = salt_run_cli.run("mysqlrepl.switch", "db3")
    assert ret.returncode == 1, ret
    assert "two-master pair" in ret.stdout and "point its apps at" in ret.stdout, ret.stdout
    assert mariadb_servers["db1"].query("SELECT @@read_only AS ro")[0]["ro"] == 0


def test_a_second_highstate_on_the_pair_changes_nothing(paired, salt_cli):
    ret = apply(salt_cli)
    assert not all_ok(ret), all_ok(ret)
    assert changes_of(ret) == {"db1": {}, "db2": {}, "db3": {}}


def test_no_private_key_or_password_in_any_salt_log(paired, harness_root):
    """Every log of the session's salt-master and minions (debug level)."""
    needles = [b"PRIVATE KEY", PASSWORD.encode()]
    hits, scanned = [], []
    for path in (harness_root / "salt").rglob("*.log"):
        data = path.read_bytes()
        scanned.append(path.name)
        hits += [(str(path), n) for n in needles if n in data]
    assert scanned.count("minion.log") == 3 and "master.log" in scanned, scanned
    assert not hits, hits


def test_a_tunnel_removed_from_pillar_is_stopped_and_its_replica_goes_direct(
        paired, mariadb_servers, harness_root, write_pillar, salt_cli, salt_run_cli, sshds):
    """Both ends' certificates lose the tunnel name: the orchestration re-issues them in order."""
    db1, db2 = mariadb_servers["db1"], mariadb_servers["db2"]
    pillar = paired["pillar"]
    del pillar["mysqlrepl"]["servers"]["db2"]["tunnels"]
    write_pillar(pillar)
    unit = harness_root / "units" / "mysqlrepl-tunnel-db2-db1.service"
    assert unit.exists()
    changes = changes_of(apply(salt_cli, test=True))
    assert changes["db2"]["mysqlrepl-tunnels"] == {"db2": {
        "service mysqlrepl-tunnel-db2-db1": "stopped, disabled, unit removed (no longer in pillar)"}}, changes
    assert changes["db2"]["mysqlrepl-replication"]["db2"]["host"] == {
        "old": tunnel_name("db1"), "new": db1.address}, changes
    ret = salt_run_cli.run("state.orchestrate", "mysqlrepl.orch.setup")
    failed = {k: v.get("comment") for k, v in orch_steps(ret).items() if v.get("result") is not True}
    assert ret.returncode == 0 and not failed, failed
    assert not unit.exists() and not autossh_pids_of(harness_root, "db2")
    # db1 is no far side any more: its authorized_keys holds no key
    keys = [ln for ln in sshds["db1"].authorized_keys.read_text().splitlines() if not ln.startswith("#")]
    assert keys == [], keys
    rs = replica_status(db2)
    assert (rs["Master_Host"], rs["Master_Port"], rs["Slave_IO_Running"]) == (db1.address, db1.port, "Yes"), rs
    assert rs["Master_SSL_Verify_Server_Cert"] == "Yes"
    db1.query("INSERT INTO tun.t (v) VALUES ('direct again')")
    assert db2.query("SELECT MASTER_GTID_WAIT(%s, 30) AS w", (gtid_of(db1),))[0]["w"] == 0
    assert changes_of(apply(salt_cli)) == {"db1": {}, "db2": {}, "db3": {}}


def gtid_of(srv):
    return srv.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]


def autossh_pids_of(harness_root, near):
    return [pid for pid in autossh_pids(harness_root)
            if str(harness_root / "tunnel" / near / "") in open(f"/proc/{pid}/cmdline", "rb").read()
            .replace(b"\0", b" ").decode(errors="replace")]


class _Writer(threading.Thread):
    """Inserts into tun.pair until told to stop or the server turns read-only (1290);
    ``committed`` counts the rows the server acknowledged."""

    def __init__(self, srv, origin):
        super().__init__(daemon=True)
        self.srv, self.origin = srv, origin
        self.committed, self.stopped_by, self.halt = 0, None, threading.Event()

    def run(self):
        # an app account: root (SUPER) writes through read_only, and unpair refuses that
        conn = pymysql.connect(host=self.srv.address, port=self.srv.port, user=workload.APP_USER,
                               password=workload.APP_PASSWORD, autocommit=True, ssl_disabled=True)
        try:
            with conn.cursor() as cur:
                while not self.halt.is_set():
                    try:
                        cur.execute("INSERT INTO tun.pair (origin, n) VALUES (%s, %s)", (self.origin, self.committed))
                    except Exception as exc:  # pylint: disable=broad-except
                        self.stopped_by = exc.args[0] if exc.args else repr(exc)
                        return
                    self.committed += 1
                    time.sleep(0.002)
        finally:
            conn.close()


def test_unpair_keeps_one_master_loses_no_row_and_repoints_the_other_masters_replica(
        paired, mariadb_servers, write_pillar, salt_cli, salt_run_cli):
    """Seed 001 undone: db3 stays the only master while both masters take writes; db1 becomes its
    read-only replica, db2 (a replica of db1) is repointed to db3."""
    db1, db2, db3 = (mariadb_servers[n] for n in ("db1", "db2", "db3"))
    pillar = copy.deepcopy(paired["pillar"])
    top = pillar["mysqlrepl"]
    del top["masters"]
    top["master"] = "db3"
    db1.session(f"CREATE USER IF NOT EXISTS '{workload.APP_USER}'@'%' IDENTIFIED BY '{workload.APP_PASSWORD}'",
                f"GRANT SELECT, INSERT ON tun.* TO '{workload.APP_USER}'@'%'")
    assert db3.query("SELECT MASTER_GTID_WAIT(%s, 30) AS w", (gtid_of(db1),))[0]["w"] == 0
    writers = {srv.name: _Writer(srv, f"u-{srv.name}") for srv in (db1, db3)}
    for w in writers.values():
        w.start()
    try:
        write_pillar(pillar)
        # until unpair runs, the highstate leaves db3 and db2 alone and says what to run...
        pending = all_ok(apply(salt_cli, test=True))
        comments = {m: " ".join(c for _i, c in v) for m, v in pending.items()}
        assert "salt-run mysqlrepl.unpair keep=db3" in comments.get("db3", ""), pending
        assert "mysqlrepl.unpair keep=db3" in comments.get("db2", ""), pending
        time.sleep(1)
        # ...a highstate run meanwhile (a schedule) makes db1 read-only (a replica in the new
        # pillar), and keeps db3's GTID domain while db3 is writable and replicates
        between = state_returns(apply(salt_cli))
        db3_comments = " ".join(st["comment"] for st in between["db3"])
        assert "gtid_domain_id stays 1 (pillar: 0)" in db3_comments, db3_comments
        assert db3.query("SELECT @@gtid_domain_id AS d, @@read_only AS ro")[0] == {"d": 1, "ro": 0}
        assert db1.query("SELECT @@read_only AS ro")[0]["ro"] == 1
        wrong = salt_run_cli.run("mysqlrepl.unpair", "keep=db1")
        assert wrong.returncode == 1 and "pillar names db3 the master" in wrong.stdout, wrong.stdout
        dry = salt_run_cli.run("mysqlrepl.unpair", "keep=db3", "dry_run=True")
        assert (dry.data["other"], dry.data["followers"]) == ("db1", ["db2"]), dry.stdout
        ret = salt_run_cli.run("mysqlrepl.unpair", "keep=db3")
        assert ret.returncode == 0 and ret.data["result"] is True, ret.stdout
        time.sleep(1)
    finally:
        for w in writers.values():
            w.halt.set()
            w.join(30)
    # db1's writer was stopped by read_only (1290); db3's ran throughout
    assert writers["db1"].stopped_by == 1290 and writers["db3"].stopped_by is None, \
        {n: w.stopped_by for n, w in writers.items()}
    assert writers["db1"].committed > 0 and writers["db3"].committed > 0
    assert db3.query("SELECT @@read_only AS ro")[0]["ro"] == 0 and replica_status(db3) is None
    for srv in (db1, db2):
        rs = replica_status(srv)
        assert rs["Slave_IO_Running"] == "Yes" and rs["Slave_SQL_Running"] == "Yes", (srv.name, rs)
        assert rs["Master_SSL_Verify_Server_Cert"] == "Yes"
        assert srv.query("SELECT @@read_only AS ro")[0]["ro"] == 1
    assert (replica_status(db2)["Master_Host"], replica_status(db2)["Master_Port"]) == (db3.address, db3.port)
    pos = gtid_of(db3)
    for srv in (db1, db2):
        assert srv.query("SELECT MASTER_GTID_WAIT(%s, 60) AS w", (pos,))[0]["w"] == 0, srv.name
    # every acknowledged row of both writers, once, on every server
    for srv in (db1, db2, db3):
        got = {r["origin"]: (r["n"], r["d"]) for r in srv.query(
            "SELECT origin, COUNT(*) AS n, COUNT(DISTINCT n) AS d FROM tun.pair "
            "WHERE origin LIKE 'u-%%' GROUP BY origin")}
        assert got == {f"u-{n}": (w.committed, w.committed) for n, w in writers.items()}, (srv.name, got)
    sums = {srv.name: srv.query("CHECKSUM TABLE tun.pair")[0]["Checksum"] for srv in (db1, db2, db3)}
    assert len(set(sums.values())) == 1, sums
    # the highstate converges the one-master pillar, then changes nothing
    ret = apply(salt_cli)
    assert not all_ok(ret), all_ok(ret)
    assert changes_of(apply(salt_cli)) == {"db1": {}, "db2": {}, "db3": {}}
    assert db3.query("SELECT @@read_only AS ro")[0]["ro"] == 0


def test_no_password_in_any_argv_or_environ_through_setup_tunnels_and_pair(paired, argv_watch):
    """Runs after the pair's tests (file order): autossh, ssh, sshd, the seeds through the tunnels."""
    assert argv_watch.is_alive() and argv_watch.samples > 100, argv_watch.samples
    assert argv_watch.hits == [], argv_watch.hits[:5]
