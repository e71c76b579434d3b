#!/usr/bin/env python3
"""
Planned switchover figures: N switchovers back and forth (db1 <-> db2) through
``salt-run state.orchestrate mysqlrepl.orch.switch`` under writers that are
told nothing by the switch, on a real salt-master with minions and R+1 MariaDB
servers on loopback (``sync_binlog=1``, ``innodb_flush_log_at_trx_commit=1``,
as the formula writes them).

    .venv/bin/python bench/switchover.py --runs 20 --replicas 2
    .venv/bin/python bench/switchover.py --runs 20 --replicas 8 --compare 2

``--compare R2`` brings up a second topology with R2 replicas on the same
salt-master (as staging and production would be) and interleaves their runs.

Figures per run:

* block: from the runner's start (``started_at`` in its result: the
  orchestration's module sync before it is Salt's, not the switch's), the
  longest gap between two consecutive commits of writer A (one
  commit every 2-3 ms as the app user, finding the writable master like a
  read_only-aware driver or proxy: ``SELECT @@read_only`` over a monitoring
  connection it keeps to each server) that overlaps [switch start, A's first commit on the
  new master's server_id]. A run with no master change is a failed run.
* repoint: from the new master becoming writable (the critical section's
  clock) until the app minion's rendered hosts entry names it and writer B
  (which connects to whatever ``masterdb`` names in that hosts file) has its
  first commit there.
* replicas ready: from the end of the write block until every replica runs
  from the new master, TLS-verified and caught up (the runner's figure).

* orchestration: the whole ``salt-run state.orchestrate mysqlrepl.orch.switch``
  command, from its start to its exit (module sync checks included).

``SIGTERM``/``SIGINT`` stop the salt-master, minions and servers and remove the
runtime dir, as a normal exit does.

Last line:
``switchover runs=<N> replicas=<R> block_p50_ms=.. block_max_ms=.. repoint_p50_s=.. replicas_ready_p50_s=.. acked=.. lost=.. dup=.. orchestration_p50_s=..``
"""
# ci-args: --runs 2
# last-line: switchover runs=<N> replicas=<R> block_p50_ms=<> block_max_ms=<> repoint_p50_s=<> replicas_ready_p50_s=<> acked=<> lost=<> dup=<> orchestration_p50_s=<>

import argparse
import importlib.util
import json
import os
import pathlib
import signal
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import mariadb, workload  # noqa: E402

_spec = importlib.util.spec_from_file_location("sandbox_run", REPO / "sandbox" / "run.py")
sb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sb)

# apart from bench/seed.py (127.0.0.41/.42:33306) and the test harness (3306)
PORT = 33307
SEED_PORT = 34446
PASSWORD = "bench-Repl-pw_4c1"
ADMIN_PASSWORD = "bench-Sw1tch-pw_88"


def log(msg):
    print(msg, flush=True)


def p50(values):
    return statistics.median(values) if values else float("nan")


class Topology:
    """R+1 servers owned by one db minion, plus an app minion with its own hosts file."""

    def __init__(self, root, name, replicas, first_octet):
        self.root = root
        self.name = name
        self.replicas = replicas
        self.first_octet = first_octet
        self.db_minion = f"{name}-db"
        self.app_minion = f"{name}-app"
        self.names = [f"db{i + 1}" for i in range(replicas + 1)]
        self.servers = {}
        self.hosts_file = root / self.app_minion / "hosts"
        self.results = []
        self.master = "db1"

    def start_servers(self):
        self.servers = mariadb.start_servers(self.root / "db" / self.name, names=self.names,
                                             first_octet=self.first_octet, port=PORT)
        for srv in self.servers.values():
            srv.write_service_json(self.root / "svc" / self.db_minion)

    def pillar(self):
        servers = {}
        for name, srv in self.servers.items():
            entry = srv.pillar_entry()
            entry["minion"] = self.db_minion
            servers[name] = entry
        db1 = self.servers["db1"]
        return {"mysqlrepl": {
            "topology": self.name, "master": "db1", "restart_allowed": True,
            "ca": {"minion": self.db_minion, "ca_name": "mysql", "cacert_path": str(db1.root / "pki"),
                   "bits": 2048, "days": 730, "CN": f"{self.name}-ca.bench", "O": "bench"},
            "tls": {"subject": {"O": "bench"}},
            "replication": {"user": "repl", "password": PASSWORD, "require": "x509", "connect_retry": 1,
                            "heartbeat_period": 1, "wait_timeout": 60},
            "seed": {"port": SEED_PORT, "timeout": 600},
            "admin": {"password": ADMIN_PASSWORD},
            "switch": {"ready_timeout": 120},
            "servers": servers,
        }}

    def app_pillar(self):
        return {"mysqlrepl_app": {"topology": self.name},
                "infra": {"hosts_entries": {"masterdb": self.servers["db1"].address}}}

    def endpoints(self):
        return {n: (s.address, s.port) for n, s in self.servers.items()}

    def server_ids(self):
        return {s.server_id: n for n, s in self.servers.items()}

    def resolve(self):
        try:
            text = self.hosts_file.read_text(encoding="utf-8")
        except OSError:
            return None
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and "masterdb" in parts[1:]:
                return parts[0], PORT
        return None


def bring_up(root, topologies, pids):
    """salt-master (with the formula's ext_pillar), one db minion and one app minion per topology;
    ``pids`` gets each daemon's PID as it starts (a signal meanwhile still stops them)."""
    salt = sb.Salt(root)
    srv_tree = sb.make_state_tree(root)
    ports = {"publish": sb.free_port(), "ret": sb.free_port()}
    while ports["ret"] == ports["publish"]:
        ports["ret"] = sb.free_port()
    mcfg = sb.master_config(root, srv_tree, ports)
    mcfg["ext_pillar"] = [{"mysqlrepl": {}}]
    sb.write_yaml(root / "master" / "master", mcfg)
    pillar_dir = root / "pillar"
    top = {}
    for topo in topologies:
        sb.write_yaml(pillar_dir / f"{topo.name}_db.sls", topo.pillar(), mode=0o600)
        for minion in getattr(topo, "db_minions", [topo.db_minion]):
            top[minion] = [f"{topo.name}_db"]
        if topo.app_minion:
            sb.write_yaml(pillar_dir / f"{topo.name}_app.sls", topo.app_pillar())
            top[topo.app_minion] = [f"{topo.name}_app"]
    sb.write_yaml(pillar_dir / "top.sls", {"base": top})
    pids["master"] = sb.spawn(["salt-master", "-c", str(root / "master")], root / "master" / "logs").pid
    minions = []
    for topo in topologies:
        for minion in getattr(topo, "db_minions", [topo.db_minion]) + [m for m in [topo.app_minion] if m]:
            cfg = sb.minion_config(root, minion, ports)
            if minion == topo.app_minion:
                topo.hosts_file.parent.mkdir(parents=True, exist_ok=True)
                topo.hosts_file.write_text("127.0.0.1 localhost\n", encoding="utf-8")
                cfg["hosts.file"] = str(topo.hosts_file)
            sb.write_yaml(root / minion / "minion", cfg)
            minions.append(minion)
    time.sleep(2)
    for minion in minions:
        pids[minion] = sb.spawn(["salt-minion", "-c", str(root / minion)], root / minion / "logs").pid
    deadline = time.monotonic() + 120
    while True:
        proc, data = salt.salt("*", "test.ping", timeout=5)
        if isinstance(data, dict) and all(data.get(m) is True for m in minions):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"minions did not answer: {data}")
        time.sleep(1)
    proc, data = salt.run("saltutil.sync_all")
    proc, data = salt.salt("*", "saltutil.sync_all")
    return salt


def orchestrate(salt, sls, pillar, noise=None):
    proc, data = salt.run("state.orchestrate", sls, f"pillar={json.dumps(pillar)}", timeout=1800)
    states = sb.orch_states(data)
    failures = sb.state_failures(states) if states is not None else [("orchestrate", sb._proc_tail(proc))]
    if noise is not None:
        # what the command printed besides its result (Salt's unclosed-client warnings, "No minions matched")
        text = (proc.stdout or "") + (proc.stderr or "")
        noise.update(unclosed=text.count("unclosed "), no_minions=text.count("No minions matched"))
    return states, failures


def one_switch(salt, topo, writer_a, writer_b):
    new = "db2" if topo.master == "db1" else "db1"
    new_sid = topo.servers[new].server_id
    t0 = time.time()
    noise = {}
    states, failures = orchestrate(salt, "mysqlrepl.orch.switch",
                                   {"mysqlrepl": {"new_master": new, "topology": topo.name}}, noise)
    t1 = time.time()
    run = {"to": new, "orch_s": t1 - t0, "ok": not failures, "noise": noise}
    if failures:
        run["error"] = "; ".join(f"{w}: {c}" for w, c in failures)[:600]
        return run
    runner = next(st for st in states.values() if st.get("__id__") == "mysqlrepl-switch")
    # the orchestration's steps (s); what is left of orch_s is salt-run's start, rendering and exit
    run["orch_steps"] = {st.get("__id__"): round(float(st.get("duration") or 0) / 1000, 2) for st in states.values()}
    ret = (runner.get("changes") or {}).get("return") or {}
    crit = ret.get("critical_section") or {}
    topo.master = new
    # the first commit of writer A on the new master's server_id
    deadline = time.time() + 10
    while time.time() < deadline and not any(sid == new_sid and t >= t0 for _s, sid, t in writer_a.acked):
        time.sleep(0.01)
    acked = list(writer_a.acked)
    # the switch starts when the runner does (after the orchestration's module sync)
    gap = workload.worst_gap(acked, ret.get("started_at") or t0, new_sid)
    gap_orch = workload.worst_gap(acked, t0, new_sid)
    if gap is None:
        run.update(ok=False, error=f"no commit of writer A on {new} after the switch")
        return run
    block = gap[0]
    writable_at = crit.get("writable_at") or t0
    while time.time() < deadline + 10 and not any(
            sid == new_sid and t >= writable_at for _s, sid, t in writer_b.acked):
        time.sleep(0.01)
    first_b = next((t for _s, sid, t in list(writer_b.acked) if sid == new_sid and t >= writable_at), None)
    run.update(
        block_ms=block,
        # where the worst gap ended, from the new master becoming writable (s)
        gap_at_s=gap[2] - writable_at,
        # the runner's timeline, from its start: where the worst gap ended, prechecks done, writable
        timeline=None if not ret.get("started_at") else {
            "gap_end_s": round(gap[2] - ret["started_at"], 3),
            "prechecks_s": (ret.get("timings") or {}).get("prechecks_s"),
            "writable_s": round(writable_at - ret["started_at"], 3)},
        block_from_orch_ms=gap_orch[0] if gap_orch else None,
        crit_block_ms=crit.get("block_ms"),
        crit_total_ms=crit.get("total_ms"),
        crit_steps={st["step"]: st["ms"] for st in crit.get("steps") or []},
        repoint_s=(first_b - writable_at) if first_b else None,
        replicas_ready_s=(ret.get("timings") or {}).get("replicas_ready_s"),
        runner_timings={k: v for k, v in (ret.get("timings") or {}).items()
                        if k.endswith("_s") and k not in ("replicas_ready_s", "repoint_s")},
        hosts_ok=topo.resolve() == (topo.servers[new].address, PORT),
    )
    if first_b is None or not run["hosts_ok"]:
        run.update(ok=False, error="the masterdb writer never reached the new master")
    return run


def verify(topo, writers):
    """acked, lost, dup over every server of the topology (after catching up)."""
    master = topo.servers[topo.master]
    pos = master.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    for name, srv in topo.servers.items():
        if name != topo.master:
            srv.query("SELECT MASTER_GTID_WAIT(%s, 120) AS r", (pos,))
    acked = lost = dup = 0
    for writer in writers:
        seqs = {seq for seq, _sid, _t in writer.acked}
        acked += len(seqs)
        for srv in topo.servers.values():
            counts = {r["seq"]: r["n"] for r in srv.query(
                "SELECT seq, COUNT(*) AS n FROM app.seqlog WHERE writer = %s GROUP BY seq", (writer.writer,))}
            lost += len(seqs - set(counts))
            dup += sum(1 for s, n in counts.items() if n > 1)
    sums = {tuple(r["Checksum"] for r in s.query("CHECKSUM TABLE app.seqlog")) for s in topo.servers.values()}
    return acked, lost, dup, len(sums) == 1


def summary(topo, runs, acked, lost, dup):
    good = [r for r in runs if r["ok"]]
    blocks = [r["block_ms"] for r in good]
    repoints = [r["repoint_s"] for r in good if r.get("repoint_s") is not None]
    ready = [r["replicas_ready_s"] for r in good if r.get("replicas_ready_s") is not None]
    orch = [r["orch_s"] for r in good]
    share = [r["crit_total_ms"] / 1000 / r["orch_s"] for r in good if r.get("crit_total_ms")]
    log(f"# {topo.name}: {len(good)}/{len(runs)} runs ok; orchestration p50 {p50(orch):.2f} s "
        f"(max {max(orch) if orch else float('nan'):.2f} s); critical section p50 "
        f"{p50([r['crit_total_ms'] for r in good if r.get('crit_total_ms')]):.1f} ms = "
        f"{100 * p50(share):.3f}% of the orchestration; write block measured by the critical section p50 "
        f"{p50([r['crit_block_ms'] for r in good if r.get('crit_block_ms')]):.1f} ms")
    near = [r for r in good if r.get("gap_at_s") is not None and -1 <= r["gap_at_s"] <= 1]
    log(f"# {topo.name}: the worst gap ended within 1 s of the new master becoming writable in "
        f"{len(near)}/{len(good)} runs; block counted from the orchestration's start (its module sync "
        f"included) p50 {p50([r['block_from_orch_ms'] for r in good if r.get('block_from_orch_ms')]):.1f} ms")
    steps = {}
    for r in good:
        for step, ms in (r.get("crit_steps") or {}).items():
            steps.setdefault(step, []).append(ms)
    if steps:
        log(f"# {topo.name}: critical section steps p50 (max) ms: " + ", ".join(
            f"{step} {p50(v):.1f} ({max(v):.1f})" for step, v in steps.items()))
    return (f"switchover runs={len(runs)} replicas={topo.replicas} block_p50_ms={p50(blocks):.1f} "
            f"block_max_ms={max(blocks) if blocks else float('nan'):.1f} repoint_p50_s={p50(repoints):.2f} "
            f"replicas_ready_p50_s={p50(ready):.2f} acked={acked} lost={lost} dup={dup} "
            f"orchestration_p50_s={p50(orch):.2f}"), p50(blocks)


class Stopped(SystemExit):
    """SIGTERM/SIGINT: leave through main's cleanup, as a normal exit does."""


def _on_signal(signum, _frame):
    # once: the cleanup itself must not be interrupted by a second signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stopped(128 + signum)


def _started_under(root):
    """PIDs of processes whose command line names ``root`` (servers, salt daemons and CLIs
    this bench started there), except this one."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmd:
            out.append(int(entry))
    return out


def tear_down(root, pids, topologies, keep=False, before_servers=None):
    """
    Every bench's cleanup, on a normal exit and on SIGTERM/SIGINT (ignored from
    here on): the salt daemons by PID, ``before_servers()`` (a bench's own
    processes, e.g. autossh and sshd), every topology's servers, whatever still
    runs from ``root``, then ``root`` itself unless ``keep``.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if pids:
        sb.stop_pids([(pid, what) for what, pid in pids.items()])
    if before_servers is not None:
        before_servers()
    for topo in topologies:
        if topo.servers:
            try:
                mariadb.stop_servers(topo.servers.values())
            except RuntimeError as exc:
                log(f"# {exc}")
    stop_leftovers(root)
    mariadb.reap_zombies()
    if not keep:
        mariadb.remove_tree(root)


def stop_leftovers(root):
    """Whatever still runs from ``root`` after the normal stop (a signal during start-up):
    SIGTERM by PID, then SIGKILL after 20 s."""
    left = _started_under(root)
    if not left:
        return
    log(f"# stopping {len(left)} process(es) left under {root}: {left}")
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _started_under(root):
            mariadb.reap_zombies()
            time.sleep(0.2)
        left = _started_under(root)
        if not left:
            return


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--compare", type=int, default=None, help="second topology with this many replicas, interleaved")
    ap.add_argument("--keep", action="store_true", help="leave the runtime dir (logs) in place")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.replicas < 1 or args.replicas > 15:
        ap.error("--runs >= 1 and 1 <= --replicas <= 15")
    if os.geteuid() != 0:
        ap.error("run as root (MariaDB runs as mysql; the minions manage its files)")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    root = pathlib.Path(tempfile.mkdtemp(prefix="mrbs-", dir="/tmp"))
    os.chmod(root, 0o755)
    mariadb.become_subreaper()
    topologies = [Topology(root, f"r{args.replicas}", args.replicas, 101)]
    if args.compare:
        topologies.append(Topology(root, f"c{args.compare}", args.compare, 121))
    pids = {}
    writers = {}
    try:
        t = time.monotonic()
        for topo in topologies:
            for address in [f"127.0.0.{topo.first_octet + i}" for i in range(len(topo.names))]:
                mariadb.check_port_free(address, PORT)
            topo.start_servers()
        salt = bring_up(root, topologies, pids)
        for topo in topologies:
            _states, failures = orchestrate(salt, "mysqlrepl.orch.setup", {"mysqlrepl_orch": {"topology": topo.name}})
            if failures:
                raise RuntimeError(f"setup of {topo.name} failed: {failures}")
            workload.create_schema(topo.servers["db1"])
        proc, data = salt.salt("*-app", "state.apply", "mysqlrepl.app")
        log(f"# setup {time.monotonic() - t:.1f} s ({', '.join(f'{tp.name}: {tp.replicas} replicas' for tp in topologies)})")
        for topo in topologies:
            eps = topo.endpoints()
            writers[topo.name] = (workload.Writer(eps, "A", interval=0.002),
                                  workload.Writer(eps, "B", interval=0.002, resolve=topo.resolve))
            for w in writers[topo.name]:
                w.start()
        time.sleep(2)
        for i in range(args.runs):
            for topo in topologies:
                run = one_switch(salt, topo, *writers[topo.name])
                topo.results.append(run)
                if run["ok"]:
                    log(f"{topo.name} run {i + 1}: -> {run['to']} block {run['block_ms']:.1f} ms "
                        f"(ends {run['gap_at_s']:+.3f} s from writable; from the orchestration's start "
                        f"{run['block_from_orch_ms']:.1f} ms; critical section {run['crit_block_ms']} ms; runner timeline "
                        f"{run['timeline']}), repoint {run['repoint_s']:.2f} s, "
                        f"replicas ready {run['replicas_ready_s']} s, orchestration {run['orch_s']:.1f} s "
                        f"(steps {run['orch_steps']}; runner {run['runner_timings']}; printed {run['noise']})")
                else:
                    log(f"{topo.name} run {i + 1}: FAILED {run.get('error')}")
                time.sleep(1)
        lines = []
        for topo in topologies:
            for w in writers[topo.name]:
                w.stop()
            acked, lost, dup, same = verify(topo, writers[topo.name])
            if not same:
                log(f"# {topo.name}: CHECKSUMS DIFFER between servers")
            lines.append(summary(topo, topo.results, acked, lost, dup))
        if args.compare:
            (_l1, main_p50), (_l2, cmp_p50) = lines
            limit = max(1.2 * cmp_p50, cmp_p50 + 5)
            log(f"# block p50 with {args.replicas} replicas {main_p50:.1f} ms vs {args.compare} replicas "
                f"{cmp_p50:.1f} ms: limit {limit:.1f} ms -> {'met' if main_p50 <= limit else 'NOT met'}")
            log(lines[1][0])
        log(lines[0][0])
    finally:
        for topo in topologies:
            for w in writers.get(topo.name, ()):
                w.stop_event.set()
        tear_down(root, pids, topologies, keep=args.keep)
        if args.keep:
            log(f"# kept {root}")


if __name__ == "__main__":
    main()
