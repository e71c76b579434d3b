"""
The switch runner's handling of a critical-section call whose answer did not
come (``_settle_job``): the job must be over before the servers' states decide
the outcome. Driven with a scripted LocalClient (the integration tests lose a
real answer with ``critical_timeout``).
"""

import importlib.util
import pathlib

import pytest

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


def settle(runner, client):
    runner._client = lambda: client  # pylint: disable=protected-access
    return runner._settle_job("db2", "2026", "mysqlrepl.switch_critical", wait=0.2)  # pylint: disable=protected-access


def test_job_over_with_a_late_answer_in_the_cache(runner):
    answer = {"outcome": "promoted", "reason": "ok", "steps": []}
    client = Client([{}], cache={"db2": {"ret": answer, "retcode": 0}})
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


def test_job_that_failed_gives_its_error_not_an_answer(runner):
    client = Client([{}], cache={"db2": {"ret": "ERROR: boom", "retcode": 1}})
    out = settle(runner, client)
    assert out["ended"] is True and out["answer"] is None and "boom" in out["note"]
