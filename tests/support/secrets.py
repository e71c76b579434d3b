"""
Watchers that look for a secret wherever another local user or a database
account with PROCESS could see it while the tests run:

* ``ProcSampler``: every process's argv and environment (``/proc/*/cmdline``,
  ``/proc/*/environ``), every few ms;
* ``ServerSampler``: on each MariaDB server, the running statements' text
  (``information_schema.PROCESSLIST``, which is what SHOW [FULL] PROCESSLIST
  shows) every few ms, and performance_schema's statement texts (current,
  per-thread history, history_long — switched on here so that a statement
  finished between two samples is still seen), user variables and prepared
  statements.

The samplers never send the secret itself to a server: they search for its hex
form with ``LOCATE(UNHEX(...))`` on a session with ``sql_log_off=1``, so their
own queries neither show nor log it. A hit keeps where it was seen and the
text with the secret masked.
"""

import os
import threading
import time

import pymysql

PS_QUERIES = (
    ("events_statements_current", "SELECT SQL_TEXT AS t FROM performance_schema.events_statements_current "
                                  "WHERE LOCATE(UNHEX(%s), SQL_TEXT) > 0"),
    ("events_statements_history", "SELECT SQL_TEXT AS t FROM performance_schema.events_statements_history "
                                  "WHERE LOCATE(UNHEX(%s), SQL_TEXT) > 0"),
    ("events_statements_history_long", "SELECT SQL_TEXT AS t FROM performance_schema.events_statements_history_long "
                                       "WHERE LOCATE(UNHEX(%s), SQL_TEXT) > 0"),
    ("user_variables_by_thread", "SELECT CONCAT(VARIABLE_NAME, '=', VARIABLE_VALUE) AS t "
                                 "FROM performance_schema.user_variables_by_thread "
                                 "WHERE LOCATE(UNHEX(%s), VARIABLE_VALUE) > 0"),
    ("prepared_statements_instances", "SELECT SQL_TEXT AS t FROM performance_schema.prepared_statements_instances "
                                      "WHERE LOCATE(UNHEX(%s), SQL_TEXT) > 0"),
)
PROCESSLIST_QUERY = ("SELECT INFO AS t FROM information_schema.PROCESSLIST "
                     "WHERE ID <> CONNECTION_ID() AND LOCATE(UNHEX(%s), INFO) > 0")


class ProcSampler(threading.Thread):
    """Samples /proc/*/cmdline and /proc/*/environ every few ms, keeping hits for ``needle``."""

    def __init__(self, needles, interval=0.005):
        super().__init__(daemon=True)
        self.needles = [n.encode() for n in ([needles] if isinstance(needles, str) else needles)]
        self.interval = interval
        self.stop_event = threading.Event()
        self.samples = 0
        self.last_sample = None
        self.hits = []

    def run(self):
        while not self.stop_event.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                for part in ("cmdline", "environ"):
                    try:
                        with open(f"/proc/{pid}/{part}", "rb") as handle:
                            data = handle.read()
                    except OSError:
                        continue
                    for needle in self.needles:
                        if needle in data:
                            masked = data
                            for other in self.needles:
                                masked = masked.replace(other, b"***")
                            self.hits.append((pid, part, masked[:200]))
                            break
            self.samples += 1
            self.last_sample = time.monotonic()
            time.sleep(self.interval)

    def stop(self):
        self.stop_event.set()
        self.join(5)


class ServerSampler(threading.Thread):
    """
    Looks for ``needle`` in what PROCESS holders see on each server (``servers``:
    {name: MariaDBServer}), as root over the server's socket. Reconnects after a
    server restart (and switches history_long on again: a restart resets it).
    """

    def __init__(self, needle, servers, interval=0.002, ps_every=25):
        super().__init__(daemon=True)
        self.needle = needle
        self.hex = needle.encode().hex()
        self.servers = dict(servers)
        self.interval = interval
        self.ps_every = ps_every
        self.stop_event = threading.Event()
        self.samples = {name: 0 for name in self.servers}
        self.ps_samples = {name: 0 for name in self.servers}
        self.last_sample = None
        self.hits = []
        self._seen = set()
        self._conns = {}

    def _conn(self, name):
        conn = self._conns.get(name)
        if conn is not None:
            return conn
        srv = self.servers[name]
        conn = pymysql.connect(unix_socket=str(srv.socket), user="root", autocommit=True,
                               connect_timeout=2, read_timeout=5, ssl_disabled=True,
                               cursorclass=pymysql.cursors.DictCursor)
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_off = 1")
            cur.execute("UPDATE performance_schema.setup_consumers SET ENABLED = 'YES' "
                        "WHERE NAME IN ('events_statements_current', 'events_statements_history', "
                        "'events_statements_history_long')")
        self._conns[name] = conn
        return conn

    def _drop(self, name):
        conn = self._conns.pop(name, None)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pylint: disable=broad-except
                pass

    def _record(self, name, source, text):
        masked = (text or "").replace(self.needle, "***")
        key = (name, source, masked)
        if key not in self._seen:  # history tables keep a statement for a while: count it once
            self._seen.add(key)
            self.hits.append({"server": name, "source": source, "text": masked[:300]})

    def sample_once(self, name, with_ps):
        try:
            conn = self._conn(name)
            with conn.cursor() as cur:
                cur.execute(PROCESSLIST_QUERY, (self.hex,))
                for row in cur.fetchall():
                    self._record(name, "information_schema.PROCESSLIST", row["t"])
                self.samples[name] += 1
                if with_ps:
                    for source, query in PS_QUERIES:
                        cur.execute(query, (self.hex,))
                        for row in cur.fetchall():
                            self._record(name, f"performance_schema.{source}", row["t"])
                    self.ps_samples[name] += 1
        except pymysql.MySQLError:
            self._drop(name)  # server down or restarting: try again next round

    def run(self):
        rounds = 0
        while not self.stop_event.is_set():
            rounds += 1
            for name in self.servers:
                self.sample_once(name, rounds % self.ps_every == 0)
            self.last_sample = time.monotonic()
            time.sleep(self.interval)
        for name in self.servers:
            self.sample_once(name, True)  # what the history tables still hold at the end
            self._drop(name)

    def stop(self):
        self.stop_event.set()
        self.join(10)
