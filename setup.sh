#!/usr/bin/env bash
# Install what mysqlrepl's sandbox and tests need on a Debian 12 machine, as root:
#   MariaDB server, client and mariadb-backup, socat (the seed bench's raw baseline), python3-venv,
#   openssh-server and autossh (the SSH tunnels' tests, bench and sandbox run a plain sshd and
#   autossh; no sshd service is started), and .venv (python3 -m venv) with requirements.txt.
# Safe to run again: apt-get and pip skip what is already there, an existing
# working .venv is kept.
#
#   sudo ./setup.sh
#   PYTHON=/usr/bin/python3 ./setup.sh      # choose the interpreter for a new .venv
set -euo pipefail

cd "$(dirname "$0")"
REPO=$(pwd)
PYTHON=${PYTHON:-python3}
APT_PACKAGES=(mariadb-server mariadb-client mariadb-backup socat openssh-server openssh-client autossh
              python3 python3-venv)

log() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (sudo ./setup.sh): it installs Debian packages" >&2
    exit 1
fi
if ! [ -r /etc/debian_version ]; then
    echo "setup.sh: this is not a Debian-family system; install the equivalent of:" >&2
    echo "  ${APT_PACKAGES[*]}" >&2
    echo "then: $PYTHON -m venv .venv && .venv/bin/pip install -r requirements.txt" >&2
    exit 1
fi

# --- Debian packages ---------------------------------------------------------
# mariadb-server's postinst starts the service. Where no service manager runs
# (a container, this kind of CI machine) that start cannot work and would fail
# the install: a temporary policy-rc.d (exit 101: "action forbidden") makes
# invoke-rc.d skip it, so the installer starts nothing (and so stops nothing).
# It is put in place only if none exists and systemd is not running, and removed
# on exit. Where systemd runs, Debian's usual behaviour is kept.
POLICY=/usr/sbin/policy-rc.d
OUR_POLICY=
cleanup() {
    if [ -n "$OUR_POLICY" ] && [ -f "$POLICY" ] && grep -q 'mysqlrepl setup.sh' "$POLICY"; then
        rm -f "$POLICY"
    fi
}
trap cleanup EXIT

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    log "Debian packages already installed: ${APT_PACKAGES[*]}"
else
    if [ -f "$POLICY" ] && grep -q 'mysqlrepl setup.sh' "$POLICY"; then
        OUR_POLICY=1   # left by an interrupted earlier run
    elif [ ! -d /run/systemd/system ] && [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\n# mysqlrepl setup.sh: no service manager here; do not start services during install\nexit 101\n' > "$POLICY"
        chmod 0755 "$POLICY"
        OUR_POLICY=1
        log "no service manager running: package scripts will not start services (temporary $POLICY)"
    fi
    log "apt-get update"
    apt-get update
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    cleanup
    OUR_POLICY=
fi
for tool in mariadbd mariadb-install-db mariadb mariadb-backup mbstream mariadb-dump socat sshd ssh ssh-keygen autossh; do
    if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ]; then
        echo "setup.sh: $tool not found after installing the MariaDB packages" >&2
        exit 1
    fi
done

# --- Python virtualenv ---------------------------------------------------------
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    log "keeping .venv ($(.venv/bin/python --version))"
else
    if [ -e .venv ]; then
        log "moving the unusable .venv aside to .venv.broken.$$"
        mv .venv ".venv.broken.$$"
    fi
    log "$PYTHON -m venv .venv"
    "$PYTHON" -m venv .venv
fi
log "pip install -r requirements.txt"
.venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
.venv/bin/python - <<'PY'
from importlib.metadata import version
import cryptography, pymysql, salt  # noqa: F401  (they import)
print("   ", ", ".join(f"{p} {version(p)}" for p in ("salt", "PyMySQL", "cryptography", "pytest-salt-factories", "salt-lint")))
PY

log "done. Next:"
echo "  .venv/bin/python sandbox/run.py up     # three MariaDB servers + salt-master + minions, replication over TLS"
echo "  tests/run                              # salt-lint and the test suite"
echo "  ($REPO)"
