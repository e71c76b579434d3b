"""
How long the master held BACKUP STAGE BLOCK_COMMIT, from polls of METADATA_LOCK_INFO, without
a server: spans and their bounds from scripted observations, and the watch driven by a scripted
connection and clock (tests/integration/test_stream.py checks it against the general log).
"""

import _utils.mysqlrepl_stream as st


def obs(*rows):
    """(t_sent_ms, t_answered_ms, 'STAGE STAGE') -> observations in seconds."""
    return [(a / 1000, b / 1000, frozenset(s.split())) for a, b, s in rows]


def test_span_bounds_come_from_the_polls_around_the_lock():
    o = obs((0, 1, "START BLOCK_DDL"), (10, 11, "START BLOCK_COMMIT"), (20, 21, "START BLOCK_COMMIT"),
            (30, 31, "START"), (40, 41, ""))
    spans = st.stage_spans(o)
    commit = spans["BLOCK_COMMIT"]
    # taken after 0 ms (poll before sent) and before 11 (first seen answered);
    # released after 20 (last seen sent) and before 31 (next answered)
    assert commit == [{"ms": 20.0, "min_ms": 9.0, "max_ms": 31.0, "open_start": False, "open_end": False}]
    assert spans["BLOCK_DDL"][0]["open_start"] is True
    assert spans["START"][0]["open_end"] is False and spans["START"][0]["min_ms"] == 29.0


def test_summary_reports_the_commit_block_and_ddl_block_with_its_source():
    o = obs((0, 1, "START BLOCK_DDL"), (2, 3, "START BLOCK_DDL"), (4, 5, "START BLOCK_COMMIT"),
            (6, 7, "START BLOCK_COMMIT"), (8, 9, "START"))
    info = st.lock_summary(o, 1.0)
    # taken after 2 ms (the last poll without it was sent), before 5 (the first with it answered);
    # released after 6, before 9: between 1 and 7 ms
    assert info["block_commit_ms"] == 4.0 and info["resolution_ms"] == 3.0
    assert info["block_ddl_ms"] == 7.0  # BLOCK_DDL (3) then BLOCK_COMMIT (4): DDL waits through both
    assert info["source"] == ("server: information_schema.METADATA_LOCK_INFO polled every ~1 ms near the end "
                              "stages, then BLOCK_COMMIT's end by a BACKUP STAGE START that waits for it "
                              "(resolution_ms: the longest gap actually seen)")
    assert info["ftwrl"] is False and info["polls"] == 5


def test_summary_flags_a_global_read_lock_and_says_when_nothing_was_seen():
    assert st.lock_summary(obs((0, 1, "FTWRL1 FTWRL2"), (5, 6, "")), 1.0)["ftwrl"] is True
    empty = st.lock_summary(obs((0, 1, ""), (2, 3, "")), 1.0, error="boom")
    assert empty["block_commit_ms"] is None and empty["error"] == "boom"


class FakeConn:
    """Answers LOCK_WATCH_SQL from a script of lock sets; the clock advances 1 ms per call."""

    def __init__(self, script, clock, probe_wait=0.006):
        self.probe_wait = probe_wait
        self.script = list(script)
        self.clock = clock
        self.queries = []
        self.closed = False

    def cursor(self):
        return self

    def execute(self, sql):
        self.queries.append(sql)
        self.clock.now += 0.0005
        if sql.startswith("SET STATEMENT lock_wait_timeout"):
            self.clock.now += self.probe_wait  # BACKUP STAGE START waits for the backup's END

    def fetchall(self):
        modes = self.script.pop(0) if self.script else []
        return [{"LOCK_MODE": m} for m in modes]

    def close(self):
        self.closed = True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_watch_polls_slowly_then_fast_near_the_end_and_stops_once_unlocked():
    clock = Clock()
    script = ([["MDL_BACKUP_START"]] * 3 + [["MDL_BACKUP_START", "MDL_BACKUP_FLUSH"]]
              + [["MDL_BACKUP_WAIT_COMMIT"]] * 5 + [[]] * 3)
    conn = FakeConn(script, clock)
    watch = st.BackupLockWatch(lambda: conn, fast=0.001, slow=0.02, clock=clock, sleep=clock.sleep,
                               process=False)
    watch.unlocked()  # mariadb-backup already said so: the first poll that sees no lock ends it
    watch._loop()  # pylint: disable=protected-access
    polls = watch.observations[:5]
    gaps = [round((b[0] - a[0]) * 1000, 1) for a, b in zip(polls, polls[1:])]
    assert gaps == [20.5, 20.5, 20.5, 1.5]  # slow until FLUSH is seen, then fast
    assert polls[-1][2] == {"BLOCK_COMMIT"}
    # then no more polls: a BACKUP STAGE START waits for the backup's END, and is ended
    assert conn.queries[-2:] == ["SET STATEMENT lock_wait_timeout=3600 FOR BACKUP STAGE START", "BACKUP STAGE END"]
    assert conn.queries.count(st.LOCK_WATCH_SQL) == 5 and len(watch.observations) == 7 and conn.closed
    assert conn.queries[0] == "SET SESSION sql_log_off = 1"
    info = st.lock_summary(watch.observations, 1.0)
    # first seen by the poll sent 1 ms after the previous one was answered (began within that
    # ms and the 0.5 ms poll); ended within 1 ms before the START returned, 6.5 ms after it was sent
    assert 6.5 <= info["block_commit_ms"] <= 8.5 and info["resolution_ms"] <= 1.5


def test_watch_whose_start_did_not_wait_bounds_the_end_by_the_polls():
    clock = Clock()
    script = [["MDL_BACKUP_START", "MDL_BACKUP_FLUSH"], ["MDL_BACKUP_WAIT_COMMIT"]]
    conn = FakeConn(script, clock, probe_wait=0.0)
    watch = st.BackupLockWatch(lambda: conn, fast=0.001, slow=0.02, clock=clock, sleep=clock.sleep,
                               process=False)
    watch._loop()  # pylint: disable=protected-access
    assert [o[2] for o in watch.observations] == [{"START", "FLUSH"}, {"BLOCK_COMMIT"}, set()]
    info = st.lock_summary(watch.observations, 1.0)
    # the backup had ended already: between the poll that saw it and the START's return
    assert info["block_commit_ms"] is not None and info["resolution_ms"] >= 0.25


def test_watch_failure_is_reported_not_raised():
    def broken():
        raise OSError("no socket")

    watch = st.BackupLockWatch(broken, process=False)
    watch.start()
    info = watch.finish()
    assert info["block_commit_ms"] is None and "no socket" in info["error"]


def test_a_watch_that_fails_while_block_commit_is_held_gives_no_figure():
    class Refused(FakeConn):
        def execute(self, sql):
            super().execute(sql)
            if sql.startswith("SET STATEMENT lock_wait_timeout"):
                raise OSError("1227: Access denied; you need the RELOAD privilege")

    clock = Clock()
    conn = Refused([["MDL_BACKUP_START", "MDL_BACKUP_FLUSH"], ["MDL_BACKUP_WAIT_COMMIT"]], clock)
    watch = st.BackupLockWatch(lambda: conn, fast=0.001, slow=0.02, clock=clock, sleep=clock.sleep,
                               process=False)
    watch._loop()  # pylint: disable=protected-access
    assert "RELOAD" in watch.error and conn.closed
    info = st.lock_summary(watch.observations, 1.0, watch.error)
    assert info["block_commit_ms"] is None and "RELOAD" in info["error"]
