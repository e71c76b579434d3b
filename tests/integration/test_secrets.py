"""
The replication password appears nowhere: state output, master/minion logs at
debug level, the job cache, the event bus, any process's argv or environment
sampled during the whole session (setup, seeds, switches, rotations), the
servers' general logs, binary and relay logs; and what an account with PROCESS
sees on a server (processlist, performance_schema) only ever shows it in the one
statement that must carry it (``CHANGE MASTER TO MASTER_PASSWORD = …``, sent
alone, for a new link or a changed password: MariaDB shows a running
statement's literals to PROCESS holders and has no way to mask them).

Not searched, by design: the pillar source file, the master's minion data cache
(Salt's own pillar store) and MariaDB's master.info in the (0700) datadir, which
keeps the replication password in clear (a MariaDB fact, see README).
"""

import os
import pathlib
import pwd
import re
import stat
import time

import pytest

from tests.support.topology import NAMES, PASSWORD, apply, orch_failures

pytestmark = [pytest.mark.integration]

NEEDLE = PASSWORD.encode()


def _files_with_needle(paths):
    hits = []
    for path in paths:
        try:
            if NEEDLE in pathlib.Path(path).read_bytes():
                hits.append(str(path))
        except OSError:
            pass
    return hits


def _walk(root, predicate=lambda p: True):
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = pathlib.Path(dirpath) / name
            if path.is_file() and not path.is_symlink() and predicate(path):
                yield path


def test_setup_run_put_the_password_in_no_argv_environ_or_event(topology):
    assert orch_failures(topology["setup_ret"]) == {}
    assert topology["proc_samples"] > 50, topology["proc_samples"]
    assert topology["proc_hits"] == []
    assert topology["events"], "the event listener saw no event: the check would prove nothing"
    assert NEEDLE.decode() not in repr(topology["events"])
    assert PASSWORD not in topology["setup_ret"].stdout + topology["setup_ret"].stderr


def test_state_output_does_not_show_the_password(topology, salt_cli):
    for test in (True, False):
        ret = apply(salt_cli, test=test)
        assert PASSWORD not in ret.stdout + ret.stderr
    ret = salt_cli.run("-L", "mysqlrepl.settings", minion_tgt=",".join(NAMES))
    assert ret.data and PASSWORD not in ret.stdout


def test_logs_and_job_cache_do_not_hold_the_password(topology, salt_master, salt_minions):
    roots = [pathlib.Path(salt_master.config["root_dir"])] + [pathlib.Path(m.config["root_dir"]) for m in salt_minions.values()]
    assert salt_master.config["log_level_logfile"] == "debug"
    logs = [p for root in roots for p in _walk(root, lambda p: p.suffix == ".log" or "log" in p.parts)]
    assert logs, roots
    assert _files_with_needle(logs) == []
    job_cache = pathlib.Path(salt_master.config["cachedir"]) / "jobs"
    jobs = list(_walk(job_cache))
    assert jobs, "empty job cache: the check would prove nothing"
    assert _files_with_needle(jobs) == []
    minion_caches = [p for m in salt_minions.values() for p in _walk(pathlib.Path(m.config["cachedir"]))
                     if "extmods" not in p.parts]
    assert _files_with_needle(minion_caches) == []


def test_server_logs_do_not_hold_the_password(topology, mariadb_servers):
    for name, srv in mariadb_servers.items():
        assert srv.general_log.exists() and srv.general_log.stat().st_size > 0
        binlogs = [p for p in srv.datadir.iterdir() if p.name.startswith(("mysql-bin.", "relay-bin."))]
        assert binlogs, name
        assert _files_with_needle([srv.general_log, srv.error_log] + binlogs) == [], name
        # the replication account really was created and used: the hash is there, not the text
        assert srv.query("SELECT COUNT(*) AS c FROM mysql.user WHERE User='repl'")[0]["c"] == 1


def test_datadir_stays_private(topology, mariadb_servers):
    # MariaDB keeps the replication password in master.info: the datadir must stay 0700
    for name in ("db2", "db3"):
        srv = mariadb_servers[name]
        assert stat.S_IMODE(srv.datadir.stat().st_mode) & 0o077 == 0, name


def test_dump_over_an_existing_file_is_a_new_private_file(topology, mariadb_servers, salt_cli):
    # O_TRUNC on an existing file keeps its mode and owner: a world-readable file
    # owned by someone else must not end up holding mysql.* password hashes
    path = mariadb_servers["db1"].root / "old-dump.sql"
    path.write_text("stale-dump-marker-7c1e\n")
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    path.chmod(0o644)
    ret = salt_cli.run("mysqlrepl.dump", str(path), "databases=mysql", minion_tgt="db1")
    assert isinstance(ret.data, dict) and ret.data["bytes"] > 0, ret
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid() and st.st_uid != nobody.pw_uid
    text = path.read_text()
    at = text.find("stale-dump-marker-7c1e")
    assert at < 0, text[max(0, at - 400):at + 100]
    assert "CREATE TABLE `global_priv`" in text
    assert not list(path.parent.glob(f".{path.name}.*")), "temporary file left behind"


def test_failed_dump_leaves_the_existing_file_alone(topology, mariadb_servers, salt_cli):
    path = mariadb_servers["db1"].root / "kept-dump.sql"
    path.write_text("previous dump\n")
    ret = salt_cli.run("mysqlrepl.dump", str(path), "databases=no_such_db", minion_tgt="db1")
    assert "mariadb-dump failed" in ret.stdout, ret
    assert path.read_text() == "previous dump\n"
    assert not list(path.parent.glob(f".{path.name}.*")), "temporary file left behind"


def test_dump_into_a_missing_directory_says_so(topology, salt_cli, harness_root):
    path = harness_root / "no-such-dir" / "x.sql"
    ret = salt_cli.run("mysqlrepl.dump", str(path), "databases=mysql", minion_tgt="db1")
    assert "is not a directory" in ret.stdout and "Traceback" not in ret.stdout, ret


# (a rotation test sets the password to PASSWORD + a suffix)
CREDENTIAL_STATEMENT = re.compile(r"^CHANGE MASTER TO MASTER_PASSWORD = '\*\*\*[^']*', MASTER_HEARTBEAT_PERIOD = [0-9.eE+-]+$")


@pytest.mark.after_all
def test_the_whole_session_kept_the_password_out_of_argv_environ_and_process_lists(secrets_watch):
    # runs last (conftest): the samplers ran from before the setup orchestration
    # through every seed, switch and rotation of the session
    procs, servers = secrets_watch["procs"], secrets_watch["servers"]
    # both still sampling now, at the end of the session (a sampler that died early would
    # have seen nothing of the later seeds and switches)
    now = time.monotonic()
    for sampler in (procs, servers):
        assert sampler.is_alive() and sampler.last_sample is not None and now - sampler.last_sample < 10, sampler
    # stopped here, so their last pass over the history tables is part of what is checked
    procs.stop()
    servers.stop()
    assert procs.samples > 100 and procs.hits == [], (procs.samples, procs.hits[:5])
    assert min(servers.samples.values()) > 100 and min(servers.ps_samples.values()) > 5, (
        servers.samples, servers.ps_samples)
    others = [h for h in servers.hits if not CREDENTIAL_STATEMENT.match(h["text"])]
    assert others == [], others[:10]
    # the one statement that carries it was seen (the sampler can see it; the
    # check above would prove nothing otherwise), only where links were made
    assert servers.hits, "the sampler never saw the credential statement: it may see nothing at all"

