"""
Seeding under load, the seed-002 lock/dump/unlock procedure, and REQUIRE SUBJECT.
"""

import copy
import re
import threading
import time

import pymysql
import pytest

from tests.support.topology import (NAMES, all_ok, apply, changes_of, orch_failures, repl_connect,
                                    replica_status, wait_for)

pytestmark = [pytest.mark.integration]


# How long a seed may hold the master's commits. README ("Seeding replicas", bench/seed.py,
# METADATA_LOCK_INFO) reports BACKUP STAGE BLOCK_COMMIT held 59-173 ms at 100 MB and 98-241 ms at
# 1 GB on this shared, loaded 2-core machine: LOCK_BOUND_MS is that worst run, rounded up. Under
# heavier load than the bench saw the lock itself grew (346 ms in one test run at load ~10), and
# a writer's commit also waits on the disk and the scheduler here with no seed at all (the
# bench's baseline windows: up to ~200 ms): STALL_MARGIN_MS on top of both. A lock held through
# the copy (seconds) is far beyond either.
LOCK_BOUND_MS = 250
STALL_MARGIN_MS = 350

# Any global read lock a seed must never take on the master, in any spelling: FLUSH [LOCAL |
# NO_WRITE_TO_BINLOG] TABLE[S] [t, ...] WITH READ LOCK [AND DISABLE CHECKPOINT], the Percona
# LOCK TABLES/BINLOG FOR BACKUP, and SET GLOBAL read_only (takes the same lock).
GLOBAL_READ_LOCK_RE = re.compile(
    r"\bFLUSH\b.*\bWITH\s+READ\s+LOCK\b"
    r"|\bLOCK\s+(TABLES|BINLOG)\s+FOR\s+BACKUP\b"
    r"|\bSET\b.*\bGLOBAL\b.*\bREAD_ONLY\b|\bSET\b.*@@GLOBAL\.READ_ONLY\b",
    re.IGNORECASE | re.DOTALL,
)


# one general log (FILE) entry: "[YYMMDD HH:MM:SS]\t[\t]   <id> <Command>\t<argument, maybe multi-line>"
_LOG_ENTRY_RE = re.compile(
    r"^(?:[^\t\n]*\t)+\s*\d+\s+(\w+(?: \w+)?)\t(.*?)(?=\n(?:[^\t\n]*\t)+\s*\d+\s+\w+(?: \w+)?\t|\Z)",
    re.MULTILINE | re.DOTALL,
)


def global_read_locks(log_text):
    """Statements of a general log text that take a global read lock (comments unwrapped)."""
    found = []
    for command, stmt in _LOG_ENTRY_RE.findall(log_text):
        if command not in ("Query", "Execute", "Prepare"):
            continue
        stmt = re.sub(r"/\*!\d*|\*/", " ", stmt)  # /*!40101 LOCAL */ runs as LOCAL
        stmt = re.sub(r"/\*.*?\*/|--[^\n]*", " ", stmt)
        stmt = " ".join(stmt.split())
        if GLOBAL_READ_LOCK_RE.search(stmt):
            found.append(stmt)
    return found


def test_global_read_lock_spellings_are_all_caught():
    log = "\n".join(f"261207 16:36:31\t     7 Query\t{q}\n\t\t     7 Quit\t" for q in (
        "FLUSH TABLES WITH READ LOCK", "flush  no_write_to_binlog tables with read lock",
        "FLUSH /*!40101 LOCAL */ TABLES WITH READ LOCK", "FLUSH TABLE app.t1, app.t2 WITH READ LOCK",
        "FLUSH LOCAL TABLES WITH READ LOCK AND DISABLE CHECKPOINT", "LOCK TABLES FOR BACKUP",
        "LOCK BINLOG FOR BACKUP", "SET GLOBAL read_only = 1", "SET @@global.read_only=ON",
        "FLUSH /* x */ TABLES\n WITH READ LOCK"))
    assert len(global_read_locks(log)) == 10
    ok = "\n".join(f"\t\t    12 Query\t{q}" for q in (
        "BACKUP STAGE START", "BACKUP STAGE BLOCK_COMMIT", "BACKUP STAGE END", "FLUSH NO_WRITE_TO_BINLOG SSL",
        "SELECT @@read_only", "FLUSH TABLES", "INSERT INTO t VALUES ('WITH READ LOCK')"))
    assert global_read_locks(ok) == []


class Writer:
    """
    Two connections, one per table (InnoDB and Aria), each committing a sequence
    number every 2 ms at most: odd numbers go to InnoDB, even ones to Aria.
    Every commit's latency is kept (``latencies``: (start, seconds)).
    """

    def __init__(self, server, interval=0.002):
        self.server = server
        self.interval = interval
        self.stop_event = threading.Event()
        self.acked = {"load_innodb": [], "load_aria": []}
        self.latencies = []  # (monotonic start, seconds) of every commit
        self.errors = []
        self.threads = [threading.Thread(target=self._run, args=(table, first), daemon=True)
                        for table, first in (("load_innodb", 1), ("load_aria", 2))]
        self.started = self.stopped = None

    def _run(self, table, seq):
        conn = self.server.connect(autocommit=True)
        with conn.cursor() as cur:
            while not self.stop_event.is_set():
                t0 = time.monotonic()
                try:
                    cur.execute(f"INSERT INTO app.{table} (seq, payload) VALUES (%s, REPEAT('x', 200))", (seq,))
                    self.latencies.append((t0, time.monotonic() - t0))
                    self.acked[table].append(seq)
                except pymysql.err.MySQLError as exc:
                    self.errors.append((seq, exc))
                seq += 2
                # one commit per interval at most; a slow commit is not followed by a sleep
                time.sleep(max(0.0, self.interval - (time.monotonic() - t0)))
        conn.close()

    def start(self):
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.stop_event.set()
        for thread in self.threads:
            thread.join(10)
        self.stopped = time.monotonic()

    def longest(self, start, end):
        """The slowest commit that started in [start, end]: (seconds, offset from start)."""
        inside = [(lat, t - start) for t, lat in self.latencies if start <= t <= end]
        return max(inside) if inside else (None, None)

    @property
    def rate(self):
        return sum(len(v) for v in self.acked.values()) / (self.stopped - self.started)


def test_seed_under_load_keeps_every_row_once_and_takes_no_global_read_lock(
        topology, mariadb_servers, salt_run_cli):
    db1, db3 = mariadb_servers["db1"], mariadb_servers["db3"]
    db1.query("CREATE DATABASE IF NOT EXISTS app")
    db1.query("CREATE TABLE IF NOT EXISTS app.load_innodb (id INT AUTO_INCREMENT PRIMARY KEY, seq INT NOT NULL, "
              "payload VARCHAR(255)) ENGINE=InnoDB")
    db1.query("CREATE TABLE IF NOT EXISTS app.load_aria (id INT AUTO_INCREMENT PRIMARY KEY, seq INT NOT NULL, "
              "payload VARCHAR(255)) ENGINE=Aria")
    # some bulk so the copy takes a moment
    db1.query("CREATE TABLE IF NOT EXISTS app.bulk (id INT AUTO_INCREMENT PRIMARY KEY, b VARCHAR(1000)) ENGINE=InnoDB")
    # ~80 MB: the copy lasts seconds, so a lock held through it shows in the writer's latencies
    db1.query("INSERT INTO app.bulk (b) SELECT REPEAT('b', 1000) FROM app.seq_1_to_80000")
    log_offset = db1.general_log.stat().st_size
    old_pid = db3.pid()
    writer = Writer(db1)
    writer.start()
    time.sleep(0.5)
    seed_start = time.monotonic()
    ret = salt_run_cli.run("mysqlrepl.seed", "replica=db3", "force=True")
    seed_end = time.monotonic()
    time.sleep(0.5)
    writer.stop()
    assert ret.returncode == 0, ret
    assert ret.data["result"] is True, ret.data
    assert set(ret.data["seeded"]) == {"db3"}, ret.data
    # salt-run printed progress while it copied (pillar seed:progress_interval 0.5 s here)
    copying = re.findall(r"db3 <- db1: [0-9.]+ [kMG]?B of ~[0-9.]+ [kMG]?B \(\d+%\), [0-9.]+ [kMG]?B/s", ret.stdout)
    assert copying, ret.stdout[:3000]
    assert "db3 <- db1: copied, preparing and starting it" in ret.stdout
    assert db3.pid() != old_pid, "db3 was not restarted on a new datadir"
    assert writer.errors == []
    # a floor only: the writer did write through the seed (a stall is caught below, commit by
    # commit; a rate cannot see one, and on this shared machine it fell to ~140 rows/s unseeded)
    assert writer.rate >= 50, f"writer only managed {writer.rate:.0f} rows/s"

    pos = db1.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert db3.query("SELECT MASTER_GTID_WAIT(%s, 60) AS r", (pos,))[0]["r"] == 0
    for table, acked in writer.acked.items():
        rows = db3.query(f"SELECT seq, COUNT(*) AS n FROM app.{table} GROUP BY seq")
        got = {r["seq"]: r["n"] for r in rows}
        assert set(got) == set(acked), f"{table}: missing {sorted(set(acked) - set(got))[:5]} extra {sorted(set(got) - set(acked))[:5]}"
        assert max(got.values()) == 1, f"{table}: duplicated rows"
        c1 = db1.query(f"CHECKSUM TABLE app.{table}")[0]["Checksum"]
        c3 = db3.query(f"CHECKSUM TABLE app.{table}")[0]["Checksum"]
        assert c1 == c3, table
    log = db1.general_log.read_bytes()[log_offset:].decode(errors="replace")
    assert "BACKUP STAGE BLOCK_COMMIT" in log, "the general log did not see the backup"
    assert global_read_locks(log) == [], "the seed took a global read lock on the master"
    # how long the server held BLOCK_COMMIT (METADATA_LOCK_INFO, polled by the master's minion)
    locks = ret.data["seeded"]["db3"]["master_locks"]
    print(f"master_locks: {locks}")
    assert locks["source"].startswith("server: information_schema.METADATA_LOCK_INFO"), locks
    assert locks["ftwrl"] is False, locks
    assert locks["block_commit_ms"] is not None, locks
    assert locks["block_commit_ms"] <= LOCK_BOUND_MS + STALL_MARGIN_MS, locks
    # what the application felt: no commit waited much longer than that lock
    worst, at = writer.longest(seed_start, seed_end)
    print(f"seed: BLOCK_COMMIT {locks['block_commit_ms']} ms (+-{locks['resolution_ms']}); slowest commit "
          f"{worst * 1000:.0f} ms at +{at:.2f} s of {seed_end - seed_start:.2f} s; {writer.rate:.0f} rows/s")
    assert worst * 1000 <= LOCK_BOUND_MS + STALL_MARGIN_MS, (
        f"a commit waited {worst * 1000:.0f} ms at +{at:.2f} s of the seed "
        f"(bound {LOCK_BOUND_MS} + {STALL_MARGIN_MS} ms)")
    rs = replica_status(db3)
    assert rs["Slave_IO_Running"] == "Yes" and rs["Master_SSL_Verify_Server_Cert"] == "Yes"


def test_seed_skips_replicas_that_already_replicate(topology, salt_run_cli):
    ret = salt_run_cli.run("mysqlrepl.seed")
    assert ret.returncode == 0, ret
    assert ret.data["result"] is True and ret.data["seeded"] == {}, ret.data
    assert set(ret.data["skipped"]) == {"db2", "db3"}


def test_lock_is_held_across_calls_and_released_by_unlock_or_lease(topology, mariadb_servers, salt_cli, tmp_path):
    db1 = mariadb_servers["db1"]
    db1.query("CREATE DATABASE IF NOT EXISTS app")
    db1.query("CREATE TABLE IF NOT EXISTS app.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64))")
    ret = salt_cli.run("mysqlrepl.lock", "lease=30", minion_tgt="db1")
    info = ret.data
    assert isinstance(info, dict) and info["conn_id"], ret
    assert info["gtid"] == db1.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    # the Salt call has returned, the lock is still held: a write waits
    blocked = threading.Event()
    done = threading.Event()

    def write():
        conn = db1.connect(autocommit=True)
        blocked.set()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO app.t (v) VALUES ('during-lock')")
        done.set()
        conn.close()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    blocked.wait(5)
    assert not done.wait(1.5), "a write went through while mysqlrepl.lock held the read lock"
    ret = salt_cli.run("mysqlrepl.lock", "lease=30", minion_tgt="db1")
    # refused, naming the session that holds the lock (not any failure)
    assert ret.returncode != 0, ret
    assert f"db1 is already locked by mysqlrepl (connection {info['conn_id']}," in str(ret.data), ret
    ret = salt_cli.run("mysqlrepl.unlock", minion_tgt="db1")
    assert ret.data["unlocked"] is True, ret
    assert done.wait(10), "unlock did not release the write"
    # a lease nobody releases runs out by itself (the server drops the idle holder)
    ret = salt_cli.run("mysqlrepl.lock", "lease=5", minion_tgt="db1")
    conn_id = ret.data["conn_id"]
    wait_for(lambda: not db1.query("SELECT ID FROM information_schema.PROCESSLIST WHERE ID=%s", (conn_id,)),
             timeout=20, what="lease expiry")
    db1.query("INSERT INTO app.t (v) VALUES ('after-lease')")
    ret = salt_cli.run("mysqlrepl.unlock", minion_tgt="db1")
    assert ret.data["unlocked"] is False


def test_dump_writes_a_private_file_with_the_gtid_position(topology, mariadb_servers, salt_cli, harness_root):
    path = mariadb_servers["db1"].root / "dump.sql"
    ret = salt_cli.run("mysqlrepl.dump", str(path), "databases=app", minion_tgt="db1")
    assert ret.data["bytes"] > 0, ret
    assert (path.stat().st_mode & 0o777) == 0o600
    text = path.read_text()
    assert "gtid_slave_pos" in text and "CREATE TABLE `t`" in text


def test_require_subject_pins_the_replication_account(topology, mariadb_servers, write_pillar, salt_run_cli,
                                                       salt_cli):
    subject = "/O=W3C/OU=WebPlatform Docs/CN=repl"
    pillar = copy.deepcopy(topology["pillar"])
    pillar["mysqlrepl"]["replication"].update(require="subject", subject=subject)
    write_pillar(pillar)
    try:
        ret = salt_run_cli.run("state.orchestrate", "mysqlrepl.orch.setup")
        assert orch_failures(ret) == {}, ret
        db1, db2 = mariadb_servers["db1"], mariadb_servers["db2"]
        row = db1.query("SELECT ssl_type, CAST(x509_subject AS CHAR) AS s FROM mysql.user WHERE User='repl'")[0]
        assert (row["ssl_type"], row["s"]) == ("SPECIFIED", subject)
        for name in ("db2", "db3"):
            rs = replica_status(mariadb_servers[name])
            assert rs["Slave_IO_Running"] == "Yes", rs
            assert rs["Master_SSL_Cert"].endswith("/client.crt")
        tls = db2.root / "tls"
        ca = str(tls / "ca.crt")
        # a certificate from the same CA with another subject (db2's server certificate) is refused
        with pytest.raises(pymysql.err.OperationalError) as refused:
            repl_connect(db1, ssl_ca=ca, ssl_cert=str(tls / "server.crt"), ssl_key=str(tls / "server.key"))
        assert refused.value.args[0] == 1045, refused.value.args
        repl_connect(db1, ssl_ca=ca, ssl_cert=str(tls / "client.crt"), ssl_key=str(tls / "client.key")).close()
        ret = apply(salt_cli)
        assert changes_of(ret) == {n: {} for n in NAMES}, ret
    finally:
        write_pillar(topology["pillar"])
        ret = apply(salt_cli)
        assert all_ok(ret) == {}, ret
    assert replica_status(mariadb_servers["db2"])["Master_SSL_Cert"].endswith("/server.crt")


def test_highstate_refuses_a_never_seeded_replica_and_the_runner_seeds_it(
        topology, mariadb_servers, salt_cli, salt_run_cli):
    db3 = mariadb_servers["db3"]
    db3.session("STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL gtid_slave_pos = ''")
    ret = apply(salt_cli)
    assert all_ok(ret).keys() == {"db3"}, ret
    state = next(s for s in ret.data["db3"].values() if s["__id__"] == "mysqlrepl-replication")
    assert state["result"] is False and not state["changes"]
    assert "db3 has never been seeded from db1" in state["comment"]
    assert "mysqlrepl.orch.setup" in state["comment"]
    assert replica_status(db3) is None
    ret = salt_run_cli.run("mysqlrepl.seed")
    assert ret.data["result"] is True and set(ret.data["seeded"]) == {"db3"}, ret.data
    assert ret.data["skipped"] == {"db2": f"already replicates from {mariadb_servers['db1'].address}"}
    ret = apply(salt_cli)
    assert all_ok(ret) == {} and changes_of(ret) == {n: {} for n in NAMES}, ret


def test_a_seed_that_does_not_replicate_puts_the_old_datadir_back(
        topology, mariadb_servers, salt_run_cli, salt_cli):
    db1, db3 = mariadb_servers["db1"], mariadb_servers["db3"]
    db3.session("SET SESSION sql_log_bin = 0", "CREATE DATABASE IF NOT EXISTS only_on_db3")
    hosts = [r["Host"] for r in db1.query("SELECT Host FROM mysql.user WHERE User = 'repl'")]
    assert len(hosts) == 1, hosts
    # the master refuses the replication account (not binlogged: db2 is not touched): the seeded
    # copy starts, its IO thread gets 1045, replication does not start
    db1.session("SET SESSION sql_log_bin = 0", f"RENAME USER 'repl'@'{hosts[0]}' TO 'repl_away'@'{hosts[0]}'")
    try:
        ret = salt_run_cli.run("mysqlrepl.seed", "replica=db3", "force=True")
    finally:
        db1.session("SET SESSION sql_log_bin = 0", f"RENAME USER 'repl_away'@'{hosts[0]}' TO 'repl'@'{hosts[0]}'")
    try:
        assert ret.data["result"] is False, ret.data
        assert "seeded db3 but replication did not start" in ret.data["comment"], ret.data
        assert db3.running()
        # the old datadir is back (it holds what only db3 had), the seeded copy is gone
        assert db3.query("SHOW DATABASES LIKE 'only_on_db3'"), "db3 does not run on its old datadir"
        left = sorted(p.name for p in db3.datadir.parent.iterdir() if "mysqlrepl-" in p.name)
        assert left == [], left
        ret = apply(salt_cli)
        assert all_ok(ret) == {}, ret
        wait_for(lambda: (replica_status(db3) or {}).get("Slave_IO_Running") == "Yes", timeout=30,
                 what="db3 replicating again on its old datadir")
    finally:
        db3.session("SET SESSION sql_log_bin = 0", "DROP DATABASE IF EXISTS only_on_db3")
