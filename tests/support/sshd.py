"""
A real OpenSSH server per far side of a tunnel, run by the tests as a plain
daemon (``sshd -D``, no service manager) on one loopback address and port, with
its own config and host key: the far end of the formula's tunnels.

It is a service of the far side's minion (``mysqlrepl_testsvc``: a JSON
definition in that minion's service dir), so the formula reloads it, as it
reloads ``ssh`` on a real host, after writing the tunnel user's settings into
its ``conf.d`` (the config ``Include``\\ s it first, as Debian's does).

``StrictModes no``: the harness lives under /tmp (mode 1777), which sshd's
ownership walk refuses; the tests assert the modes of the files the formula
writes themselves. ``UsePAM no``: the tunnel user's password field must then be
``*`` (a locked ``!`` account is refused), which the formula sets. No
``ClientAlive*`` here: the formula's drop-in sets them for the tunnel user.
Stopped by its PID (the pid file it writes).
"""

import os
import pathlib
import socket
import subprocess
import time

from tests.support import mariadb

SSHD_BIN = "/usr/sbin/sshd"


class SSHD:
    def __init__(self, name, address, port, base_dir, user):
        self.name = name
        self.address = address
        self.port = int(port)
        self.root = pathlib.Path(base_dir) / name
        self.host_key = self.root / "ssh_host_ed25519_key"
        self.authorized_keys = self.root / "authorized_keys"
        self.config = self.root / "sshd_config"
        self.conf_d = self.root / "conf.d"
        self.pidfile = self.root / "sshd.pid"
        self.log = self.root / "sshd.log"
        self.user = user
        self.service_name = f"mysqlrepl-test-sshd-{name}"
        self.service = mariadb.testsvc.Service(
            self.service_name, [SSHD_BIN, "-D", "-e", "-f", str(self.config)], self.pidfile, None, self.log)

    def pillar(self):
        """This server's ``sshd`` pillar block."""
        return {"host": self.address, "port": self.port, "host_key_file": f"{self.host_key}.pub",
                "authorized_keys_file": str(self.authorized_keys), "config_file": str(self.config),
                "config_dir": str(self.conf_d), "service": self.service_name}

    def start(self, svc_dir):
        """Write its config and its service definition into ``svc_dir`` (its minion's), start it."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.conf_d.mkdir(exist_ok=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        if not self.host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"sshd-{self.name}",
                            "-f", str(self.host_key)], check=True)
        self.config.write_text(
            f"Include {self.conf_d}/*.conf\n"
            f"ListenAddress {self.address}\n"
            f"Port {self.port}\n"
            f"HostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            f"AllowUsers {self.user}\n"
            f"PidFile {self.pidfile}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin no\n"
            "GatewayPorts no\n"
            "LogLevel VERBOSE\n",
            encoding="utf-8")
        self.service.write(svc_dir)
        self.service.start(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.address, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sshd {self.name} does not listen on {self.address}:{self.port}: "
                           f"{self.log_text()[-2000:]}")

    @property
    def pid(self):
        return self.service.pid()

    def stop(self):
        """SIGTERM the listener by its PID (its sessions end with their clients)."""
        self.service.stop(timeout=10)

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""
