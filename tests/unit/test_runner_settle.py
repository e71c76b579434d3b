"""
The switch runner's calls to minions: a hard time limit on each (``_call``),
and a critical-section call whose answer did not come (``_settle_job``): the
job must be over before the servers' states decide the outcome. Driven with
a scripted LocalClient (the integration tests lose a real answer with
``critical_timeout``).
"""

import importlib.util
import pathlib

import pytest

import _utils.mysqlrepl_switchplan as sp
from tests.unit import test_switch_plan as tp

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def runner(monkeypatch):
    spec = importlib.util.spec_from_file_location("mysqlrepl_runner", REPO / "_runners" / "mysqlrepl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod.time, "sleep", lambda s: None)
    return mod


class Client:
    """find_job answers from a script (one per call, the last repeats); records what was called."""

    def __init__(self, find, cache=None):
        self.find = list(find)
        self.cache = cache or {}
        self.calls = []

    def cmd(self, minion, fun, arg=(), timeout=None, **_kw):
        self.calls.append(fun)
        if fun == "saltutil.find_job":
            answer = self.find.pop(0) if len(self.find) > 1 else self.find[0]
            return {} if answer is None else {minion: answer}
        if fun == "saltutil.kill_job":
            return {minion: {}}
        raise AssertionError(fun)

    def get_cache_returns(self, jid):
        return self.cache

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def settle(runner, client):
    runner._client = lambda: client  # pylint: disable=protected-access
    return runner._settle_job("db2", "2026", "mysqlrepl.switch_critical", wait=0.2)  # pylint: disable=protected-access


def test_job_over_with_a_late_answer_in_the_cache(runner):
    answer = {"outcome": "promoted", "reason": "ok", "steps": []}
    client = Client([{}], cache={"db2": {"ret": answer}})
    out = settle(runner, client)
    assert out["ended"] is True and out["killed"] is False and out["answer"] == answer
    assert "saltutil.kill_job" not in client.calls


def test_job_still_running_is_killed_and_waited_for(runner):
    running = {"jid": "2026", "fun": "mysqlrepl.switch_critical", "pid": 4242}
    client = Client([running, running, {}])
    out = settle(runner, client)
    assert out["killed"] is True and out["ended"] is True and out["answer"] is None
    assert client.calls.count("saltutil.kill_job") == 1
    assert client.calls.count("saltutil.find_job") == 3


def test_job_that_outlives_the_kill_is_reported(runner):
    running = {"jid": "2026", "pid": 4242}
    out = settle(runner, Client([running]))
    assert out["killed"] is True and out["ended"] is False
    assert "still runs" in out["note"]


def test_silent_minion_leaves_the_job_unknown(runner):
    out = settle(runner, Client([None]))
    assert out["ended"] is None and "may still run" in out["note"]


@pytest.mark.parametrize("ret", [
    "ERROR: boom",
    "Passed invalid arguments to mysqlrepl.switch_critical: boom",
    "The minion function caused an exception: Traceback ... boom",
])
def test_job_that_failed_gives_its_error_not_an_answer(runner, ret):
    # Salt's job cache keeps no retcode: the text alone must tell
    client = Client([{}], cache={"db2": {"ret": ret}})
    out = settle(runner, client)
    assert out["ended"] is True and out["answer"] is None and "boom" in out["note"]


class Events:
    def __init__(self, events):
        self.events = list(events)
        self.asked = []

    def get_event(self, wait=5, tag="", **_kw):
        self.asked.append(tag)
        return self.events.pop(0) if self.events else None


class PubClient(Client):
    def __init__(self, minions, events, cache=None):
        super().__init__([{}], cache)
        self.minions = minions
        self.event = Events(events)

    def run_job(self, tgt, fun, **kw):
        self.calls.append(fun)
        return {"jid": "20261123", "minions": self.minions}


def call(runner, client, timeout=0.3):
    runner._client = lambda: client  # pylint: disable=protected-access
    return runner._call("db2", "mysqlrepl.status", ["db2"], timeout=timeout)  # pylint: disable=protected-access


def test_call_returns_the_minions_answer(runner):
    client = PubClient(["db2"], [None, {"id": "db2", "return": {"ok": 1}, "retcode": 0}])
    assert call(runner, client) == {"ok": 1}
    assert client.event.asked[0] == "salt/job/20261123/ret/db2"


def test_call_raises_the_minions_error(runner):
    client = PubClient(["db2"], [{"id": "db2", "return": "ERROR: 2002: Can't connect", "retcode": 1}])
    with pytest.raises(runner.CommandExecutionError, match="2002: Can't connect"):
        call(runner, client)


def test_call_stops_waiting_at_its_time_limit(runner):
    with pytest.raises(runner.CommandExecutionError, match="did not answer mysqlrepl.status within"):
        call(runner, PubClient(["db2"], []))


def test_call_takes_an_answer_that_only_reached_the_job_cache(runner):
    client = PubClient(["db2"], [], cache={"db2": {"ret": {"ok": 2}}})
    assert call(runner, client) == {"ok": 2}


def test_call_to_an_unknown_minion_fails_at_once(runner):
    with pytest.raises(runner.CommandExecutionError, match="no minion db2"):
        call(runner, PubClient([], []), timeout=30)


# ---------------------------------------------------------------------------
# the prechecks' reads: one round, the old master read again only when a GTID looks errant
# ---------------------------------------------------------------------------

def _facts_runner(runner, monkeypatch, rounds):
    """The runner with its switch rules (mysqlrepl_switchplan) and scripted switch_facts rounds;
    returns the list of the server lists each round read."""
    runner.__utils__ = {f"mysqlrepl_switchplan.{n}": getattr(sp, n) for n in ("prechecks", "events_to_move", "plan")}
    runner.__opts__ = {}
    monkeypatch.setattr(runner, "_progress", lambda *a, **k: None)
    monkeypatch.setattr(runner, "_read_record", lambda topo: None)
    asked = []

    def per_server(cfg, names, fun, timeout):
        asked.append(list(names))
        facts = rounds.pop(0)
        return {n: (True, facts[n]) for n in names}

    monkeypatch.setattr(runner, "_per_server", per_server)
    return asked


def test_prechecks_read_every_server_in_one_round(runner, monkeypatch):
    asked = _facts_runner(runner, monkeypatch, [tp.healthy()])
    out = runner._phase_prechecks(tp.cfg(), "db1", "db2", "jid")  # pylint: disable=protected-access
    assert out["failed"] == [] and asked == [["db2", "db3", "db1"]]  # the old master last within a minion


def test_prechecks_read_the_old_master_again_when_a_gtid_looks_errant(runner, monkeypatch):
    first = tp.healthy()
    # db1 was read before db2 applied 0-11-101: db2 looks errant
    first["db2"]["gtid"]["binlog_state"] = "0-11-101"
    again = {"db1": tp.fact(read_only="OFF", slave_pos="", binlog_state="0-11-101")}
    asked = _facts_runner(runner, monkeypatch, [first, again])
    out = runner._phase_prechecks(tp.cfg(), "db1", "db2", "jid")  # pylint: disable=protected-access
    assert asked == [["db2", "db3", "db1"], ["db1"]]
    assert out["failed"] == []


def test_prechecks_refuse_an_errant_gtid_the_old_master_still_lacks(runner, monkeypatch):
    first = tp.healthy()
    first["db2"]["gtid"]["binlog_state"] = "0-11-100,0-12-7"
    again = {"db1": tp.fact(read_only="OFF", slave_pos="", binlog_state="0-11-100")}
    asked = _facts_runner(runner, monkeypatch, [first, again])
    out = runner._phase_prechecks(tp.cfg(), "db1", "db2", "jid")  # pylint: disable=protected-access
    assert asked == [["db2", "db3", "db1"], ["db1"]]
    assert [c["check"] for c in out["failed"]] == ["no errant transactions"]


# ---------------------------------------------------------------------------
# the topology lock's record (what the switch reads to reuse facts read before it)
# ---------------------------------------------------------------------------

def test_topology_lock_records_its_holders(runner, tmp_path):
    runner.__opts__ = {"cachedir": str(tmp_path)}
    assert runner._peek_locks() == {}
    with runner._topology_lock("prod", "seed") as held:
        assert held == {"previous": None, "created": True}
        during = runner._peek_locks()["prod"]
        assert during["seq"] == 1 and during["operation"] == "seed" and "released" not in during
        # a second operation is refused, naming the holder
        with pytest.raises(runner.CommandExecutionError, match="holds topology prod: .*seed"):
            with runner._topology_lock("prod", "switch"):
                pass
    first = runner._peek_locks()["prod"]
    assert first["seq"] == 1 and first["released"]
    with runner._topology_lock("prod", "switch") as held:
        assert held == {"previous": first, "created": False}
    assert runner._peek_locks()["prod"]["seq"] == 2
    assert oct((tmp_path / "mysqlrepl" / "prod.lock").stat().st_mode & 0o777) == "0o600"


def test_topology_lock_after_a_holder_died_or_an_unreadable_record(runner, tmp_path):
    runner.__opts__ = {"cachedir": str(tmp_path)}
    path = tmp_path / "mysqlrepl" / "prod.lock"
    path.parent.mkdir()
    path.write_text('{"seq": 4, "operation": "switch", "pi')  # cut short
    assert runner._peek_locks() == {"prod": "unreadable"}
    with runner._topology_lock("prod", "seed") as held:
        assert held == {"previous": "unreadable", "created": False}
    assert runner._peek_locks()["prod"]["seq"] == 1
    path.write_text('{"seq": 9, "operation": "switch", "pid": 1, "since": "t"}')  # died holding it
    with runner._topology_lock("prod", "seed") as held:
        assert "released" not in held["previous"]
    assert runner._peek_locks()["prod"]["seq"] == 10


# ---------------------------------------------------------------------------
# switch(): which facts reach the prechecks
# ---------------------------------------------------------------------------

@pytest.fixture
def wired(runner, tmp_path, monkeypatch):
    """switch() with its Salt calls scripted: the topology, the early facts, the sync, the lock (real)."""
    runner.__opts__ = {"cachedir": str(tmp_path)}
    runner.__utils__ = {"mysqlrepl_switchplan.early_facts": sp.early_facts,
                        "mysqlrepl_config.valid_name": lambda name: True}
    c = tp.cfg({"db1": "h1", "db2": "h2", "db3": "h3"})
    facts = {f"h{i}": {f"db{i}": {"server": f"db{i}", "read_early": True}} for i in (1, 2, 3)}
    seen = {"topology": [], "locked": []}
    script = {"synced": {}}

    def topology(name):
        seen["topology"].append(name)
        return c

    monkeypatch.setattr(runner, "_topology", topology)
    monkeypatch.setattr(runner, "_local_facts", lambda name: facts)
    monkeypatch.setattr(runner, "_sync_minions", lambda tgt, tgt_type: {"synced": script["synced"], "current": []})

    def locked(cfg, old, new, dry_run, jid, ret, started, hold, app_sls, critical_timeout=None, early=None):
        seen["locked"].append(early)
        ret["result"] = True
        return ret

    monkeypatch.setattr(runner, "_switch_locked", locked)
    return runner, seen, script


def test_switch_takes_the_early_facts_when_nothing_was_synced_and_no_one_held_the_lock(wired):
    runner, seen, _script = wired
    assert runner.switch("db2", sync_tgt="I@mysqlrepl:*")["result"] is True
    assert seen["locked"][-1] == {f"db{i}": {"server": f"db{i}", "read_early": True} for i in (1, 2, 3)}
    # the lock was taken and let go meanwhile (by that switch): the next one may take them too
    assert runner.switch("db2")["result"] is True and seen["locked"][-1] is not None


def test_switch_drops_the_early_facts_after_a_sync(wired):
    runner, seen, script = wired
    script["synced"] = {"h2": {"why": "modules/mysqlrepl.py differs"}}
    assert runner.switch("db2", sync_tgt="I@mysqlrepl:*")["result"] is True
    # a synced minion answered from its old module: the topology is read again, the facts under the lock
    assert seen["locked"][-1] is None and len(seen["topology"]) == 2


def test_switch_drops_the_early_facts_when_another_operation_took_the_lock_meanwhile(wired, monkeypatch):
    runner, seen, _script = wired
    real = runner._local_facts

    def seed_meanwhile(name):
        with runner._topology_lock("prod", "seed"):
            pass
        return real(name)

    monkeypatch.setattr(runner, "_local_facts", seed_meanwhile)
    assert runner.switch("db2")["result"] is True
    assert seen["locked"][-1] is None
