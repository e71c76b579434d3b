#!/usr/bin/env python3
"""
mysqlrepl local sandbox: three MariaDB servers, a real salt-master and three
salt-minions on this machine, brought up with the formula through the same
commands as in production (sync, ``state.orchestrate mysqlrepl.orch.setup``,
highstates).

    .venv/bin/python sandbox/run.py up [--port 3306] [--first-octet 11] [--tunnels]
    .venv/bin/python sandbox/run.py status
    .venv/bin/python sandbox/run.py down

``up --tunnels`` runs seeds 000 and 001 instead of the switchover: db2 reaches
db1 only through an ``ssh -L`` tunnel it opens to db1's sshd, db1 (as if behind
a firewall) opens an ``ssh -R`` tunnel to db3's sshd, and db1 and db3 are a
two-master pair over it (a real sshd per far side, autossh per tunnel).

``up`` leaves everything running and prints how to use it. Runtime files live
in a short directory under /tmp (salt-master hangs on unix socket paths over
107 bytes); its path is recorded in ``sandbox/state.json`` (git-ignored).

Layout of the runtime directory::

    env.sh                  source it: salt / salt-run / salt-key / db1..db3 shell functions
    repl-password           the generated replication password (0600)
    db/<name>/              MariaDB: my.cnf, conf.d/, data/, tmp/, run/, log/, tls/ (db1 also pki/)
    svc/<name>/             service definitions for the mysqlrepl_testsvc provider
    srv/                    file_roots: symlinks to the repo's _modules, _states, ... and mysqlrepl/
    pillar/                 pillar_roots: top.sls, infra/sandbox.sls (0600)
    master/                 salt-master: config file "master", pki/, cache/, sock/, logs/
    db1/ db2/ db3/          salt-minions: config file "minion", pki/, cache/, sock/, logs/
"""

import argparse
import importlib.util
import json
import os
import pathlib
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402  (salt's dependency, in .venv)

from tests.support import mariadb  # noqa: E402  (reused: servers + service provider)
from tests.support.sshd import SSHD  # noqa: E402  (reused: a plain sshd per far side)

STATE_FILE = REPO / "sandbox" / "state.json"
SUPPORT_SALT_DIR = REPO / "tests" / "support" / "salt"
VENV_BIN = REPO / ".venv" / "bin"
NAMES = ("db1", "db2", "db3")
TOPOLOGY = "sandbox"
SALT_TIMEOUT = 120
MASTER_ID = "mrsb-master"

T0 = time.monotonic()


class Failed(Exception):
    """A step failed; the message says what and why."""


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------

def say(msg=""):
    print(msg, flush=True)


class Step:
    """``with Step("what"):`` prints the step, its duration and ok/FAILED."""

    timings = []

    def __init__(self, what):
        self.what = what

    def __enter__(self):
        self.t0 = time.monotonic()  # pylint: disable=attribute-defined-outside-init
        say(f"[{self.t0 - T0:6.1f}s] {self.what} ...")
        return self

    def __exit__(self, exc_type, exc, tb):
        took = time.monotonic() - self.t0
        Step.timings.append((self.what, took, exc_type is None))
        if exc_type is None:
            say(f"[{time.monotonic() - T0:6.1f}s]   ok ({took:.1f} s)")
        else:
            say(f"[{time.monotonic() - T0:6.1f}s]   FAILED after {took:.1f} s")
        return False


def indent(text, prefix="      "):
    return "\n".join(prefix + line for line in str(text).splitlines())


# ---------------------------------------------------------------------------
# state file
# ---------------------------------------------------------------------------

def load_state():
    try:
        return json.loads(STATE_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def save_state(state):
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, STATE_FILE)


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------

def _proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            data = fh.read()
    except OSError:
        return None, None
    fields = data.rpartition(")")[2].split()
    return fields[0], int(fields[1])


def alive(pid):
    state, _ppid = _proc_state(pid)
    return state not in (None, "Z", "X")


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def descendants(pid):
    """Live descendants of pid (children, grandchildren...)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            state, ppid = _proc_state(int(entry))
            if state not in (None, "Z", "X"):
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def processes_mentioning(text):
    """Live processes whose command line contains text (the unique runtime dir)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and alive(int(entry)):
            if text in cmdline(int(entry)):
                found.append(int(entry))
    return sorted(found)


def stop_pids(targets, timeout=30):
    """
    Stop processes this sandbox started, by PID: SIGTERM each ``(pid, what)`` at once,
    wait for them and their descendants; after ``timeout`` SIGTERM the descendants
    still there, and after 10 s more SIGKILL (by PID) whatever is left. True if all
    stopped on SIGTERM.
    """
    family = {}
    for pid, what in targets:
        if pid and alive(pid):
            family[pid] = (what, [pid] + descendants(pid))
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    everyone = [p for _what, pids in family.values() for p in pids]

    def wait(limit):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not any(alive(p) for p in everyone):
                return True
            time.sleep(0.1)
        return False

    if wait(timeout):
        _reap(everyone)
        return True
    for sig, limit in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        left = [p for p in everyone if alive(p)]
        names = {p: w for w, pids in family.values() for p in pids}
        say(f"      still running after SIGTERM: {', '.join(f'{p} ({names[p]})' for p in left)}; "
            f"sending {sig.name} to each")
        for p in left:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        if wait(limit):
            break
    _reap(everyone)
    return False


def _reap(pids):
    for p in pids:
        try:
            os.waitpid(p, os.WNOHANG)
        except ChildProcessError:
            pass


def free_port():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def wait_pidfile(path, proc, what, timeout=60):
    """The daemon's pid (from its pid file), failing early if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failed(f"{what} exited with code {proc.returncode} during startup")
        try:
            pid = int(pathlib.Path(path).read_text().strip() or 0)
            if pid and alive(pid):
                return pid
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise Failed(f"{what} wrote no pid file {path} within {timeout} s")


# ---------------------------------------------------------------------------
# salt CLI
# ---------------------------------------------------------------------------

class Salt:
    """Runs the salt CLIs against the sandbox master's config dir."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.conf_dir = self.root / "master"

    def cmd(self, tool, *args):
        return [str(VENV_BIN / tool), "-c", str(self.conf_dir), *args]

    def shown(self, tool, *args):
        """The command as a user would type it."""
        return " ".join(shlex.quote(a) for a in [f".venv/bin/{tool}", "-c", str(self.conf_dir), *args])

    def _json(self, tool, args, timeout):
        argv = self.cmd(tool, *args, "--out=json")
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False, cwd=str(REPO))
        data = parse_json_output(proc.stdout)
        return proc, data

    def salt(self, tgt, fun, *args, timeout=SALT_TIMEOUT, tgt_type=None):
        opts = ["--static", "-t", str(timeout)]
        if tgt_type:
            opts.append(tgt_type)
        proc, data = self._json("salt", [*opts, tgt, fun, *args], timeout + 60)
        return proc, data

    def run(self, fun, *args, timeout=600):
        proc, data = self._json("salt-run", ["-t", str(SALT_TIMEOUT), fun, *args], timeout)
        return proc, data


def parse_json_output(text):
    """
    The JSON document of a salt CLI's ``--out=json`` output. salt-run may print
    progress or warnings first: take the last document that starts at column 0.
    """
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{") or lines[i].startswith("["):
            try:
                return json.loads("\n".join(lines[i:]))
            except ValueError:
                continue
    return None


def _proc_tail(proc, lines=15):
    out = (proc.stdout or "") + (proc.stderr or "")
    return "\n".join(out.strip().splitlines()[-lines:])


def expect_minions(proc, data, fun, want=NAMES):
    """Every minion answered, none with an error string; returns data."""
    if not isinstance(data, dict):
        raise Failed(f"{fun}: no JSON answer (exit {proc.returncode}):\n{indent(_proc_tail(proc))}")
    missing = [m for m in want if m not in data]
    errors = {m: v for m, v in data.items() if isinstance(v, str) and
              ("Traceback" in v or v.startswith("ERROR") or "is not available" in v
               or "Minion did not return" in v)}
    if missing or errors:
        lines = [f"{fun}: no answer from {', '.join(missing)}" if missing else f"{fun}: errors"]
        lines += [f"  {m}: {v}" for m, v in errors.items()]
        raise Failed("\n".join(lines))
    return data


# ---------------------------------------------------------------------------
# state returns
# ---------------------------------------------------------------------------

def state_failures(states, prefix=""):
    """
    [(where, comment)] for every state whose result is not True, recursing into
    salt.state returns. States skipped because a requisite failed are counted,
    not listed: the failure that caused them is.
    """
    out = []
    skipped = []
    if isinstance(states, list):  # render errors come back as a list of strings
        return [(prefix or "render", "\n".join(map(str, states)))]
    if not isinstance(states, dict):
        return [(prefix or "return", str(states))]
    for key, st in sorted(states.items(), key=lambda kv: (kv[1] or {}).get("__run_num__", 0)
                          if isinstance(kv[1], dict) else 0):
        if not isinstance(st, dict):
            continue
        sid = st.get("__id__") or (key.split("_|-")[1] if "_|-" in key else key)
        if st.get("result") is not True:
            nested = (st.get("changes") or {}).get("ret")
            if isinstance(nested, dict) and nested:
                for minion, mret in nested.items():
                    out += state_failures(mret, f"{prefix}{sid} -> {minion}: ")
            comment = st.get("comment")
            if isinstance(comment, list):
                comment = "\n".join(map(str, comment))
            if str(comment).startswith("One or more requisite failed"):
                skipped.append(sid)
                continue
            out.append((f"{prefix}{sid}", comment or "(no comment)"))
    if skipped:
        out.append((f"{prefix}not run (a requisite failed)", ", ".join(skipped)))
    return out


def count_changes(minion_states):
    """{state id: changes} of one minion's state.apply return."""
    return {st.get("__id__", key): st["changes"] for key, st in minion_states.items()
            if isinstance(st, dict) and st.get("changes")}


def orch_states(data):
    """The state dict of a ``salt-run --out=json state.orchestrate`` answer."""
    if not isinstance(data, dict):
        return None
    inner = data.get("data", data)
    if isinstance(inner, dict) and len(inner) == 1:
        only = next(iter(inner.values()))
        if isinstance(only, dict) and all(isinstance(v, dict) for v in only.values()):
            return only
        if isinstance(only, list):
            return only
    return inner


# ---------------------------------------------------------------------------
# configuration files
# ---------------------------------------------------------------------------

def make_state_tree(root):
    """file_roots base: symlinks to the repo's _* dirs and mysqlrepl/ (not the whole repo: .venv is big)."""
    srv = root / "srv"
    srv.mkdir()
    for entry in sorted(REPO.iterdir()):
        if entry.is_dir() and (entry.name.startswith("_") or entry.name == "mysqlrepl"):
            (srv / entry.name).symlink_to(entry)
    return srv


def write_yaml(path, data, mode=0o644):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, default_flow_style=False, sort_keys=False), encoding="utf-8")
    os.chmod(path, mode)


def master_config(root, srv, ports):
    base = root / "master"
    return {
        "id": MASTER_ID,
        "root_dir": str(base),
        "conf_file": str(base / "master"),
        "pki_dir": str(base / "pki"),
        "cachedir": str(base / "cache"),
        "sock_dir": str(base / "sock"),
        "pidfile": str(base / "master.pid"),
        "log_file": str(base / "logs" / "master.log"),
        "key_logfile": str(base / "logs" / "key.log"),
        "log_level_logfile": "info",
        "interface": "127.0.0.1",
        "publish_port": ports["publish"],
        "ret_port": ports["ret"],
        "user": "root",
        # every minion that connects is accepted: a sandbox on loopback only
        "open_mode": True,
        "auto_accept": True,
        "worker_threads": 3,  # Salt 3008.3 raises anything lower to 3
        "timeout": SALT_TIMEOUT,
        "fileserver_backend": ["roots"],
        "file_roots": {"base": [str(srv), str(SUPPORT_SALT_DIR)]},
        "pillar_roots": {"base": [str(root / "pillar")]},
        # the formula's master record (who is master after a switch)
        "ext_pillar": [{"mysqlrepl": {}}],
        "enable_legacy_startup_events": False,
    }


def minion_config(root, name, ports):
    base = root / name
    return {
        "id": name,
        "root_dir": str(base),
        "conf_file": str(base / "minion"),
        "pki_dir": str(base / "pki"),
        "cachedir": str(base / "cache"),
        "sock_dir": str(base / "sock"),
        "pidfile": str(base / "minion.pid"),
        "log_file": str(base / "logs" / "minion.log"),
        "log_level_logfile": "info",
        "master": "127.0.0.1",
        "master_port": ports["ret"],
        "user": "root",
        "acceptance_wait_time": 0.5,
        "acceptance_wait_time_max": 5,
        "enable_legacy_startup_events": False,
        # No service manager here: service.* is the test provider over <svc>/<name>/*.json.
        # module_dirs entries are roots holding _modules/; the provider is there from the
        # first job on, before any saltutil.sync_all.
        "providers": {"service": "mysqlrepl_testsvc"},
        "mysqlrepl_testsvc_dir": str(root / "svc" / name),
        # the formula's systemd units (its SSH tunnels, mysqlrepl:tunnel:unit_dir) run the same way
        "mysqlrepl_testsvc_unit_dir": str(root / "units"),
        "module_dirs": [str(SUPPORT_SALT_DIR)],
    }


def gen_password(length=24):
    alphabet = string.ascii_letters + string.digits + "_-"
    return "".join(secrets.choice(alphabet) for _ in range(length))


TUNNEL_USER = "mysqlrepl-tunnel"


def tunnel_pillar(root, sshds, port_base):
    """``--tunnels``: db2 behind an ssh -L to db1 (seed 000), db1 behind an ssh -R to db3 and
    the pair db1 + db3 (seed 001). Every forwarded port is distinct (one machine)."""
    return {
        "tunnel": {"dir": str(root / "tunnel"), "unit_dir": str(root / "units")},
        "servers": {
            "db1": {"sshd": sshds["db1"].pillar(),
                    "tunnels": [{"peer": "db3", "port": port_base + 20, "seed_port": port_base + 21,
                                 "peer_port": port_base + 30, "peer_seed_port": port_base + 31}]},
            "db2": {"tunnels": [{"peer": "db1", "port": port_base, "seed_port": port_base + 1,
                                 "peer_port": port_base + 10, "peer_seed_port": port_base + 11}]},
            "db3": {"sshd": sshds["db3"].pillar()},
        },
    }


def pillar_text(servers, root, password, seed_port, tunnels=None):
    """The sandbox pillar in the shape of pillar.example (infra + mysqlrepl in one file)."""
    db1 = servers["db1"]
    rest = {
        "restart_allowed": True,  # the servers start without TLS: turning it on needs a restart
        "ca": {
            "minion": "db1",
            "ca_name": "mysql",
            "cacert_path": str(db1.root / "pki"),
            "days": 730,
            "CN": "db1-masterdb.sandbox.wpdn",
            "O": "W3C",
            "OU": "WebPlatform Docs",
            "emailAddress": "ops@example.org",
        },
        "tls": {"subject": {"O": "W3C", "OU": "WebPlatform Docs"}},
        "replication": {
            "user": "repl",
            "password": password,
            "require": "x509",
            "connect_retry": 1,
            "heartbeat_period": 1,
            "wait_timeout": 30,
        },
        "seed": {"port": seed_port, "timeout": 600},
        # the switch's own account (REQUIRE X509): sets read_only on the old master
        "admin": {"password": gen_password()},
        "servers": {},
    }
    for name, srv in servers.items():
        rest["servers"][name] = srv.pillar_entry()
        rest["servers"][name].update((tunnels or {}).get("servers", {}).get(name, {}))
    if tunnels:
        rest["tunnel"] = tunnels["tunnel"]
    body = yaml.safe_dump(rest, default_flow_style=False, sort_keys=False)
    addresses = ", ".join(f"'{n}': '{s.address}'" for n, s in servers.items())
    return (
        "# Sandbox pillar written by sandbox/run.py, in the shape of pillar.example\n"
        "# (/srv/pillar/infra/<environment>.sls). 0600: it holds the replication password.\n"
        "{% set masterdb = 'db1' %}   {# the record of who the master is #}\n"
        f"{{% set servers = {{{addresses}}} %}}\n"
        "\n"
        "infra:\n"
        "  hosts_entries:\n"
        "    # what apps use to reach the master (seed 002); derived from the same record\n"
        "    masterdb: {{ servers[masterdb] }}\n"
        "\n"
        "mysqlrepl:\n"
        f"  topology: {TOPOLOGY}\n"
        + ("  masters: [db1, db3]           # a two-master pair over db1's ssh -R tunnel (seed 001)\n"
           if tunnels else "  master: {{ masterdb }}\n")
        + "".join(f"  {line}\n" for line in body.splitlines())
    )


def write_env(root, servers):
    path = root / "env.sh"
    lines = [
        "# source me: shell functions for the mysqlrepl sandbox",
        f"export MRSB_ROOT={shlex.quote(str(root))}",
        f"salt() {{ {shlex.quote(str(VENV_BIN / 'salt'))} -c \"$MRSB_ROOT/master\" \"$@\"; }}",
        f"salt-run() {{ {shlex.quote(str(VENV_BIN / 'salt-run'))} -c \"$MRSB_ROOT/master\" \"$@\"; }}",
        f"salt-key() {{ {shlex.quote(str(VENV_BIN / 'salt-key'))} -c \"$MRSB_ROOT/master\" \"$@\"; }}",
    ]
    for name, srv in servers.items():
        lines.append(f"# {name}: root over its unix socket (socket authentication)")
        lines.append(f"{name}() {{ mariadb --socket={shlex.quote(str(srv.socket))} -u root \"$@\"; }}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# sandbox objects from the state file
# ---------------------------------------------------------------------------

def servers_from_state(state):
    out = {}
    for name, s in state.get("servers", {}).items():
        out[name] = mariadb.MariaDBServer(name, s["address"], s["port"], pathlib.Path(state["root"]) / "db",
                                          s["server_id"])
    return out


# ---------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------

def summarise_status(data, state):
    """Lines describing `salt 'db*' mysqlrepl.status`."""
    lines = []
    by_address = {(s["address"], s["port"]): n for n, s in state["servers"].items()}
    by_name = {f"{n}.{TOPOLOGY}.mysqlrepl.internal": n for n in state["servers"]}
    for name in sorted(data):
        st = data[name]
        if not isinstance(st, dict):
            lines.append(f"  {name}: {st}")
            continue
        var = st.get("variables", {})
        gtid = st.get("gtid") or {}
        ver = ".".join(str(x) for x in (st.get("version") or [None, []])[1])
        rep = st.get("replica")
        if rep is None:
            lines.append(f"  {name}: master  read_only={var.get('read_only')}  have_ssl={var.get('have_ssl')}  "
                         f"server_id={var.get('server_id')}  MariaDB {ver}  gtid_binlog_pos={gtid.get('binlog_pos')}")
        else:
            src = by_address.get((rep["host"], rep["port"])) or by_name.get(rep["host"], "?")
            if rep["host"] in by_name:
                src += " through the ssh tunnel"
            lines.append(
                f"  {name}: replica of {src} ({rep['host']}:{rep['port']})  IO={rep['io_running']} "
                f"SQL={rep['sql_running']}  Using_Gtid={rep['using_gtid']}  SSL={rep['ssl_allowed']} "
                f"verify_server_cert={rep['ssl_verify_server_cert']}  lag={rep['seconds_behind']}s  "
                f"read_only={var.get('read_only')}  gtid_slave_pos={gtid.get('slave_pos')}")
            if rep.get("last_io_errno") or rep.get("last_sql_errno"):
                lines.append(f"        last IO error {rep['last_io_errno']}: {rep['last_io_error']}")
                lines.append(f"        last SQL error {rep['last_sql_errno']}: {rep['last_sql_error']}")
        for t in st.get("tunnels") or []:
            lines.append(f"        tunnel {t['tunnel']} ({t['side']} side, to {t['other']}): "
                         f"{'up' if t['up'] else 'DOWN'}; {t['forward']}"
                         + (f"; autossh pid {t['autossh_pid']}, ssh pid {t['ssh_pid']}" if t['side'] == "near" else ""))
        for dump in st.get("binlog_dumps") or []:
            # on loopback every replica connects from 127.0.0.1, whatever its own address
            lines.append(f"        Binlog Dump thread {dump.get('id')} ({dump.get('user')}@{dump.get('host')}): "
                         f"Ssl_cipher={dump.get('cipher') or 'NONE (not encrypted)'}")
    return lines


def check_status(data, state):
    """Problems in the replication status: threads, TLS of every binlog dump."""
    if state.get("tunnels"):
        return check_pair_status(data, state)
    problems = []
    masters = [n for n, st in data.items() if isinstance(st, dict) and st.get("replica") is None]
    if len(masters) != 1:
        return [f"expected one server replicating from nobody, found {masters}"]
    master = masters[0]
    if (data[master].get("variables") or {}).get("read_only") != "OFF":
        problems.append(f"{master} (the master) is read-only")
    replicas = [n for n in state["servers"] if n != master]
    for name in replicas:
        rep = (data.get(name) or {}).get("replica")
        if not rep or rep["io_running"] != "Yes" or rep["sql_running"] != "Yes":
            problems.append(f"{name}: replication threads not both running: {rep}")
    dumps = (data.get(master) or {}).get("binlog_dumps") or []
    if len(dumps) != len(replicas):
        problems.append(f"{master}: {len(dumps)} binlog dump threads, expected {len(replicas)}")
    if any(not d.get("cipher") for d in dumps):
        problems.append(f"{master}: a binlog dump thread is not encrypted: {dumps}")
    return problems


def check_pair_status(data, state):
    """``--tunnels``: db1 and db3 writable, every server replicating, TLS everywhere, tunnels up."""
    problems = []
    for name in state["servers"]:
        st = data.get(name) or {}
        rep = st.get("replica")
        if not rep or rep["io_running"] != "Yes" or rep["sql_running"] != "Yes":
            problems.append(f"{name}: replication threads not both running: {rep}")
        want = "OFF" if name in ("db1", "db3") else "ON"
        if (st.get("variables") or {}).get("read_only") != want:
            problems.append(f"{name}: read_only is not {want}")
        if any(not d.get("cipher") for d in st.get("binlog_dumps") or []):
            problems.append(f"{name}: a binlog dump thread is not encrypted")
        problems += [f"{name}: tunnel {t['tunnel']} is down" for t in st.get("tunnels") or [] if not t["up"]]
    return problems


def show_status(salt, state):
    proc, data = salt.salt("db*", "mysqlrepl.status")
    expect_minions(proc, data, "mysqlrepl.status", want=tuple(state["servers"]))
    for line in summarise_status(data, state):
        say(line)
    return data


# ---------------------------------------------------------------------------
# up
# ---------------------------------------------------------------------------

def cmd_up(args):
    old = load_state()
    if old:
        running = [p for p in old.get("pids", {}).values() if p and alive(p)]
        raise Failed(f"a sandbox is recorded in {STATE_FILE} ({old.get('root')}, "
                     f"{len(running)} daemons running): run `.venv/bin/python sandbox/run.py down` first")
    if os.geteuid() != 0:
        raise Failed("run as root: MariaDB runs as the mysql user and the minions manage its files")
    addresses = [f"127.0.0.{args.first_octet + i}" for i in range(len(NAMES))]
    for address in addresses:
        mariadb.check_port_free(address, args.port)
    seed_port = args.seed_port or (args.port + 1138 if args.port + 1138 <= 65535 else 4444)

    root = pathlib.Path(tempfile.mkdtemp(prefix="mrsb-", dir="/tmp"))
    os.chmod(root, 0o755)  # mariadbd runs as mysql and must traverse it
    state = {"root": str(root), "port": args.port, "first_octet": args.first_octet,
             "seed_port": seed_port, "pids": {}, "servers": {}, "started": time.time()}
    save_state(state)
    salt = Salt(root)
    say(f"mysqlrepl sandbox in {root} (recorded in {STATE_FILE.relative_to(REPO)})")
    if os.path.isdir("/run/systemd/system"):
        say("note: the sandbox servers are not systemd units: the minions start/stop them through the "
            "test service provider mysqlrepl_testsvc (tests/support/salt)")
    else:
        say("note: this machine has no service manager (systemd is not running): the minions start/stop "
            "MariaDB through the test service provider mysqlrepl_testsvc (tests/support/salt), "
            "minion option providers: {service: mysqlrepl_testsvc}")

    with Step(f"start MariaDB db1..db3 on {addresses[0]}-{args.first_octet + 2}:{args.port}"):
        servers = mariadb.start_servers(root / "db", names=NAMES, first_octet=args.first_octet,
                                        port=args.port)
        for name, srv in servers.items():
            srv.write_service_json(root / "svc" / name)
            state["servers"][name] = {"address": srv.address, "port": srv.port,
                                      "server_id": srv.server_id, "socket": str(srv.socket)}
        save_state(state)

    sshds = {}
    if args.tunnels:
        with Step("start an sshd on db1's and db3's addresses (the far sides of the tunnels)"):
            for name in ("db1", "db3"):
                srv = servers[name]
                sshds[name] = SSHD(name, srv.address, 22000 + int(srv.address.rsplit(".", 1)[1]),
                                   root / "sshd", TUNNEL_USER).start(root / "svc" / name)
                # its pid file: the formula reloads (restarts) it, its pid changes
                state.setdefault("sshd", {})[name] = str(sshds[name].pidfile)
            state["tunnels"] = True
            save_state(state)

    password = gen_password()
    pw_file = root / "repl-password"
    fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    pillar_dir = root / "pillar"
    (pillar_dir / "infra").mkdir(parents=True)
    write_yaml(pillar_dir / "top.sls", {"base": {"*": ["infra.sandbox"]}})
    sls = pillar_dir / "infra" / "sandbox.sls"
    fd = os.open(sls, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(pillar_text(servers, root, password, seed_port,
                             # forwarded ports apart for each --first-octet (one machine)
                             tunnel_pillar(root, sshds, args.port + 11000 + (args.first_octet - 11) * 40)
                             if args.tunnels else None))

    with Step("start salt-master and salt-minions db1, db2, db3"):
        srv_tree = make_state_tree(root)
        ports = {"publish": free_port(), "ret": free_port()}
        while ports["ret"] == ports["publish"]:
            ports["ret"] = free_port()
        state["salt_ports"] = ports
        mcfg = master_config(root, srv_tree, ports)
        write_yaml(root / "master" / "master", mcfg)
        procs = {"master": spawn(["salt-master", "-c", str(root / "master")], root / "master" / "logs")}
        for name in NAMES:
            write_yaml(root / name / "minion", minion_config(root, name, ports))
        # state.json records the PID of each daemon's top process (a minion's pid file
        # names its MinionProcessManager child); `down` stops them by these PIDs
        state["pids"]["master"] = procs["master"].pid
        save_state(state)
        wait_pidfile(mcfg["pidfile"], procs["master"], "salt-master")
        for name in NAMES:
            procs[name] = spawn(["salt-minion", "-c", str(root / name)], root / name / "logs")
            state["pids"][name] = procs[name].pid
        save_state(state)
        for name in NAMES:
            wait_pidfile(root / name / "minion.pid", procs[name], f"salt-minion {name}")
        wait_minions(salt)

    write_env(root, servers)

    with Step(f"salt-run saltutil.sync_all   ({salt.shown('salt-run', 'saltutil.sync_all')})"):
        proc, data = salt.run("saltutil.sync_all")
        if proc.returncode != 0 or not isinstance(data, dict) or "runners" not in data:
            raise Failed(f"salt-run saltutil.sync_all: unexpected answer (exit {proc.returncode}):\n"
                         f"{indent(_proc_tail(proc))}")
        if "runners.mysqlrepl" not in data.get("runners", []):
            say(f"      synced: {data}")

    with Step("salt '*' saltutil.sync_all"):
        proc, data = salt.salt("*", "saltutil.sync_all")
        data = expect_minions(proc, data, "saltutil.sync_all")
        for name in NAMES:
            if not isinstance(data[name], dict):
                raise Failed(f"{name}: saltutil.sync_all: {data[name]}")

    with Step("check the service provider (salt '*' service.get_all)"):
        proc, data = salt.salt("*", "service.get_all")
        data = expect_minions(proc, data, "service.get_all")
        want = {n: sorted([servers[n].service_name] + ([sshds[n].service_name] if n in sshds else []))
                for n in NAMES}
        if data != want:
            raise Failed(f"service provider not active: {data}, expected {want}")

    with Step("salt-run state.orchestrate mysqlrepl.orch.setup"):
        orchestrate(salt)

    for run in (1, 2):
        with Step(f"salt 'db*' state.apply mysqlrepl   (highstate-equivalent, run {run})"):
            changed = apply_formula(salt)
            if run == 2 and changed:
                raise Failed(f"the second state.apply still changed {changed} states: not idempotent")

    with Step("write a row on db1, read it on db2 and db3"):
        db1 = servers["db1"]
        db1.query("CREATE DATABASE IF NOT EXISTS sandbox")
        db1.query("CREATE TABLE IF NOT EXISTS sandbox.hello "
                  "(id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64), at TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6))")
        row_travels(servers, "db1")

    with Step("salt 'db*' mysqlrepl.status"):
        data = show_status(salt, state)
        problems = check_status(data, state)
        if problems:
            raise Failed("replication status:\n" + "\n".join(f"  {p}" for p in problems))

    if args.tunnels:
        with Step("write a row on db3 (the pair's other master), read it on db1 and db2"):
            row_travels(servers, "db3")
        with Step(f"a switch on a pair is refused   ({salt.shown('salt-run', 'mysqlrepl.switch', 'new_master=db3')})"):
            proc, data = salt.run("mysqlrepl.switch", "new_master=db3")
            if proc.returncode == 0:
                raise Failed(f"the switch on a two-master pair was not refused: {data}")
            say(f"      {(data or {}).get('comment') if isinstance(data, dict) else _proc_tail(proc)}")
        show_health(salt)
        finish_up(root, state)
        return

    # planned switchover db1 -> db2
    with Step(f"the plan first   ({salt.shown('salt-run', 'mysqlrepl.switch', 'new_master=db2', 'dry_run=True')})"):
        proc, data = salt.run("mysqlrepl.switch", "new_master=db2", "dry_run=True")
        if not isinstance(data, dict) or data.get("result") is not True:
            raise Failed(f"dry run refused: {(data or {}).get('comment') if isinstance(data, dict) else _proc_tail(proc)}")
        for i, step in enumerate(data["plan"], 1):
            say(f"      {i:2}. {step}")

    pillar_arg = 'pillar={"mysqlrepl": {"new_master": "db2"}}'
    with Step(f"switch the master to db2   ({salt.shown('salt-run', 'state.orchestrate', 'mysqlrepl.orch.switch', pillar_arg)})"):
        proc, data = salt.run("state.orchestrate", "mysqlrepl.orch.switch", pillar_arg)
        states = orch_states(data)
        failures = state_failures(states) if states is not None else [("orchestrate", _proc_tail(proc))]
        if failures or proc.returncode:
            raise Failed("state.orchestrate mysqlrepl.orch.switch failed:\n"
                         + "\n".join(f"  {where}:\n{indent(comment)}" for where, comment in failures))
        ret = next(((st.get("changes") or {}).get("return") or {} for st in states.values()
                    if st.get("__id__") == "mysqlrepl-switch"), {})
        timings = ret.get("timings") or {}
        say(f"      {ret.get('comment')}")
        say(f"      write block {timings.get('block_ms')} ms; replicas ready {timings.get('replicas_ready_s')} s; "
            f"runner {timings.get('total_s')} s")
        proc, data = salt.run("mysqlrepl.record", f"topology={TOPOLOGY}")
        say(f"      master record: {(data or {}).get('comment') if isinstance(data, dict) else data}")

    with Step("write a row on db2 (the new master), read it on db1 and db3"):
        row_travels(servers, "db2")

    with Step("salt 'db*' state.apply mysqlrepl   (after the switch: must change nothing)"):
        changed = apply_formula(salt)
        if changed:
            raise Failed(f"the state.apply after the switch changed {changed} states")

    with Step("salt 'db*' mysqlrepl.status"):
        data = show_status(salt, state)
        problems = check_status(data, state)
        if problems:
            raise Failed("replication status:\n" + "\n".join(f"  {p}" for p in problems))

    show_health(salt)
    finish_up(root, state)


def show_health(salt):
    """salt-run mysqlrepl.health: printed as the formula's outputter prints it; must be healthy."""
    with Step(f"the operator's view   ({salt.shown('salt-run', 'mysqlrepl.health')})"):
        proc, data = salt.run("mysqlrepl.health", f"topology={TOPOLOGY}")
        if not isinstance(data, dict) or "verdict" not in data:
            raise Failed(f"salt-run mysqlrepl.health: unexpected answer (exit {proc.returncode}):\n{_proc_tail(proc)}")
        spec = importlib.util.spec_from_file_location("_mysqlrepl_health_out", REPO / "_output" / "mysqlrepl_health.py")
        out = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(out)
        for line in out.render(data).splitlines():
            say(f"      {line}")
        if proc.returncode != 0 or not data.get("healthy"):
            raise Failed(f"the topology is not healthy: {data['verdict']}")


def finish_up(root, state):
    state["up_seconds"] = round(time.monotonic() - T0, 1)
    save_state(state)
    say("")
    say(f"sandbox up in {time.monotonic() - T0:.1f} s:")
    for what, took, _ok in Step.timings:
        say(f"  {took:6.1f} s  {what}")
    say("")
    print_usage(root, state)



def row_travels(servers, master):
    """Insert a row on ``master`` and wait until every other server has it."""
    token = f"hello-{secrets.token_hex(4)}"
    servers[master].query("INSERT INTO sandbox.hello (v) VALUES (%s)", (token,))
    t_write = time.monotonic()
    for name, srv in servers.items():
        if name == master:
            continue
        deadline = time.monotonic() + 30
        while True:
            rows = []
            if srv.query("SHOW DATABASES LIKE 'sandbox'"):
                if srv.query("SHOW TABLES FROM sandbox LIKE 'hello'"):
                    rows = srv.query("SELECT id, v FROM sandbox.hello WHERE v = %s", (token,))
            if rows:
                say(f"      {name}: {rows[0]} (seen {1000 * (time.monotonic() - t_write):.0f} ms after the write)")
                break
            if time.monotonic() > deadline:
                raise Failed(f"row {token!r} written on {master} did not reach {name} within 30 s")
            time.sleep(0.05)


def orchestrate(salt):
    """salt-run state.orchestrate mysqlrepl.orch.setup; checks every step's result, not the exit code."""
    proc, data = salt.run("state.orchestrate", "mysqlrepl.orch.setup", timeout=1800)
    states = orch_states(data)
    if states is None:
        raise Failed(f"state.orchestrate: no JSON answer (exit {proc.returncode}):\n{indent(_proc_tail(proc))}")
    failures = state_failures(states)
    retcode = data.get("retcode", 0) if isinstance(data, dict) else 0
    if failures or retcode or proc.returncode:
        raise Failed("state.orchestrate mysqlrepl.orch.setup failed "
                     f"(salt-run exit {proc.returncode}, retcode {retcode}):\n"
                     + "\n".join(f"  {where}:\n{indent(comment)}" for where, comment in failures))
    for key, st in sorted(states.items(), key=lambda kv: kv[1].get("__run_num__", 0)):
        say(f"      {st.get('__id__', key)}: {st.get('duration', 0) / 1000:.1f} s")
        if st.get("__id__") == "mysqlrepl-seed":
            seeded = ((st.get("changes") or {}).get("return") or {}).get("seeded") or {}
            for replica, info in seeded.items():
                locks = info.get("master_locks") or {}
                t = info.get("timings") or {}
                say(f"        seeded {replica}: {(info.get('bytes') or 0) / 2**20:.0f} MB at GTID {info.get('gtid') or '(none yet)'}, "
                    f"stream {t.get('stream_s')} s, prepare {t.get('prepare_s')} s, swap {t.get('swap_s')} s, "
                    f"caught up in {info.get('catch_up_s')} s, total {info.get('total_s')} s")
                say(f"        master's commits held {locks.get('block_commit_ms')} ms by BACKUP STAGE "
                    f"BLOCK_COMMIT (+-{locks.get('resolution_ms')} ms; source: {locks.get('source')})")


def apply_formula(salt, names=NAMES):
    """salt 'db*' state.apply mysqlrepl; fails on any failed state; returns how many states changed."""
    proc, data = salt.salt("db*", "state.apply", "mysqlrepl")
    data = expect_minions(proc, data, "state.apply mysqlrepl", want=names)
    failures = []
    total = 0
    for name in names:
        failures += state_failures(data[name], f"{name}: ")
        if isinstance(data[name], dict):
            changes = count_changes(data[name])
            total += len(changes)
            say(f"      {name}: {len(data[name])} states, {len(changes)} with changes"
                + (f": {json.dumps(changes)}" if changes else ""))
    if failures:
        raise Failed("state.apply mysqlrepl failed:\n"
                     + "\n".join(f"  {where}:\n{indent(comment)}" for where, comment in failures))
    return total

def spawn(argv, logdir):
    """Start a salt daemon in the foreground of its own session; it outlives this script."""
    logdir.mkdir(parents=True, exist_ok=True)
    out = open(logdir / "console.log", "ab")  # pylint: disable=consider-using-with
    try:
        return subprocess.Popen(  # pylint: disable=consider-using-with
            [str(VENV_BIN / argv[0]), *argv[1:]], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True, close_fds=True, cwd=str(logdir.parent),
        )
    finally:
        out.close()


def wait_minions(salt, timeout=90):
    """Until every minion answers test.ping (keys are auto-accepted)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        proc, data = salt.salt("*", "test.ping", timeout=5)
        last = data if data is not None else _proc_tail(proc)
        if isinstance(data, dict) and all(data.get(n) is True for n in NAMES):
            return
        time.sleep(0.5)
    raise Failed(f"minions did not all answer test.ping within {timeout} s: {last}")


def print_usage(root, state):
    env = root / "env.sh"
    conf = root / "master"
    say("Everything is left running. To use it:")
    say(f"  source {env}      # defines salt, salt-run, salt-key (with -c {conf}) and db1, db2, db3 (mariadb client)")
    say("  salt 'db*' mysqlrepl.status")
    say("  salt 'db*' state.apply mysqlrepl test=True")
    say("  salt db2 mysqlrepl.replication_check")
    say("  salt 'db*' mysqlrepl.tls_check")
    say("  salt-run mysqlrepl.topology")
    if state.get("tunnels"):
        say("  salt 'db*' mysqlrepl.tunnel_status      # each tunnel: up, forward answering, autossh/ssh PIDs")
        say("  db3 -e 'INSERT INTO sandbox.hello (v) VALUES (\"from db3\")'; db1 -e 'SELECT * FROM sandbox.hello'")
        say(f"  sshd logs: {root}/sshd/db1/sshd.log, {root}/sshd/db3/sshd.log")
    else:
        say("  salt-run mysqlrepl.record                 # who is master since the last switch")
        say("  salt-run mysqlrepl.switch new_master=db1 dry_run=True")
        say("  salt-run state.orchestrate mysqlrepl.orch.switch pillar='{\"mysqlrepl\": {\"new_master\": \"db1\"}}'")
        say("  db2 -e 'INSERT INTO sandbox.hello (v) VALUES (\"mine\")'; db3 -e 'SELECT * FROM sandbox.hello'")
    say("or without the env file:")
    say(f"  .venv/bin/salt -c {conf} 'db*' mysqlrepl.status")
    say(f"  .venv/bin/salt-run -c {conf} state.orchestrate mysqlrepl.orch.setup")
    say(f"  mariadb --socket={state['servers']['db2']['socket']} -u root")
    say(f"pillar: {root / 'pillar' / 'infra' / 'sandbox.sls'} (0600; replication password also in "
        f"{root / 'repl-password'})")
    say(f"logs: {conf / 'logs'}, {root}/db1/logs, {root}/db/db1/log ...")
    say("  .venv/bin/python sandbox/run.py status     # the same status again")
    say("  .venv/bin/python sandbox/run.py down       # stop everything and remove the runtime dir")


# ---------------------------------------------------------------------------
# status / down
# ---------------------------------------------------------------------------

def cmd_status(_args):
    state = load_state()
    if not state:
        raise Failed(f"no sandbox recorded ({STATE_FILE} missing): run `.venv/bin/python sandbox/run.py up`")
    root = state["root"]
    say(f"sandbox {root}")
    for what, pid in state.get("pids", {}).items():
        label = "salt-master" if what == "master" else f"salt-minion {what}"
        say(f"  {label}: pid {pid} {'running' if alive(pid) else 'NOT RUNNING'}")
    for name, pidfile in state.get("sshd", {}).items():
        pid = _pid_from(pidfile)
        say(f"  sshd {name}: " + (f"pid {pid} running" if pid and alive(pid) else "NOT RUNNING"))
    for name, srv in servers_from_state(state).items():
        pid = srv.pid()
        say(f"  mariadbd {name} {srv.address}:{srv.port}: " + (f"pid {pid} running" if pid else "NOT RUNNING"))
    if not alive(state.get("pids", {}).get("master", 0)):
        raise Failed("salt-master is not running")
    say("salt 'db*' mysqlrepl.status:")
    data = show_status(Salt(root), state)
    problems = check_status(data, state)
    for p in problems:
        say(f"  problem: {p}")
    return 1 if problems else 0


def _pid_from(path):
    try:
        return int(pathlib.Path(path).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def cmd_down(_args):
    state = load_state()
    if not state:
        say(f"no sandbox recorded ({STATE_FILE} missing): nothing to stop")
        return 0
    root = pathlib.Path(state["root"])
    pids = state.get("pids", {})
    with Step("stop salt-minions db1, db2, db3"):
        targets = [(pids.get(name), f"salt-minion {name}") for name in NAMES]
        # lock holders left by `mysqlrepl.lock` (their session dies with the server anyway)
        for lease in root.glob("db*/cache/mysqlrepl/lock-*.json"):
            try:
                pid = json.loads(lease.read_text())["pid"]
            except (OSError, ValueError, KeyError):
                continue
            if alive(pid) and "TABLES WITH READ LOCK" in cmdline(pid):
                targets.append((pid, f"lock holder {lease.name}"))
        stop_pids(targets)
    with Step("stop salt-master"):
        stop_pids([(pids.get("master"), "salt-master")])
    with Step("stop MariaDB servers"):
        servers = servers_from_state(state)
        if servers:
            mariadb.stop_servers(servers.values())
    sshd_pids = [(_pid_from(path), f"sshd {name}") for name, path in state.get("sshd", {}).items()]
    sshd_pids = [(pid, what) for pid, what in sshd_pids if pid]
    if state.get("sshd"):
        with Step("stop sshd and the tunnels (autossh)"):
            stop_pids(sshd_pids + [(pid, f"autossh {pid}") for pid in processes_mentioning(str(root / "tunnel"))
                                   if "autossh" in cmdline(pid)])
            # the tunnel names the formula added to /etc/hosts
            hosts = pathlib.Path("/etc/hosts")
            lines = hosts.read_text().splitlines(keepends=True)
            kept = "".join(ln for ln in lines if f".{TOPOLOGY}.mysqlrepl.internal" not in ln)
            if kept != "".join(lines):
                tmp = hosts.with_name(".hosts.mrsb.tmp")
                tmp.write_text(kept)
                os.chmod(tmp, hosts.stat().st_mode & 0o7777)
                os.replace(tmp, hosts)
    left = processes_mentioning(str(root))
    if left:
        say(f"processes still mentioning {root}: " + "; ".join(f"{p} {cmdline(p)[:100]}" for p in left))
        stop_pids([(pid, f"pid {pid}") for pid in left], timeout=10)
    left = processes_mentioning(str(root))
    if left:
        raise Failed(f"could not stop {left}; {root} and {STATE_FILE} are kept")
    with Step(f"remove {root}"):
        shutil.rmtree(root, ignore_errors=True)
        STATE_FILE.unlink(missing_ok=True)
    say("sandbox down: no process left")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start servers, master, minions and set up replication")
    up.add_argument("--port", type=int, default=3306, help="MariaDB port on every address (default 3306)")
    up.add_argument("--first-octet", type=int, default=11,
                    help="db1..db3 listen on 127.0.0.N..N+2 (default 11)")
    up.add_argument("--seed-port", type=int, default=None,
                    help="mysqlrepl:seed:port (default: --port + 1138, i.e. 4444 for 3306)")
    up.add_argument("--tunnels", action="store_true",
                    help="seeds 000 and 001: db2 behind an ssh -L tunnel, db1 + db3 a two-master pair over "
                         "an ssh -R tunnel (forwarded ports from --port + 11000 + 40 x (--first-octet - 11)), "
                         "instead of the switchover")
    sub.add_parser("status", help="daemons and `salt 'db*' mysqlrepl.status`")
    sub.add_parser("down", help="stop everything by PID and remove the runtime dir")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            cmd_up(args)
            return 0
        if args.command == "status":
            return cmd_status(args)
        return cmd_down(args)
    except (Failed, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        say(f"\nFAILED: {exc}")
        state = load_state()
        if args.command == "up" and state:
            say(f"\nThe sandbox is left as it is for inspection ({state['root']}; logs under "
                f"{state['root']}/master/logs, <minion>/logs, db/<name>/log).")
            say("Stop it with: .venv/bin/python sandbox/run.py down")
        return 1
    except KeyboardInterrupt:
        say("\ninterrupted; stop what started with: .venv/bin/python sandbox/run.py down")
        return 130


if __name__ == "__main__":
    sys.exit(main())
