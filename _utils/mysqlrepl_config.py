"""
Validation and normalisation of the ``mysqlrepl`` pillar tree.

:func:`load` takes the raw pillar value and returns a new, complete dict
(defaults filled in, server ids derived) or raises
``salt.exceptions.SaltInvocationError`` whose message starts with the full key
path that is wrong (``mysqlrepl:servers:db2:port: ...``). The whole tree is
checked before anything is changed anywhere.

Pure Python: unit tests import it directly; Salt reaches it as
``__utils__["mysqlrepl_config.load"]``.
"""

import copy
import ipaddress
import posixpath
import re
import zlib

try:
    from salt.exceptions import SaltInvocationError
except ImportError:  # pragma: no cover - only without Salt installed
    class SaltInvocationError(Exception):
        pass

ROOT = "mysqlrepl"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
REQUIRE_MODES = ("ssl", "x509", "subject")
SEED_METHODS = ("backup",)
# a DNS name (the name a replica connects to through a tunnel, in its master's certificate)
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")

# Per-server defaults for Debian-family hosts; pillar ``mysqlrepl:server_defaults``
# overrides them for every server, ``mysqlrepl:servers:<name>`` for one.
SERVER_DEFAULTS = {
    "port": 3306,
    "gtid_domain_id": 0,
    "san": [],
    "datadir": "/var/lib/mysql",
    "socket": "/run/mysqld/mysqld.sock",
    "config_file": "/etc/mysql/mariadb.conf.d/60-mysqlrepl.cnf",
    "config_section": "mysqld",
    "tls_dir": "/etc/mysql/mysqlrepl",
    "service": "mariadb",
    "os_user": "mysql",
    "bind_address": None,
    "connection": {},
    "settings": {},
    # this host's sshd, for tunnels whose far side it is (host: default the server's address)
    "sshd": {"host": None, "port": 22, "host_key_file": "/etc/ssh/ssh_host_ed25519_key.pub",
             "authorized_keys_file": None,
             # the tunnel user's sshd settings (ClientAlive*: a dead client's -R ports are freed)
             # go to <config_dir>/60-mysqlrepl-tunnel.conf; sshd reloaded through <service>
             "config_file": "/etc/ssh/sshd_config", "config_dir": "/etc/ssh/sshd_config.d",
             "service": "ssh", "sshd": "/usr/sbin/sshd"},
}

DEFAULTS = {
    "topology": "main",
    "restart_allowed": False,
    "ca": {
        "ca_name": "mysql",
        "cacert_path": "/etc/pki",
        "days": 3650,
        "bits": 4096,
        "digest": "sha256",
        "CN": None,
        "C": None, "ST": None, "L": None, "O": None, "OU": None, "emailAddress": None,
    },
    "tls": {
        "cert_days": 365,
        "renew_days": 30,
        "bits": 2048,
        "verify_server_cert": True,
        "subject": {},
    },
    "replication": {
        "user": "repl",
        "host": "%",
        "require": "ssl",
        "subject": None,
        "connect_retry": 5,
        "heartbeat_period": 2,
        "wait_timeout": 60,
        # semi-synchronous replication (built into MariaDB): a commit is
        # acknowledged to the client only once a replica has it (AFTER_SYNC);
        # past the timeout without a replica's ack the master falls back to async
        "semi_sync": False,
        "semi_sync_timeout_ms": 10000,
    },
    "seed": {
        "method": "backup",
        "port": 4444,
        "timeout": 7200,
        # mariadb-backup --log-copy-interval (ms): BACKUP STAGE BLOCK_COMMIT waits
        # for the log copy thread, so this bounds how long commits stall
        "log_copy_interval": 10,
        # seconds between progress lines of salt-run mysqlrepl.seed while it copies
        "progress_interval": 2,
    },
    "server_defaults": {},
    # two-master topologies (``masters: [a, b]``): every master's auto_increment_increment;
    # offsets are 1 and 2 in the order of ``masters`` unless a server sets its own
    "auto_increment_increment": 2,
    # SSH tunnels (``servers:<name>:tunnels``), for every tunnel of the topology
    "tunnel": {
        # the login on the far side's sshd, and the local user that runs ssh
        "user": "mysqlrepl-tunnel",
        # ssh's ServerAliveInterval / ServerAliveCountMax: a dead link is noticed
        # within interval x count seconds, then autossh starts ssh again
        "alive_interval": 10,
        "alive_count": 3,
        "connect_timeout": 10,
        # per server: <dir>/<server>/ holds the ssh key (made there, 0600) and known_hosts
        "dir": "/var/lib/mysqlrepl-tunnel",
        "unit_dir": "/etc/systemd/system",
        "autossh": "/usr/bin/autossh",
        "ssh": "/usr/bin/ssh",
        # <server>.<topology>.<domain>: the name a replica connects to through a tunnel,
        # resolved to 127.0.0.1 on its host and carried by its master's certificate
        "domain": "mysqlrepl.internal",
    },
    # the switch's account: sets read_only on the old master from the new
    # master's minion over verified TLS (REQUIRE X509); made on every server
    # when a password is set
    "admin": {"user": "mysqlrepl_admin", "host": "%", "password": None},
    # what salt-run mysqlrepl.health and the mysqlrepl beacon call a problem
    "health": {
        # a replica further behind than this (Seconds_Behind_Master), or lacking more
        # transactions than gtid_behind of its source's binlog in a domain
        "lag_s": 30,
        "gtid_behind": 1000,
        # a certificate within this many days of expiry (the highstate renews them
        # tls:renew_days before: this fires when renewal did not happen)
        "cert_days": 14,
    },
    "switch": {
        # seconds the old master's SET GLOBAL read_only may wait for running
        # writes and locks (lock_wait_timeout); past it the switch aborts, unchanged
        "lock_budget": 1,
        # seconds the new master may take to apply the old one's last GTID
        # inside the write block (MASTER_GTID_WAIT)
        "catchup_timeout": 5,
        # prechecks: replication lag of the new master, and transactions on the
        # old master older / larger than these refuse the switch
        "max_lag": 5,
        "long_trx_seconds": 5,
        "large_trx_rows": 10000,
        # end the app sessions left on the old master once it is read-only, so
        # connection pools reconnect to the new one at once
        "kill_app_sessions": False,
        # seconds every replica may take to run from the new master and catch up
        "ready_timeout": 120,
        # accounts allowed to write through read_only besides mysqlrepl's own
        # and the local admin ("user@host")
        "admin_users": [],
    },
}

# key -> (type or tuple of types, required?)
_TOP = {
    "topology": (str, False), "master": (str, False), "masters": (list, False),
    "restart_allowed": (bool, False), "auto_increment_increment": (int, False), "tunnel": (dict, False),
    "ca": (dict, True), "tls": (dict, False), "replication": (dict, True),
    "seed": (dict, False), "servers": (dict, True), "server_defaults": (dict, False),
    # consumed by map.jinja / SLS only
    "lookup": (dict, False), "manage_packages": (bool, False),
    "admin": (dict, False), "switch": (dict, False), "health": (dict, False),
    # written by the formula's ext_pillar from the master record, not by hand
    "switching": (dict, False), "record": (dict, False),
}
_TUNNEL = {
    "user": (str, False), "alive_interval": (int, False), "alive_count": (int, False),
    "connect_timeout": (int, False), "dir": (str, False), "unit_dir": (str, False),
    "autossh": (str, False), "ssh": (str, False), "domain": (str, False),
}
_TUNNEL_ENTRY = {
    "peer": (str, True), "port": (int, True), "seed_port": (int, False),
    "peer_port": (int, False), "peer_seed_port": (int, False),
    "alive_interval": (int, False), "alive_count": (int, False),
}
_SSHD = {"host": (str, False), "port": (int, False), "host_key_file": (str, False),
         "authorized_keys_file": (str, False), "config_file": (str, False), "config_dir": (str, False),
         "service": (str, False), "sshd": (str, False)}
_ADMIN = {"user": (str, False), "host": (str, False), "password": (str, False)}
_HEALTH = {"lag_s": ((int, float), False), "gtid_behind": (int, False), "cert_days": ((int, float), False)}
_SWITCH = {
    "lock_budget": (int, False), "catchup_timeout": ((int, float), False),
    "max_lag": (int, False), "long_trx_seconds": (int, False), "large_trx_rows": (int, False),
    "kill_app_sessions": (bool, False), "ready_timeout": (int, False), "admin_users": (list, False),
}
_CA = {
    "minion": (str, True), "ca_name": (str, False), "cacert_path": (str, False),
    "days": (int, False), "bits": (int, False), "digest": (str, False), "CN": (str, False),
    "C": (str, False), "ST": (str, False), "L": (str, False), "O": (str, False),
    "OU": (str, False), "emailAddress": (str, False),
}
_TLS = {
    # floats allowed: 0.01 days (14 minutes) for rotation drills
    "cert_days": ((int, float), False), "renew_days": ((int, float), False), "bits": (int, False),
    "verify_server_cert": (bool, False), "subject": (dict, False),
}
_SUBJECT_FIELDS = ("C", "ST", "L", "O", "OU", "emailAddress")
_REPLICATION = {
    "user": (str, False), "password": (str, True), "host": (str, False),
    "require": (str, False), "subject": (str, False), "connect_retry": (int, False),
    "heartbeat_period": ((int, float), False), "wait_timeout": (int, False),
    "semi_sync": (bool, False), "semi_sync_timeout_ms": (int, False),
}
_SEED = {"method": (str, False), "port": (int, False), "timeout": (int, False),
         "log_copy_interval": (int, False), "progress_interval": ((int, float), False)}
_SERVER = {
    "minion": (str, False), "address": (str, True), "port": (int, False),
    "server_id": (int, False), "gtid_domain_id": (int, False), "san": (list, False),
    "datadir": (str, False), "socket": (str, False), "config_file": (str, False),
    "config_section": (str, False), "tls_dir": (str, False), "service": (str, False),
    "os_user": (str, False), "bind_address": (str, False), "restart_allowed": (bool, False),
    "connection": (dict, False), "settings": (dict, False), "sshd": (dict, False),
    # two-master topologies: which master a replica follows; a master's own offset
    "source": (str, False), "auto_increment_offset": (int, False),
    # SSH port forwards this server's host opens (one entry per link; see README)
    "tunnels": (list, False),
}
# per-server keys that mean something for one server only
_SERVER_ONLY = ("address", "server_id", "minion", "source", "auto_increment_offset", "tunnels")
_CONNECTION = {
    "default_file": (str, False), "unix_socket": (str, False), "user": (str, False),
    "password": (str, False),
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true/false", dict: "a mapping",
               list: "a list", float: "a number"}


def valid_name(name):
    """Is ``name`` a valid topology or server name? The one rule (``NAME_RE``), also used by
    the runner and the ext_pillar for the master record's file name."""
    return isinstance(name, str) and bool(NAME_RE.match(name))


def record_path(cachedir, topology):
    """
    Where the master record of ``topology`` lives on the salt-master
    (``<cachedir>/mysqlrepl/<topology>.json``, one file per topology), for the
    runner that writes it and the ext_pillar that reads it. Refuses a name that is
    not a topology name (it is part of a path).
    """
    if not valid_name(topology):
        raise ValueError(f"invalid topology name {topology!r}")
    return posixpath.join(cachedir, "mysqlrepl", f"{topology}.json")


def _fail(path, message):
    raise SaltInvocationError(f"{':'.join(path)}: {message}")


def _type_name(types):
    if isinstance(types, tuple):
        return " or ".join(_TYPE_NAMES[t] for t in types)
    return _TYPE_NAMES[types]


def _check(section, schema, path):
    """Check keys and types of one mapping; unknown keys are errors (typos matter)."""
    if not isinstance(section, dict):
        _fail(path, f"must be a mapping, got {type(section).__name__}")
    for key in section:
        if key not in schema:
            _fail(path + [str(key)], f"unknown key (allowed: {', '.join(sorted(schema))})")
    for key, (types, required) in schema.items():
        if key not in section or section[key] is None:
            if required:
                _fail(path + [key], "missing required key")
            continue
        value = section[key]
        # bool is an int subclass: never accept it where a number is asked for
        if isinstance(value, bool) and types is not bool and bool not in (
            types if isinstance(types, tuple) else (types,)
        ):
            _fail(path + [key], f"must be {_type_name(types)}, got {value!r}")
        if not isinstance(value, types):
            _fail(path + [key], f"must be {_type_name(types)}, got {type(value).__name__}")


def _merge(base, override):
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is not None:
            out[key] = copy.deepcopy(value)
    return out


def derive_server_id(topology, name):
    """Stable server_id from the topology and server name (never a list index)."""
    return zlib.crc32(f"{topology}/{name}".encode()) % 4294967294 + 1


_CANONICAL_ORDER = ("C", "ST", "L", "O", "OU", "CN", "emailAddress")


def parse_subject(text, path):
    """
    ``/O=W3C/OU=Docs/CN=repl`` -> ``(CN, {field: value})``. Fields must come in
    the order certificates carry them (C, ST, L, O, OU, CN, emailAddress), so the
    string is exactly what MariaDB compares in REQUIRE SUBJECT.
    """
    if not isinstance(text, str) or not text.startswith("/"):
        _fail(path, "must look like /O=Org/OU=Unit/CN=name")
    fields = []
    for part in text[1:].split("/"):
        key, sep, value = part.partition("=")
        if not sep or key not in _CANONICAL_ORDER or not value:
            _fail(path, f"cannot parse {part!r} (fields: {', '.join(_CANONICAL_ORDER)})")
        fields.append((key, value))
    keys = [k for k, _ in fields]
    if len(set(keys)) != len(keys):
        _fail(path, "a field is repeated")
    if keys != sorted(keys, key=_CANONICAL_ORDER.index):
        _fail(path, f"fields must come in the order {'/'.join(_CANONICAL_ORDER)}")
    values = dict(fields)
    if "CN" not in values:
        _fail(path, "needs a CN")
    cn = values.pop("CN")
    return cn, values


def _certificates(cfg, srv):
    """
    The certificates a server needs, each with its files. ``server``: CN = server
    name, SAN = its address (+ ``san``), serverAuth+clientAuth (a replica presents
    it to its master). With ``require: subject`` a second, client-only certificate
    carries the exact subject the replication account requires.
    """
    tls_dir = srv["tls_dir"]
    certs = [{
        "id": "server",
        "cn": srv["name"],
        "subject": {k: v for k, v in cfg["tls"]["subject"].items() if v},
        "san": srv["cert_names"],
        "usage": "server_client",
        "key": posixpath.join(tls_dir, "server.key"),
        "csr": posixpath.join(tls_dir, "server.csr"),
        "cert": posixpath.join(tls_dir, "server.crt"),
    }]
    if cfg["replication"]["require"] == "subject":
        cn, subject = parse_subject(cfg["replication"]["subject"], [ROOT, "replication", "subject"])
        certs.append({
            "id": "client",
            "cn": cn,
            "subject": subject,
            "san": [],
            "usage": "client",
            "key": posixpath.join(tls_dir, "client.key"),
            "csr": posixpath.join(tls_dir, "client.csr"),
            "cert": posixpath.join(tls_dir, "client.crt"),
        })
    return certs


def _is_ip(value):
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def load(raw, minion_id=None):
    """
    Validate ``raw`` (the pillar value of ``mysqlrepl``) and return the
    normalised topology. ``minion_id`` only adds ``local_servers``: the names of
    servers that minion owns.
    """
    path = [ROOT]
    if raw is None or raw == {}:
        _fail(path, "missing: no mysqlrepl pillar for this minion")
    _check(raw, _TOP, path)
    _check(raw["ca"], _CA, path + ["ca"])
    _check(raw.get("tls") or {}, _TLS, path + ["tls"])
    _check((raw.get("tls") or {}).get("subject") or {},
           {k: (str, False) for k in _SUBJECT_FIELDS}, path + ["tls", "subject"])
    _check(raw["replication"], _REPLICATION, path + ["replication"])
    _check(raw.get("seed") or {}, _SEED, path + ["seed"])
    _check(raw.get("admin") or {}, _ADMIN, path + ["admin"])
    _check(raw.get("switch") or {}, _SWITCH, path + ["switch"])
    _check(raw.get("health") or {}, _HEALTH, path + ["health"])
    _check(raw.get("server_defaults") or {},
           {k: v for k, v in _SERVER.items() if k not in _SERVER_ONLY},
           path + ["server_defaults"])
    _check((raw.get("server_defaults") or {}).get("sshd") or {}, _SSHD, path + ["server_defaults", "sshd"])
    _check(raw.get("tunnel") or {}, _TUNNEL, path + ["tunnel"])

    cfg = _merge(DEFAULTS, {k: v for k, v in raw.items() if k != "servers"})
    if not NAME_RE.match(cfg["topology"]):
        _fail(path + ["topology"], f"invalid name {cfg['topology']!r}")

    repl = cfg["replication"]
    if not repl["password"]:
        _fail(path + ["replication", "password"], "must not be empty")
    if repl["require"] not in REQUIRE_MODES:
        _fail(path + ["replication", "require"],
              f"must be one of {', '.join(REQUIRE_MODES)}, got {repl['require']!r}")
    if repl["require"] == "subject" and not repl.get("subject"):
        _fail(path + ["replication", "subject"],
              "missing: require=subject needs the certificate subject the account accepts")
    for key in ("connect_retry", "wait_timeout"):
        if repl[key] < 1:
            _fail(path + ["replication", key], "must be at least 1")
    if cfg["seed"]["method"] not in SEED_METHODS:
        _fail(path + ["seed", "method"], f"must be one of {', '.join(SEED_METHODS)}")
    if not 1 <= cfg["seed"]["port"] <= 65535:
        _fail(path + ["seed", "port"], "must be a TCP port (1-65535)")
    if cfg["seed"]["progress_interval"] <= 0:
        _fail(path + ["seed", "progress_interval"], "must be greater than 0")
    sw = cfg["switch"]
    for key in ("lock_budget", "catchup_timeout", "ready_timeout"):
        if sw[key] <= 0:
            _fail(path + ["switch", key], "must be greater than 0")
    for entry in sw["admin_users"]:
        if not isinstance(entry, str) or "@" not in entry:
            _fail(path + ["switch", "admin_users"], f"entries look like user@host, got {entry!r}")
    if cfg["admin"]["password"] == "":
        _fail(path + ["admin", "password"], "must not be empty")
    for key, value in cfg["health"].items():
        if value < 0:
            _fail(path + ["health", key], "must not be negative")
    tls = cfg["tls"]
    if tls["renew_days"] >= tls["cert_days"]:
        _fail(path + ["tls", "renew_days"], "must be smaller than tls:cert_days")
    if cfg["ca"]["bits"] < 2048 or tls["bits"] < 2048:
        _fail(path + ["tls", "bits"], "RSA keys shorter than 2048 bits are refused")

    servers_raw = raw["servers"]
    if not servers_raw:
        _fail(path + ["servers"], "must name at least one server")
    defaults = _merge(SERVER_DEFAULTS, cfg["server_defaults"])
    servers = {}
    seen_ids = {}
    seen_endpoints = {}
    for name, server in servers_raw.items():
        spath = path + ["servers", str(name)]
        if not isinstance(name, str) or not NAME_RE.match(name):
            _fail(spath, "invalid server name")
        _check(server, _SERVER, spath)
        _check(server.get("connection") or {}, _CONNECTION, spath + ["connection"])
        _check(server.get("sshd") or {}, _SSHD, spath + ["sshd"])
        srv = _merge(defaults, server)
        srv["sshd"]["host"] = srv["sshd"]["host"] or srv["address"]
        srv["gtid_domain_id_set"] = ("gtid_domain_id" in server
                                     or "gtid_domain_id" in (cfg["server_defaults"] or {}))
        srv["name"] = name
        srv.setdefault("minion", name)
        srv["minion"] = srv.get("minion") or name
        if srv.get("restart_allowed") is None:
            srv["restart_allowed"] = cfg["restart_allowed"]
        if not 1 <= srv["port"] <= 65535:
            _fail(spath + ["port"], "must be a TCP port (1-65535)")
        if "server_id" in server and server["server_id"] is not None:
            sid = server["server_id"]
            if not 1 <= sid <= 4294967295:
                _fail(spath + ["server_id"], "must be between 1 and 4294967295")
        else:
            sid = derive_server_id(cfg["topology"], name)
        if sid in seen_ids:
            _fail(spath + ["server_id"],
                  f"server_id {sid} collides with server {seen_ids[sid]}")
        seen_ids[sid] = name
        srv["server_id"] = sid
        if not 0 <= srv["gtid_domain_id"] <= 4294967295:
            _fail(spath + ["gtid_domain_id"], "must be between 0 and 4294967295")
        endpoint = (srv["address"], srv["port"])
        if endpoint in seen_endpoints:
            _fail(spath + ["address"],
                  f"{srv['address']}:{srv['port']} is also server {seen_endpoints[endpoint]}")
        seen_endpoints[endpoint] = name
        for key in ("datadir", "socket", "config_file", "tls_dir"):
            if not posixpath.isabs(srv[key]):
                _fail(spath + [key], f"must be an absolute path, got {srv[key]!r}")
        for entry in srv["san"]:
            if not isinstance(entry, str) or not entry:
                _fail(spath + ["san"], "entries must be non-empty strings")
        srv["cert_names"] = [srv["address"]] + [s for s in srv["san"] if s != srv["address"]]
        srv["address_is_ip"] = _is_ip(srv["address"])
        srv["tls_files"] = {
            "key": posixpath.join(srv["tls_dir"], "server.key"),
            "csr": posixpath.join(srv["tls_dir"], "server.csr"),
            "cert": posixpath.join(srv["tls_dir"], "server.crt"),
            "ca": posixpath.join(srv["tls_dir"], "ca.crt"),
        }
        srv["certs"] = _certificates(cfg, srv)
        # the certificate a replica presents to its master
        client = srv["certs"][-1]
        srv["replication_cert"] = {"cert": client["cert"], "key": client["key"]}
        servers[name] = srv

    cfg["servers"] = servers
    _roles(cfg, raw, path)
    _tunnels(cfg, raw, path)
    ca = cfg["ca"]
    ca["dir"] = posixpath.join(ca["cacert_path"], ca["ca_name"])
    ca["cert_file"] = posixpath.join(ca["dir"], f"{ca['ca_name']}_ca_cert.crt")
    ca["key_file"] = posixpath.join(ca["dir"], f"{ca['ca_name']}_ca_cert.key")
    if not ca.get("CN"):
        ca["CN"] = f"mysqlrepl-{cfg['topology']}-ca"
    cfg["local_servers"] = sorted(
        name for name, srv in servers.items() if minion_id is not None and srv["minion"] == minion_id
    )
    return cfg


def _roles(cfg, raw, path):
    """
    Who replicates from whom. ``master: a``: one writable master, every other server
    replicates from it. ``masters: [a, b]`` (seed 001): both writable by design, each
    replicates from the other, replicas follow ``source`` (default the first); each
    master gets its own auto_increment_offset and gtid_domain_id.
    """
    servers = cfg["servers"]
    known = f"(servers: {', '.join(sorted(servers))})"
    if raw.get("masters") is not None:
        if raw.get("master") is not None:
            _fail(path + ["masters"], "set either master (one master) or masters (a two-master pair), not both")
        masters = raw["masters"]
        if len(masters) != 2 or len(set(map(str, masters))) != 2:
            _fail(path + ["masters"], f"names exactly two distinct servers, got {masters!r}")
        for name in masters:
            if name not in servers:
                _fail(path + ["masters"], f"unknown server {name!r} {known}")
        cfg["master"] = masters[0]
    else:
        if cfg.get("master") is None:
            _fail(path + ["master"], "missing required key (or masters: [a, b] for a two-master pair)")
        if cfg["master"] not in servers:
            _fail(path + ["master"], f"unknown server {cfg['master']!r} {known}")
        masters = [cfg["master"]]
    cfg["masters"] = list(masters)
    cfg["two_masters"] = len(masters) == 2
    increment = cfg["auto_increment_increment"]
    if cfg["two_masters"] and not 2 <= increment <= 65535:
        _fail(path + ["auto_increment_increment"], "must be between 2 and 65535 for two masters")
    sources, offsets, domains = {}, {}, {}
    for name, srv in servers.items():
        spath = path + ["servers", name]
        if name in masters:
            if srv.get("source") is not None:
                _fail(spath + ["source"], f"{name} is a master: it replicates from "
                      + ("the other master" if cfg["two_masters"] else "nobody"))
            sources[name] = next((m for m in masters if m != name), None)
        else:
            if srv.get("source") is not None and not cfg["two_masters"]:
                _fail(spath + ["source"], "only with masters: [a, b]; with one master every replica "
                                          "replicates from it")
            source = srv.get("source") or masters[0]
            if source not in masters:
                _fail(spath + ["source"], f"must be one of the masters {masters}, got {source!r}")
            sources[name] = source
            if srv.get("auto_increment_offset") is not None:
                _fail(spath + ["auto_increment_offset"], "only masters of a two-master pair take one")
            continue
        if not cfg["two_masters"]:
            if srv.get("auto_increment_offset") is not None:
                _fail(spath + ["auto_increment_offset"], "only masters of a two-master pair take one")
            continue
        offset = srv.get("auto_increment_offset") or masters.index(name) + 1
        if not 1 <= offset <= increment:
            _fail(spath + ["auto_increment_offset"],
                  f"must be between 1 and auto_increment_increment ({increment}), got {offset}")
        if offset in offsets:
            _fail(spath + ["auto_increment_offset"],
                  f"{offset} is also {offsets[offset]}'s: both masters would make the same keys")
        offsets[offset] = name
        srv["auto_increment_offset"] = offset
        if not srv["gtid_domain_id_set"]:
            # the first master keeps the one-master default (0): a topology turned into a
            # pair keeps its history in its domain; the second writes in domain 1
            srv["gtid_domain_id"] = masters.index(name)
        if srv["gtid_domain_id"] in domains:
            _fail(spath + ["gtid_domain_id"],
                  f"{srv['gtid_domain_id']} is also {domains[srv['gtid_domain_id']]}'s: each master "
                  "needs its own GTID domain")
        domains[srv["gtid_domain_id"]] = name
    cfg["sources"] = sources


def _tunnels(cfg, raw, path):  # pylint: disable=unused-argument
    """
    Validate ``servers:<name>:tunnels`` into ``cfg["tunnels"]``, one dict per entry.

    An entry is declared on the server whose host opens the ssh connection (*near*:
    the side that can reach the other) and names the server whose sshd it logs into
    (*peer*). One connection carries both directions, so the tunnel serves whichever
    of the two replicates from the other, now and after a switch:

    * ``port``: 127.0.0.1:port on near's host reaches peer's database (``ssh -L``):
      near replicating from peer goes through it (seed 000: near is the replica);
    * ``peer_port`` (default ``port``): 127.0.0.1:peer_port on peer's host reaches
      near's database (``ssh -R``): peer replicating from near goes through it
      (seed 001: near is the master behind a firewall);
    * ``seed_port`` / ``peer_seed_port`` (default ``port + 1`` / ``seed_port``): the
      same for the seed listener (a replica being seeded listens, its master sends).

    At most one tunnel joins two servers. Every port a tunnel listens on is checked
    against the other ports of that host (minion).
    """
    servers = cfg["servers"]
    tun = cfg["tunnel"]
    for key in ("alive_interval", "alive_count", "connect_timeout"):
        if tun[key] < 1:
            _fail(path + ["tunnel", key], "must be at least 1")
    for key in ("dir", "unit_dir", "autossh", "ssh"):
        if not posixpath.isabs(tun[key]) or re.search(r"\s", tun[key]):
            _fail(path + ["tunnel", key], f"must be an absolute path without spaces, got {tun[key]!r}")
    if not valid_name(tun["user"]):
        _fail(path + ["tunnel", "user"], f"invalid user name {tun['user']!r}")
    tunnels, pairs = [], {}
    for near, srv in sorted(servers.items()):
        entries = srv.get("tunnels") or []
        for i, entry in enumerate(entries):
            tpath = path + ["servers", near, "tunnels", str(i)]
            _check(entry, _TUNNEL_ENTRY, tpath)
            peer = entry["peer"]
            if peer not in servers:
                _fail(tpath + ["peer"], f"unknown server {peer!r} (servers: {', '.join(sorted(servers))})")
            if peer == near:
                _fail(tpath + ["peer"], f"a tunnel from {near} to itself")
            if servers[peer]["minion"] == srv["minion"]:
                _fail(tpath + ["peer"], f"{near} and {peer} are on the same minion "
                                        f"({srv['minion']}): a tunnel to itself")
            pair = frozenset((near, peer))
            if pair in pairs:
                _fail(tpath + ["peer"], f"{near} and {peer} are already joined by tunnel {pairs[pair]}")
            ports = {"port": entry["port"]}
            ports["seed_port"] = entry.get("seed_port") or ports["port"] + 1
            ports["peer_port"] = entry.get("peer_port") or ports["port"]
            ports["peer_seed_port"] = entry.get("peer_seed_port") or ports["seed_port"]
            for key, value in ports.items():
                if not 1 <= value <= 65535:
                    _fail(tpath + [key], f"must be a TCP port (1-65535), got {value}")
            if ports["seed_port"] == ports["port"]:
                _fail(tpath + ["seed_port"], "must differ from port")
            if ports["peer_seed_port"] == ports["peer_port"]:
                _fail(tpath + ["peer_seed_port"], "must differ from peer_port")
            ident = f"{near}-{peer}"
            pairs[pair] = ident
            tunnels.append(dict(
                ports, id=ident, near=near, peer=peer, service=f"mysqlrepl-tunnel-{ident}",
                alive_interval=entry.get("alive_interval") or tun["alive_interval"],
                alive_count=entry.get("alive_count") or tun["alive_count"],
                path=tpath,
            ))
    ends = {t["near"] for t in tunnels} | {t["peer"] for t in tunnels}
    for name, srv in servers.items():
        srv["tunnel_host"] = f"{name}.{cfg['topology']}.{tun['domain']}".lower()
        if name not in ends:
            continue
        if not HOSTNAME_RE.match(srv["tunnel_host"]):
            _fail(path + ["servers", name], f"{srv['tunnel_host']!r} (the name the other end of its tunnel "
                  "connects to) is not a DNS name: rename the server or set mysqlrepl:tunnel:domain")
        # the name the other end connects to through the tunnel: in this server's certificate
        if srv["tunnel_host"] not in srv["cert_names"]:
            srv["cert_names"].append(srv["tunnel_host"])
    _port_clashes(cfg, tunnels)
    cfg["tunnels"] = tunnels
    cfg["reach"] = {frm: {to: _reach(cfg, tunnels, frm, to) for to in servers if to != frm}
                    for frm in servers}


def _reach(cfg, tunnels, frm, to):
    """
    How a client on ``frm``'s host reaches ``to``: ``{"host", "port", "seed_port",
    "tunnel"}``. Direct: ``to``'s address, its port and the seed port. Through the
    tunnel joining them: ``to``'s tunnel name (127.0.0.1 on ``frm``'s host, in
    ``to``'s certificate; the name TLS verifies) and the forwards' ports.
    """
    srv = cfg["servers"][to]
    for t in tunnels:
        if t["near"] == frm and t["peer"] == to:  # -L forwards on frm's host
            return {"host": srv["tunnel_host"], "port": t["port"], "seed_port": t["seed_port"],
                    "tunnel": t["id"]}
        if t["peer"] == frm and t["near"] == to:  # -R forwards from to's host, on frm's
            return {"host": srv["tunnel_host"], "port": t["peer_port"], "seed_port": t["peer_seed_port"],
                    "tunnel": t["id"]}
    return {"host": srv["address"], "port": srv["port"], "seed_port": cfg["seed"]["port"], "tunnel": None}


def _on_loopback(bind):
    """Does a listener bound to ``bind`` (``None``: every address) take 127.0.0.1's port?"""
    return bind is None or bind in ("127.0.0.1", "0.0.0.0", "::", "*", "localhost")


def _port_clashes(cfg, tunnels):
    """
    Tunnels listen on 127.0.0.1 of a host (its minion): each such port once per host,
    and none that the host's database servers (bound to every address or to
    127.0.0.1) or their seed listeners already take.
    """
    servers = cfg["servers"]
    taken = {}
    for name, srv in sorted(servers.items()):
        if _on_loopback(srv.get("bind_address")) or srv["address"] == "127.0.0.1":
            taken[(srv["minion"], srv["port"])] = f"{name}'s database port"
        if srv["address"] == "127.0.0.1":
            taken.setdefault((srv["minion"], cfg["seed"]["port"]), f"{name}'s seed listener")
    for name in sorted({t["peer"] for t in tunnels}):
        srv = servers[name]  # its host's sshd (assumed to listen on every address)
        taken.setdefault((srv["minion"], srv["sshd"]["port"]), f"{name}'s sshd port")
    for t in tunnels:
        near, peer = servers[t["near"]]["minion"], servers[t["peer"]]["minion"]
        for minion, key, what in ((near, "port", f"{t['peer']}'s database"),
                                  (near, "seed_port", f"{t['peer']}'s seed listener"),
                                  (peer, "peer_port", f"{t['near']}'s database"),
                                  (peer, "peer_seed_port", f"{t['near']}'s seed listener")):
            port = t[key]
            if (minion, port) in taken:
                _fail(t["path"] + [key], f"port {port} on 127.0.0.1 of {minion} is already "
                                         f"{taken[(minion, port)]}")
            taken[(minion, port)] = f"tunnel {t['id']}'s forward to {what}"
    for t in tunnels:
        del t["path"]


def redact(cfg):
    """A copy safe to print: passwords replaced."""
    out = copy.deepcopy(cfg)
    if "replication" in out and out["replication"].get("password"):
        out["replication"]["password"] = "********"
    if (out.get("admin") or {}).get("password"):
        out["admin"]["password"] = "********"
    for srv in (out.get("servers") or {}).values():
        if (srv.get("connection") or {}).get("password"):
            srv["connection"]["password"] = "********"
    return out


# --------------------------------------------------------------------------
# Server settings (the config drop-in)
# --------------------------------------------------------------------------

# Settings mysqlrepl writes, in file order. ``read_only`` is ON in every file:
# a master that restarts comes back read-only; the master is made writable at
# runtime only, so it is not reconciled live from the file.
RUNTIME_ONLY_MANAGED = ("read_only",)


def desired_settings(cfg, name):
    """Ordered list of ``(option, value)`` for server ``name``'s drop-in."""
    srv = cfg["servers"][name]
    files = srv["tls_files"]
    settings = [
        ("server_id", str(srv["server_id"])),
        ("gtid_domain_id", str(srv["gtid_domain_id"])),
        ("log_bin", "mysql-bin"),
        ("log_slave_updates", "ON"),
        ("binlog_format", "ROW"),
        ("sync_binlog", "1"),
        ("innodb_flush_log_at_trx_commit", "1"),
        ("relay_log", "relay-bin"),
        ("relay_log_recovery", "ON"),
        ("report_host", srv["address"]),
        ("report_port", str(srv["port"])),
        ("read_only", "ON"),
        ("ssl_ca", files["ca"]),
        ("ssl_cert", files["cert"]),
        ("ssl_key", files["key"]),
    ]
    # every server may become master or replica: both sides on every server
    semi = cfg["replication"]["semi_sync"]
    settings += [
        ("rpl_semi_sync_master_enabled", "ON" if semi else "OFF"),
        ("rpl_semi_sync_slave_enabled", "ON" if semi else "OFF"),
    ]
    if semi:
        settings += [
            ("rpl_semi_sync_master_wait_point", "AFTER_SYNC"),
            ("rpl_semi_sync_master_timeout", str(cfg["replication"]["semi_sync_timeout_ms"])),
            # with no semi-sync replica connected, do not wait: a replica applying its
            # master's events (log_slave_updates) would otherwise stall each first
            # commit for the whole timeout (measured: 10 s), and so would a new master
            # until its replicas reconnect after a switch
            ("rpl_semi_sync_master_wait_no_slave", "OFF"),
        ]
    if cfg.get("two_masters") and name in cfg["masters"]:
        # both masters take writes: their auto-increment keys interleave, never collide
        settings += [
            ("auto_increment_increment", str(cfg["auto_increment_increment"])),
            ("auto_increment_offset", str(srv["auto_increment_offset"])),
        ]
    if srv.get("bind_address"):
        settings.append(("bind_address", srv["bind_address"]))
    known = {k for k, _ in settings}
    for key, value in sorted((srv.get("settings") or {}).items()):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", str(key)):
            _fail([ROOT, "servers", name, "settings", str(key)], "invalid option name")
        if key.replace("-", "_") in known:
            _fail([ROOT, "servers", name, "settings", str(key)],
                  "managed by mysqlrepl; set it through its own pillar key")
        if isinstance(value, bool):
            value = "ON" if value else "OFF"
        settings.append((key.replace("-", "_"), str(value)))
    return settings


def render_dropin(cfg, name):
    """The drop-in file text for server ``name``."""
    srv = cfg["servers"][name]
    lines = [
        "# Managed by Salt (mysqlrepl): do not edit, changes are overwritten.",
        f"# topology {cfg['topology']}, server {name}",
        f"[{srv['config_section']}]",
    ]
    lines += [f"{key} = {value}" for key, value in desired_settings(cfg, name)]
    return "\n".join(lines) + "\n"
