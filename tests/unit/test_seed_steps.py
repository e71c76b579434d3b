"""
The seed's receiving side (``_utils/mysqlrepl_seed.py``) without servers or Salt:
every exit of ``receive()``, driven by scripted ops on real directories under
``tmp_path``. A fake server runs on whatever datadir holds when it starts (a
``MARKER`` file says whose it is: ``old`` or ``seeded``); each test checks the
module's invariant at its exit: which directory holds which datadir, what the
server runs on, what was left beside the datadir, and the order of the ops.
Last, ``seed_receive`` of the execution module with fake dunders: the ops it
builds reach Salt and the servers as before.
"""

import os
import shutil

import pytest
from salt.exceptions import CommandExecutionError

import _utils.mysqlrepl_seed as seed

MARKER = "MARKER"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Replica:
    """
    The ops of one replica. ``fail[op] = {n: outcome}``: the n-th call of ``op``
    (from 1) raises ``outcome`` when it is an exception, else returns it.
    ``calls``: ``(op, arg)`` in order. Ops that take time move ``clock``.
    """

    COST = {"stream": 10.0, "prepare": 5.0, "stop": 1.0, "start": 2.0, "wait_up": 0.5, "catch_up": 3.0}

    def __init__(self, tmp_path, rs=None, conflict=None, fail=None, gtid="0-11-42"):
        self.lib = tmp_path / "lib"
        self.datadir = self.lib / "mysql"
        self.datadir.mkdir(parents=True)
        (self.datadir / MARKER).write_text("old")
        (self.datadir / "ibdata1").write_text("old data")
        self.where = seed.paths(str(self.datadir))
        self.tls = tuple(str(tmp_path / f) for f in ("ca.pem", "cert.pem", "key.pem"))
        for path in self.tls:
            open(path, "w", encoding="utf-8").close()
        self.rs, self._conflict, self.gtid = rs, conflict, gtid
        self.fail = fail or {}
        self.counts = {}
        self.calls = []
        self.clock = Clock()
        self.running = "old"  # the datadir the server runs on, None: stopped

    # -- plumbing
    def _step(self, op, arg=None):
        self.calls.append((op, arg))
        self.counts[op] = self.counts.get(op, 0) + 1
        self.clock.now += self.COST.get(op, 0.0)
        outcome = self.fail.get(op, {}).get(self.counts[op], None)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def ops(self, catch_up=True):
        names = seed.OPS + (("catch_up",) if catch_up else ())
        return {name: getattr(self, name) for name in names}

    def names(self):
        """The ops called, in order (filesystem ones with the path's short name)."""
        out = []
        for op, arg in self.calls:
            if op in ("rename",):
                out.append(f"rename {self.short(arg[0])}->{self.short(arg[1])}")
            elif op in ("rmtree", "makedirs"):
                out.append(f"{op} {self.short(arg)}")
            elif op not in ("exists",):
                out.append(op)
        return out

    def short(self, path):
        for key, value in self.where.items():
            if path == value:
                return key
        return path

    # -- filesystem (real, under tmp_path)
    def exists(self, path):
        self._step("exists", path)
        return os.path.exists(path)

    def makedirs(self, path):
        self._step("makedirs", path)
        os.makedirs(path, mode=0o700)

    def rename(self, src, dst):
        self._step("rename", (src, dst))
        os.rename(src, dst)

    def rmtree(self, path):
        self._step("rmtree", path)
        shutil.rmtree(path)

    # -- the replica
    def replica_status(self):
        self._step("replica_status")
        return self.rs

    def conflict(self, rs):
        self._step("conflict", rs)
        return self._conflict

    def stream(self, incoming):
        self._step("stream", incoming)
        with open(os.path.join(incoming, MARKER), "w", encoding="utf-8") as handle:
            handle.write("seeded")
        os.mkdir(os.path.join(incoming, "app"))
        return {"bytes": 4096}

    def prepare(self, incoming):
        self._step("prepare", incoming)

    def binlog_info(self, incoming):
        self._step("binlog_info", incoming)
        return {"gtid": self.gtid, "file": "bin.000001", "pos": 4}

    def chown_tree(self, path):
        self._step("chown_tree", path)

    def stop(self):
        outcome = self._step("stop")
        if outcome is None:
            self.running = None
            return True
        return outcome

    def start(self):
        outcome = self._step("start")
        if outcome is None:
            with open(os.path.join(self.where["datadir"], MARKER), encoding="utf-8") as handle:
                self.running = handle.read()
            return True
        return outcome

    def wait_up(self):
        self._step("wait_up")
        if self.running is None:
            raise CommandExecutionError("server db2 did not come back within 60s")

    def position(self, gtid):
        self._step("position", gtid)

    def replicate(self):
        outcome = self._step("replicate")
        return outcome or {"result": True, "changes": {"link": "new"}, "comment": "replicates"}

    def catch_up(self):
        self._step("catch_up")
        return "0-11-50"

    # -- what is where
    def datadir_holds(self):
        path = os.path.join(self.where["datadir"], MARKER)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return handle.read()

    def beside(self):
        """What the seed left beside the datadir: {"incoming"/"previous"/"discard": marker or None}."""
        out = {}
        for key in ("incoming", "previous", "discard"):
            if os.path.exists(self.where[key]):
                path = os.path.join(self.where[key], MARKER)
                out[key] = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        return out

    def receive(self, force=False, catch_up=True, master="db1"):
        return seed.receive("db2", "mariadb@db2", master, self.where, self.ops(catch_up), tls_files=self.tls,
                            force=force, catch_up=catch_up, clock=self.clock)


def assert_runs_on_own(r):
    """The invariant after a failure: its own datadir in place, running, nothing left beside it."""
    assert r.datadir_holds() == "old"
    assert r.running == "old"
    assert r.beside() == {}


PREFIX = ["makedirs incoming", "chown_tree", "stream", "prepare", "binlog_info", "chown_tree"]
SWAP = ["stop", "rename datadir->previous", "rename incoming->datadir", "start"]
PUT_BACK = ["stop", "rename datadir->incoming", "rename previous->datadir", "start", "wait_up", "rmtree incoming"]


# ---------------------------------------------------------------------------
# nothing touched
# ---------------------------------------------------------------------------

def test_paths_sit_beside_the_datadir():
    assert seed.paths("/var/lib/mysql/") == {
        "datadir": "/var/lib/mysql",
        "incoming": "/var/lib/.mysql.mysqlrepl-incoming",
        "previous": "/var/lib/.mysql.mysqlrepl-previous",
        "discard": "/var/lib/.mysql.mysqlrepl-discard",
    }


def test_the_master_of_record_is_not_seeded(tmp_path):
    r = Replica(tmp_path)
    with pytest.raises(CommandExecutionError, match="db2 is the master of record: it is not seeded"):
        r.receive(master="db2")
    assert r.calls == []
    assert_runs_on_own(r)


def test_missing_tls_files_refuse(tmp_path):
    r = Replica(tmp_path)
    os.unlink(r.tls[2])
    with pytest.raises(CommandExecutionError, match=r"TLS files missing \(.*key.pem\); apply mysqlrepl.tls"):
        r.receive()
    assert r.names() == []
    assert_runs_on_own(r)


def test_a_replica_that_replicates_is_skipped(tmp_path):
    r = Replica(tmp_path, rs={"host": "10.0.0.11", "port": 3306})
    out = r.receive()
    assert out == {"server": "db2", "seeded": False,
                   "comment": "db2 already replicates from 10.0.0.11:3306; use force=True to re-seed"}
    assert r.names() == ["replica_status", "conflict"]
    assert_runs_on_own(r)


def test_a_replica_of_another_master_is_refused(tmp_path):
    r = Replica(tmp_path, rs={"host": "10.0.0.13", "port": 3306}, conflict="db2 replicates from db3, not db1")
    with pytest.raises(CommandExecutionError, match="db2 replicates from db3, not db1"):
        r.receive()
    assert r.names() == ["replica_status", "conflict"]
    assert_runs_on_own(r)


def test_ops_are_checked_before_anything_runs(tmp_path):
    r = Replica(tmp_path)
    ops = r.ops(catch_up=False)
    with pytest.raises(ValueError, match="ops missing: catch_up"):
        seed.receive("db2", "mariadb@db2", "db1", r.where, ops, tls_files=r.tls, catch_up=True)
    del ops["wait_up"]
    with pytest.raises(ValueError, match="ops missing: wait_up"):
        seed.receive("db2", "mariadb@db2", "db1", r.where, ops, tls_files=r.tls)
    assert r.calls == []


# ---------------------------------------------------------------------------
# before the swap: the running server is never touched
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("op, n, done", [
    ("chown_tree", 1, 2), ("stream", 1, 3), ("prepare", 1, 4), ("binlog_info", 1, 5), ("chown_tree", 2, 6),
])
def test_a_failure_before_the_swap_removes_incoming_only(tmp_path, op, n, done):
    r = Replica(tmp_path, fail={op: {n: CommandExecutionError(f"{op} broke")}})
    with pytest.raises(CommandExecutionError, match=f"^{op} broke$"):
        r.receive()
    assert r.names() == ["replica_status"] + PREFIX[:done] + ["rmtree incoming"]
    assert "stop" not in r.names()  # the server was never stopped
    assert_runs_on_own(r)


def test_a_stale_incoming_directory_of_an_earlier_seed_is_removed_first(tmp_path):
    r = Replica(tmp_path, fail={"stream": {1: CommandExecutionError("no sender")}})
    os.makedirs(os.path.join(r.where["incoming"], "leftover"))
    with pytest.raises(CommandExecutionError, match="no sender"):
        r.receive()
    assert r.names()[:3] == ["replica_status", "rmtree incoming", "makedirs incoming"]
    assert_runs_on_own(r)


def test_a_previous_datadir_left_by_an_earlier_seed_is_never_removed(tmp_path):
    r = Replica(tmp_path, rs={"host": "10.0.0.11", "port": 3306})
    os.rename(r.where["datadir"], r.where["previous"])  # say an earlier put-back failed half-way
    os.makedirs(r.where["datadir"])
    (r.datadir / MARKER).write_text("seeded")
    r.running = "seeded"
    with pytest.raises(CommandExecutionError) as err:
        r.receive(force=True)
    assert str(err.value).startswith(f"{r.where['previous']} is left from an earlier seed of db2")
    assert str(err.value).endswith("Move it back or remove it by hand, then seed again; nothing changed")
    assert r.names() == ["replica_status"]
    assert r.datadir_holds() == "seeded" and r.running == "seeded"
    assert r.beside() == {"previous": "old"}


@pytest.mark.parametrize("outcome, detail", [
    (False, ""), (CommandExecutionError("pid 7 still running 60 s after SIGTERM"), " (pid 7 still running"),
])
def test_a_server_that_does_not_stop_changes_nothing(tmp_path, outcome, detail):
    r = Replica(tmp_path, fail={"stop": {1: outcome}})
    with pytest.raises(CommandExecutionError) as err:
        r.receive()
    assert str(err.value).startswith(f"service.stop mariadb@db2 failed{detail}")
    assert str(err.value).endswith("; nothing changed")
    assert r.names() == ["replica_status"] + PREFIX + ["stop", "rmtree incoming", "start", "wait_up"]
    assert_runs_on_own(r)


def test_a_stop_that_failed_but_stopped_the_server_starts_it_again_or_says_so(tmp_path):
    class HalfStop(Replica):
        def stop(self):
            self._step("stop")
            self.running = None  # it went down, yet the service manager reported a failure
            return False

    r = HalfStop(tmp_path)
    with pytest.raises(CommandExecutionError, match="; nothing changed$"):
        r.receive()
    assert_runs_on_own(r)
    r = HalfStop(tmp_path / "again", fail={"start": {1: False}})
    with pytest.raises(CommandExecutionError, match="does not answer after service.start: nothing was moved"):
        r.receive()
    assert r.running is None and r.datadir_holds() == "old" and r.beside() == {}


# ---------------------------------------------------------------------------
# the swap and after: every failure puts the old datadir back and starts it
# ---------------------------------------------------------------------------

def test_a_first_rename_that_fails_moved_nothing_and_restarts_the_server(tmp_path):
    r = Replica(tmp_path, fail={"rename": {1: OSError(18, "Invalid cross-device link")}})
    with pytest.raises(OSError, match="cross-device"):
        r.receive()
    assert r.names() == ["replica_status"] + PREFIX + [
        "stop", "rename datadir->previous", "start", "wait_up", "rmtree incoming"]
    assert_runs_on_own(r)


def test_a_second_rename_that_fails_moves_the_datadir_back(tmp_path):
    r = Replica(tmp_path, fail={"rename": {2: OSError(28, "No space left on device")}})
    with pytest.raises(OSError, match="No space left"):
        r.receive()
    assert r.names() == ["replica_status"] + PREFIX + [
        "stop", "rename datadir->previous", "rename incoming->datadir",
        "rename previous->datadir", "start", "wait_up", "rmtree incoming"]
    assert_runs_on_own(r)


@pytest.mark.parametrize("fail, text, after", [
    ({"start": {1: False}}, "^service.start mariadb@db2 failed on the seeded datadir$", []),
    ({"start": {1: CommandExecutionError("mariadbd exited during startup")}}, "exited during startup", []),
    ({"wait_up": {1: CommandExecutionError("server db2 did not come back within 60s")}},
     "did not come back", ["wait_up"]),
    ({"position": {1: CommandExecutionError("1193: Unknown system variable")}}, "Unknown system variable",
     ["wait_up", "position"]),
    ({"replicate": {1: {"result": False, "comment": "replication does not run: IO No (1045)"}}},
     "^seeded db2 but replication did not start: replication does not run: IO No \\(1045\\)$",
     ["wait_up", "position", "replicate"]),
    ({"replicate": {1: CommandExecutionError("2013: Lost connection")}}, "Lost connection",
     ["wait_up", "position", "replicate"]),
])
def test_a_failure_after_the_swap_puts_the_old_datadir_back(tmp_path, fail, text, after):
    r = Replica(tmp_path, fail=fail)
    with pytest.raises(CommandExecutionError, match=text):
        r.receive()
    assert r.names() == ["replica_status"] + PREFIX + SWAP + after + PUT_BACK
    assert "rmtree previous" not in r.names()
    assert r.counts["stop"] == 2 and r.counts["start"] == 2
    assert_runs_on_own(r)


# ---------------------------------------------------------------------------
# putting back fails: nothing more moved or deleted, the error says where
# ---------------------------------------------------------------------------

REPLICATION_FAILS = {"replicate": {1: {"result": False, "comment": "IO No (1045)"}}}
UNTIL_FAILURE = ["replica_status"] + PREFIX + SWAP + ["wait_up", "position", "replicate"]


def put_back_fails(tmp_path, **more):
    r = Replica(tmp_path, fail=dict(REPLICATION_FAILS, **more))
    with pytest.raises(CommandExecutionError) as err:
        r.receive()
    text = str(err.value)
    assert text.startswith("seeding db2 failed (seeded db2 but replication did not start: IO No (1045)), "
                           "and putting the old datadir back failed: "), text
    assert not any(op == "rmtree" for op, _ in r.calls[len(UNTIL_FAILURE):]), r.names()
    return r, text


@pytest.mark.parametrize("outcome", [False, CommandExecutionError("pid 9 still running")])
def test_put_back_stop_fails(tmp_path, outcome):
    r, text = put_back_fails(tmp_path, stop={2: outcome})
    assert "service.stop mariadb@db2 failed" in text
    assert f"the previous datadir is kept at {r.where['previous']}" in text
    assert r.names() == UNTIL_FAILURE + ["stop"]
    assert r.datadir_holds() == "seeded" and r.running == "seeded"
    assert r.beside() == {"previous": "old"}


def test_put_back_moving_the_seeded_datadir_aside_fails(tmp_path):
    r, text = put_back_fails(tmp_path, rename={3: OSError(16, "Device or resource busy")})
    assert f"the previous datadir is kept at {r.where['previous']}" in text
    assert f"the seeded datadir still at {r.where['datadir']}" in text and "Device or resource busy" in text
    assert r.names() == UNTIL_FAILURE + ["stop", "rename datadir->incoming"]
    assert r.datadir_holds() == "seeded" and r.running is None
    assert r.beside() == {"previous": "old"}


def test_put_back_moving_the_previous_datadir_back_fails(tmp_path):
    r, text = put_back_fails(tmp_path, rename={4: OSError(5, "Input/output error")})
    assert (f"the server is stopped with no datadir at {r.where['datadir']}; the previous datadir is kept at "
            f"{r.where['previous']}, the seeded copy at {r.where['incoming']}") in text
    assert r.names() == UNTIL_FAILURE + ["stop", "rename datadir->incoming", "rename previous->datadir"]
    assert r.datadir_holds() is None and r.running is None
    assert r.beside() == {"previous": "old", "incoming": "seeded"}


@pytest.mark.parametrize("fail, text", [
    ({"start": {2: False}}, "service.start mariadb@db2 failed on the old datadir"),
    ({"wait_up": {2: CommandExecutionError("did not come back within 60s")}},
     "the server started on the old datadir but does not answer (did not come back within 60s)"),
])
def test_put_back_the_old_server_does_not_run(tmp_path, fail, text):
    r, msg = put_back_fails(tmp_path, **fail)
    assert text in msg
    assert f"the previous datadir is back at {r.where['datadir']}" in msg
    assert f"the seeded copy is kept at {r.where['incoming']}" in msg
    assert r.names()[len(UNTIL_FAILURE):] == PUT_BACK[:len(PUT_BACK) - (2 if "start" in fail else 1)]
    assert r.datadir_holds() == "old"
    assert r.beside() == {"incoming": "seeded"}


def test_put_back_after_a_failed_first_rename_that_cannot_start_says_nothing_moved(tmp_path):
    r = Replica(tmp_path, fail={"rename": {1: OSError(18, "Invalid cross-device link")}, "start": {1: False}})
    with pytest.raises(CommandExecutionError) as err:
        r.receive()
    assert f"its datadir {r.where['datadir']} was not moved, but the server does not run" in str(err.value)
    assert r.names()[-2:] == ["rename datadir->previous", "start"]
    assert r.datadir_holds() == "old" and r.running is None
    assert r.beside() == {"incoming": "seeded"}


# ---------------------------------------------------------------------------
# seeded
# ---------------------------------------------------------------------------

def test_a_seed_replaces_the_datadir_and_removes_the_previous_one(tmp_path):
    r = Replica(tmp_path, rs={"host": "10.0.0.11", "port": 3306})
    out = r.receive(force=True)
    assert out == {
        "server": "db2", "seeded": True, "gtid": "0-11-42", "bytes": 4096,
        # stream 10, prepare 5; swap: stop 1 + start 2 + wait_up 0.5; catch-up 3
        "timings": {"stream_s": 10.0, "prepare_s": 5.0, "swap_s": 3.5, "total_s": 21.5},
        "caught_up": {"pos": "0-11-50", "seconds": 3.0},
    }
    assert r.names() == ["replica_status"] + PREFIX + SWAP + [
        "wait_up", "position", "replicate", "rename previous->discard", "rmtree discard", "catch_up"]
    assert ("position", "0-11-42") in r.calls
    assert r.datadir_holds() == "seeded" and r.running == "seeded"
    assert r.beside() == {}


def test_a_backup_without_gtid_sets_an_empty_position_and_catch_up_is_optional(tmp_path):
    r = Replica(tmp_path, gtid=None)
    out = r.receive(catch_up=False)
    assert "caught_up" not in out and out["gtid"] is None
    assert out["timings"]["total_s"] == 18.5
    assert ("position", "") in r.calls
    assert "catch_up" not in r.names()
    assert r.datadir_holds() == "seeded" and r.beside() == {}


def test_a_seeded_replica_that_does_not_catch_up_keeps_the_seeded_datadir(tmp_path):
    r = Replica(tmp_path, fail={"catch_up": {1: CommandExecutionError("db2 did not reach 0-11-50 within 60s")}})
    with pytest.raises(CommandExecutionError) as err:
        r.receive()
    assert str(err.value) == ("db2 was seeded and replicates but did not catch up with db1: "
                              "db2 did not reach 0-11-50 within 60s")
    assert r.names()[-3:] == ["rename previous->discard", "rmtree discard", "catch_up"]
    assert r.datadir_holds() == "seeded" and r.running == "seeded"
    assert r.beside() == {}


def test_a_previous_datadir_that_cannot_be_removed_does_not_fail_the_seed(tmp_path, monkeypatch):
    # the removal stops half-way: what is left no longer bears the previous datadir's name
    real = shutil.rmtree

    def half(path):
        os.remove(os.path.join(path, MARKER))
        raise OSError(13, "Permission denied")

    r = Replica(tmp_path)
    monkeypatch.setattr(shutil, "rmtree", half)
    out = r.receive(catch_up=False)
    monkeypatch.setattr(shutil, "rmtree", real)
    assert out["seeded"] is True and "next seed removes" in out["left"]
    assert r.datadir_holds() == "seeded" and r.running == "seeded"
    assert r.beside() == {"discard": None}
    # the next seed is not refused, and removes it first
    out = r.receive(force=True, catch_up=False)
    assert out["seeded"] is True and "left" not in out and r.beside() == {}
    assert r.names().count("rmtree discard") == 3


def test_a_previous_datadir_that_cannot_be_renamed_is_kept_and_named(tmp_path):
    r = Replica(tmp_path, fail={"rename": {3: OSError(16, "Device or resource busy")}})
    out = r.receive(catch_up=False)
    assert out["seeded"] is True and "still at" in out["left"] and "by hand" in out["left"]
    assert r.beside() == {"previous": "old"}


# ---------------------------------------------------------------------------
# the execution module's wiring: seed_receive builds the ops and calls receive()
# ---------------------------------------------------------------------------

class Conn:
    def close(self):
        pass


@pytest.fixture
def module(tmp_path, monkeypatch):
    """``_modules/mysqlrepl.py`` as minion db2 with fake dunders, the real seed util, fake I/O."""
    import contextlib  # pylint: disable=import-outside-toplevel
    import importlib.util  # pylint: disable=import-outside-toplevel
    import inspect  # pylint: disable=import-outside-toplevel
    import pathlib  # pylint: disable=import-outside-toplevel

    import _utils.mysqlrepl_config as conf  # pylint: disable=import-outside-toplevel
    import _utils.mysqlrepl_sql as sql  # pylint: disable=import-outside-toplevel
    import _utils.mysqlrepl_replication as replication  # pylint: disable=import-outside-toplevel
    import _utils.mysqlrepl_tunnel as tunnel  # pylint: disable=import-outside-toplevel

    repo = pathlib.Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("mysqlrepl_module", repo / "_modules" / "mysqlrepl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    datadir, tls = tmp_path / "lib" / "mysql", tmp_path / "tls"
    datadir.mkdir(parents=True)
    (datadir / MARKER).write_text("old")
    tls.mkdir()
    for name in ("ca.crt", "server.crt", "server.key"):
        (tls / name).write_text("")
    cfg = conf.load({
        "topology": "production", "master": "db1", "ca": {"minion": "db1"},
        "replication": {"password": "s3cret"},
        "servers": {"db1": {"address": "10.0.0.11", "server_id": 11},
                    "db2": {"address": "10.0.0.12", "server_id": 12, "datadir": str(datadir),
                            "tls_dir": str(tls), "service": "mariadb@db2"}},
    }, minion_id="db2")
    seen = {"calls": [], "events": [], "sql": []}
    calls = seen["calls"]

    def receive_backup(address, port, incoming, ca, cert, key, peer, timeout=None, progress=None, ready=None,
                       progress_interval=None):
        assert progress_interval == 2.0  # pillar seed:progress_interval (default)
        calls.append(("stream", address, port, os.path.basename(incoming), os.path.basename(ca), peer, timeout))
        ready()
        (pathlib.Path(incoming) / MARKER).write_text("seeded")
        progress(4096)
        return {"bytes": 4096}

    utils = {f"mysqlrepl_seed.{n}": f for n, f in inspect.getmembers(seed, inspect.isfunction)}
    utils.update({f"mysqlrepl_sql.{n}": f for n, f in inspect.getmembers(sql, inspect.isfunction)})
    for util in (replication, tunnel):
        utils.update({f"{util.__name__.rsplit('.', 1)[-1]}.{n}": f
                      for n, f in inspect.getmembers(util, inspect.isfunction)})
    utils.update({
        "mysqlrepl_db.closing": contextlib.closing,
        "mysqlrepl_stream.receive_backup": receive_backup,
        "mysqlrepl_stream.prepare_backup": lambda path: calls.append(("prepare", os.path.basename(path))),
        "mysqlrepl_stream.read_binlog_info": lambda path: {"gtid": "0-11-42"},
        "mysqlrepl_db.connect_tls": lambda *a, **k: calls.append(("connect_tls", a[0])) or Conn(),
    })

    def service(op):
        def run(name):
            calls.append((op, name))
            return True
        return run

    mod.__utils__ = utils
    mod.__opts__ = {"id": "db2"}
    mod.__context__ = {"mysqlrepl.cfg": cfg}
    mod.__salt__ = {"service.stop": service("service.stop"), "service.start": service("service.start"),
                    "event.send": lambda tag, data: seen["events"].append(tag)}
    monkeypatch.setattr(mod, "_connect", lambda srv, connect_timeout=10: Conn())
    monkeypatch.setattr(mod, "_replica_status", lambda conn, version=None: None)
    monkeypatch.setattr(mod, "_run", lambda conn, stmt: seen["sql"].append(stmt[0]) or [])
    monkeypatch.setattr(mod, "_version", lambda conn: sql.parse_version("10.11.6-MariaDB"))
    monkeypatch.setattr(mod, "_one", lambda conn, stmt: {"pos": "0-11-50"})
    monkeypatch.setattr(mod, "_owner_ids", lambda srv: (os.getuid(), os.getgid()))
    monkeypatch.setattr(mod, "_wait_up", lambda srv, timeout=60: calls.append(("wait_up", srv["name"])))
    monkeypatch.setattr(mod, "replication_apply", lambda server, seeded=False: (
        calls.append(("replication_apply", server, seeded)) or {"result": True, "comment": "", "changes": {}}))
    monkeypatch.setattr(mod, "wait_for_gtid", lambda pos, server, timeout=60: calls.append(("wait", pos, server)))
    return mod, seen, datadir


def test_seed_receive_wires_salt_to_the_steps(module):
    mod, seen, datadir = module
    out = mod.seed_receive(catch_up=True)
    assert out["server"] == "db2" and out["seeded"] is True and out["gtid"] == "0-11-42" and out["bytes"] == 4096
    assert set(out["timings"]) == {"stream_s", "prepare_s", "swap_s", "total_s"}
    assert out["caught_up"]["pos"] == "0-11-50"
    assert seen["calls"] == [
        ("stream", "10.0.0.12", 4444, ".mysql.mysqlrepl-incoming", "ca.crt", "10.0.0.11", 7200),
        ("prepare", ".mysql.mysqlrepl-incoming"),
        ("service.stop", "mariadb@db2"), ("service.start", "mariadb@db2"), ("wait_up", "db2"),
        ("replication_apply", "db2", True),
        ("connect_tls", "10.0.0.11"), ("wait", "0-11-50", "db2"),
    ]
    assert seen["sql"] == ["SET GLOBAL read_only = 1", "SET GLOBAL gtid_slave_pos = %s"]
    assert seen["events"] == ["salt/mysqlrepl/seed/db2/ready", "salt/mysqlrepl/seed/db2/receive"]
    assert (datadir / MARKER).read_text() == "seeded"
    assert sorted(p.name for p in datadir.parent.iterdir()) == ["mysql"]
    assert oct(datadir.stat().st_mode & 0o777) == "0o700"


def test_seed_receive_refuses_on_the_master_of_record(module):
    mod, seen, _datadir = module
    mod.__context__["mysqlrepl.cfg"]["local_servers"] = ["db1", "db2"]  # a minion with both
    with pytest.raises(CommandExecutionError, match="db1 is the master of record: it is not seeded"):
        mod.seed_receive("db1")
    assert seen["calls"] == []


def test_bound_callbacks_see_the_jobs_loader_from_a_util_and_from_a_thread(module):
    """
    Salt resolves ``__salt__`` through the loader of the current context: inside a util's call
    that is the utils loader (no ``__utils__`` there), in a bare thread there is none. A
    callback made with ``_bound`` in the module's function sees the module's loader anywhere.
    """
    import threading  # pylint: disable=import-outside-toplevel
    import types  # pylint: disable=import-outside-toplevel

    from salt.loader.context import LoaderContext, NamedLoaderContext, loader_ctxvar  # pylint: disable=import-outside-toplevel

    module = module[0]
    sent = []
    module_loader = types.SimpleNamespace(pack={"__salt__": {"event.send": lambda tag, data: sent.append(tag)}},
                                          pack_self="__module_self__", parent_loader=None)
    utils_loader = types.SimpleNamespace(pack={}, pack_self="__utils_self__", parent_loader=None)
    module.__salt__ = NamedLoaderContext("__salt__", LoaderContext())

    def send():
        module.__salt__["event.send"]("seed/db2/receive", {})

    def in_thread(fn):
        errors = []

        def run():
            try:
                fn()
            except Exception as exc:  # pylint: disable=broad-except
                errors.append(exc)
        t = threading.Thread(target=run)
        t.start()
        t.join()
        return errors

    token = loader_ctxvar.set(module_loader)
    try:
        bound = module._bound(send)
        unbound = send
    finally:
        loader_ctxvar.reset(token)
    # inside a util's call (its loader current): the bare callback fails, the bound one works
    token = loader_ctxvar.set(utils_loader)
    try:
        with pytest.raises(Exception, match="packed value for: __salt__"):
            unbound()
        bound()
    finally:
        loader_ctxvar.reset(token)
    # in a thread of its own: no loader at all
    assert len(in_thread(unbound)) == 1
    assert in_thread(bound) == [] and sent == ["seed/db2/receive", "seed/db2/receive"]


# -- what salt-run mysqlrepl.seed prints while it copies --------------------------------------

def test_a_progress_line_with_an_estimate_says_how_long_is_left():
    line = seed.progress_line("db3", "db1", 40 << 20, 80 << 20, 2.0)
    assert line == "db3 <- db1: 40.0 MB of ~80.0 MB (50%), 20.0 MB/s, ~2 s left"


def test_a_progress_line_past_the_estimate_or_without_one():
    assert seed.progress_line("db3", "db1", 90 << 20, 80 << 20, 3.0).endswith("(100%), 30.0 MB/s, finishing")
    assert seed.progress_line("db3", "db1", 1500, None, 1.0) == "db3 <- db1: 1.5 kB, 1.5 kB/s"


def test_the_copy_estimate_leaves_out_logs_sockets_and_temp(tmp_path):
    (tmp_path / "ibdata1").write_bytes(b"x" * 1000)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "t.ibd").write_bytes(b"x" * 500)
    for skipped in ("mysql-bin.000001", "relay-bin.000002", "mysqld.pid", "ibtmp1", "ib_logfile0"):
        (tmp_path / skipped).write_bytes(b"x" * 10000)
    (tmp_path / "#innodb_temp").mkdir()
    (tmp_path / "#innodb_temp" / "temp_1.ibt").write_bytes(b"x" * 10000)
    assert seed.copy_estimate(str(tmp_path), ("mysql-bin", "relay-bin")) == 1500
