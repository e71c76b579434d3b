"""
Test-only ``service`` provider for MariaDB instances (the test machine has no
service manager).

Minion configuration::

    providers:
      service: mysqlrepl_testsvc
    mysqlrepl_testsvc_dir: /tmp/mr-xxxx/svc/db1

Salt's loader (``salt.loader.minion_mods``) loads the module named in
``providers`` with ``raw_mod`` -- by *file name*, with ``__virtual__``
bypassed -- and copies each public function ``mysqlrepl_testsvc.F`` to
``service.F``; keys already set are not overwritten when the regular
``service`` module (``systemd_service`` in offline mode on a machine without
systemd) loads lazily later.  So no ``__virtualname__ = "service"`` is needed,
but functions this module does not define still come from that module:
everything the ``service`` state calls is defined here, including
``offline`` (else the state does nothing: "Running in OFFLINE mode").

A service is a JSON file ``<mysqlrepl_testsvc_dir>/<name>.json``::

    {"argv": ["/usr/sbin/mariadbd", "--defaults-file=..."],
     "pidfile": "...", "socket": "...", "log": "..."}

The server runs in the foreground (``mariadbd`` does not daemonize), is
started through ``/bin/sh`` in a new session so that it is never a child of
the calling process (the minion's job process returns at once), with stdin
from /dev/null and stdout/stderr appended to ``log``.  ``start`` returns True
once the unix ``socket`` accepts connections (60 s timeout); ``stop`` sends
SIGTERM to the pid in ``pidfile`` and waits for the exit (60 s), then fails:
it never falls back to SIGKILL.

A systemd unit the formula writes (its SSH tunnels: ``mysqlrepl:tunnel:unit_dir``
set to ``mysqlrepl_testsvc_unit_dir``) is a service too when no JSON file names
it: ``<mysqlrepl_testsvc_unit_dir>/<name>.service``'s ``ExecStart=``,
``Environment=`` and ``User=`` lines are run the same way (``env`` and
``setpriv`` exec into the command, so the pid stays the command's); its pid is
kept in ``<mysqlrepl_testsvc_dir>/<name>.pid``. With no socket, ``start``
returns once the process has run for half a second.

The file is also plain Python: the test harness imports it by path and uses
:class:`Service` directly (``tests/support/mariadb.py``).
"""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import time

try:
    from salt.exceptions import CommandExecutionError
except ImportError:  # pragma: no cover - plain Python without Salt

    class CommandExecutionError(Exception):
        """Stand-in when Salt is not importable."""


log = logging.getLogger(__name__)

__func_alias__ = {"reload_": "reload"}

DEFAULT_TIMEOUT = 60
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
# Backgrounds "$@" with its output appended to $1, prints its pid, exits.
_LAUNCHER = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'


class ServiceError(CommandExecutionError):
    """A service did not start or stop as asked."""


def __virtual__():
    # As ``mysqlrepl_testsvc.*`` only where configured; the ``providers``
    # option loads the file as ``service.*`` regardless (raw_mod).
    if __opts__.get("mysqlrepl_testsvc_dir"):  # pylint: disable=undefined-variable
        return True
    return (False, "mysqlrepl_testsvc_dir is not set in the minion config")


# --------------------------------------------------------------------------
# plain-Python part
# --------------------------------------------------------------------------


def _proc_state(pid):
    """State letter of a process (R, S, D, Z, ...) or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data.rpartition(")")[2].split()
    return fields[0] if fields else None


def _alive(pid):
    """True if pid exists and is not a zombie."""
    return _proc_state(pid) not in (None, "Z", "X")


def _reap(pid):
    """Collect the exit status if pid is our (zombie) child; no-op otherwise."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [p.decode("utf-8", "replace") for p in raw.split(b"\0") if p]


def _socket_accepts(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1)
    try:
        sock.connect(path)
    except OSError:
        return False
    finally:
        sock.close()
    return True


def _tail(path, lines=20):
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class Service:
    """One test service: a foreground server with a pid file and a unix socket."""

    def __init__(self, name, argv, pidfile, socket, log=None, env=None, user=None,
                 write_pidfile=False):  # pylint: disable=redefined-outer-name
        if not _NAME_RE.match(name or ""):
            raise ValueError(f"invalid service name {name!r}")
        if not argv or not os.path.isabs(argv[0]):
            raise ValueError(f"service {name}: argv[0] must be an absolute path: {argv!r}")
        self.name = name
        self.argv = [str(a) for a in argv]
        self.pidfile = str(pidfile)
        self.socket = str(socket) if socket else None
        self.log = str(log) if log else os.devnull
        self.env = dict(env or {})
        self.user = user
        self.write_pidfile = write_pidfile

    @classmethod
    def from_unit(cls, unit_path, svc_dir):
        """A service from a systemd unit's ``ExecStart=``, ``Environment=`` and ``User=``."""
        argv, env, user = None, {}, None
        with open(unit_path, encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.strip().partition("=")
                if not sep:
                    continue
                if key == "ExecStart":
                    argv = value.split()
                elif key == "Environment":
                    k, _, v = value.partition("=")
                    env[k] = v
                elif key == "User":
                    user = value
        if not argv:
            raise ValueError(f"{unit_path}: no ExecStart=")
        name = os.path.basename(unit_path)[: -len(".service")]
        return cls(name, argv, os.path.join(str(svc_dir), f"{name}.pid"), None,
                   os.path.join(str(svc_dir), f"{name}.log"), env=env, user=user, write_pidfile=True)

    def __repr__(self):
        return f"Service({self.name!r}, pidfile={self.pidfile!r})"

    # -- definition files --------------------------------------------------

    def to_dict(self):
        return {
            "argv": self.argv,
            "pidfile": self.pidfile,
            "socket": self.socket,
            "log": self.log,
        }

    def write(self, svc_dir):
        """Write ``<svc_dir>/<name>.json``; return its path."""
        os.makedirs(svc_dir, exist_ok=True)
        path = os.path.join(str(svc_dir), f"{self.name}.json")
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_file(cls, path):
        path = str(path)
        with open(path, encoding="utf-8") as fh:
            spec = json.load(fh)
        name = os.path.basename(path)[: -len(".json")]
        return cls(
            name,
            spec["argv"],
            spec["pidfile"],
            spec["socket"],
            spec.get("log"),
        )

    @classmethod
    def load(cls, svc_dir, name):
        if not _NAME_RE.match(name or ""):
            raise ServiceError(f"invalid service name {name!r}")
        return cls.from_file(os.path.join(str(svc_dir), f"{name}.json"))

    # -- process state -----------------------------------------------------

    def _is_ours(self, pid):
        args = _cmdline(pid)
        base = os.path.basename(self.argv[0])
        # sshd rewrites its title: "sshd: /usr/sbin/sshd -D ... [listener] ..."
        return bool(args) and (os.path.basename(args[0]) == base or args[0].startswith(f"{base}: "))

    def pid(self):
        """Pid of the running server (from the pid file), or None."""
        try:
            with open(self.pidfile, encoding="utf-8") as fh:
                pid = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            return None
        if pid <= 0:
            return None
        if not _alive(pid):
            _reap(pid)
            return None
        if not self._is_ours(pid):
            return None
        return pid

    def running(self):
        return self.pid() is not None

    def ready(self):
        return self.running() and _socket_accepts(self.socket)

    # -- control -----------------------------------------------------------

    def start(self, timeout=DEFAULT_TIMEOUT):
        """Start (if not running) and wait until the socket accepts; return the pid."""
        deadline = time.monotonic() + timeout
        pid = self.pid()
        if pid is None:
            pid = self._spawn()
            log.info("service %s: started %s as pid %s", self.name, self.argv[0], pid)
        while True:
            if not _alive(pid):
                _reap(pid)
                raise ServiceError(
                    f"service {self.name}: {self.argv[0]} (pid {pid}) exited during "
                    f"startup; last lines of {self.log}:\n{_tail(self.log)}"
                )
            if self.socket is None:
                time.sleep(0.5)
                if _alive(pid):
                    return pid
                continue
            if _socket_accepts(self.socket):
                return pid
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"service {self.name}: pid {pid} does not accept connections on "
                    f"{self.socket} after {timeout} s (left running); last lines of "
                    f"{self.log}:\n{_tail(self.log)}"
                )
            time.sleep(0.05)

    def _spawn(self):
        prefix = []
        if self.env:
            prefix += ["/usr/bin/env"] + [f"{k}={v}" for k, v in sorted(self.env.items())]
        if self.user:
            prefix += ["/usr/bin/setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups",
                       "--"]
        cmd = ["/bin/sh", "-c", _LAUNCHER, "sh", self.log, *prefix, *self.argv]
        proc = subprocess.run(  # the shell exits at once; the server is its orphan
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            timeout=30,
            check=False,
        )
        out = proc.stdout.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or not out.isdigit():
            raise ServiceError(
                f"service {self.name}: launcher failed (rc={proc.returncode}): "
                f"{out} {proc.stderr.decode('utf-8', 'replace').strip()}"
            )
        if self.write_pidfile:
            with open(self.pidfile, "w", encoding="utf-8") as fh:
                fh.write(out + "\n")
        return int(out)

    def stop(self, timeout=DEFAULT_TIMEOUT):
        """SIGTERM the server and wait for it to exit; True. Raises ServiceError on timeout."""
        pid = self.pid()
        if pid is None:
            log.info("service %s: not running", self.name)
            return True
        log.info("service %s: sending SIGTERM to pid %s", self.name, pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return True
        if not self._wait_exit(pid, timeout):
            raise ServiceError(
                f"service {self.name}: pid {pid} still running {timeout} s after "
                f"SIGTERM (not killed); last lines of {self.log}:\n{_tail(self.log)}"
            )
        return True

    def kill(self, sig=signal.SIGKILL, timeout=DEFAULT_TIMEOUT):
        """Send sig (default SIGKILL, i.e. a crash) and wait for the exit; return the pid or None."""
        pid = self.pid()
        if pid is None:
            return None
        log.warning("service %s: sending signal %s to pid %s", self.name, sig, pid)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return pid
        if not self._wait_exit(pid, timeout):
            raise ServiceError(f"service {self.name}: pid {pid} survived signal {sig}")
        return pid

    def restart(self, timeout=DEFAULT_TIMEOUT):
        self.stop(timeout=timeout)
        return self.start(timeout=timeout)

    @staticmethod
    def _wait_exit(pid, timeout):
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        _reap(pid)
        return True


# --------------------------------------------------------------------------
# Salt execution-module functions (service.* through ``providers``)
# --------------------------------------------------------------------------


def _svc_dir():
    path = __opts__.get("mysqlrepl_testsvc_dir")  # pylint: disable=undefined-variable
    if not path:
        raise CommandExecutionError("mysqlrepl_testsvc_dir is not set in the minion config")
    return path


def _json_path(name):
    if not _NAME_RE.match(name or ""):
        raise CommandExecutionError(f"invalid service name {name!r}")
    return os.path.join(_svc_dir(), f"{name}.json")


def _unit_path(name):
    unit_dir = __opts__.get("mysqlrepl_testsvc_unit_dir")  # pylint: disable=undefined-variable
    return os.path.join(unit_dir, f"{name}.service") if unit_dir else None


def _service(name):
    path = _json_path(name)
    unit = _unit_path(name)
    if not os.path.isfile(path) and unit and os.path.isfile(unit):
        try:
            return Service.from_unit(unit, _svc_dir())
        except (OSError, ValueError) as exc:
            raise CommandExecutionError(f"service {name}: bad unit {unit}: {exc}") from exc
    if not os.path.isfile(path):
        raise CommandExecutionError(f"service {name} is not defined ({path} missing)")
    try:
        return Service.from_file(path)
    except (OSError, ValueError, KeyError) as exc:
        raise CommandExecutionError(f"service {name}: bad definition {path}: {exc}") from exc


def _disabled_marker(name):
    return _json_path(name)[: -len(".json")] + ".disabled"


def start(name, timeout=DEFAULT_TIMEOUT):
    """
    Start the service and wait until its socket accepts connections.

    CLI Example:

    .. code-block:: bash

        salt '*' service.start mysqlrepl-test-db1
    """
    try:
        _service(name).start(timeout=float(timeout))
    except ServiceError as exc:
        raise CommandExecutionError(str(exc)) from exc
    return True


def stop(name, timeout=DEFAULT_TIMEOUT):
    """
    SIGTERM the service's pid and wait for it to exit (never SIGKILL).

    CLI Example:

    .. code-block:: bash

        salt '*' service.stop mysqlrepl-test-db1
    """
    try:
        return _service(name).stop(timeout=float(timeout))
    except ServiceError as exc:
        raise CommandExecutionError(str(exc)) from exc


def restart(name, timeout=DEFAULT_TIMEOUT):
    """
    Stop then start the service.

    CLI Example:

    .. code-block:: bash

        salt '*' service.restart mysqlrepl-test-db1
    """
    try:
        _service(name).restart(timeout=float(timeout))
    except ServiceError as exc:
        raise CommandExecutionError(str(exc)) from exc
    return True


def reload_(name, timeout=DEFAULT_TIMEOUT):
    """
    No reload for these services: restart.

    CLI Example:

    .. code-block:: bash

        salt '*' service.reload mysqlrepl-test-db1
    """
    return restart(name, timeout=timeout)


def force_reload(name, timeout=DEFAULT_TIMEOUT):
    """
    Same as restart.

    CLI Example:

    .. code-block:: bash

        salt '*' service.force_reload mysqlrepl-test-db1
    """
    return restart(name, timeout=timeout)


def full_restart(name, timeout=DEFAULT_TIMEOUT):
    """
    Same as restart.

    CLI Example:

    .. code-block:: bash

        salt '*' service.full_restart mysqlrepl-test-db1
    """
    return restart(name, timeout=timeout)


def status(name, sig=None):
    """
    True if the service's process is running (pid file names a live server).
    With ``sig``, like other providers: whether a process matches that pattern.

    CLI Example:

    .. code-block:: bash

        salt '*' service.status mysqlrepl-test-db1
    """
    if sig:
        return bool(__salt__["status.pid"](sig))  # pylint: disable=undefined-variable
    if not available(name):
        return False
    return _service(name).running()


def available(name):
    """
    True if the service is defined.

    CLI Example:

    .. code-block:: bash

        salt '*' service.available mysqlrepl-test-db1
    """
    unit = _unit_path(name)
    return os.path.isfile(_json_path(name)) or bool(unit and os.path.isfile(unit))


def missing(name):
    """
    True if the service is not defined.

    CLI Example:

    .. code-block:: bash

        salt '*' service.missing mysqlrepl-test-db1
    """
    return not available(name)


def get_all():
    """
    Names of all defined services.

    CLI Example:

    .. code-block:: bash

        salt '*' service.get_all
    """
    try:
        files = os.listdir(_svc_dir())
    except FileNotFoundError:
        return []
    return sorted(f[: -len(".json")] for f in files if f.endswith(".json"))


def enabled(name, **kwargs):  # pylint: disable=unused-argument
    """
    True if defined and not disabled with ``service.disable``.

    CLI Example:

    .. code-block:: bash

        salt '*' service.enabled mysqlrepl-test-db1
    """
    return available(name) and not os.path.exists(_disabled_marker(name))


def disabled(name):
    """
    True if defined and disabled.

    CLI Example:

    .. code-block:: bash

        salt '*' service.disabled mysqlrepl-test-db1
    """
    return available(name) and os.path.exists(_disabled_marker(name))


def enable(name, **kwargs):  # pylint: disable=unused-argument
    """
    Clear the disabled marker (there is no boot to start on).

    CLI Example:

    .. code-block:: bash

        salt '*' service.enable mysqlrepl-test-db1
    """
    _service(name)
    try:
        os.unlink(_disabled_marker(name))
    except FileNotFoundError:
        pass
    return True


def disable(name, **kwargs):  # pylint: disable=unused-argument
    """
    Set the disabled marker.

    CLI Example:

    .. code-block:: bash

        salt '*' service.disable mysqlrepl-test-db1
    """
    _service(name)
    with open(_disabled_marker(name), "w", encoding="utf-8"):
        pass
    return True


def get_enabled():
    """
    Names of enabled services.

    CLI Example:

    .. code-block:: bash

        salt '*' service.get_enabled
    """
    return [n for n in get_all() if enabled(n)]


def get_disabled():
    """
    Names of disabled services.

    CLI Example:

    .. code-block:: bash

        salt '*' service.get_disabled
    """
    return [n for n in get_all() if disabled(n)]


def offline():
    """
    Never offline. (Must be defined: the ``service`` state does nothing --
    "Running in OFFLINE mode" -- when ``service.offline`` is True, and
    systemd_service, which otherwise fills ``service.*`` here, says so on a
    machine where systemd is not PID 1.)

    CLI Example:

    .. code-block:: bash

        salt '*' service.offline
    """
    return False


def masked(name, runtime=False):  # pylint: disable=unused-argument
    """
    Never masked.

    CLI Example:

    .. code-block:: bash

        salt '*' service.masked mysqlrepl-test-db1
    """
    return False


def mask(name, runtime=False):  # pylint: disable=unused-argument
    """
    Not supported.

    CLI Example:

    .. code-block:: bash

        salt '*' service.mask mysqlrepl-test-db1
    """
    raise CommandExecutionError("mysqlrepl_testsvc: masking is not supported")


def unmask(name, runtime=False):  # pylint: disable=unused-argument
    """
    Nothing is ever masked: True.

    CLI Example:

    .. code-block:: bash

        salt '*' service.unmask mysqlrepl-test-db1
    """
    return True


def show(name):
    """
    The definition plus ``pid`` and ``running``.

    CLI Example:

    .. code-block:: bash

        salt '*' service.show mysqlrepl-test-db1
    """
    svc = _service(name)
    ret = svc.to_dict()
    pid = svc.pid()
    ret.update({"name": name, "pid": pid, "running": pid is not None})
    return ret
