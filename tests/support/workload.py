"""
App-side workload for switchover tests and the bench: writers that know
nothing of the switch and a probe that writes to every server.

* :class:`Writer` commits one row per sequence number into ``app.seqlog``
  every few ms as the app user (no READ_ONLY ADMIN by any path), retries each
  row until it commits, and finds the writable master the way a
  read_only-aware driver or proxy does: on 1290 (read-only) or a lost
  connection it asks every server ``SELECT @@read_only`` over a monitoring
  connection it keeps to each (as a proxy's monitor does) and takes the one
  that says 0. With ``resolve`` it instead reconnects to whatever address a
  callable returns (the ``masterdb`` hosts entry apps use).
* :class:`Probe` tries an insert into ``app.probe`` on every server every few
  ms; the rows it manages to write carry the server's own ``@@server_id``
  and ``NOW(6)``: two writable masters would show as interleaved server ids.
"""

import threading
import time

import pymysql

APP_USER = "app"
APP_PASSWORD = "App-pw_51c3d2"

SCHEMA = (
    "CREATE DATABASE IF NOT EXISTS app",
    "CREATE TABLE IF NOT EXISTS app.seqlog (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
    "writer VARCHAR(16) NOT NULL, seq BIGINT NOT NULL, server_id INT UNSIGNED NOT NULL, "
    "KEY (writer, seq)) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS app.probe (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
    "server_id INT UNSIGNED NOT NULL, t DATETIME(6) NOT NULL) ENGINE=InnoDB",
    f"CREATE USER IF NOT EXISTS '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'",
    f"GRANT SELECT, INSERT ON app.* TO '{APP_USER}'@'%'",
)

READ_ONLY_ERROR = 1290


def create_schema(master):
    """Tables and the app account, made on the master (they replicate)."""
    master.session(*SCHEMA)


def _connect(address, port, timeout=2):
    return pymysql.connect(host=address, port=port, user=APP_USER, password=APP_PASSWORD,
                           connect_timeout=timeout, read_timeout=30, write_timeout=30, autocommit=True,
                           ssl_disabled=True)


class Writer(threading.Thread):
    """One row per sequence number, each retried until it commits; acks kept in order."""

    def __init__(self, servers, name="A", interval=0.002, resolve=None):
        super().__init__(daemon=True, name=f"writer-{name}")
        self.servers = servers  # {name: (address, port)}
        self.writer = name
        self.interval = interval
        self.resolve = resolve  # callable -> (address, port) or None
        self.stop_event = threading.Event()
        self.acked = []  # (seq, server_id, t_commit)
        self.errors = 0
        self.conn = None
        self.target = None
        self.failure = None
        self.monitors = {}  # (address, port) -> connection asked for @@read_only

    def _find_master(self):
        if self.resolve is not None:
            return self.resolve()
        # like a proxy's monitor: one kept connection per server, asked in turn
        for endpoint in self.servers.values():
            conn = self.monitors.get(endpoint)
            try:
                if conn is None:
                    conn = self.monitors[endpoint] = _connect(*endpoint, timeout=1)
                with conn.cursor() as cur:
                    cur.execute("SELECT @@read_only")
                    if cur.fetchone()[0] == 0:
                        return endpoint
            except (pymysql.err.MySQLError, OSError):
                dead = self.monitors.pop(endpoint, None)
                if dead is not None:
                    try:
                        dead.close()
                    except Exception:  # pylint: disable=broad-except
                        pass
        return None

    def _reconnect(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self.conn = None
        target = self._find_master()
        if target is None:
            return False
        try:
            self.conn = _connect(*target)
            self.target = target
            return True
        except pymysql.err.MySQLError:
            return False

    def run(self):
        seq = 0
        try:
            while not self.stop_event.is_set():
                seq += 1
                while True:  # retry this row until it commits
                    if self.conn is None and not self._reconnect():
                        self.errors += 1
                        time.sleep(0.002)
                        if self.stop_event.is_set():
                            return
                        continue
                    try:
                        with self.conn.cursor() as cur:
                            cur.execute("INSERT INTO app.seqlog (writer, seq, server_id) VALUES (%s, %s, @@server_id)",
                                        (self.writer, seq))
                            cur.execute("SELECT @@server_id")
                            sid = cur.fetchone()[0]
                        self.acked.append((seq, sid, time.time()))
                        break
                    except pymysql.err.MySQLError as exc:
                        self.errors += 1
                        code = exc.args[0] if exc.args else None
                        if code != READ_ONLY_ERROR:
                            # a lost connection: the commit's outcome is unknown; a real
                            # app would retry too (and so may duplicate): count it
                            self.failure = self.failure or f"{seq}: {exc}"
                        if self.conn is not None:
                            self.conn.close()
                        self.conn = None
                        time.sleep(0.001)
                time.sleep(self.interval)
        finally:
            for conn in [self.conn, *self.monitors.values()]:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # pylint: disable=broad-except
                        pass

    def stop(self):
        self.stop_event.set()
        self.join(30)


class Probe(threading.Thread):
    """Tries one insert on every server per round, every few ms; counts where it succeeded."""

    def __init__(self, servers, interval=0.003):
        super().__init__(daemon=True, name="probe")
        self.servers = servers
        self.interval = interval
        self.stop_event = threading.Event()
        self.conns = {}
        self.rounds = 0
        self.started = None
        self.double = []  # rounds where two servers took the write

    def _conn(self, name):
        if name not in self.conns:
            address, port = self.servers[name]
            self.conns[name] = _connect(address, port, timeout=1)
        return self.conns[name]

    def run(self):
        self.started = time.time()
        while not self.stop_event.is_set():
            took = []
            for name in self.servers:
                try:
                    with self._conn(name).cursor() as cur:
                        cur.execute("INSERT INTO app.probe (server_id, t) VALUES (@@server_id, NOW(6))")
                    took.append(name)
                except pymysql.err.MySQLError as exc:
                    if not exc.args or exc.args[0] != READ_ONLY_ERROR:
                        self.conns.pop(name, None)
                except OSError:
                    self.conns.pop(name, None)
            if len(took) > 1:
                self.double.append((time.time(), took))
            self.rounds += 1
            time.sleep(self.interval)
        for conn in self.conns.values():
            try:
                conn.close()
            except Exception:  # pylint: disable=broad-except
                pass

    def stop(self):
        self.stop_event.set()
        self.join(30)


def runs_of_server_ids(rows):
    """``[(server_id, t), ...]`` sorted by t -> ``[(server_id, first_t, last_t, count)]`` runs."""
    runs = []
    for sid, t in sorted(rows, key=lambda r: r[1]):
        if runs and runs[-1][0] == sid:
            runs[-1][2] = t
            runs[-1][3] += 1
        else:
            runs.append([sid, t, t, 1])
    return [tuple(r) for r in runs]


def worst_gap(acked, start, new_server_id):
    """
    The longest gap between two consecutive commits that overlaps [start,
    first commit on the new master's server_id]: ``(ms, t_before, t_after)``,
    or ``None`` when nothing was committed on the new master after ``start``.
    """
    first_new = next((t for _s, sid, t in acked if sid == new_server_id and t >= start), None)
    if first_new is None:
        return None
    times = [t for _s, _sid, t in acked]
    worst = (0.0, start, start)
    for a, b in zip(times, times[1:]):
        if b >= start and a <= first_new and (b - a) * 1000 > worst[0]:
            worst = ((b - a) * 1000, a, b)
    return worst

