#!/usr/bin/env python3
"""
Replication through the formula's SSH tunnel against a direct TLS link, same
run, same master: db1 (minion tb-m, a real sshd on its address) feeds db2
directly and db3 through the ``ssh -L`` tunnel db3's minion opens to db1's
sshd (autossh, run from the unit the formula writes), all brought up by the
setup orchestration on a real salt-master. The replication settings are the
formula's defaults (connect_retry 5 s, heartbeat 2 s); the tunnel's are too
(ServerAliveInterval 10 s, ServerAliveCountMax 3).

    .venv/bin/python bench/tunnel.py --rows 200000 --runs 5

Figures:

* throughput: both replicas' IO threads stopped, ``--rows`` rows (~100 bytes
  each, 1000 per transaction) committed on db1, then one replica's IO thread
  started alone and timed until it has applied db1's position; then the other.
  rows/s of each, median over ``--runs`` (the order alternates).
* lag: a writer commits one row every 5 ms for ``--lag-s`` seconds; a watcher
  per replica polls the highest id every millisecond; lag = first seen there -
  commit acknowledged on db1. p50 through the tunnel (direct printed beside it).
* reconnect: ``kill -9`` of the ssh process under autossh while a writer
  commits a row every 10 ms, until db3's IO and SQL threads run again and it
  has applied db1's position read at that moment. Median over ``--runs``.

``SIGTERM``/``SIGINT`` stop sshd, the salt-master, minions, autossh and the
servers and remove the runtime dir, as a normal exit does.

Last line:
``tunnel direct_rows_s=<> tunnel_rows_s=<> ratio=<> lag_p50_ms=<> reconnect_s=<>``
(ratio = tunnel_rows_s / direct_rows_s).
"""
# ci-args: --rows 5000 --runs 1 --lag-s 3
# last-line: tunnel direct_rows_s=<> tunnel_rows_s=<> ratio=<> lag_p50_ms=<> reconnect_s=<>

import argparse
import importlib.util
import os
import pathlib
import pwd
import signal
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import mariadb  # noqa: E402
from tests.support.sshd import SSHD  # noqa: E402


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sw = _load("bench_switchover", REPO / "bench" / "switchover.py")  # bring-up, signals, leftovers
sb = sw.sb

PORT = 33308  # apart from the other benches and the test harness
SEED_PORT = 34448
FIRST_OCTET = 141
TUNNEL = {"peer": "db1", "port": 34416, "seed_port": 34417, "peer_port": 34426, "peer_seed_port": 34427}
PASSWORD = "bench-Repl-pw_7d2"
ADMIN_PASSWORD = "bench-Sw1tch-pw_31"
USER = "mysqlrepl-tunnel"
NAME = "tb"


log, p50 = sw.log, sw.p50


class Topology:
    """db1 on minion tb-m (the far side), db2 and db3 on tb-r; db3 opens the tunnel."""

    name = NAME
    db_minions = ["tb-m", "tb-r"]
    db_minion = "tb-m"
    app_minion = None

    def __init__(self, root):
        self.root = root
        self.servers = {}
        self.sshd = None

    def start(self):
        self.servers = mariadb.start_servers(self.root / "db", names=("db1", "db2", "db3"),
                                             first_octet=FIRST_OCTET, port=PORT)
        self.servers["db1"].write_service_json(self.root / "svc" / "tb-m")
        for name in ("db2", "db3"):
            self.servers[name].write_service_json(self.root / "svc" / "tb-r")
        db1 = self.servers["db1"]
        self.sshd = SSHD("db1", db1.address, 22000 + FIRST_OCTET, self.root / "sshd", USER).start(
            self.root / "svc" / "tb-m")

    def pillar(self):
        servers = {}
        for name, srv in self.servers.items():
            entry = srv.pillar_entry()
            entry["minion"] = "tb-m" if name == "db1" else "tb-r"
            servers[name] = entry
        servers["db1"]["sshd"] = self.sshd.pillar()
        servers["db3"]["tunnels"] = [dict(TUNNEL)]
        db1 = self.servers["db1"]
        return {"mysqlrepl": {
            "topology": NAME, "master": "db1", "restart_allowed": True,
            "ca": {"minion": "tb-m", "ca_name": "mysql", "cacert_path": str(db1.root / "pki"),
                   "bits": 2048, "days": 730, "CN": "tb-ca.bench", "O": "bench"},
            "tls": {"subject": {"O": "bench"}},
            "replication": {"user": "repl", "password": PASSWORD, "require": "x509"},
            "seed": {"port": SEED_PORT, "timeout": 600},
            "admin": {"password": ADMIN_PASSWORD},
            "tunnel": {"dir": str(self.root / "tunnel"), "unit_dir": str(self.root / "units")},
            "servers": servers,
        }}


def gtid_pos(srv):
    return srv.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]


def applied(srv, pos, timeout):
    return srv.query("SELECT MASTER_GTID_WAIT(%s, %s) AS w", (pos, timeout))[0]["w"] == 0


def throughput(topo, rows, order):
    """Seconds each replica takes to fetch and apply ``rows`` rows, alone, in ``order``."""
    db1 = topo.servers["db1"]
    for name in ("db2", "db3"):
        topo.servers[name].query("STOP SLAVE IO_THREAD")
    conn = db1.connect(autocommit=False)
    with conn.cursor() as cur:
        payload = "x" * 100
        for start in range(0, rows, 1000):
            n = min(1000, rows - start)
            cur.executemany("INSERT INTO tb.bulk (v) VALUES (%s)", [(payload,)] * n)
            conn.commit()
    conn.close()
    pos = gtid_pos(db1)
    out = {}
    for name in order:
        srv = topo.servers[name]
        t0 = time.monotonic()
        srv.query("START SLAVE IO_THREAD")
        if not applied(srv, pos, 600):
            raise RuntimeError(f"{name} did not apply {pos}")
        out[name] = time.monotonic() - t0
    return out


class Watch(threading.Thread):
    """Polls the highest id of tb.lag on a replica every millisecond; first-seen times."""

    def __init__(self, srv):
        super().__init__(daemon=True)
        self.srv = srv
        self.seen = {}
        self.stop_event = threading.Event()

    def run(self):
        conn = self.srv.connect()
        last = 0
        with conn.cursor() as cur:
            while not self.stop_event.is_set():
                cur.execute("SELECT COALESCE(MAX(id), 0) FROM tb.lag")
                top = cur.fetchone()[0]
                now = time.monotonic()
                for i in range(last + 1, top + 1):
                    self.seen[i] = now
                last = max(last, top)
                time.sleep(0.001)
        conn.close()


def lag(topo, seconds):
    """{replica: [lag ms]} for rows committed every 5 ms for ``seconds``."""
    db1 = topo.servers["db1"]
    watches = {n: Watch(topo.servers[n]) for n in ("db2", "db3")}
    for w in watches.values():
        w.start()
    committed = {}
    conn = db1.connect()
    with conn.cursor() as cur:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            cur.execute("INSERT INTO tb.lag (t) VALUES (NOW(6))")
            committed[cur.lastrowid] = time.monotonic()
            time.sleep(0.005)
    conn.close()
    time.sleep(1)
    for w in watches.values():
        w.stop_event.set()
        w.join(5)
    return {n: [(w.seen[i] - t) * 1000 for i, t in committed.items() if i in w.seen] for n, w in watches.items()}


def _processes():
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                ppid = int(fh.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
        except (OSError, ValueError, IndexError):
            continue
        out.append((int(entry), ppid, argv))
    return out


def tunnel_ssh_pid(root):
    """The ssh child of the autossh that uses this bench's tunnel key."""
    mark = str(root / "tunnel")
    procs = _processes()
    parents = {pid for pid, _pp, argv in procs
               if argv and argv[0].endswith("autossh") and any(mark in a for a in argv)}
    for pid, ppid, argv in procs:
        if ppid in parents and argv and argv[0].endswith("/ssh"):
            return pid
    return None


def reconnect(topo, root):
    """Seconds from kill -9 of the tunnel's ssh until db3 runs and has applied db1's position."""
    db1, db3 = topo.servers["db1"], topo.servers["db3"]
    pid = tunnel_ssh_pid(root)
    if pid is None:
        raise RuntimeError("no ssh process under autossh for the tunnel")
    stop = threading.Event()

    def write():
        conn = db1.connect()
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("INSERT INTO tb.lag (t) VALUES (NOW(6))")
                time.sleep(0.01)
        conn.close()

    def registrations():
        # the master counts every replica (re)connection (REGISTER_SLAVE); only db3's goes through the tunnel
        return int(db1.query("SHOW GLOBAL STATUS LIKE 'Slave_connections'")[0]["Value"])

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        time.sleep(0.5)
        before = registrations()
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        deadline = t0 + 120
        while time.monotonic() < deadline:
            rs = db3.query("SHOW SLAVE STATUS")[0]
            # back: connected again (a new registration), both threads run, caught up
            if registrations() > before and rs["Slave_IO_Running"] == "Yes" \
                    and rs["Slave_SQL_Running"] == "Yes" and applied(db3, gtid_pos(db1), 0):
                return time.monotonic() - t0
            time.sleep(0.02)
        raise RuntimeError("db3 did not come back within 120 s")
    finally:
        stop.set()
        writer.join(10)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lag-s", type=float, default=10.0)
    ap.add_argument("--keep", action="store_true", help="leave the runtime dir (logs) in place")
    args = ap.parse_args(argv)
    if args.rows < 1000 or args.runs < 1 or args.lag_s <= 0:
        ap.error("--rows >= 1000, --runs >= 1, --lag-s > 0")
    if os.geteuid() != 0:
        ap.error("run as root (MariaDB runs as mysql; the minions manage users and files)")
    signal.signal(signal.SIGTERM, sw._on_signal)  # pylint: disable=protected-access
    signal.signal(signal.SIGINT, sw._on_signal)  # pylint: disable=protected-access
    root = pathlib.Path(tempfile.mkdtemp(prefix="mrbt-", dir="/tmp"))
    os.chmod(root, 0o755)
    mariadb.become_subreaper()
    hosts_before = pathlib.Path("/etc/hosts").read_bytes()
    try:
        pwd.getpwnam(USER)
        user_existed = True
    except KeyError:
        user_existed = False
    topo = Topology(root)
    pids = {}
    last = None
    try:
        t = time.monotonic()
        topo.start()
        salt = sw.bring_up(root, [topo], pids)
        _states, failures = sw.orchestrate(salt, "mysqlrepl.orch.setup", {"mysqlrepl_orch": {"topology": NAME}})
        if failures:
            raise RuntimeError(f"setup failed: {failures}")
        rs = topo.servers["db3"].query("SHOW SLAVE STATUS")[0]
        log(f"# setup {time.monotonic() - t:.1f} s; db3 replicates from {rs['Master_Host']}:{rs['Master_Port']} "
            f"(verify {rs['Master_SSL_Verify_Server_Cert']}), db2 from "
            f"{topo.servers['db2'].query('SHOW SLAVE STATUS')[0]['Master_Host']}")
        topo.servers["db1"].session(
            "CREATE DATABASE IF NOT EXISTS tb",
            "CREATE TABLE IF NOT EXISTS tb.bulk (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB",
            "CREATE TABLE IF NOT EXISTS tb.lag (id BIGINT AUTO_INCREMENT PRIMARY KEY, t DATETIME(6)) ENGINE=InnoDB")
        if not all(applied(topo.servers[n], gtid_pos(topo.servers["db1"]), 60) for n in ("db2", "db3")):
            raise RuntimeError("replicas did not apply the schema")
        direct, tunnel = [], []
        for run in range(args.runs):
            order = ("db2", "db3") if run % 2 == 0 else ("db3", "db2")
            secs = throughput(topo, args.rows, order)
            direct.append(args.rows / secs["db2"])
            tunnel.append(args.rows / secs["db3"])
            log(f"throughput run {run + 1} ({' then '.join(order)}): direct {direct[-1]:.0f} rows/s "
                f"({secs['db2']:.2f} s), tunnel {tunnel[-1]:.0f} rows/s ({secs['db3']:.2f} s)")
        lags = lag(topo, args.lag_s)
        log(f"lag over {args.lag_s:.0f} s ({len(lags['db3'])} rows): direct p50 {p50(lags['db2']):.2f} ms "
            f"max {max(lags['db2'], default=float('nan')):.1f} ms; tunnel p50 {p50(lags['db3']):.2f} ms "
            f"max {max(lags['db3'], default=float('nan')):.1f} ms")
        backs = []
        for run in range(args.runs):
            backs.append(reconnect(topo, root))
            log(f"reconnect run {run + 1}: {backs[-1]:.2f} s from kill -9 of ssh to db3 running and caught up")
            time.sleep(1)
        d, tn = p50(direct), p50(tunnel)
        log(f"# targets: ratio {tn / d:.2f} {'>=' if tn / d >= 0.8 else '<'} 0.8; "
            f"reconnect {p50(backs):.2f} s {'<=' if p50(backs) <= 10 else '>'} 10 s")
        last = (f"tunnel direct_rows_s={d:.0f} tunnel_rows_s={tn:.0f} ratio={tn / d:.2f} "
                f"lag_p50_ms={p50(lags['db3']):.2f} reconnect_s={p50(backs):.2f}")
    finally:
        def tunnel_processes():
            # autossh first (it would start ssh again), by PID: its argv names the runtime dir
            for pid, _ppid, argv in _processes():
                if argv and argv[0].endswith("autossh") and any(str(root) in a for a in argv):
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            if topo.sshd is not None:
                topo.sshd.stop()

        # stop_leftovers then gets autossh's ssh (it names the runtime dir)
        sw.tear_down(root, pids, [topo], keep=args.keep, before_servers=tunnel_processes)
        pathlib.Path("/etc/hosts").write_bytes(hosts_before)
        if not user_existed:
            os.system(f"userdel {USER} 2>/dev/null")  # noqa: S605 (fixed name)
        if args.keep:
            log(f"# kept {root}")
    # the figures last, after whatever the cleanup printed
    log(last)


if __name__ == "__main__":
    main()
