"""Helpers shared by the integration tests that drive a whole topology."""

import stat
import time

import pymysql

PASSWORD = "Repl-pw_7f3a9c1e5d"
ADMIN_PASSWORD = "Adm1n-pw_c0ffee42"
SWITCH_PASSWORD = "Sw1tch-pw_9e8d7c"
NAMES = ("db1", "db2", "db3")


def build_pillar(servers, harness_root, **overrides):
    """The topology pillar for the three test servers."""
    repl = {"user": "repl", "password": PASSWORD, "require": "x509", "connect_retry": 1,
            "heartbeat_period": 1, "wait_timeout": 30}
    repl.update(overrides.pop("replication", {}))
    data = {
        "topology": "test",
        "master": "db1",
        "restart_allowed": True,
        "ca": {"minion": "db1", "ca_name": "mysql", "cacert_path": str(servers["db1"].root / "pki"),
               "bits": 2048, "days": 730, "CN": "db1-masterdb.test.wpdn", "O": "W3C",
               "OU": "WebPlatform Docs", "emailAddress": "ops@example.org"},
        "tls": {"subject": {"O": "W3C", "OU": "WebPlatform Docs"}},
        "replication": repl,
        # progress every 0.5 s: the tests' seeds copy tens of MB (salt-run mysqlrepl.seed prints it)
        "seed": {"port": 24444, "timeout": 600, "progress_interval": 0.5},
        "admin": {"password": SWITCH_PASSWORD},
        # opadmin@localhost: the operators' own admin login (ALL PRIVILEGES)
        "switch": {"catchup_timeout": 3, "ready_timeout": 60, "admin_users": ["opadmin@localhost"]},
        "servers": {},
    }
    for name, srv in servers.items():
        data["servers"][name] = srv.pillar_entry()
    for key, value in overrides.items():
        data[key] = value
    return {"mysqlrepl": data}


def state_returns(ret):
    """{minion: [state dicts]} from a `salt state.apply` CLI return; asserts every minion answered."""
    assert isinstance(ret.data, dict), ret
    out = {}
    for minion, states in ret.data.items():
        assert isinstance(states, dict), f"{minion}: {states}"
        out[minion] = sorted(states.values(), key=lambda s: s.get("__run_num__", 0))
    return out


def changes_of(ret):
    return {m: {s["__id__"]: s["changes"] for s in states if s["changes"]}
            for m, states in state_returns(ret).items()}


def all_ok(ret):
    bad = {m: [(s["__id__"], s["comment"]) for s in states if s["result"] is not True]
           for m, states in state_returns(ret).items()}
    return {m: b for m, b in bad.items() if b}


def apply(salt_cli, sls="mysqlrepl", test=False, minions=NAMES):
    """``state.apply`` on several minions (salt-factories unwraps single-minion returns: use two or more)."""
    args = ["-L", "state.apply", sls]
    if test:
        args.append("test=True")
    ret = salt_cli.run(*args, minion_tgt=",".join(minions))
    assert set(ret.data or {}) == set(minions), ret
    return ret


def wait_for(predicate, timeout=30, interval=0.2, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def replica_status(server):
    rows = server.query("SHOW SLAVE STATUS")
    return rows[0] if rows else None


def fingerprint(servers):
    """
    What must not change when a run is refused: the formula's files (content,
    mode, mtime), the server process, GTID state, read_only, the replication link.
    """
    out = {}
    for name, srv in servers.items():
        files = {}
        for path in sorted((srv.root / "tls").glob("*")) + [srv.conf_d / "60-mysqlrepl.cnf"]:
            if path.exists():
                st = path.stat()
                files[path.name] = (st.st_mtime_ns, stat.S_IMODE(st.st_mode), path.read_bytes())
        row = srv.query("SELECT @@gtid_binlog_state AS g, @@read_only AS ro, @@sync_binlog AS sb")[0]
        rs = replica_status(srv) or {}
        out[name] = {"files": files, "pid": srv.pid(), "vars": row,
                     "link": (rs.get("Master_Host"), rs.get("Master_SSL_Verify_Server_Cert"),
                              rs.get("Slave_IO_Running"), rs.get("Slave_SQL_Running"))}
    return out


def repl_connect(server, **kw):
    return pymysql.connect(host=server.address, port=server.port, user="repl", password=PASSWORD,
                           connect_timeout=5, **kw)


def run_return(ret):
    """
    The return of a ``salt-run`` call: its stdout holds the progress events
    the runner printed (JSON documents) and then the return, last.
    """
    import json  # pylint: disable=import-outside-toplevel

    text = ret.stdout.strip()
    decoder = json.JSONDecoder()
    docs, pos = [], 0
    while pos < len(text):
        doc, end = decoder.raw_decode(text, pos)
        docs.append(doc)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    assert docs, ret
    last = docs[-1]
    return last.get("return", last) if isinstance(last, dict) and set(last) == {"return"} else last


def orch_steps(ret):
    """{state id: state result} of an orchestration's steps."""
    data = ret.data
    assert isinstance(data, dict), ret
    states = data.get("data", data)
    states = next(iter(states.values())) if len(states) == 1 and isinstance(next(iter(states.values())), dict) \
        and all(isinstance(v, dict) for v in next(iter(states.values())).values()) else states
    return {v.get("__id__", k): v for k, v in states.items() if isinstance(v, dict)}


def orch_failures(ret):
    """{state id: comment} of every orchestration step that did not succeed."""
    return {k: v.get("comment") for k, v in orch_steps(ret).items() if v.get("result") is not True}
