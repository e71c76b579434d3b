"""
Throw-away MariaDB servers for the integration tests.

Each server gets ``<base_dir>/<name>/`` with its own datadir, tmpdir, run dir
(socket, pid file), log dir and an include dir ``conf.d`` that the formula
writes its drop-in into (``!includedir`` is the last line of ``my.cnf``).
Start and stop go through ``tests/support/salt/_modules/mysqlrepl_testsvc.py``
(the same code the minions use as their ``service`` provider).
"""

import concurrent.futures
import ctypes
import errno
import importlib.util
import logging
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import time

import pymysql
import pymysql.cursors

log = logging.getLogger(__name__)

SUPPORT_DIR = pathlib.Path(__file__).resolve().parent
TESTSVC_PATH = SUPPORT_DIR / "salt" / "_modules" / "mysqlrepl_testsvc.py"

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"
OS_USER = "mysql"


def _load_testsvc():
    spec = importlib.util.spec_from_file_location("mysqlrepl_testsvc", TESTSVC_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


testsvc = _load_testsvc()
ServiceError = testsvc.ServiceError


class MariaDBServer:
    """One MariaDB instance on ``address:port`` under ``base_dir/name``."""

    def __init__(self, name, address, port, base_dir, server_id):
        self.name = name
        self.address = address
        self.port = int(port)
        self.server_id = int(server_id)
        self.root = pathlib.Path(base_dir).resolve() / name
        self.datadir = self.root / "data"
        self.tmpdir = self.root / "tmp"
        self.rundir = self.root / "run"
        self.logdir = self.root / "log"
        self.conf_d = self.root / "conf.d"
        self.config_file = self.root / "my.cnf"
        self.socket = self.rundir / "mysqld.sock"
        self.pidfile = self.rundir / "mysqld.pid"
        self.error_log = self.logdir / "error.log"
        self.general_log = self.logdir / "general.log"
        self.os_user = OS_USER
        self.service_name = f"mysqlrepl-test-{name}"
        self.svc_json = None  # set by write_service_json()
        self.service = testsvc.Service(
            self.service_name,
            [MARIADBD, f"--defaults-file={self.config_file}"],
            self.pidfile,
            self.socket,
            self.error_log,
        )

    def pillar_entry(self):
        """This server's ``mysqlrepl:servers:<name>`` pillar block (paths of this instance)."""
        return {
            "address": self.address,
            "port": self.port,
            "server_id": self.server_id,
            "datadir": str(self.datadir),
            "socket": str(self.socket),
            "config_file": str(self.conf_d / "60-mysqlrepl.cnf"),
            "tls_dir": str(self.root / "tls"),
            "service": self.service_name,
            "os_user": self.os_user,
            "settings": {"innodb_buffer_pool_size": "32M"},
        }

    def __repr__(self):
        return f"MariaDBServer({self.name!r}, {self.address}:{self.port}, pid={self.pid()})"

    # -- setup ---------------------------------------------------------------

    def my_cnf(self):
        return (
            "[mysqld]\n"
            f"user = {self.os_user}\n"
            f"server_id = {self.server_id}\n"
            f"datadir = {self.datadir}\n"
            f"socket = {self.socket}\n"
            f"port = {self.port}\n"
            f"bind-address = {self.address}\n"
            f"pid-file = {self.pidfile}\n"
            f"tmpdir = {self.tmpdir}\n"
            f"log-error = {self.error_log}\n"
            "general_log = 1\n"
            f"general_log_file = {self.general_log}\n"
            "skip-name-resolve\n"
            "innodb_buffer_pool_size = 32M\n"
            "performance_schema = ON\n"
            "\n"
            "[client]\n"
            f"socket = {self.socket}\n"
            "\n"
            f"!includedir {self.conf_d}\n"
        )

    def init(self):
        """Write my.cnf and create the datadir with mariadb-install-db (root: unix-socket auth)."""
        if self.datadir.exists():
            raise RuntimeError(f"{self.name}: {self.datadir} already exists")
        pw = pwd.getpwnam(self.os_user)
        self.root.mkdir(parents=True, exist_ok=True)
        for parent in self.root.parents:
            if not os.stat(parent).st_mode & 0o001:
                raise RuntimeError(
                    f"{self.name}: {parent} is not searchable by others (mode "
                    f"{os.stat(parent).st_mode & 0o777:o}); mariadbd runs as {self.os_user} "
                    "(tempfile.mkdtemp() makes 0700 dirs: chmod 0755)"
                )
        os.chmod(self.root, 0o755)
        for path in (self.tmpdir, self.rundir, self.logdir):
            path.mkdir(mode=0o750, exist_ok=True)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        self.conf_d.mkdir(mode=0o755, exist_ok=True)
        self.config_file.write_text(self.my_cnf(), encoding="utf-8")
        os.chmod(self.config_file, 0o644)
        cmd = [
            INSTALL_DB,
            f"--defaults-file={self.config_file}",
            f"--user={self.os_user}",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            "--skip-test-db",
        ]
        started = time.monotonic()
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            out = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[:3])
            raise RuntimeError(
                f"{self.name}: mariadb-install-db failed (rc={proc.returncode}): {out}\n"
                f"{self.error_log}:\n{testsvc._tail(str(self.error_log))}"
            )
        os.chmod(self.datadir, 0o700)
        log.info("%s: mariadb-install-db took %.1f s", self.name, time.monotonic() - started)

    def write_service_json(self, svc_dir):
        self.svc_json = pathlib.Path(self.service.write(svc_dir))
        return self.svc_json

    # -- control -------------------------------------------------------------

    def start(self, timeout=testsvc.DEFAULT_TIMEOUT):
        return self.service.start(timeout=timeout)

    def stop(self, timeout=testsvc.DEFAULT_TIMEOUT):
        return self.service.stop(timeout=timeout)

    def restart(self, timeout=testsvc.DEFAULT_TIMEOUT):
        return self.service.restart(timeout=timeout)

    def kill9(self):
        """Crash the server (SIGKILL); pid file and socket stay behind. Returns the old pid."""
        return self.service.kill()

    def pid(self):
        reap_zombies(("mariadbd",))
        return self.service.pid()

    def running(self):
        return self.pid() is not None

    # -- SQL -----------------------------------------------------------------

    def connect(self, **kw):
        """PyMySQL connection as root over the unix socket, no TLS, autocommit."""
        params = {
            "unix_socket": str(self.socket),
            "user": "root",
            "ssl_disabled": True,
            "autocommit": True,
            "connect_timeout": 10,
            "charset": "utf8mb4",
        }
        params.update(kw)
        return pymysql.connect(**params)

    def query(self, sql, args=None, **kw):
        """Run one statement; rows as a list of dicts ([] when there is no result set)."""
        conn = self.connect(cursorclass=pymysql.cursors.DictCursor, **kw)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def session(self, *statements):
        """Run several statements in order on one connection (session settings carry over)."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                for sql in statements:
                    cur.execute(sql)
        finally:
            conn.close()


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def check_port_free(address, port):
    """Raise RuntimeError if something listens on address:port (or the wildcard)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise RuntimeError(
                f"{address}:{port} is already in use (a leftover mariadbd? see `ss -ltnp`); "
                "the test servers need it"
            ) from exc
        raise RuntimeError(f"cannot bind {address}:{port}: {exc}") from exc
    finally:
        sock.close()


def start_servers(base_dir, names=("db1", "db2", "db3"), first_octet=11, port=3306):
    """
    Init and start one server per name in parallel: names[i] listens on
    127.0.0.<first_octet+i>:<port> with server_id first_octet+i. Returns {name: MariaDBServer}.
    On failure, whatever started is stopped again.
    """
    servers = {}
    for i, name in enumerate(names):
        octet = first_octet + i
        servers[name] = MariaDBServer(name, f"127.0.0.{octet}", port, base_dir, octet)
    for server in servers.values():
        check_port_free(server.address, server.port)
    pathlib.Path(base_dir).mkdir(parents=True, exist_ok=True)
    os.chmod(base_dir, 0o755)

    def init_and_start(server):
        server.init()
        server.start()

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(servers)) as pool:
        futures = {pool.submit(init_and_start, s): s for s in servers.values()}
        errors = []
        for fut in concurrent.futures.as_completed(futures):
            try:
                fut.result()
            except Exception as exc:  # pylint: disable=broad-except
                errors.append(f"{futures[fut].name}: {exc}")
    if errors:
        stop_servers(servers.values())
        raise RuntimeError("starting test servers failed:\n" + "\n".join(errors))
    return servers


def stop_servers(servers, timeout=testsvc.DEFAULT_TIMEOUT):
    """
    Stop servers by PID (SIGTERM, wait). A server that does not exit gets SIGKILL *and*
    an error is raised naming it. Servers are stopped in parallel.
    """
    servers = list(servers)
    errors = []

    def stop(server):
        try:
            server.stop(timeout=timeout)
        except ServiceError as exc:
            log.error("%s: %s; sending SIGKILL", server.name, exc)
            server.kill9()
            raise

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
        futures = {pool.submit(stop, s): s for s in servers}
        for fut in concurrent.futures.as_completed(futures):
            try:
                fut.result()
            except Exception as exc:  # pylint: disable=broad-except
                errors.append(f"{futures[fut].name}: {exc}")
    reap_zombies(("mariadbd",))
    if errors:
        raise RuntimeError("stopping test servers failed:\n" + "\n".join(errors))


# Orphans: a server started by a minion's job (or by start() here) is orphaned when
# the launching shell exits. PID 1 on the test machine reaps only lazily (zombies stay
# for up to ~10 s), so the harness makes the pytest process a child subreaper: orphans
# of its descendants are re-parented to it and collected here, at once.

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    """Make this process the reaper of its orphaned descendants (Linux). True on success."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_zombies(names=None):
    """waitpid() zombie children of this process whose comm is in names (all if None)."""
    me = os.getpid()
    reaped = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                data = fh.read()
        except OSError:
            continue
        comm = data[data.find("(") + 1 : data.rfind(")")]
        fields = data.rpartition(")")[2].split()
        if len(fields) < 2 or fields[0] != "Z" or int(fields[1]) != me:
            continue
        if names is not None and comm not in names:
            continue
        try:
            os.waitpid(int(entry), os.WNOHANG)
            reaped.append(int(entry))
        except ChildProcessError:
            pass
    return reaped


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)
