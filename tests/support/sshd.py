"""
A real OpenSSH server per far side of a tunnel, run by the tests as a plain
daemon (``sshd -D``, no service manager) on one loopback address and port, with
its own config and host key: the far end of the formula's tunnels.

``StrictModes no``: the harness lives under /tmp (mode 1777), which sshd's
ownership walk refuses; the tests assert the modes of the files the formula
writes themselves. ``UsePAM no``: the tunnel user's password field must then be
``*`` (a locked ``!`` account is refused), which the formula sets.
Stopped by its PID.
"""

import os
import pathlib
import signal
import socket
import subprocess
import time

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
        self.log = self.root / "sshd.log"
        self.user = user
        self.proc = None

    def pillar(self):
        """This server's ``sshd`` pillar block."""
        return {"host": self.address, "port": self.port, "host_key_file": f"{self.host_key}.pub",
                "authorized_keys_file": str(self.authorized_keys)}

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        if not self.host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"sshd-{self.name}",
                            "-f", str(self.host_key)], check=True)
        self.config.write_text(
            f"ListenAddress {self.address}\n"
            f"Port {self.port}\n"
            f"HostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            f"AllowUsers {self.user}\n"
            "PidFile none\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin no\n"
            "AllowTcpForwarding yes\n"
            "GatewayPorts no\n"
            "ClientAliveInterval 2\n"
            "ClientAliveCountMax 3\n"
            "LogLevel VERBOSE\n",
            encoding="utf-8")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
                [SSHD_BIN, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd {self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.address, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sshd {self.name} does not listen on {self.address}:{self.port}")

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        # its session's children (one sshd per connection) go with it
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""
