#!/usr/bin/env python3
"""
``salt-run mysqlrepl.health`` wall time on a 3-server and a 9-server topology,
same run, same salt-master: both brought up for real by
``salt-run state.orchestrate mysqlrepl.orch.setup`` (one master, every replica
over verified TLS), one minion per server (h3-db1..h3-db3, h9-db1..h9-db9),
MariaDB on loopback (127.0.0.101-103 and 111-119 by default, port 33309).

    .venv/bin/python bench/health.py --runs 20

The runner reads every db minion in one job (``mysqlrepl.health_facts``, all
at once), so 9 servers should cost little more than 3: the target is
``wall_s_9 / wall_s <= 1.5`` (reads in parallel, not one after another).

``--runs`` measurements per topology, alternating between the two (3 then 9,
then 9 then 3, ...), each one ``salt-run mysqlrepl.health topology=<t>
--out=json`` as an operator types it. Every answer must be healthy, name every
server of its topology and exit 0: a bench that measures a broken topology
fails (no last line). One unmeasured warm-up call per topology first (it waits
up to 60 s for the replicas to settle after the setup).

Figures per topology:

* wall_s: the runner's own ``read_s`` (its job to the minions and the
  verdict), median over the runs (p90, min and max printed beside it).
* salt-run: the whole ``salt-run`` process from start to exit (Python start,
  module loading, master connection, output), printed only; with the share of
  the machine's CPU that was busy meanwhile (every process on it, /proc/stat).
* Salt's floor, printed only, for scale: one ``test.ping`` job to the same
  minions (LocalClient, publish to last return), 3 times each, interleaved.
  Every minion runs on this one machine, so a job to 9 minions costs 9 minion
  jobs of CPU here, where a real topology spreads them over 9 hosts: when the
  CPU is saturated, the ratio measures the machine's cores as much as the
  runner's parallelism; this floor shows how much.

``SIGTERM``/``SIGINT`` stop the salt-master, minions and servers and remove the
runtime dir, as a normal exit does (``--keep`` leaves it for its logs).

Last line:
``health servers=3 wall_s=<median, 3 servers> wall_s_9=<median, 9 servers> ratio=<wall_s_9/wall_s>``
"""
# ci-args: --runs 3
# last-line: health servers=<> wall_s=<> wall_s_9=<> ratio=<>

import argparse
import importlib.util
import math
import os
import pathlib
import signal
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import mariadb  # noqa: E402


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sw = _load("bench_switchover", REPO / "bench" / "switchover.py")  # topology pillar, bring-up, signals, leftovers
sb = sw.sb
log, p50 = sw.log, sw.p50

PORT = 33309  # apart from the other benches (33306-33308) and the test harness (3306)
SEED_PORT = 34449
SIZES = (3, 9)
TARGET_RATIO = 1.5
PASSWORD = "bench-Repl-pw_5e9"
ADMIN_PASSWORD = "bench-Sw1tch-pw_64"


def p90(values):
    """Nearest-rank 90th percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


class Topology(sw.Topology):
    """``size`` servers, one master and ``size - 1`` replicas, each server on its own minion; no app minion."""

    def __init__(self, root, size, first_octet):
        super().__init__(root, f"h{size}", size - 1, first_octet)
        self.size = size
        self.app_minion = None
        self.minion_of = {name: f"{self.name}-{name}" for name in self.names}
        self.db_minions = list(self.minion_of.values())  # sw.bring_up: one minion each
        self.db_minion = self.minion_of["db1"]  # the CA's minion (sw.Topology.pillar)
        self.read_s = []
        self.wall_s = []
        self.busy = []  # % of the machine's CPU busy during each salt-run
        self.ping_s = []
        self.ping_busy = []

    def addresses(self):
        return [f"127.0.0.{self.first_octet + i}" for i in range(self.size)]

    def start_servers(self):
        self.servers = mariadb.start_servers(self.root / "db" / self.name, names=self.names,
                                             first_octet=self.first_octet, port=PORT)
        for name, srv in self.servers.items():
            srv.write_service_json(self.root / "svc" / self.minion_of[name])

    def pillar(self):
        data = sw.Topology.pillar(self)
        cfg = data["mysqlrepl"]
        for name, entry in cfg["servers"].items():
            entry["minion"] = self.minion_of[name]
        cfg["replication"]["password"] = PASSWORD
        cfg["seed"]["port"] = SEED_PORT
        cfg["admin"]["password"] = ADMIN_PASSWORD
        cfg.pop("switch", None)  # no switch here
        return data


def cpu_ticks():
    """(all, idle + iowait) jiffies of the machine, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    return sum(values), values[3] + values[4]


def busy_since(before):
    """Percent of the machine's CPU time that was busy since ``before`` (cpu_ticks())."""
    total, idle = (a - b for a, b in zip(cpu_ticks(), before))
    return 100.0 * (total - idle) / total if total else float("nan")


def target(topo):
    """What the runner targets with ``topology=`` (compound)."""
    return f"( I@mysqlrepl:* ) and I@mysqlrepl:topology:{topo.name}"


def health(salt, topo):
    """One ``salt-run mysqlrepl.health topology=<t> --out=json``: (report, salt-run wall s, problem or None)."""
    t0 = time.monotonic()
    proc, data = salt.run("mysqlrepl.health", f"topology={topo.name}", timeout=300)
    wall = time.monotonic() - t0
    if not isinstance(data, dict) or "healthy" not in data:
        return data, wall, f"no report (exit {proc.returncode}):\n{sb._proc_tail(proc)}"  # pylint: disable=protected-access
    rows = data.get("servers") or {}
    if set(rows) != set(topo.names):
        return data, wall, f"servers {sorted(rows)} in the report, want {topo.names}"
    wrong = {n: r.get("minion") for n, r in rows.items() if r.get("minion") != topo.minion_of[n]}
    if wrong:
        return data, wall, f"servers on the wrong minions: {wrong}"
    if data.get("topology") != topo.name:
        return data, wall, f"report of topology {data.get('topology')!r}, want {topo.name!r}"
    if data["healthy"] is not True or proc.returncode != 0:
        return data, wall, f"not healthy (exit {proc.returncode}): {data.get('verdict')}; problems {data.get('problems')}"
    if not isinstance(data.get("read_s"), (int, float)):
        return data, wall, f"no read_s in the report: {data.get('read_s')!r}"
    return data, wall, None


def warm_up(salt, topo, timeout=60):
    """Until the topology answers healthy (replicas settling after the setup); not measured."""
    deadline = time.monotonic() + timeout
    while True:
        data, wall, problem = health(salt, topo)
        if problem is None:
            log(f"# {topo.name}: warm-up healthy ({data.get('verdict')}), read_s {data['read_s']:.3f} s, "
                f"salt-run {wall:.3f} s")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{topo.name}: not healthy {timeout} s after the setup: {problem}")
        log(f"# {topo.name}: warm-up: {problem.splitlines()[0][:300]}; again in 2 s")
        time.sleep(2)


def describe(topo):
    r, w = topo.read_s, topo.wall_s
    over = [b - a for a, b in zip(r, w)]
    log(f"# {topo.name} ({topo.size} servers, {len(r)} runs): runner read_s median {p50(r):.3f} s, "
        f"p90 {p90(r):.3f}, min {min(r):.3f}, max {max(r):.3f}; salt-run process median {p50(w):.3f} s, "
        f"p90 {p90(w):.3f}, min {min(w):.3f}, max {max(w):.3f} (outside the runner: median {p50(over):.3f} s)")


def ping_floor(root, topologies, pause, rounds=3):
    """
    Salt's own fan-out on this machine, for scale: one ``test.ping`` job to the
    same minions (the runner's target), from publish to the last return
    (LocalClient, as the runner uses it), median of ``rounds``, interleaved.
    """
    import salt.client  # pylint: disable=import-outside-toplevel

    with salt.client.LocalClient(str(root / "master" / "master")) as client:
        for i in range(rounds):
            for topo in (topologies if i % 2 == 0 else topologies[::-1]):
                time.sleep(pause)
                before = cpu_ticks()
                t0 = time.monotonic()
                got = set()
                for ret in client.cmd_iter(target(topo), "test.ping", tgt_type="compound", timeout=30):
                    got.update(m for m, r in (ret or {}).items() if isinstance(r, dict) and r.get("ret") is True)
                topo.ping_s.append(time.monotonic() - t0)
                topo.ping_busy.append(busy_since(before))
                if got != set(topo.minion_of.values()):
                    raise RuntimeError(f"{topo.name}: test.ping answered by {sorted(got)} only")
    small, large = topologies
    log(f"# Salt's floor on this machine ({os.cpu_count()} CPUs, every minion on it): one test.ping job to "
        f"{small.size} minions {p50(small.ping_s):.3f} s (CPU {p50(small.ping_busy):.0f}% busy), to "
        f"{large.size} {p50(large.ping_s):.3f} s (CPU {p50(large.ping_busy):.0f}% busy): ratio "
        f"{p50(large.ping_s) / p50(small.ping_s):.2f}. CPU busy during the salt-run health processes: "
        f"{small.name} median {p50(small.busy):.0f}%, {large.name} {p50(large.busy):.0f}%")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="measurements per topology (alternating)")
    ap.add_argument("--first-octet", type=int, default=101,
                    help="127.0.0.<N>..<N+2> for the 3 servers, <N+10>..<N+18> for the 9 (port %d)" % PORT)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between two measurements")
    ap.add_argument("--keep", action="store_true", help="leave the runtime dir (logs) in place")
    args = ap.parse_args(argv)
    if args.runs < 1 or not 2 <= args.first_octet <= 254 - 18:
        ap.error(f"--runs >= 1 and 2 <= --first-octet <= {254 - 18}")
    if os.geteuid() != 0:
        ap.error("run as root (MariaDB runs as mysql; the minions manage its files)")
    signal.signal(signal.SIGTERM, sw._on_signal)  # pylint: disable=protected-access
    signal.signal(signal.SIGINT, sw._on_signal)  # pylint: disable=protected-access
    root = pathlib.Path(tempfile.mkdtemp(prefix="mrbh-", dir="/tmp"))
    os.chmod(root, 0o755)
    mariadb.become_subreaper()
    small, large = Topology(root, SIZES[0], args.first_octet), Topology(root, SIZES[1], args.first_octet + 10)
    topologies = [small, large]
    pids = {}
    last = None
    try:
        started = time.monotonic()
        for topo in topologies:
            for address in topo.addresses():
                mariadb.check_port_free(address, PORT)
        for topo in topologies:
            topo.start_servers()
        log(f"# servers up {time.monotonic() - started:.1f} s "
            f"({', '.join(f'{t.name}: {t.addresses()[0]}..{t.addresses()[-1]}:{PORT}' for t in topologies)})")
        salt = sw.bring_up(root, topologies, pids)
        log(f"# salt-master and {sum(t.size for t in topologies)} minions up {time.monotonic() - started:.1f} s")
        for topo in topologies:
            t = time.monotonic()
            _states, failures = sw.orchestrate(salt, "mysqlrepl.orch.setup", {"mysqlrepl_orch": {"topology": topo.name}})
            if failures:
                raise RuntimeError(f"setup of {topo.name} failed: {failures}")
            log(f"# {topo.name}: setup orchestration {time.monotonic() - t:.1f} s")
        log(f"# setup {time.monotonic() - started:.1f} s in all")
        for topo in topologies:
            warm_up(salt, topo)
        for i in range(args.runs):
            for topo in (topologies if i % 2 == 0 else topologies[::-1]):
                time.sleep(args.pause)
                before = cpu_ticks()
                data, wall, problem = health(salt, topo)
                busy = busy_since(before)
                if problem is not None:
                    raise RuntimeError(f"{topo.name} run {i + 1}: {problem}")
                topo.read_s.append(float(data["read_s"]))
                topo.wall_s.append(wall)
                topo.busy.append(busy)
                log(f"{topo.name} run {i + 1}: read_s {data['read_s']:.3f} s, salt-run {wall:.3f} s, "
                    f"CPU {busy:.0f}% busy ({data['verdict']})")
        for topo in topologies:
            describe(topo)
        ping_floor(root, topologies, args.pause)
        wall_s, wall_s_9 = p50(small.read_s), p50(large.read_s)
        ratio = wall_s_9 / wall_s
        log(f"# target: ratio {ratio:.3f} {'<=' if ratio <= TARGET_RATIO else '>'} {TARGET_RATIO} -> "
            f"{'met' if ratio <= TARGET_RATIO else 'NOT met'} (salt-run processes: "
            f"{p50(large.wall_s) / p50(small.wall_s):.3f}); {time.monotonic() - started:.1f} s in all")
        last = (f"health servers={small.size} wall_s={wall_s:.3f} wall_s_9={wall_s_9:.3f} ratio={ratio:.3f}")
    finally:
        sw.tear_down(root, pids, topologies, keep=args.keep)
        if args.keep:
            log(f"# kept {root}")
    # the figures last, after whatever the cleanup printed
    log(last)


if __name__ == "__main__":
    main()
