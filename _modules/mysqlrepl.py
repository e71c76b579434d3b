"""
MySQL/MariaDB replication over TLS, driven from the ``mysqlrepl`` pillar.

:depends: PyMySQL, cryptography; MariaDB client tools (mariadb-backup, mbstream)
          for seeding.

Connection settings follow saltext-mysql: each server's local admin connection
uses its pillar ``connection`` block, else ``mysql.default_file`` /
``mysql.user`` / ``mysql.pass`` from the minion config, else root over the
server's unix socket.

Most functions take ``server``: the name of a server in
``mysqlrepl:servers`` that this minion owns. It may be omitted when the minion
owns exactly one server.

SQL text lives in ``_utils/mysqlrepl_sql.py``, certificate work in
``_utils/mysqlrepl_tls.py``, pillar validation in ``_utils/mysqlrepl_config.py``.
"""

import concurrent.futures
import contextvars
import datetime
import errno
import functools
import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "mysqlrepl"

try:
    import pymysql  # noqa: F401

    HAS_PYMYSQL = True
except ImportError:
    HAS_PYMYSQL = False

try:
    import cryptography  # noqa: F401

    HAS_CRYPTOGRAPHY = True
except ImportError:
    HAS_CRYPTOGRAPHY = False


def __virtual__():
    if not HAS_PYMYSQL:
        return (False, "mysqlrepl needs PyMySQL")
    if not HAS_CRYPTOGRAPHY:
        return (False, "mysqlrepl needs cryptography")
    return __virtualname__


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _u(name):
    return __utils__[name]


def _sql(name):
    """A statement builder (lower case) or statement constant (UPPER CASE) of mysqlrepl_sql."""
    if name.isupper():
        return __utils__["mysqlrepl_sql.const"](name)
    return __utils__[f"mysqlrepl_sql.{name}"]


def _cfg():
    """Normalised pillar, validated as a whole (cached for this job)."""
    key = "mysqlrepl.cfg"
    if key not in __context__:
        raw = __pillar__.get("mysqlrepl")
        __context__[key] = _u("mysqlrepl_config.load")(raw, minion_id=__opts__["id"])
    return __context__[key]


def _server(server=None, local=True):
    cfg = _cfg()
    if server is None:
        if len(cfg["local_servers"]) != 1:
            raise SaltInvocationError(
                "name the server: this minion owns "
                + (", ".join(cfg["local_servers"]) or "no server of mysqlrepl:servers")
            )
        server = cfg["local_servers"][0]
    if server not in cfg["servers"]:
        raise SaltInvocationError(f"unknown server {server!r} (mysqlrepl:servers)")
    if local and server not in cfg["local_servers"]:
        raise SaltInvocationError(
            f"server {server} belongs to minion {cfg['servers'][server]['minion']}, not {__opts__['id']}"
        )
    return cfg["servers"][server]


def _connect(srv, connect_timeout=10):
    return _u("mysqlrepl_db.connect_local")(srv, __opts__, connect_timeout=connect_timeout)


def _run(conn, stmt):
    return _u("mysqlrepl_db.run")(conn, stmt)


def _one(conn, stmt):
    rows = _run(conn, stmt)
    return rows[0] if rows else None


def _version(conn):
    return _sql("parse_version")(_one(conn, _sql("SELECT_VERSION"))["version"])


def _variables(conn, names):
    rows = _run(conn, _sql("global_variables")(names))
    return {row["name"].lower(): row["value"] for row in rows}


def _bound(fn):
    """
    ``fn`` run in this job's loader context wherever it is called from. A
    callback handed to a util runs inside the util's call, where ``__salt__``
    and ``__utils__`` resolve to the utils loader (which has no ``__utils__``),
    or in a thread of its own, which has no loader at all. Call it here, in
    the module's function; each call runs in its own copy of the context (a
    context cannot be entered twice at once).
    """
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return ctx.copy().run(fn, *args, **kwargs)

    return run


def _fire(tag, data):
    """Progress on the master's event bus (salt/mysqlrepl/...); never fatal."""
    try:
        __salt__["event.send"](f"salt/mysqlrepl/{tag}", data)
    except Exception as exc:  # pylint: disable=broad-except
        log.debug("mysqlrepl: event %s not sent: %s", tag, exc)


def _owner_ids(srv):
    try:
        entry = pwd.getpwnam(srv["os_user"])
    except KeyError as exc:
        raise CommandExecutionError(
            f"OS user {srv['os_user']} for server {srv['name']} does not exist"
        ) from exc
    return entry.pw_uid, entry.pw_gid


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _write_file(path, text, mode=0o644, uid=None, gid=None):
    """Atomic write with the final mode and owner from the start (``mysqlrepl_tls.write_atomic``)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _u("mysqlrepl_tls.write_atomic")(path, text, mode, uid, gid)


# ---------------------------------------------------------------------------
# pillar
# ---------------------------------------------------------------------------

def settings(redacted=True):
    """
    Return the validated, normalised ``mysqlrepl`` pillar of this minion
    (passwords masked unless ``redacted=False``). Fails with the key that is wrong.

    CLI Example:

    .. code-block:: bash

        salt 'db*' mysqlrepl.settings
    """
    cfg = _cfg()
    return _u("mysqlrepl_config.redact")(cfg) if redacted else cfg


# ---------------------------------------------------------------------------
# CA and certificates (salt.modules.tls call shape, built on cryptography)
# ---------------------------------------------------------------------------

def _tls_path(cacert_path):
    return cacert_path or __salt__["config.get"]("ca.cert_base_path", "/etc/pki")


def create_ca(ca_name, bits=2048, days=365, CN="localhost", C="US", ST="Utah",
              L="Salt Lake City", O="SaltStack", OU=None, emailAddress=None,
              fixmode=False, cacert_path=None, ca_filename=None, digest="sha256",
              replace=False, **kwargs):  # pylint: disable=invalid-name,unused-argument
    """
    Create a Certificate Authority, with the arguments and file layout of
    ``tls.create_ca``: ``<cacert_path>/<ca_name>/<ca_name>_ca_cert.{crt,key}``.
    The key is 0600. A second call changes nothing and says so.

    CLI Example:

    .. code-block:: bash

        salt 'db1*' mysqlrepl.create_ca mysql days=730 CN='db1-masterdb.production.wpdn' O='W3C' OU='WebPlatform Docs' emailAddress='ops@example.org'
    """
    _changed, message = _u("mysqlrepl_tls.create_ca")(
        ca_name, bits=bits, days=days, CN=CN, C=C, ST=ST, L=L, O=O, OU=OU,
        emailAddress=emailAddress, fixmode=fixmode, cacert_path=_tls_path(cacert_path),
        ca_filename=ca_filename, digest=digest, replace=replace,
    )
    return message


def create_csr(ca_name, bits=2048, CN="localhost", C=None, ST=None, L=None, O=None,
               OU=None, emailAddress=None, subjectAltName=None, cacert_path=None,
               csr_path=None, csr_filename=None, digest="sha256", cert_type="server",
               replace=False, **kwargs):  # pylint: disable=invalid-name,unused-argument
    """
    Create a private key (0600) and a CSR, in the shape of ``tls.create_csr``
    (``<cacert_path>/<ca_name>/certs/<CN>.{csr,key}``).

    CLI Example:

    .. code-block:: bash

        salt 'db2*' mysqlrepl.create_csr mysql CN=db2 subjectAltName='IP:10.0.0.2, DNS:db2.example.org'
    """
    _changed, message = _u("mysqlrepl_tls.create_csr")(
        ca_name, bits=bits, CN=CN, C=C, ST=ST, L=L, O=O, OU=OU, emailAddress=emailAddress,
        subjectAltName=subjectAltName, cacert_path=_tls_path(cacert_path), csr_path=csr_path,
        csr_filename=csr_filename, digest=digest, cert_type=cert_type, replace=replace,
    )
    return message


def create_ca_signed_cert(ca_name, CN, days=365, cacert_path=None, ca_filename=None,
                          cert_path=None, cert_filename=None, digest="sha256",
                          cert_type="server", replace=False, **kwargs):  # pylint: disable=invalid-name,unused-argument
    """
    Sign the CSR made by ``create_csr`` with the CA, in the shape of
    ``tls.create_ca_signed_cert``. Server certificates carry serverAuth and
    clientAuth (a replica presents its certificate to its master).

    CLI Example:

    .. code-block:: bash

        salt 'db1*' mysqlrepl.create_ca_signed_cert mysql CN=db2 days=365
    """
    _changed, message = _u("mysqlrepl_tls.create_ca_signed_cert")(
        ca_name, CN, days=days, cacert_path=_tls_path(cacert_path), ca_filename=ca_filename,
        cert_path=cert_path, cert_filename=cert_filename, digest=digest, cert_type=cert_type,
        replace=replace,
    )
    return message


def csrs():
    """
    The CSRs of this minion's servers, for the Salt mine
    (``{server: {cert_id: csr_pem}}``). The CA minion signs what it finds here.

    CLI Example:

    .. code-block:: bash

        salt 'db2*' mysqlrepl.csrs
    """
    cfg = _cfg()
    out = {}
    for name in cfg["local_servers"]:
        for cert in cfg["servers"][name]["certs"]:
            pem = _read(cert["csr"])
            if pem:
                out.setdefault(name, {})[cert["id"]] = pem
    return out


def issued():
    """
    On the CA minion: the CA certificate and the certificates it issued for the
    topology, for the Salt mine (``{"ca": pem, "certs": {server: {cert_id: pem}}}``).
    Never returns a key.

    CLI Example:

    .. code-block:: bash

        salt 'db1*' mysqlrepl.issued
    """
    cfg = _cfg()
    ca = cfg["ca"]
    out = {"ca": _read(ca["cert_file"]), "certs": {}}
    for name, srv in cfg["servers"].items():
        for cert in srv["certs"]:
            pem = _read(_issued_path(cfg, name, cert["id"]))
            if pem:
                out["certs"].setdefault(name, {})[cert["id"]] = pem
    return out


def _issued_path(cfg, server, cert_id):
    return os.path.join(cfg["ca"]["dir"], "issued", f"{cfg['topology']}-{server}-{cert_id}.crt")


def _cert_wanted(cfg, cert, info):
    """Why an existing certificate does not fit (None when it does): ``mysqlrepl_tls.cert_unfit``."""
    return _u("mysqlrepl_tls.cert_unfit")(cert, info, cfg["tls"]["renew_days"], cfg["tls"]["cert_days"])


def _csr_fits(cert, csr_pem, key_fp=None):
    return _u("mysqlrepl_tls.csr_fits")(cert, csr_pem, key_fp)


def _cert_problem(cfg, cert, pem, key_fp, ca_pem):
    return _u("mysqlrepl_tls.cert_problem")(cert, pem, key_fp, ca_pem, cfg["tls"]["renew_days"],
                                            cfg["tls"]["cert_days"])


def sign_pending(test=False):
    """
    On the CA minion: sign the CSRs the topology's servers published to the mine
    when they match pillar (subject and subjectAltName exactly as pillar says
    for that server), and re-issue certificates close to expiry. Publishes the
    result with ``mine.send mysqlrepl.issued``. Returns what was (or, with
    ``test=True``, would be) signed, and what is still missing.

    CLI Example:

    .. code-block:: bash

        salt 'db1*' mysqlrepl.sign_pending
    """
    cfg = _cfg()
    ca = cfg["ca"]
    if cfg["ca"]["minion"] != __opts__["id"]:
        raise CommandExecutionError(f"the CA lives on minion {ca['minion']}, not {__opts__['id']}")
    if not os.path.exists(ca["key_file"]):
        raise CommandExecutionError(f"no CA key at {ca['key_file']}: create the CA first")
    tls = lambda fn: _u(f"mysqlrepl_tls.{fn}")  # noqa: E731
    minions = sorted({srv["minion"] for srv in cfg["servers"].values()})
    mine = __salt__["mine.get"](",".join(minions), "mysqlrepl.csrs", tgt_type="list") or {}
    result = {"signed": [], "missing": [], "refused": []}
    for name, srv in sorted(cfg["servers"].items()):
        published = (mine.get(srv["minion"]) or {}).get(name) or {}
        for cert in srv["certs"]:
            label = f"{name}/{cert['id']}"
            csr_pem = published.get(cert["id"])
            if not csr_pem:
                result["missing"].append(label)
                continue
            try:
                csr = tls("csr_info")(csr_pem)
                fits = _csr_fits(cert, csr_pem)
            except CommandExecutionError as exc:
                result["refused"].append(f"{label}: {exc}")
                continue
            if not fits:
                result["refused"].append(
                    f"{label}: CSR asks for {csr['subject_str']} / {', '.join(csr['san'])}, pillar says "
                    f"{tls('subject_string')(cert['cn'], cert['subject'])} / {', '.join(cert['san'])}"
                )
                continue
            path = _issued_path(cfg, name, cert["id"])
            current = _read(path)
            if current:
                info = tls("cert_info")(current)
                if (info["public_key_sha256"] == csr["public_key_sha256"]
                        and _cert_wanted(cfg, cert, info) is None):
                    continue
            result["signed"].append(label)
            if test:
                continue
            pem = tls("sign_csr")(csr_pem, ca["cert_file"], ca["key_file"],
                                  days=cfg["tls"]["cert_days"], digest=ca["digest"],
                                  usage=cert["usage"])
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            _write_file(path, pem, mode=0o644)
    if not test:
        published_now = (__salt__["mine.get"](__opts__["id"], "mysqlrepl.issued") or {}).get(__opts__["id"])
        if result["signed"] or published_now != issued():
            __salt__["mine.send"]("mysqlrepl.issued")
    return result


def tls_check(server=None):
    """
    Compare the server's key, CSR, certificate and CA file with what pillar
    asks; returns a list of ``(item, problem)`` pairs (empty when all is well).

    CLI Example:

    .. code-block:: bash

        salt 'db2*' mysqlrepl.tls_check
    """
    srv = _server(server)
    return [list(p) for p in _tls_problems(_cfg(), srv, _ca_from_mine(_cfg()))]


def _ca_from_mine(cfg):
    minion = cfg["ca"]["minion"]
    data = (__salt__["mine.get"](minion, "mysqlrepl.issued") or {}).get(minion) or {}
    return data


def _key_problem(status, srv):
    return _u("mysqlrepl_tls.key_problem")(status, srv["os_user"])


def _tls_problems(cfg, srv, published):
    tls = lambda fn: _u(f"mysqlrepl_tls.{fn}")  # noqa: E731
    uid, gid = _owner_ids(srv)
    problems = []
    ca_pem = published.get("ca")
    installed_ca = _read(srv["tls_files"]["ca"])
    if not ca_pem:
        problems.append(("ca", f"waiting for the CA certificate from minion {cfg['ca']['minion']} "
                               "(mine mysqlrepl.issued is empty: apply mysqlrepl.ca there)"))
    elif installed_ca != ca_pem:
        problems.append(("ca", "CA certificate " + ("missing" if installed_ca is None else "differs")))
    for cert in srv["certs"]:
        status = tls("key_status")(cert["key"], uid=uid, gid=gid)
        if not status["exists"]:
            problems.append((f"{cert['id']}.key", "missing"))
            continue
        why = _key_problem(status, srv)
        if why:
            problems.append((f"{cert['id']}.key", why))
        csr_pem = _read(cert["csr"])
        key_fp = tls("key_public_sha256")(cert["key"])
        if not csr_pem:
            problems.append((f"{cert['id']}.csr", "missing"))
        elif not _csr_fits(cert, csr_pem, key_fp):
            problems.append((f"{cert['id']}.csr", "does not match pillar or key"))
        cert_pem = _read(cert["cert"])
        if not cert_pem:
            problems.append((f"{cert['id']}.crt", "missing"))
            continue
        why = _cert_problem(cfg, cert, cert_pem, key_fp, ca_pem or installed_ca)
        if why:
            problems.append((f"{cert['id']}.crt", why))
    return problems


def csr_apply(server=None):
    """
    First half of the server's TLS files: its private key (0600, owned by the
    server's OS user, made here and never sent anywhere) and a CSR for the names
    pillar gives, published to the mine (``mysqlrepl.csrs``) for the CA minion.
    Returns the changes made.

    CLI Example:

    .. code-block:: bash

        salt 'db2*' mysqlrepl.csr_apply
    """
    cfg = _cfg()
    srv = _server(server)
    tls = lambda fn: _u(f"mysqlrepl_tls.{fn}")  # noqa: E731
    uid, gid = _owner_ids(srv)
    changes = {}
    if not os.path.isdir(srv["tls_dir"]):
        changes["tls_dir"] = srv["tls_dir"]
    os.makedirs(srv["tls_dir"], mode=0o750, exist_ok=True)
    os.chown(srv["tls_dir"], 0, gid)
    os.chmod(srv["tls_dir"], 0o750)
    for cert in srv["certs"]:
        before = tls("key_status")(cert["key"], uid=uid, gid=gid)
        if tls("create_private_key")(cert["key"], bits=cfg["tls"]["bits"], uid=uid, gid=gid):
            changes[f"{cert['id']}.key"] = (f"fixed: {_key_problem(before, srv)}" if before["exists"]
                                            else "created (0600)")
        csr_pem = _read(cert["csr"])
        if csr_pem and _csr_fits(cert, csr_pem, tls("key_public_sha256")(cert["key"])):
            continue
        pem = tls("build_csr")(cert["key"], cert["cn"], cert["subject"], san=cert["san"],
                               digest=cfg["ca"]["digest"])
        _write_file(cert["csr"], pem, mode=0o644)
        changes[f"{cert['id']}.csr"] = "written"
    published = (__salt__["mine.get"](__opts__["id"], "mysqlrepl.csrs") or {}).get(__opts__["id"]) or {}
    if published.get(srv["name"]) != csrs().get(srv["name"]):
        __salt__["mine.send"]("mysqlrepl.csrs")
        changes.setdefault("csr_published", "mine mysqlrepl.csrs")
    return changes


def cert_apply(server=None):
    """
    Second half of the server's TLS files: the CA certificate and the server's
    signed certificate(s), taken from the CA minion's mine data once it signed
    the current CSR. Returns ``{"changes": {...}, "waiting": [...], "pending":
    [...]}``; ``waiting`` names what only the CA minion can provide and the
    server cannot do without; ``pending``, a renewal the CA has not signed yet
    while the current certificate is still valid. Reloads the files of
    a running TLS server with ``FLUSH NO_WRITE_TO_BINLOG SSL`` when they changed.

    CLI Example:

    .. code-block:: bash

        salt 'db2*' mysqlrepl.cert_apply
    """
    cfg = _cfg()
    srv = _server(server)
    tls = lambda fn: _u(f"mysqlrepl_tls.{fn}")  # noqa: E731
    changes = {}
    waiting, pending = [], []
    published = _ca_from_mine(cfg)
    reload_needed = False
    ca_pem = published.get("ca")
    if not ca_pem:
        waiting.append(f"CA certificate from minion {cfg['ca']['minion']} (apply mysqlrepl.ca there, "
                       "or run the mysqlrepl.orch.setup orchestration)")
    elif _read(srv["tls_files"]["ca"]) != ca_pem:
        _write_file(srv["tls_files"]["ca"], ca_pem, mode=0o644)
        changes["ca.crt"] = "installed"
        reload_needed = True
    for cert in srv["certs"]:
        if not os.path.exists(cert["key"]):
            waiting.append(f"{cert['id']} key (apply mysqlrepl.csr first)")
            continue
        key_fp = tls("key_public_sha256")(cert["key"])
        current = _read(cert["cert"])
        if current and _cert_problem(cfg, cert, current, key_fp, ca_pem) is None:
            continue
        offered = ((published.get("certs") or {}).get(srv["name"]) or {}).get(cert["id"])
        if not offered or _cert_problem(cfg, cert, offered, key_fp, ca_pem) is not None:
            why = (f"{cert['id']} certificate: CA minion {cfg['ca']['minion']} has not signed "
                   "the current CSR yet (apply mysqlrepl.ca there, or run the "
                   "mysqlrepl.orch.setup orchestration)")
            # only due for renewal (still valid, fits, signed by the CA): the server keeps it
            # meanwhile, and the states that need TLS go on
            valid = current and _u("mysqlrepl_tls.cert_problem")(cert, current, key_fp, ca_pem, 0) is None
            (pending if valid else waiting).append(why)
            continue
        _write_file(cert["cert"], offered, mode=0o644)
        changes[f"{cert['id']}.crt"] = "installed"
        reload_needed = True
    if reload_needed:
        _flush_ssl_if_running(srv)
    return {"changes": changes, "waiting": waiting, "pending": pending}


def _flush_ssl_if_running(srv):
    """Reload rotated certificate files live when TLS is already on."""
    try:
        conn = _connect(srv, connect_timeout=3)
    except CommandExecutionError:
        return False
    with _u("mysqlrepl_db.closing")(conn):
        have = _variables(conn, ["have_ssl"]).get("have_ssl")
        if have == "YES":
            _run(conn, _sql("FLUSH_SSL"))
            return True
    return False


# ---------------------------------------------------------------------------
# server settings
# ---------------------------------------------------------------------------

def config_check(server=None):
    """
    Compare the server's config drop-in and live variables with pillar.
    Returns ``{"file": diff or None, "live": {var: [live, want]}, "restart":
    [vars needing a restart], "running": bool}``. Changes nothing.

    CLI Example:

    .. code-block:: bash

        salt 'db2*' mysqlrepl.config_check
    """
    cfg = _cfg()
    srv = _server(server)
    return _config_plan(cfg, srv)


def _config_plan(cfg, srv):
    """Read the drop-in and the live variables; ``mysqlrepl_settings.compare`` decides."""
    desired = _u("mysqlrepl_config.desired_settings")(cfg, srv["name"])
    wanted_text = _u("mysqlrepl_config.render_dropin")(cfg, srv["name"])
    current_text = _read(srv["config_file"])
    try:
        conn = _connect(srv, connect_timeout=5)
    except CommandExecutionError as exc:
        return {"file": None if current_text == wanted_text else ("missing" if current_text is None else "differs"),
                "live": {}, "restart": [], "running": False, "error": str(exc)}
    names = [k for k, _ in desired]
    with _u("mysqlrepl_db.closing")(conn):
        version = _version(conn)
        live = _variables(conn, names + ["log_bin_basename", "relay_log_basename"])
        ro_stmt = _sql("variable_is_read_only")(version, names)
        static = {r["name"].lower() for r in _run(conn, ro_stmt) if r["read_only"] == "YES"} if ro_stmt else None
        plugin_active = True
        if version.is_mariadb:
            # the switch's precheck reads LOCK TABLES / FTWRL / BACKUP STAGE holders from it
            row = _one(conn, _sql("METADATA_LOCK_PLUGIN"))
            plugin_active = bool(row) and row["status"] == "ACTIVE"
        writable_replica = (_variables(conn, ["read_only"]).get("read_only") == "OFF"
                            and _replica_status(conn, version) is not None)
    plan = _u("mysqlrepl_settings.compare")(desired, live, static, current_text, wanted_text, plugin_active)
    if writable_replica and "gtid_domain_id" in plan["live"]:
        # a master of a two-master pair that pillar no longer names one (salt-run
        # mysqlrepl.unpair not run yet): changing its domain while both take writes would
        # put both masters' transactions in one domain; the file changes, the live value waits
        have, want = plan["live"].pop("gtid_domain_id")
        plan["held"] = {"gtid_domain_id": f"gtid_domain_id stays {have} (pillar: {want}) while {srv['name']} is "
                                          "writable and replicates (a two-master pair: salt-run mysqlrepl.unpair "
                                          "first)"}
    return plan


def config_apply(server=None, test=False):
    """
    Write the config drop-in, set dynamic variables live and restart the server
    when a static one differs and pillar allows it (``restart_allowed``).
    Returns ``{"changes": {...}, "comment": str, "result": bool}``.

    CLI Example:

    .. code-block:: bash

        salt 'db2*' mysqlrepl.config_apply test=True
    """
    cfg = _cfg()
    srv = _server(server)
    plan = _config_plan(cfg, srv)
    decision = _u("mysqlrepl_settings.decide")(srv["name"], plan, srv["restart_allowed"], srv["config_file"],
                                                test=test)
    changes, notes = decision["changes"], []
    for step in decision["steps"]:
        kind = step[0]
        if kind == "set_live":
            set_value = _u("mysqlrepl_settings.set_value")
            conn = _connect(srv)
            with _u("mysqlrepl_db.closing")(conn):
                for key, want in step[1].items():
                    try:
                        _run(conn, _sql("set_global")(key, set_value(want)))
                    except CommandExecutionError as exc:
                        raise CommandExecutionError(f"SET GLOBAL {key}: {exc}") from exc
                if set(step[1]) & set(_SESSION_SETTINGS):
                    # sessions older than this one keep the old values: remember where they end
                    _write_session_mark(srv, conn)
                if "rpl_semi_sync_slave_enabled" in step[1]:
                    # a running IO thread only picks the setting up when it reconnects
                    version = _version(conn)
                    rs = _replica_status(conn, version)
                    if rs is not None and rs["io_running"] == "Yes":
                        for stmt in _sql("restart_io_thread")(version):
                            _run(conn, stmt)
                        notes.append("replication IO thread restarted for semi-sync")
        elif kind == "install_plugins":
            conn = _connect(srv)
            with _u("mysqlrepl_db.closing")(conn):
                _run(conn, _sql("SESSION_NO_BINLOG"))
                try:
                    _run(conn, _sql("INSTALL_METADATA_LOCK_PLUGIN"))
                except CommandExecutionError as exc:
                    raise CommandExecutionError(f"INSTALL SONAME 'metadata_lock_info': {exc}") from exc
        elif kind == "write_file":
            _write_file(srv["config_file"], _u("mysqlrepl_config.render_dropin")(cfg, srv["name"]), mode=0o644)
        elif kind == "restart":
            _restart(srv)
            notes.append("restarted")
            after = _config_plan(cfg, srv)
            if after["restart"] or after["live"]:
                return {"result": False, "changes": changes,
                        "comment": f"after restart still different: {after['live']}"}
        elif kind == "check_tls":
            conn = _connect(srv)
            with _u("mysqlrepl_db.closing")(conn):
                have_ssl = _variables(conn, ["have_ssl"]).get("have_ssl")
            if have_ssl != "YES":
                return {"result": False, "changes": changes,
                        "comment": f"TLS is not active on {srv['name']} (have_ssl={have_ssl}); "
                                   "check the server's error log for the certificate files"}
    comment = decision["comment"]
    if notes and decision["result"] is True and changes:
        comment = "; ".join(notes)
    if plan.get("held"):
        comment = "; ".join([comment] + list(plan["held"].values()))
    return {"result": decision["result"], "changes": changes, "comment": comment}


def _restart(srv):
    """Restart through the minion's service provider and wait until it answers."""
    if not __salt__["service.restart"](srv["service"]):
        raise CommandExecutionError(f"service.restart {srv['service']} failed for server {srv['name']}")
    _wait_up(srv)


def _wait_up(srv, timeout=60):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            conn = _connect(srv, connect_timeout=3)
            conn.close()
            return
        except CommandExecutionError as exc:
            last = exc
            time.sleep(0.2)
    raise CommandExecutionError(f"server {srv['name']} did not come back within {timeout}s: {last}")


# ---------------------------------------------------------------------------
# accounts
# ---------------------------------------------------------------------------

def _want_subject(cfg):
    """(subject, issuer) the replication account requires in ``subject`` mode."""
    if cfg["replication"]["require"] != "subject":
        return None, None
    any_srv = next(iter(cfg["servers"].values()))
    cert = any_srv["certs"][-1]
    return _u("mysqlrepl_tls.subject_string")(cert["cn"], cert["subject"]), None


def users_check(server=None):
    """
    Compare the replication account (and anonymous accounts) with pillar.
    Returns a dict of differences; empty when nothing would change.

    CLI Example:

    .. code-block:: bash

        salt 'db2*' mysqlrepl.users_check
    """
    cfg = _cfg()
    srv = _server(server)
    conn = _connect(srv)
    with _u("mysqlrepl_db.closing")(conn):
        return _users_plan(cfg, conn)


def _users_plan(cfg, conn):
    """Read the accounts; ``mysqlrepl_accounts.plan`` says what differs from pillar."""
    repl, admin = cfg["replication"], cfg["admin"]
    version = _version(conn)

    def account(user, host):
        row = _one(conn, _sql("select_account")(user, host))
        grants = _run(conn, _sql("show_grants")(user, host)) if row is not None else []
        return row, grants

    facts = {"is_mariadb": version.is_mariadb}
    facts["repl"], facts["repl_grants"] = account(repl["user"], repl["host"])
    if admin.get("password"):
        facts["admin"], facts["admin_grants"] = account(admin["user"], admin["host"])
    facts["anonymous"] = _run(conn, _sql("SELECT_ANONYMOUS"))
    subject, _issuer = _want_subject(cfg)
    return _u("mysqlrepl_accounts.plan")(cfg, facts, _sql("native_password_hash"),
                                         _sql("expected_ssl_type")(repl["require"]), subject=subject)


def users_apply(server=None, test=False):
    """
    Create or fix the replication account on this server (every server: any of
    them may become master) and drop anonymous accounts. Runs with
    ``sql_log_bin=0``: accounts are per server, never replicated, and no local
    GTID is minted. The password goes as a client-side hash.

    CLI Example:

    .. code-block:: bash

        salt 'db*' mysqlrepl.users_apply
    """
    cfg = _cfg()
    srv = _server(server)
    repl = cfg["replication"]
    conn = _connect(srv)
    with _u("mysqlrepl_db.closing")(conn):
        plan = _users_plan(cfg, conn)
        if test or not plan:
            return plan
        version = _version(conn)
        _run(conn, _sql("SESSION_NO_BINLOG"))
        _run(conn, _sql("SESSION_NO_GENERAL_LOG"))
        if _u("mysqlrepl_accounts.recreate_replication_account")(plan):
            subject, issuer = _want_subject(cfg)
            for stmt in _sql("create_replication_user")(version, repl["user"], repl["host"],
                                                       repl["password"], repl["require"],
                                                       subject=subject, issuer=issuer):
                _run(conn, stmt)
        if "admin" in plan:
            admin = cfg["admin"]
            for stmt in _sql("create_admin_user")(version, admin["user"], admin["host"], admin["password"]):
                _run(conn, stmt)
        for row in _run(conn, _sql("SELECT_ANONYMOUS")):
            _run(conn, _sql("drop_user")("", row["host"]))
    return plan


# ---------------------------------------------------------------------------
# replication
# ---------------------------------------------------------------------------

def _replica_status(conn, version=None):
    version = version or _version(conn)
    row = _one(conn, _sql("show_replica_status")(version))
    return _sql("normalize_replica_status")(row)


def _for_each(servers, fun):
    """
    ``fun(name)`` for several servers of this minion in one Salt job (the
    runners group their reads per minion): ``{name: result}``, or
    ``{name: {"error": text}}`` for a server that failed.
    """
    if isinstance(servers, str):
        servers = [s.strip() for s in servers.split(",") if s.strip()]
    out = {}
    for name in servers:
        try:
            out[name] = fun(name)
        except (CommandExecutionError, SaltInvocationError) as exc:
            out[name] = {"error": str(exc)}
        except Exception as exc:  # pylint: disable=broad-except
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def status(server=None, servers=None):
    """
    Replication status of a server: version, read_only, GTID positions, TLS,
    replica threads and errors, and (on a master) the cipher of every Binlog
    Dump thread. ``servers=[...]``: several of this minion's servers at once,
    ``{name: status or {"error": text}}``.

    CLI Example:

    .. code-block:: bash

        salt 'db*' mysqlrepl.status
        salt 'db-host1' mysqlrepl.status servers='[db1, db2]'
    """
    if servers is not None:
        return _for_each(servers, status)
    srv = _server(server)
    conn = _connect(srv)
    with _u("mysqlrepl_db.closing")(conn):
        version = _version(conn)
        variables = _variables(conn, ["read_only", "have_ssl", "server_id", "log_bin",
                                      "log_slave_updates", "gtid_domain_id"])
        gtid = _one(conn, _sql("gtid_state")(version))
        replica = _replica_status(conn, version)
        dumps = []
        try:
            dumps = _run(conn, _sql("BINLOG_DUMP_CIPHERS"))
        except CommandExecutionError:
            pass
    out = {
        "server": srv["name"],
        "version": list(version),
        "variables": variables,
        "gtid": gtid,
        "replica": replica,
        "binlog_dumps": dumps,
    }
    cfg = _cfg()
    if any(srv["name"] in (t["near"], t["peer"]) for t in cfg.get("tunnels") or ()):
        out["tunnels"] = tunnel_status(srv["name"])
    return out


def _cert_expiry(cfg, srv):
    """
    When the server's certificates end: ``server`` is the one it presents now,
    read over a verified TLS connection to it (``Ssl_server_not_after`` is empty
    on the socket): a renewed file counts once FLUSH SSL loaded it;
    ``replication`` is the client certificate its link presents (read from its
    file at each connect). ``{what: {"not_after": iso} or {"error": text}}``.
    """
    out = {}
    try:
        conn = _u("mysqlrepl_db.connect_tls")(
            srv["address"], srv["port"], cfg["replication"]["user"], cfg["replication"]["password"],
            srv["tls_files"]["ca"], srv["replication_cert"]["cert"], srv["replication_cert"]["key"],
            connect_timeout=5, verify_identity=cfg["tls"]["verify_server_cert"], read_timeout=5)
        with _u("mysqlrepl_db.closing")(conn):
            row = _one(conn, _sql("SSL_SERVER_NOT_AFTER"))
        live = row["Value"] if row else None
        iso = _u("mysqlrepl_health.openssl_time")(live)
        out["server"] = {"not_after": iso} if iso else {"error": "the server presents no certificate"}
    except (CommandExecutionError, ValueError) as exc:
        out["server"] = {"error": str(exc)}
    path = srv["replication_cert"]["cert"]
    pem = _read(path)
    if pem is None:
        out["replication"] = {"error": f"{path} is missing"}
    else:
        try:
            out["replication"] = {"not_after": _u("mysqlrepl_tls.cert_info")(pem)["not_after"]}
        except Exception as exc:  # pylint: disable=broad-except
            out["replication"] = {"error": f"{path}: {exc}"}
    return out


def health_facts():
    """
    What ``salt-run mysqlrepl.health`` reads from this minion in one job: what
    the runner needs of the topology's settings (``mysqlrepl_health.view``:
    servers, roles, tunnel routes, thresholds; no secrets) and the ``status`` of
    each of this minion's servers (``{"error": text}`` for one that cannot be
    read), with the certificates' expiry.

    CLI Example:

    .. code-block:: bash

        salt 'db*' mysqlrepl.health_facts
    """
    cfg = _cfg()
    answers = status(servers=sorted(cfg["local_servers"]))
    for name, answer in answers.items():
        if "error" not in answer:
            answer["certs"] = _cert_expiry(cfg, cfg["servers"][name])
    return {"settings": _u("mysqlrepl_health.view")(cfg), "servers": answers}


def beacon_check(previous=None, lag_s=None, gtid_behind=None, cert_days=None):
    """
    One interval of the mysqlrepl beacon (``_beacons/mysqlrepl.py``): this
    minion's servers read and judged by the health rules, compared with
    ``previous`` (what the last interval returned as ``current``). Returns
    ``{"events": [...], "current": {...}}``: an event per fault that appeared
    (``tag`` = its kind) or went away (``<kind>/cleared``). Thresholds: pillar
    ``mysqlrepl:health``, overridden by the arguments.

    CLI Example:

    .. code-block:: bash

        salt 'db*' mysqlrepl.beacon_check lag_s=10
    """
    if not __pillar__.get("mysqlrepl"):
        return {"events": [], "current": {}}  # not a db minion of any topology
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        facts = health_facts()
        cfg = facts["settings"]
        limits = dict(cfg.get("health") or {})
        limits.update({k: v for k, v in (("lag_s", lag_s), ("gtid_behind", gtid_behind), ("cert_days", cert_days))
                       if v is not None})
        problems = _u("mysqlrepl_health.local_problems")(cfg, facts["servers"], now,
                                                          _u("mysqlrepl_replication.server_at"), limits)
    except (CommandExecutionError, SaltInvocationError) as exc:
        problems = [{"server": __opts__["id"], "kind": "check_failed", "detail": f"cannot check: {exc}"}]
    events, current = _u("mysqlrepl_health.beacon_events")(previous or {}, problems)
    return {"events": events, "current": current}


def gtid_position(server=None):
    """
    ``@@gtid_binlog_pos`` of a server.

    CLI Example:

    .. code-block:: bash

        salt 'db1*' mysqlrepl.gtid_position
    """
    srv = _server(server)
    conn = _connect(srv)
    with _u("mysqlrepl_db.closing")(conn):
        return _one(conn, _sql("gtid_position")(_version(conn)))["pos"]


def wait_for_gtid(pos, server=None, timeout=60):
    """
    Wait until the replica has applied GTID position ``pos`` (MASTER_GTID_WAIT).
    Raises with the replication error when the replica stops or times out.

    CLI Example:

    .. code-block:: bash

        salt 'db2*' mysqlrepl.wait_for_gtid 0-11-42 timeout=30
    """
    srv = _server(server)
    conn = _connect(srv)
    with _u("mysqlrepl_db.closing")(conn):
        started = time.monotonic()
        res = _one(conn, _sql("master_gtid_wait")(_version(conn), pos, timeout))["result"]
        if int(res) != 0:
            rs = _replica_status(conn) or {}
            raise CommandExecutionError(
                f"{srv['name']} did not reach {pos} within {timeout}s; "
                f"IO: {rs.get('io_running')} {rs.get('last_io_error')!s}; "
                f"SQL: {rs.get('sql_running')} {rs.get('last_sql_error')!s}"
            )
        return {"server": srv["name"], "pos": pos, "seconds": round(time.monotonic() - started, 3)}


def _topology_conflict(cfg, srv, rs, repoint_from=None):
    """The refusal text when the live topology differs from pillar (``mysqlrepl_replication``)."""
    return _u("mysqlrepl_replication.topology_conflict")(cfg, srv, rs, repoint_from=repoint_from)


def replication_check(server=None):
    """
    What ``replication_apply`` would change on this server. Changes nothing.

    CLI Example:

    .. code-block:: bash

        salt 'db2*' mysqlrepl.replication_check
    """
    return replication_apply(server, test=True)


def replication_apply(server=None, test=False, seeded=False, master=None, demote=False,
                      repoint_from=None, switch_jid=None, demote_at=None):
    """
    Make the server's replication role match pillar.

    * The master of record: not replicating from anyone, writable at runtime
      (``read_only`` stays ON in its config file so a restart comes back
      read-only). A highstate makes it writable only if a fresh pillar's
      record still names it and every other server answers that it is
      read-only.
    * A replica: read-only, replicating from the master with MASTER_SSL=1, the
      topology CA, its own certificate, MASTER_SSL_VERIFY_SERVER_CERT and GTID;
      only what differs is changed; waits until both threads run. A replica with
      no replication configured and no GTID position was never seeded: it is
      not touched (seed it with ``salt-run mysqlrepl.seed``).

    When the live topology differs from pillar it refuses and says why.
    ``seeded=True`` (used by ``seed_receive``) skips the never-seeded check for a
    replica restored from a master that had no GTID yet.

    The switch (``salt-run mysqlrepl.switch``) passes the new ``master``, its
    ``switch_jid``, ``repoint_from`` (the old master: replicas of it may be
    repointed) and ``demote=True`` for the old master (``CHANGE MASTER ...
    MASTER_DEMOTE_TO_SLAVE=1``: it keeps its own GTIDs). Otherwise, while the
    master record shows a switch in progress, nothing is changed, and a
    server that is writable and not replicating is never turned into a
    replica here: only the switch demotes a master.
    Returns ``{"result", "changes", "comment"}``.

    CLI Example:

    .. code-block:: bash

        salt 'db2*' mysqlrepl.replication_apply test=True
    """
    cfg = _cfg()
    if master is not None:
        if master not in cfg["servers"]:
            raise SaltInvocationError(f"unknown server {master!r}")
        cfg = dict(cfg, master=master)
    refusal = _u("mysqlrepl_replication.switching_refusal")(cfg.get("switching"), switch_jid)
    if refusal:
        return {"result": False, "changes": {}, "comment": refusal}
    srv = _server(server)
    conn = _connect(srv)
    with _u("mysqlrepl_db.closing")(conn):
        version = _version(conn)
        facts = _variables(conn, ["read_only", "gtid_slave_pos", "gtid_binlog_pos", "gtid_binlog_state",
                                  "gtid_current_pos"])
        facts["rs"] = rs = _replica_status(conn, version)
        guard = None
        rules = lambda fn: _u(f"mysqlrepl_replication.{fn}")  # noqa: E731
        pair = rules("is_pair_master")(cfg, srv["name"])
        if (rules("needs_master_guard")(cfg, srv, facts["read_only"], switch_jid)
                and not _topology_conflict(cfg, srv, rs)):
            # a highstate about to make a master writable: the record must still name
            # it (one master), and no other server (of a pair: outside it) may be writable
            stale = None if pair else _record_moved(srv["name"])
            writable, unknown = ([], []) if stale else _peers_read_only(
                cfg, srv, rules("guarded_peers")(cfg, srv["name"]))
            guard = {"stale": stale, "writable": writable, "unknown": unknown}
        if pair and (rs is None or facts["read_only"] != "OFF"):
            facts["stale_sessions"] = _stale_sessions(cfg, srv, conn)
        if pair and rs is None:
            # rule 9: has the other master replicated from this one, and from where to start
            peer = rules("source_of")(cfg, srv["name"])
            try:
                if not version.is_mariadb:
                    raise CommandExecutionError("two-master pairs need MariaDB's GTID domains")
                peer_pos = _master_position(cfg, peer, srv, connect_timeout=5, read_timeout=10)
            except CommandExecutionError as exc:
                return {"result": False, "changes": {},
                        "comment": f"cannot read {peer}'s position to link {srv['name']} to it: {exc}"}
            facts["peer_replicates"] = _replica_connected(conn, version, cfg["servers"][peer]["server_id"])
            facts["pair_position"] = rules("pair_position")(srv["gtid_domain_id"], facts.get("gtid_current_pos"),
                                                            peer_pos)
        if srv["name"] != cfg["master"] or pair:
            parse = _u("mysqlrepl_switch.parse_gtid_list")
            own = [k for k in parse(facts.get("gtid_binlog_state")) if k[1] == srv["server_id"]]
            facts["was_master"] = bool(
                rs is None and version.is_mariadb and own
                and not _u("mysqlrepl_switch.position_reached")(facts.get("gtid_slave_pos"),
                                                               facts.get("gtid_binlog_pos")))
            facts["wrote_past"] = (demote_at is not None
                                   and parse(facts.get("gtid_binlog_pos")) != parse(demote_at))
            facts["enabled_events"] = [e for e in _run(conn, _sql("EVENTS")) if e["status"] == "ENABLED"]
            facts["heartbeat"] = None
            facts["password_stale"] = None
            if rs is not None:
                hb_row = _run(conn, _sql("SLAVE_HEARTBEAT_PERIOD"))
                facts["heartbeat"] = float(hb_row[0]["Value"]) if hb_row else None
                facts["password_stale"] = _link_password_stale(srv, cfg["replication"]["password"])
        plan = _u("mysqlrepl_replication.plan")(
            cfg, srv, facts, test=test, seeded=seeded, demote=demote, demote_at=demote_at,
            repoint_from=repoint_from, switch_jid=switch_jid, guard=guard)
        ret = {k: plan[k] for k in ("result", "changes", "comment")}
        for action in plan["actions"]:
            kind = action[0]
            if kind == "read_only":
                _run(conn, _sql("set_read_only")(action[1]))
            elif kind == "disable_events":
                _run(conn, _sql("SESSION_NO_BINLOG"))
                for event in action[1]:
                    _run(conn, _sql("alter_event")(event["db"], event["name"], False))
            elif kind == "stop":
                _run(conn, _sql("stop_replica")(version))
            elif kind == "change_master":
                want = action[1]["want"]
                _run(conn, _sql("SESSION_NO_GENERAL_LOG"))
                _run(conn, _sql("change_master")(
                    version, want["host"], want["port"], want["user"], want["ssl_ca"],
                    want["ssl_cert"], want["ssl_key"],
                    verify_server_cert=cfg["tls"]["verify_server_cert"],
                    connect_retry=cfg["replication"]["connect_retry"],
                    heartbeat_period=cfg["replication"]["heartbeat_period"],
                    demote=action[1]["demote"],
                ))
            elif kind == "password":
                _run(conn, _sql("SESSION_NO_GENERAL_LOG"))
                _run(conn, _sql("change_master_password")(version, cfg["replication"]["password"],
                                                          cfg["replication"]["heartbeat_period"]))
            elif kind == "slave_pos":
                _run(conn, _sql("set_gtid_slave_pos")(action[1]))
            elif kind == "await_replica":
                if not _await_replica(conn, version, action[1], cfg["replication"]["wait_timeout"]):
                    return {"result": False,
                            "changes": {k: v for k, v in ret["changes"].items() if k != "read_only"},
                            "comment": (f"{srv['name']} stays read-only: the other master (server_id "
                                        f"{action[1]}) does not replicate from it after "
                                        f"{cfg['replication']['wait_timeout']} s; run the highstate there")}
            elif kind == "start":
                _run(conn, _sql("start_replica")(version))
                ok, rs = _wait_threads(conn, version, cfg["replication"]["wait_timeout"])
                if not ok:
                    return {"result": False, "changes": ret["changes"],
                            "comment": f"replication does not run: {_threads_text(rs)}"}
        return ret


def _reach(cfg, srv, to):
    """``(host, port)`` at which ``srv``'s host reaches server ``to``: its address, or the
    name of ``to`` through the SSH tunnel joining them (``mysqlrepl_tunnel.reach``)."""
    where = _u("mysqlrepl_tunnel.reach")(cfg, srv["name"], to)
    return where["host"], where["port"]


def _replica_connected(conn, version, server_id):
    """Is the server with ``server_id`` connected as a replica of ``conn``'s server?"""
    rows = _run(conn, _sql("replica_hosts")(version))
    return any(int({k.lower(): v for k, v in r.items()}.get("server_id") or 0) == int(server_id) for r in rows)


def _await_replica(conn, version, server_id, timeout):
    """Wait until the server with ``server_id`` is connected as a replica of ``conn``'s."""
    deadline = time.monotonic() + timeout
    while True:
        if _replica_connected(conn, version, server_id):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


_SESSION_SETTINGS = ("auto_increment_increment", "auto_increment_offset", "gtid_domain_id")


def _session_mark_path(srv):
    return os.path.join(__opts__["cachedir"], "mysqlrepl", f"{srv['name']}.session-settings.json")


def _write_session_mark(srv, conn):
    mark = {"conn_id": int(_one(conn, _sql("CONNECTION_ID"))["id"]),
            "started": float(_one(conn, _sql("SERVER_STARTED"))["started"])}
    _write_file(_session_mark_path(srv), json.dumps(mark), mode=0o600)


def _stale_sessions(cfg, srv, conn):
    """Client sessions opened before the pair's settings were set live on this server (they
    keep the old auto_increment_* / gtid_domain_id): ``["id user@host", ...]``."""
    try:
        mark = json.loads(_read(_session_mark_path(srv)) or "null")
    except ValueError:
        mark = None
    if not mark:
        return []  # never changed live: every session has the drop-in's values
    started = float(_one(conn, _sql("SERVER_STARTED"))["started"])
    if abs(started - float(mark.get("started", 0))) > 5:
        return []  # restarted since: every session is newer
    return [f"{r['id']} {r['user']}@{r['host']}"
            for r in _run(conn, _sql("client_sessions_before")(
                mark["conn_id"], (cfg["replication"]["user"], cfg["admin"]["user"])))]


def _peers_read_only(cfg, srv, names):
    """
    Ask servers ``names`` ``@@read_only`` (over verified TLS as the replication
    account, with this server's certificate, as its links do, through a tunnel
    where one joins them; reading a variable needs no privilege). Returns
    ``(writable, unknown)``: names of servers that are writable, and
    ``"name: error"`` for those that could not be asked (asked in parallel).
    """
    # loader functions fetched here: the threads below have no loader context
    connect_tls, closing, run = _u("mysqlrepl_db.connect_tls"), _u("mysqlrepl_db.closing"), _u("mysqlrepl_db.run")
    select_ro = _sql("SELECT_READ_ONLY")

    where = {n: _reach(cfg, srv, n) for n in names}

    def ask(peer):
        host, port = where[peer["name"]]
        conn = connect_tls(
            host, port, cfg["replication"]["user"], cfg["replication"]["password"],
            srv["tls_files"]["ca"], srv["replication_cert"]["cert"], srv["replication_cert"]["key"],
            connect_timeout=3, verify_identity=cfg["tls"]["verify_server_cert"], read_timeout=5)
        with closing(conn):
            return int(run(conn, select_ro)[0]["ro"])

    peers = {n: cfg["servers"][n] for n in names}
    writable, unknown = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(peers))) as pool:
        futures = {n: pool.submit(ask, p) for n, p in peers.items()}
        for name in sorted(futures):
            try:
                if futures[name].result() == 0:
                    writable.append(name)
            except Exception as exc:  # pylint: disable=broad-except
                unknown.append(f"{name}: {exc}")
    return writable, unknown


def _record_moved(name):
    """
    Before a highstate makes a read-only master of record writable: does the
    master's record (fresh pillar, not this job's copy) still name it, with no
    switch in progress? Returns the refusal text, or ``None``.
    """
    try:
        fresh = (__salt__["pillar.items"](unmask=True).get("mysqlrepl") or {})
    except Exception as exc:  # pylint: disable=broad-except
        return f"cannot read a fresh pillar to confirm {name} is still the master of record ({exc}); nothing changed"
    if fresh.get("switching"):
        sw = fresh["switching"]
        return (f"a switch from {sw.get('from')} to {sw.get('to')} is in progress (jid {sw.get('jid')}): "
                f"{name} stays read-only")
    if fresh.get("master") != name:
        return (f"the master record now names {fresh.get('master')}, not {name}: {name} stays read-only "
                "(refresh the pillar and apply again)")
    return None


def _threads_text(rs):
    """``IO Yes, SQL No (1062: Duplicate entry ...)`` for comments."""
    return _u("mysqlrepl_replication.threads_text")(rs)


def _link_password_stale(srv, password):
    """
    Does the replica still hold another replication password than pillar's?
    MariaDB keeps it in master.info (6th line) in the datadir, which this
    minion (root) can read; ``None`` when the file cannot be read.
    """
    try:
        with open(os.path.join(srv["datadir"], "master.info"), encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except OSError:
        return None
    return len(lines) > 5 and lines[5] != password


def _wait_threads(conn, version, timeout):
    started = time.monotonic()
    deadline = started + timeout
    rs = None
    healthy = 0
    while True:
        rs = _replica_status(conn, version)
        # right after START SLAVE a failing SQL thread shows Yes with no error
        # for a moment: only threads seen healthy over ~0.6 s count as running
        if (rs and rs["io_running"] == "Yes" and rs["sql_running"] == "Yes"
                and not rs["last_sql_errno"] and not rs["last_io_errno"]):
            healthy += 1
            if healthy >= 4:
                return True, rs
            time.sleep(0.2)
            continue
        healthy = 0
        # a hard error will not heal by waiting: a stopped SQL thread, or an IO
        # thread still failing (TLS verification, access denied) after a few tries
        if rs and (rs["last_sql_errno"] or (rs["io_running"] == "No" and rs["last_io_errno"])):
            return False, rs
        if rs and rs["last_io_errno"] and time.monotonic() - started > 5:
            return False, rs
        if time.monotonic() > deadline:
            return False, rs or {}
        time.sleep(0.2)


# ---------------------------------------------------------------------------
# seeding a replica (mariadb-backup stream over verified TLS)
# ---------------------------------------------------------------------------

def _require_tls_files(srv, what):
    files = srv["tls_files"]
    _u("mysqlrepl_seed.require_files")(srv["name"], (files["ca"], files["cert"], files["key"]), what)


def seed_send(to, server=None, port=None, timeout=None):
    """
    On the master's minion: stream a consistent physical backup of the master
    (mariadb-backup, BACKUP STAGE locks of milliseconds, no FLUSH TABLES WITH
    READ LOCK for the copy) to replica ``to``, which must be waiting in
    ``seed_receive``. The TLS connection is verified both ways with the topology
    CA. Normally run by ``salt-run mysqlrepl.seed``.

    CLI Example:

    .. code-block:: bash

        salt db1 mysqlrepl.seed_send to=db2
    """
    cfg = _cfg()
    srv = _server(server)
    target = _server(to, local=False)
    source = _u("mysqlrepl_replication.source_of")(cfg, target["name"])
    if srv["name"] != source:
        raise CommandExecutionError(f"{target['name']} is seeded from {source}, not from {srv['name']}")
    _require_tls_files(srv, "send a seed")
    # the replica's seed listener, directly or through the tunnel joining the two (its
    # certificate carries the name connected to)
    where = _u("mysqlrepl_tunnel.reach")(cfg, srv["name"], target["name"])
    host, port = where["host"], int(port or where["seed_port"])
    timeout = int(timeout or cfg["seed"]["timeout"])

    # what the copy will be, roughly: for the runner's estimated time left
    total = _u("mysqlrepl_seed.copy_estimate")(srv["datadir"], ("mysql-bin", "relay-bin"))

    @_bound  # called in a thread of the stream's
    def progress(nbytes):
        _fire(f"seed/{target['name']}/send", {"bytes": nbytes, "total": total, "server": srv["name"]})

    with _u("mysqlrepl_db.option_file")({"client": _u("mysqlrepl_db.client_options")(srv, __opts__)}) as optfile:
        result = _u("mysqlrepl_stream.send_backup")(
            host, port, srv["tls_files"]["ca"], srv["tls_files"]["cert"],
            srv["tls_files"]["key"], optfile, timeout=timeout, progress=progress,
            progress_interval=float(cfg["seed"]["progress_interval"]), datadir=srv["datadir"], socket=_u("mysqlrepl_db.local_params")(srv, __opts__)["unix_socket"],
            log_copy_interval=cfg["seed"]["log_copy_interval"],
            # how long the server holds BACKUP STAGE BLOCK_COMMIT, seen on its own socket (from a
            # forked process: the function and its options are resolved here, with the loader)
            lock_watch_connect=functools.partial(
                _u("mysqlrepl_db.connect_local"), srv,
                {k: __opts__.get(k) for k in ("mysql.default_file", "mysql.user", "mysql.pass")}),
        )
    return result


def seed_receive(server=None, port=None, timeout=None, force=False, catch_up=False):
    """
    On a replica's minion: receive a backup streamed by the master's minion
    (``seed_send``), prepare it, swap it in as the datadir, start the server and
    point it at the master from exactly the backup's GTID position, over
    verified TLS. The old datadir is kept beside it
    (``.<datadir name>.mysqlrepl-previous``) until the seeded server runs and
    both replication threads run from the master; if the server does not start
    on the new datadir, or replication does not start, the server is stopped,
    the old datadir is put back and started again, and the call fails (the
    seeded copy is removed). A failure before the swap (stream, prepare)
    leaves the running server untouched. If putting the old datadir back fails
    itself, nothing more is moved or deleted and the error says where the old
    datadir and the seeded copy are. A replica that already replicates from
    the master is left alone unless ``force=True``. The steps, and what each
    failure undoes: ``_utils/mysqlrepl_seed.py``.

    ``catch_up=True`` (``salt-run mysqlrepl.seed`` passes it) then reads the
    master's ``@@gtid_binlog_pos`` (over verified TLS as the replication
    account, as the replica's link does) and waits until the replica has
    applied it (``wait_timeout``): ``caught_up`` in the result. That saves the
    runner two Salt round trips.

    The replica's own ``mysql.*`` accounts are replaced by the master's (a
    physical copy): mysqlrepl creates the same accounts on every server, so
    nothing is lost. Non-transactional tables (Aria, MyISAM) are copied under
    mariadb-backup's BACKUP STAGE locks, so they are consistent with InnoDB.

    CLI Example:

    .. code-block:: bash

        salt db2 mysqlrepl.seed_receive
    """
    cfg = _cfg()
    srv = _server(server)
    source = _u("mysqlrepl_replication.source_of")(cfg, srv["name"])
    if source is None:
        raise CommandExecutionError(f"{srv['name']} is the master of record: it is not seeded")
    if cfg["two_masters"] and srv["name"] == cfg["masters"][0]:
        raise CommandExecutionError(f"{srv['name']} is the pair's first master: the others are seeded "
                                    "from it, it is not seeded")
    if cfg["two_masters"] and srv["name"] in cfg["masters"]:
        conn = _connect(srv)
        with _u("mysqlrepl_db.closing")(conn):
            facts = _variables(conn, ["read_only", "gtid_binlog_pos"])
        if facts["read_only"] == "OFF":
            raise CommandExecutionError(
                f"{srv['name']} is a master of the pair and takes writes: seeding it would lose what "
                f"{source} has not received yet; nothing changed")
        # its own domain's transactions must all be on the other master, or the seed loses them
        domain = srv["gtid_domain_id"]
        parse = _u("mysqlrepl_switch.parse_gtid_list")
        ours = ",".join(f"{d}-{s}-{n}" for (d, s), n in parse(facts["gtid_binlog_pos"]).items() if d == domain)
        if ours:
            peer_pos = _master_position(cfg, source, srv, connect_timeout=10, read_timeout=30)
            if not _u("mysqlrepl_switch.position_reached")(peer_pos, ours):
                raise CommandExecutionError(
                    f"{srv['name']} wrote {ours} in its domain {domain} and {source} has only {peer_pos}: "
                    f"seeding {srv['name']} would lose those transactions. Let {source} catch up (its link "
                    f"from {srv['name']}), then seed; nothing changed")
    master = cfg["servers"][source]
    port = int(port or cfg["seed"]["port"])
    timeout = int(timeout or cfg["seed"]["timeout"])
    name, files = srv["name"], srv["tls_files"]

    def replica_status():
        conn = _connect(srv)
        with _u("mysqlrepl_db.closing")(conn):
            return _replica_status(conn)

    def stream(incoming):
        return _u("mysqlrepl_stream.receive_backup")(
            srv["address"], port, incoming, files["ca"], files["cert"], files["key"], master["address"],
            timeout=timeout, ready=_bound(lambda: _fire(f"seed/{name}/ready", {"port": port, "server": name})),
            progress=_bound(lambda nbytes: _fire(f"seed/{name}/receive", {"bytes": nbytes, "server": name})),
            progress_interval=float(cfg["seed"]["progress_interval"]))

    def chown_tree(path):
        uid, gid = _owner_ids(srv)
        os.chown(path, uid, gid)
        for root, dirs, entries in os.walk(path):
            for entry in dirs + entries:
                os.lchown(os.path.join(root, entry), uid, gid)

    def position(gtid):
        conn = _connect(srv)
        with _u("mysqlrepl_db.closing")(conn):
            _run(conn, _sql("set_read_only")(True))
            _run(conn, _sql("set_gtid_slave_pos")(gtid))

    def catch_up_with_master():
        """The master's position (over TLS as the replica's link), applied here."""
        pos = _master_position(cfg, source, srv, connect_timeout=10, read_timeout=30)
        wait_for_gtid(pos, name, timeout=cfg["replication"]["wait_timeout"])
        return pos

    ops = {
        "exists": os.path.exists,
        "makedirs": lambda path: os.makedirs(path, mode=0o700),
        "rename": os.rename,
        "rmtree": shutil.rmtree,
        "replica_status": replica_status,
        "conflict": lambda rs: _topology_conflict(cfg, srv, rs),
        "stream": stream,
        "prepare": _u("mysqlrepl_stream.prepare_backup"),
        "binlog_info": _u("mysqlrepl_stream.read_binlog_info"),
        "chown_tree": chown_tree,
        "stop": lambda: __salt__["service.stop"](srv["service"]),
        "start": lambda: __salt__["service.start"](srv["service"]),
        "wait_up": lambda: _wait_up(srv),
        "position": position,
        "replicate": lambda: replication_apply(name, seeded=True),
        "catch_up": catch_up_with_master,
    }
    # the util calls them back from inside its own call: in this job's loader context
    ops = {key: _bound(fn) for key, fn in ops.items()}
    return _u("mysqlrepl_seed.receive")(
        name, srv["service"], source, _u("mysqlrepl_seed.paths")(srv["datadir"]), ops,
        tls_files=(files["ca"], files["cert"], files["key"]), force=force, catch_up=catch_up)


# ---------------------------------------------------------------------------
# seed 002's manual procedure: lock / dump / unlock
# ---------------------------------------------------------------------------

# Runs in a detached process that outlives the Salt call: connects, runs the
# statements it is given (from mysqlrepl_sql), prints the last two results, then
# idles so that the server drops the session (and the lock) after wait_timeout.
_LOCK_HOLDER = r"""
import json, sys, time, pymysql
p = json.loads(sys.stdin.readline())
conn = pymysql.connect(unix_socket=p["socket"], user=p["user"], password=p.get("password", ""),
                       ssl_disabled=True, autocommit=True, cursorclass=pymysql.cursors.DictCursor)
cur = conn.cursor()
rows = []
for sql, args in p["statements"]:
    cur.execute(sql, args or ())
    rows.append(cur.fetchone())
info = dict(rows[-2])
info.update({"file": (rows[-1] or {}).get("File"), "position": (rows[-1] or {}).get("Position")})
sys.stdout.write(json.dumps(info) + "\n")
sys.stdout.flush()
sys.stdout.close()
time.sleep(p["lease"] + 30)
"""


def _lease_path(srv):
    return os.path.join(__opts__["cachedir"], "mysqlrepl", f"lock-{srv['name']}.json")


def lock(server=None, lease=300):
    """
    Seed 002's "lock the databases": FLUSH TABLES WITH READ LOCK held by a
    session that outlives this call. The server releases it by itself after
    ``lease`` seconds (the holder's ``wait_timeout``) if nobody runs
    ``mysqlrepl.unlock``. Returns the binlog file/position and GTID at lock time.

    Prefer the formula's seeding (``salt-run mysqlrepl.seed``), which never
    blocks writes for the length of a copy.

    CLI Example:

    .. code-block:: bash

        salt db1 mysqlrepl.lock lease=600
    """
    srv = _server(server)
    lease = int(lease)
    if lease < 5:
        raise SaltInvocationError("lease must be at least 5 seconds")
    path = _lease_path(srv)
    current = _lease_info(srv)
    if current:
        raise CommandExecutionError(f"{srv['name']} is already locked by mysqlrepl (connection "
                                    f"{current['conn_id']}, expires {current['expires']:.0f})")
    params = _u("mysqlrepl_db.local_params")(srv, __opts__)
    params = {"socket": params["unix_socket"], "user": params["user"],
              "password": params.get("password", ""), "lease": lease,
              "statements": [_sql("set_session_wait_timeout")(lease), _sql("FLUSH_TABLES_WITH_READ_LOCK"),
                             _sql("LOCK_POSITION"), _sql("SHOW_MASTER_STATUS")]}
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-c", _LOCK_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
    )
    proc.stdin.write((json.dumps(params) + "\n").encode())
    proc.stdin.close()
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        proc.wait(5)
        raise CommandExecutionError(f"could not lock {srv['name']}: {err[-1] if err else 'no output'}")
    info = json.loads(line)
    info.update({"pid": proc.pid, "server": srv["name"], "lease": lease,
                 "expires": time.time() + lease})
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    _write_file(path, json.dumps(info), mode=0o600)
    return info


def _lease_info(srv, conn=None):
    """The current lock lease, or None when expired / released (``conn``: an open admin connection)."""
    data = _read(_lease_path(srv))
    if not data:
        return None
    info = json.loads(data)
    if conn is None:
        try:
            conn = _connect(srv)
        except CommandExecutionError:
            return info
        with _u("mysqlrepl_db.closing")(conn):
            row = _one(conn, _sql("processlist_by_id")(info["conn_id"]))
    else:
        row = _one(conn, _sql("processlist_by_id")(info["conn_id"]))
    if row is None:
        os.unlink(_lease_path(srv))
        return None
    return info


def unlock(server=None):
    """
    Release the lock taken by ``mysqlrepl.lock`` (kills its session; the server
    drops the read lock at once).

    CLI Example:

    .. code-block:: bash

        salt db1 mysqlrepl.unlock
    """
    srv = _server(server)
    info = _lease_info(srv)
    if not info:
        return {"server": srv["name"], "unlocked": False, "comment": "no mysqlrepl lock is held"}
    conn = _connect(srv)
    with _u("mysqlrepl_db.closing")(conn):
        _run(conn, _sql("kill_connection")(info["conn_id"]))
    try:
        os.kill(info["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass
    os.unlink(_lease_path(srv))
    return {"server": srv["name"], "unlocked": True, "held_s": round(time.time() - info["expires"] + info["lease"], 3)}


def dump(path, server=None, databases=None):
    """
    Seed 002's "dump the databases": mariadb-dump of a server to ``path``
    (a new file, 0600, owned by the minion's user, replacing any file there
    only once the dump succeeded) with the GTID position (``--master-data=1 --gtid``) in a single
    consistent transaction. Credentials go through a private option file.

    CLI Example:

    .. code-block:: bash

        salt db1 mysqlrepl.dump /var/backups/db1.sql databases='[app, wiki]'
    """
    srv = _server(server)
    if isinstance(databases, str):
        databases = [d.strip() for d in databases.split(",") if d.strip()]
    argv_tail = ["--single-transaction", "--master-data=1", "--gtid", "--routines", "--events",
                 "--triggers", "--hex-blob"]
    argv_tail += ["--databases", *databases] if databases else ["--all-databases"]
    started = time.monotonic()
    # A new private file beside the target, renamed over it once the dump is
    # complete: an existing file at ``path`` keeps neither its mode nor its owner
    # (a dump of mysql.* carries password hashes), and a failed dump leaves
    # whatever was there untouched.
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CommandExecutionError(f"cannot dump to {path}: {directory} is not a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".mysqlrepl-tmp", dir=directory)
    out = os.fdopen(fd, "wb")  # owns the descriptor from here on: closed on every path
    try:
        client = {"client": _u("mysqlrepl_db.client_options")(srv, __opts__)}
        with out, _u("mysqlrepl_db.option_file")(client) as optfile:
            proc = subprocess.run(
                ["mariadb-dump", f"--defaults-extra-file={optfile}", *argv_tail],
                stdout=out, stderr=subprocess.PIPE, check=False,
            )
        if proc.returncode != 0:
            raise CommandExecutionError(f"mariadb-dump failed: {proc.stderr.decode(errors='replace').strip()}")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"path": path, "bytes": os.path.getsize(path), "seconds": round(time.monotonic() - started, 3)}


# ---------------------------------------------------------------------------
# planned switchover (driven by salt-run mysqlrepl.switch)
# ---------------------------------------------------------------------------

_SYSTEM_ACCOUNTS = {("root", "localhost"), ("mysql", "localhost"), ("mariadb.sys", "localhost")}


def _exempt_accounts(cfg, srv):
    """Accounts allowed to write through read_only: mysqlrepl's, the local admin, operator-listed."""
    exempt = set(_SYSTEM_ACCOUNTS)
    exempt.add((cfg["replication"]["user"], cfg["replication"]["host"]))
    exempt.add((cfg["admin"]["user"], cfg["admin"]["host"]))
    local = _u("mysqlrepl_db.local_params")(srv, __opts__)
    exempt.add((local["user"], "localhost"))
    for entry in cfg["switch"]["admin_users"]:
        user, _, host = entry.rpartition("@")
        exempt.add((user, host))
    return exempt


def switch_facts(server=None, servers=None, local=False):
    """
    What the switch's prechecks need from one server, read in one connection;
    changes nothing: version, variables, GTID state, replica status, Binlog
    Dump threads and their ciphers, accounts and events that can write
    through ``read_only``, open transactions, blocking locks (LOCK TABLES,
    FTWRL, BACKUP STAGE), a ``mysqlrepl.lock`` lease, TLS files, and the
    oldest binary log with the GTID state it starts after. ``servers=[...]``:
    several of this minion's servers, read in that order, ``{name: facts or
    {"error": text}}``; ``local=True``: every server of this minion, the
    master of record last (its GTID state only grows, so read last it holds
    everything the others were seen to apply).

    CLI Example:

    .. code-block:: bash

        salt db1 mysqlrepl.switch_facts
        salt 'db*' mysqlrepl.switch_facts local=True
    """
    if local:
        cfg = _cfg()
        servers = sorted(cfg["local_servers"], key=lambda name: name == cfg["master"])
    if servers is not None:
        return _for_each(servers, switch_facts)
    cfg = _cfg()
    srv = _server(server)
    switch = _u("mysqlrepl_switch.read_only_bypass")
    definer = _u("mysqlrepl_switch.definer_can_bypass")
    conn = _connect(srv)
    with _u("mysqlrepl_db.closing")(conn):
        version = _version(conn)
        variables = _variables(conn, ["read_only", "log_bin", "log_slave_updates", "server_id",
                                      "gtid_domain_id", "have_ssl", "event_scheduler", "gtid_strict_mode",
                                      "rpl_semi_sync_master_enabled", "rpl_semi_sync_slave_enabled"])
        gtid = _one(conn, _sql("gtid_state")(version))
        replica = _replica_status(conn, version)
        try:
            dumps = _run(conn, _sql("BINLOG_DUMP_CIPHERS"))
        except CommandExecutionError:
            dumps = None
        accounts = _run(conn, _sql("ACCOUNT_PRIVILEGES"))
        roles = _run(conn, _sql("ROLE_GRANTS"))
        events = _run(conn, _sql("EVENTS"))
        transactions = _run(conn, _sql("INNODB_TRANSACTIONS"))
        plugin = _one(conn, _sql("METADATA_LOCK_PLUGIN"))
        if plugin and plugin["status"] == "ACTIVE":
            locks = _run(conn, _sql("BLOCKING_LOCKS"))
            locks_note = None
        else:
            locks = [{"id": None, "user": None, "mode": "table in use", "type": "Table lock",
                      "db": r["Database"], "tbl": r["Table"]} for r in _run(conn, _sql("OPEN_TABLES_IN_USE"))]
            locks_note = ("metadata_lock_info is not loaded (mysqlrepl.server loads it): FTWRL and "
                          "BACKUP STAGE holders cannot be seen; the read_only budget still bounds them")
        repl_account = _one(conn, _sql("select_account")(cfg["replication"]["user"], cfg["replication"]["host"]))
        admin_account = _one(conn, _sql("select_account")(cfg["admin"]["user"], cfg["admin"]["host"]))
        lease = _lease_info(srv, conn)
        binlogs = None
        if variables.get("log_bin") == "ON" and version.is_mariadb:
            logs = _run(conn, _sql("SHOW_BINARY_LOGS"))
            if logs:
                oldest = logs[0]["Log_name"]
                start = _one(conn, _sql("binlog_start_state")(oldest))
                binlogs = {"oldest": oldest, "count": len(logs), "start_state": (start or {}).get("pos")}
    bypass = switch(accounts, roles, _exempt_accounts(cfg, srv))
    for event in events:
        event["bypass"] = definer(event["definer"], accounts, roles)
    for row in transactions:
        row["age_s"] = int(row["age_s"] or 0)
        row["rows_modified"] = int(row["rows_modified"] or 0)
    tls_missing = [p for p in (srv["tls_files"]["ca"], srv["replication_cert"]["cert"],
                               srv["replication_cert"]["key"]) if not os.path.exists(p)]
    return {
        "server": srv["name"],
        "version": [version.flavor, list(version.number)],
        "variables": variables,
        "gtid": gtid,
        "replica": replica,
        "binlog_dumps": dumps,
        "bypass_accounts": bypass,
        "events": events,
        "transactions": transactions,
        "locks": locks,
        "locks_note": locks_note,
        "lease": lease,
        "binlogs": binlogs,
        "repl_account": bool(repl_account),
        "admin_account": bool(admin_account and admin_account["ssl_type"] == "X509"),
        "tls_missing": tls_missing,
    }


def _admin_connection(cfg, srv, peer, timeout=5, read_timeout=None):
    """TCP+TLS connection from ``srv``'s minion to server ``peer`` as the switch's admin account."""
    admin = cfg["admin"]
    if not admin.get("password"):
        raise CommandExecutionError("mysqlrepl:admin:password is not set: the switch needs its admin account")
    host, port = _reach(cfg, srv, peer["name"])
    return _u("mysqlrepl_db.connect_tls")(
        host, port, admin["user"], admin["password"], srv["tls_files"]["ca"],
        srv["replication_cert"]["cert"], srv["replication_cert"]["key"], connect_timeout=timeout,
        verify_identity=cfg["tls"]["verify_server_cert"], read_timeout=read_timeout,
    )


def switch_critical(old, server=None, events=None, switch_jid=None, hold=None, time_limit=None):
    """
    The switch's write block, run on the new master's minion with no Salt
    round trip inside: the new master over its socket, the old one over
    verified TLS as the admin account (both connections opened and tested
    first). See ``_utils/mysqlrepl_switch.py`` ``critical_section`` for the
    steps and the rules on failure. ``events``: ``[[db, name], ...]`` to enable
    on the new master once it is writable. ``hold`` (fault drills):
    ``{"after": step, "seconds": s}``. ``time_limit``: how long the caller
    waits for the answer (s); if connecting took so long that the block could
    outlast it, the switch aborts before changing anything.

    Called by ``salt-run mysqlrepl.switch``, which runs the prechecks first; do
    not call it by hand.

    CLI Example:

    .. code-block:: bash

        salt db2 mysqlrepl.switch_critical db1
    """
    started = time.monotonic()
    cfg = _cfg()
    srv = _server(server)
    if old not in cfg["servers"] or old == srv["name"]:
        raise SaltInvocationError(f"old master must be another server of the topology, got {old!r}")
    peer = cfg["servers"][old]
    sw = cfg["switch"]
    hold_s = float((hold or {}).get("seconds", 0))
    # every answer inside the window is bounded: a stalled peer cannot keep the
    # section running after the runner stopped waiting (the section gives up
    # before new_writable past deadline_s)
    limits = _u("mysqlrepl_switch.time_limits")(sw["lock_budget"], sw["catchup_timeout"], hold_s)
    io_timeout = limits["io_s"]
    try:
        new_conn = _u("mysqlrepl_db.connect_local")(srv, __opts__, connect_timeout=5, read_timeout=io_timeout)
    except CommandExecutionError as exc:
        return {"outcome": "aborted", "reason": f"cannot connect to {srv['name']}: {exc}; nothing changed",
                "steps": [], "pos": None, "block_ms": None, "switch_jid": switch_jid}
    try:
        old_conn = _admin_connection(cfg, srv, peer, read_timeout=io_timeout)
    except CommandExecutionError as exc:
        new_conn.close()
        return {"outcome": "aborted", "steps": [], "pos": None, "block_ms": None, "switch_jid": switch_jid,
                "reason": f"cannot reach the old master {old} as {cfg['admin']['user']} over TLS: {exc}; "
                          "nothing changed"}
    closing = _u("mysqlrepl_db.closing")
    with closing(new_conn), closing(old_conn):
        version = _version(new_conn)
        old_version = _version(old_conn)
        # warm both connections and make sure of the starting point
        problem = None
        if int(_one(old_conn, _sql("SELECT_READ_ONLY"))["ro"]) != 0:
            problem = f"{old} is already read-only: nothing to switch from; nothing changed"
        elif int(_one(new_conn, _sql("SELECT_READ_ONLY"))["ro"]) != 1:
            problem = f"{srv['name']} is writable before the switch; nothing changed"
        # the session the block makes the new master writable in: if its answer is lost,
        # this session is killed (and seen gone) before anyone decides what took
        session_id = int(_one(new_conn, _sql("SESSION_ID"))["id"])
        if problem:
            return {"outcome": "aborted", "reason": problem, "steps": [], "pos": None, "block_ms": None,
                    "switch_jid": switch_jid}
        wait_timeout = float(sw["catchup_timeout"])
        # built here, not inside the window: a plain tuple with the position swapped in
        wait_sql, wait_args = _sql("master_gtid_wait")(version, "", wait_timeout)
        st = {
            "deadline_s": limits["deadline_s"],
            "budget_s": sw["lock_budget"],
            "catchup_s": wait_timeout,
            "old_read_only": _sql("set_read_only")(True, sw["lock_budget"]),
            "old_writable": _sql("set_read_only")(False),
            "gtid_pos": _sql("gtid_position")(old_version),
            "wait": lambda pos: (wait_sql, (pos,) + tuple(wait_args[1:])),
            "stop_replica": _sql("stop_replica")(version),
            "start_replica": _sql("start_replica")(version),
            "new_writable": _sql("set_read_only")(False),
            "replica_status": _sql("show_replica_status")(version),
            "enable_events": [_sql("alter_event")(db, name, True) for db, name in (events or [])],
        }
        params = _u("mysqlrepl_db.local_params")(srv, __opts__)
        fresh_s = limits["fresh_io_s"]
        endpoint = _u("mysqlrepl_switch.endpoint")
        run = _u("mysqlrepl_db.run")

        def fresh_new():
            """
            The new master over a fresh socket connection (answers bounded by
            ``fresh_s``), for a block whose own connection to it was lost; None only
            when the server is down (socket refused or gone and the pid file names
            no live process); raises when it cannot tell.
            """
            try:
                conn = pymysql.connect(unix_socket=params["unix_socket"], user=params["user"],
                                       password=params.get("password", ""), ssl_disabled=True,
                                       connect_timeout=fresh_s, read_timeout=fresh_s, write_timeout=fresh_s,
                                       autocommit=True, cursorclass=pymysql.cursors.DictCursor)
            except pymysql.err.MySQLError as exc:
                code = exc.args[0] if exc.args else None
                if code in (2002, 2003) and _server_process_alive(srv) is False:
                    return None
                raise CommandExecutionError(f"cannot connect to {srv['name']}: {exc}") from exc
            return endpoint(srv["name"], conn, run)

        st.update({
            "fresh_new": fresh_new,
            "kill": _sql("kill_connection"),
            "session": _sql("processlist_by_id"),
            "read_only": _sql("SELECT_READ_ONLY"),
        })
        spent = time.monotonic() - started
        if time_limit is not None and spent + limits["worst_s"] > float(time_limit) - 2:
            return {"outcome": "aborted", "steps": [], "pos": None, "block_ms": None, "switch_jid": switch_jid,
                    "reason": (f"connecting took {spent:.1f}s: the write block (up to {limits['worst_s']}s) "
                               f"could outlast the runner's {time_limit}s; nothing changed")}
        if st["enable_events"]:
            _run(new_conn, _sql("SESSION_NO_BINLOG"))
        out = _u("mysqlrepl_switch.critical_section")(
            endpoint(old, old_conn, run), endpoint(srv["name"], new_conn, run, session_id), st, hold=hold)
        out["killed_sessions"] = []
        if out["outcome"] == "promoted" and sw["kill_app_sessions"]:
            exempt = {u for u, _h in _exempt_accounts(cfg, peer)} | {cfg["admin"]["user"]}
            try:
                for row in _run(old_conn, _sql("APP_SESSIONS")):
                    if row["user"] in exempt:
                        continue
                    try:
                        _run(old_conn, _sql("kill_connection")(row["id"]))
                        out["killed_sessions"].append(row["id"])
                    except CommandExecutionError:
                        pass  # gone already
            except CommandExecutionError as exc:
                out["kill_error"] = str(exc)
    out["switch_jid"] = switch_jid
    return out


def _server_process_alive(srv):
    """
    Does the server's pid file (beside its socket: mysqld.pid or mariadb.pid) name a
    live process? ``None`` when there is no pid file to tell.
    """
    for name in ("mysqld.pid", "mariadb.pid"):
        path = os.path.join(os.path.dirname(srv["socket"]), name)
        text = _read(path)
        if text is None:
            continue
        try:
            pid = int(text.strip())
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except (OSError, ValueError):
            return None
        try:
            # a killed server not yet reaped by its parent is a zombie: dead
            with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
                return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return None
    return None


def switch_finish_new(server=None):
    """
    After the write block: the new master forgets its old replication link
    (``RESET SLAVE ALL``). Read-only on disk stays ON (a restart comes back read-only).

    CLI Example:

    .. code-block:: bash

        salt db2 mysqlrepl.switch_finish_new
    """
    srv = _server(server)
    conn = _connect(srv)
    with _u("mysqlrepl_db.closing")(conn):
        version = _version(conn)
        if int(_one(conn, _sql("SELECT_READ_ONLY"))["ro"]) != 0:
            raise CommandExecutionError(f"{srv['name']} is not writable: it was not promoted; nothing changed")
        rs = _replica_status(conn, version)
        if rs is not None:
            _run(conn, _sql("stop_replica")(version))
            _run(conn, _sql("reset_replica_all")(version))
        return {"server": srv["name"], "reset": rs is not None,
                "pos": _one(conn, _sql("gtid_position")(version))["pos"]}


def unpair_critical(other, server=None, lock_budget=10, catchup_timeout=None):
    """
    End a two-master pair, keeping this server as the only master: the other
    master is made read-only, this one applies everything it logged and forgets
    its link (steps and rules: ``_utils/mysqlrepl_unpair.py``). This server over
    its socket, the other over verified TLS as the admin account, both
    connections opened first. ``catchup_timeout``: how long this server may take
    to apply the other's last transactions (default
    ``mysqlrepl:replication:wait_timeout``).

    Called by ``salt-run mysqlrepl.unpair``, which checks the pair first; do not
    call it by hand.

    CLI Example:

    .. code-block:: bash

        salt db1 mysqlrepl.unpair_critical db3
    """
    cfg = _cfg()
    srv = _server(server)
    if other not in cfg["servers"] or other == srv["name"]:
        raise SaltInvocationError(f"the other master must be another server of the topology, got {other!r}")
    catchup = float(catchup_timeout or cfg["replication"]["wait_timeout"])
    io_timeout = int(lock_budget + catchup + 10)
    try:
        keep_conn = _u("mysqlrepl_db.connect_local")(srv, __opts__, connect_timeout=5, read_timeout=io_timeout)
    except CommandExecutionError as exc:
        return {"outcome": "aborted", "reason": f"cannot connect to {srv['name']}: {exc}; nothing changed",
                "steps": [], "pos": None}
    try:
        other_conn = _admin_connection(cfg, srv, cfg["servers"][other], read_timeout=io_timeout)
    except CommandExecutionError as exc:
        keep_conn.close()
        return {"outcome": "aborted", "steps": [], "pos": None,
                "reason": f"cannot reach {other} as {cfg['admin']['user']} over TLS: {exc}; nothing changed"}
    closing = _u("mysqlrepl_db.closing")
    with closing(keep_conn), closing(other_conn):
        version = _version(keep_conn)
        other_version = _version(other_conn)
        wait_sql, wait_args = _sql("master_gtid_wait")(version, "", catchup)
        st = {
            "other_read_only": _sql("set_read_only")(True, lock_budget),
            "other_writable": _sql("set_read_only")(False),
            "read_only": _sql("SELECT_READ_ONLY"),
            "gtid_pos": _sql("gtid_position")(other_version),
            "wait": lambda pos: (wait_sql, (pos,) + tuple(wait_args[1:])),
            "stop_replica": _sql("stop_replica")(version),
            "start_replica": _sql("start_replica")(version),
            "reset_replica_all": _sql("reset_replica_all")(version),
            "keep_writable": _sql("set_read_only")(False),
            "current_pos": _sql("gtid_state")(version),
            "keep_server_id": srv["server_id"],
            "reached": _u("mysqlrepl_switch.position_reached"),
        }
        endpoint = _u("mysqlrepl_switch.endpoint")
        run = _u("mysqlrepl_db.run")
        return _u("mysqlrepl_unpair.critical")(endpoint(srv["name"], keep_conn, run),
                                               endpoint(other, other_conn, run), st)


# ---------------------------------------------------------------------------
# after a switch's write block: one job per minion (the runner's repointing)
# ---------------------------------------------------------------------------

def _in_threads(jobs):
    """
    ``{key: (fun, args, kwargs)}`` run at once, one thread each, in copies of
    this job's loader context (a bare thread has none: ``__utils__`` and
    ``__pillar__`` would fail there). ``{key: (ok, result or error text)}``.
    """
    import contextvars  # pylint: disable=import-outside-toplevel

    out = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = {key: pool.submit(contextvars.copy_context().run, fun, *args, **kwargs)
                   for key, (fun, args, kwargs) in jobs.items()}
        for key, fut in futures.items():
            try:
                out[key] = (True, fut.result())
            except (CommandExecutionError, SaltInvocationError) as exc:
                out[key] = (False, str(exc))
            except Exception as exc:  # pylint: disable=broad-except
                out[key] = (False, f"{type(exc).__name__}: {exc}")
    return out


def _master_position(cfg, master, via, connect_timeout=5, read_timeout=10):
    """A master's GTID position (``mysqlrepl_sql.gtid_position``), asked over verified TLS as
    the replication account with ``via``'s certificate (as its replication link connects; no
    privilege needed)."""
    host, port = _reach(cfg, via, master)
    conn = _u("mysqlrepl_db.connect_tls")(
        host, port, cfg["replication"]["user"], cfg["replication"]["password"],
        via["tls_files"]["ca"], via["replication_cert"]["cert"], via["replication_cert"]["key"],
        connect_timeout=connect_timeout, verify_identity=cfg["tls"]["verify_server_cert"],
        read_timeout=read_timeout)
    with _u("mysqlrepl_db.closing")(conn):
        return _one(conn, _sql("gtid_position")(_version(conn)))["pos"]


def switch_followers(master, switch_jid, servers=None, finish=False, ready_timeout=60):
    """
    Used by ``salt-run mysqlrepl.switch`` right after the write block: all that
    this minion does for the new ``master`` in one job, its servers at once
    (one thread each), so a minion that owns several servers repoints them in
    parallel:

    * ``finish=True`` (this minion owns the new master): ``switch_finish_new``;
    * each server of ``servers`` (``{name: replication_apply keyword arguments}``:
      ``{"demote": True, "demote_at": pos}`` for the old master,
      ``{"repoint_from": old}`` for a replica) follows ``master`` through
      ``replication_apply(name, master=master, switch_jid=switch_jid, ...)``;
    * then every server that now replicates waits (``MASTER_GTID_WAIT``, at most
      ``ready_timeout`` s) until it has applied the new master's
      ``@@gtid_binlog_pos`` read once they all run (from the new master's own
      connection when local, else over verified TLS as the replication account).

    * last, the status (``mysqlrepl.status``) of every server of ``servers``,
      read at once once they have caught up: the runner's result shows it
      without another round of jobs (the runner reads the new master's itself,
      once every replica has connected to it).

    Returns ``{"finish": result, "pos": pos, "servers": {name: {"apply": result,
    "wait": result}}, "states": {name: status}}`` where a failed part is
    ``{"error": text}``.

    CLI Example:

    .. code-block:: bash

        salt db-host mysqlrepl.switch_followers db2 switch-2026... servers='{db1: {demote: true}, db3: {repoint_from: db1}}'
    """
    cfg = _cfg()
    servers = servers or {}
    for name in servers:
        _server(name)  # each is this minion's
    jobs = {("apply", name): (replication_apply, [name],
                              dict(kw or {}, master=master, switch_jid=switch_jid))
            for name, kw in servers.items()}
    if finish:
        jobs[("finish", master)] = (switch_finish_new, [master], {})
    done = _in_threads(jobs)
    out = {"finish": None, "pos": None, "servers": {}}
    if finish:
        ok, fin = done[("finish", master)]
        out["finish"] = fin if ok else {"error": fin}
        if ok:
            out["pos"] = fin["pos"]
    following = []
    for name in servers:
        ok, res = done[("apply", name)]
        out["servers"][name] = {"apply": res if ok else {"error": res}, "wait": None}
        if ok and res.get("result"):
            following.append(name)
    if following and out["pos"] is None:
        try:
            out["pos"] = _master_position(cfg, master, cfg["servers"][following[0]])
        except Exception as exc:  # pylint: disable=broad-except
            for name in following:
                out["servers"][name]["wait"] = {"error": f"cannot read {master}'s position: {exc}"}
            following = []
    if following:
        waits = _in_threads({name: (wait_for_gtid, [out["pos"]], {"server": name, "timeout": ready_timeout})
                             for name in following})
        for name, (ok, res) in waits.items():
            out["servers"][name]["wait"] = res if ok else {"error": res}
    states = _in_threads({name: (status, [name], {}) for name in servers})
    out["states"] = {name: res if ok else {"error": res} for name, (ok, res) in states.items()}
    return out


# ---------------------------------------------------------------------------
# which synced modules this minion runs (the orchestrations sync only on a difference)
# ---------------------------------------------------------------------------
# SSH tunnels (seeds 000 and 001): the logic is _utils/mysqlrepl_tunnel.py
# ---------------------------------------------------------------------------

_NOLOGIN = "/usr/sbin/nologin"


def _tun(name):
    """A function of ``_utils/mysqlrepl_tunnel.py``."""
    return _u(f"mysqlrepl_tunnel.{name}")


def _tunnel_roles(cfg, server=None):
    local = [_server(server)["name"]] if server else cfg["local_servers"]
    return local, _u("mysqlrepl_tunnel.roles")(cfg, local)


def _tunnel_user(cfg, test):
    """The tunnel user (system, no password, no shell, home root-owned): ``(uid, gid, change)``."""
    user = cfg["tunnel"]["user"]
    home = cfg["tunnel"]["dir"]
    info = __salt__["user.info"](user)
    change = None
    if not info:
        change = f"system user {user} (shell {_NOLOGIN}, home {home})"
        if test:
            return None, None, change
        if not __salt__["user.add"](user, system=True, home=home, shell=_NOLOGIN, createhome=False):
            raise CommandExecutionError(f"cannot create the tunnel user {user}")
        # '*' (no password can match) rather than a locked '!': sshd without PAM refuses
        # key logins of locked accounts
        __salt__["shadow.set_password"](user, "*")
        info = __salt__["user.info"](user)
    else:
        fixes = []
        if info.get("shell") != _NOLOGIN:
            fixes.append(f"shell {info.get('shell')} -> {_NOLOGIN}")
            if not test:
                __salt__["user.chshell"](user, _NOLOGIN)
        if info.get("home") != home:
            # sshd reads ~/.ssh/authorized_keys: the home is where the formula writes it
            fixes.append(f"home {info.get('home')} -> {home}")
            if not test:
                __salt__["user.chhome"](user, home)
        if str((__salt__["shadow.info"](user) or {}).get("passwd", "")).startswith("!"):
            fixes.append("password field locked (!) -> * (sshd without PAM refuses locked accounts)")
            if not test:
                __salt__["shadow.set_password"](user, "*")
        change = f"{user}: " + "; ".join(fixes) if fixes else None
    return info.get("uid"), info.get("gid"), change


def _file_facts(path, with_text=True):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return {"text": _read(path) if with_text else None, "mode": st.st_mode & 0o7777,
            "uid": st.st_uid, "gid": st.st_gid}


def _ensure_dir(path, mode, uid, gid, test, changes):
    st = _file_facts(path, with_text=False)
    if st == {"text": None, "mode": mode, "uid": uid, "gid": gid}:
        return
    changes[path] = "missing" if st is None else "mode or owner differs"
    if not test:
        try:
            os.makedirs(path, mode=mode, exist_ok=True)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        except OSError as exc:
            raise CommandExecutionError(f"cannot make {path} ({mode:04o}, owner {uid}:{gid}): {exc}") from exc


def tunnel_keys():
    """
    For the Salt mine (``mysqlrepl.tunnel_keys``): the public halves of this minion's
    tunnel keys (servers that open a tunnel) and its sshd's host key (servers a tunnel
    logs into), ``{server: {"client": line, "host": line}}``. Never a private key.

    CLI Example:

    .. code-block:: bash

        salt 'db*' mysqlrepl.tunnel_keys
    """
    cfg = _cfg()
    local, mine = _tunnel_roles(cfg)
    out = {}
    for t in mine["near"]:
        out.setdefault(t["near"], {})["client"] = (_read(_u("mysqlrepl_tunnel.paths")(cfg, t["near"])["pub"])
                                                   or "").strip() or None
    for t in mine["peer"]:
        out.setdefault(t["peer"], {})["host"] = _host_key(cfg, t["peer"])
    return {name: keys for name, keys in out.items() if name in local}


def _host_key(cfg, name):
    """Server ``name``'s sshd host key (public: anything else is refused, never published)."""
    path = cfg["servers"][name]["sshd"]["host_key_file"]
    text = (_read(path) or "").strip()
    if not text:
        return None
    if _u("mysqlrepl_tunnel.parse_key")(text) is None:
        raise CommandExecutionError(
            f"{name}: {path} (sshd:host_key_file) is not a public key; it is never published. Point it "
            "at the .pub file of the sshd host key")
    return text


def _published(cfg, servers):
    """``{server: mine entry}`` of the tunnel keys published by the minions of ``servers``."""
    out = {}
    for name in servers:
        minion = cfg["servers"][name]["minion"]
        data = (__salt__["mine.get"](minion, "mysqlrepl.tunnel_keys") or {}).get(minion) or {}
        out[name] = data.get(name) or {}
    return out


def tunnel_key_apply(server=None, test=False):
    """
    The first half of this minion's tunnels: on a server that opens a tunnel, the tunnel
    user and an ed25519 key made here (0600, owned by that user, never sent anywhere);
    its public half, and on a server a tunnel logs into its sshd's host key, published
    to the mine (``mysqlrepl.tunnel_keys``). Returns the changes (``test=True``: what
    would change).

    CLI Example:

    .. code-block:: bash

        salt 'db3*' mysqlrepl.tunnel_key_apply
    """
    cfg = _cfg()
    local, mine = _tunnel_roles(cfg, server)
    changes = {}
    nears = sorted({t["near"] for t in mine["near"]})
    if nears:
        uid, gid, change = _tunnel_user(cfg, test)
        if change:
            changes["user"] = change
        if uid is not None:
            _ensure_dir(cfg["tunnel"]["dir"], 0o755, 0, 0, test, changes)
        for name in nears:
            paths = _tun("paths")(cfg, name)
            comment = _tun("key_comment")(cfg, name)
            if uid is not None:
                _ensure_dir(paths["dir"], 0o750, 0, gid, test, changes)
            have = _file_facts(paths["key"])
            public = _tun("public_line")(have["text"], comment) if have else None
            if public is None:
                changes[paths["key"]] = "created (ed25519, 0600)" if have is None else "not an ed25519 key: replaced"
                if not test:
                    _write_file(paths["key"], _tun("new_key")(), mode=0o600, uid=uid, gid=gid)
                    public = _tun("public_line")(_read(paths["key"]), comment)
            elif (have["mode"], have["uid"]) != (0o600, uid):
                changes[paths["key"]] = f"mode {have['mode']:04o} owner {have['uid']}: fixed to 0600 {uid}"
                if not test:
                    os.chown(paths["key"], uid, gid)
                    os.chmod(paths["key"], 0o600)
            if public is not None and _read(paths["pub"]) != public + "\n":
                changes.setdefault(paths["pub"], "written")
                if not test:
                    _write_file(paths["pub"], public + "\n", mode=0o644, uid=0, gid=0)
    for t in mine["peer"]:
        path = cfg["servers"][t["peer"]]["sshd"]["host_key_file"]
        if not _host_key(cfg, t["peer"]):
            raise CommandExecutionError(
                f"{t['peer']}: no sshd host key at {path} (sshd:host_key_file): tunnel {t['id']} logs into "
                "this host's sshd; install openssh-server or point sshd:host_key_file at its public key")
    if not test and (mine["near"] or mine["peer"]):
        published = (__salt__["mine.get"](__opts__["id"], "mysqlrepl.tunnel_keys") or {}).get(__opts__["id"]) or {}
        ours = tunnel_keys()
        if any(published.get(n) != ours.get(n) for n in ours):
            __salt__["mine.send"]("mysqlrepl.tunnel_keys")
            changes["published"] = "mine mysqlrepl.tunnel_keys"
    return changes


def _sshd_dropin_apply(cfg, path, text, sshd):
    """Write the tunnel user's sshd settings, have sshd check its whole config, reload it;
    a config sshd refuses is put back as it was (the running sshd was never told)."""
    old = _read(path)
    _write_file(path, text, mode=0o644, uid=0, gid=0)
    check = __salt__["cmd.run_all"]([sshd["sshd"], "-t", "-f", sshd["config_file"]], python_shell=False)
    if check["retcode"] != 0:
        if old is None:
            os.remove(path)
        else:
            _write_file(path, old, mode=0o644, uid=0, gid=0)
        raise CommandExecutionError(f"sshd refuses its config with {path} ({sshd['sshd']} -t -f "
                                    f"{sshd['config_file']}): {check['stderr'] or check['stdout']}; put back")
    if not __salt__["service.reload"](sshd["service"]):
        raise CommandExecutionError(f"service.reload {sshd['service']} failed after writing {path}")


def _sshd_effective_check(cfg, path, sshd, tunnels):
    """sshd must apply the drop-in to the tunnel user (its config Includes the directory)."""
    user = cfg["tunnel"]["user"]
    ret = __salt__["cmd.run_all"]([sshd["sshd"], "-T", "-f", sshd["config_file"],
                                   "-C", f"user={user},host=localhost,addr=127.0.0.1"], python_shell=False)
    ok, seen = _u("mysqlrepl_tunnel.sshd_effective_ok")(ret["stdout"], tunnels)
    if ret["retcode"] != 0 or not ok:
        raise CommandExecutionError(
            f"sshd ({sshd['config_file']}) does not apply {path} to {user} (it shows {seen}): its config "
            f"must Include {sshd['config_dir']}/*.conf before any Match block (Debian's does); "
            f"{ret['stderr'].strip()}")


def _stale_units(cfg, local, mine):
    """Services of tunnels this minion's servers opened (units the formula wrote for this
    topology) that pillar no longer has."""
    unit_dir = cfg["tunnel"]["unit_dir"]
    keep = {f"{t['service']}.service" for t in mine["near"]}
    try:
        entries = sorted(os.listdir(unit_dir))
    except FileNotFoundError:
        return []
    mark = f"(topology {cfg['topology']})"
    out = []
    for entry in entries:
        if entry in keep or not entry.endswith(".service"):
            continue
        if not any(entry.startswith(f"mysqlrepl-tunnel-{name}-") for name in local):
            continue
        text = _read(os.path.join(unit_dir, entry)) or ""
        if text.startswith("# Managed by Salt (mysqlrepl)") and mark in text:
            out.append(entry[: -len(".service")])
    return out


def _remove_units(cfg, services):
    for service in services:
        if __salt__["service.status"](service):
            __salt__["service.stop"](service)
        if __salt__["service.enabled"](service):
            __salt__["service.disable"](service)
        os.remove(os.path.join(cfg["tunnel"]["unit_dir"], f"{service}.service"))
    if services and __grains__.get("init") == "systemd" and "service.systemctl_reload" in __salt__:
        __salt__["service.systemctl_reload"]()  # forget the removed units


def _hosts_add(path, names):
    """
    Add ``127.0.0.1 <name>`` lines to the hosts file, under an exclusive lock on it and by
    an atomic rename (a resolver never reads a half-written file; two minions of one
    machine never lose each other's lines). Salt's ``hosts`` module rewrites it in place.
    """
    import fcntl  # pylint: disable=import-outside-toplevel

    while True:
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                same = os.stat(path).st_ino == st.st_ino
            except FileNotFoundError:
                same = False
            if not same:  # replaced while we waited: lock the new one
                continue
            text = _read(path)
            new = _u("mysqlrepl_tunnel.hosts_with")(text, names)
            if new != text:
                try:
                    _u("mysqlrepl_tls.write_atomic")(path, new, st.st_mode & 0o7777, st.st_uid, st.st_gid)
                except OSError as exc:
                    if exc.errno not in (errno.EBUSY, errno.EXDEV):
                        raise
                    # a bind-mounted hosts file (containers) cannot be replaced: append in
                    # place, still under the lock (only lines are added)
                    with open(path, "a", encoding="utf-8") as handle:
                        handle.write(new[len(text or ""):])
            return
        finally:
            os.close(fd)


def _forward_answers(port, timeout):
    """Does 127.0.0.1:``port`` accept a TCP connection within ``timeout`` s? (the forward)"""
    import socket  # pylint: disable=import-outside-toplevel

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=1):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def tunnel_apply(server=None, test=False, side="both", wait=True):
    """
    Make this minion's tunnels match pillar (``_utils/mysqlrepl_tunnel.py`` renders every
    file). ``side="peer"``: what the far side of a tunnel needs (the tunnel user and its
    authorized_keys, forwarding only to and from the tunnel's ports); ``"near"``: what
    the side that opens it needs (known_hosts with the far sshd's pinned host key, the
    autossh unit, the service enabled and running, and, with ``wait``, its forward
    answering); ``"both"``. Both sides: hosts-file lines for the other ends' tunnel
    names. Returns ``{"result", "changes", "comment"}``; ``test=True`` changes nothing and
    lists what differs. Fails while a key it needs is not in the mine yet.

    CLI Example:

    .. code-block:: bash

        salt 'db*' mysqlrepl.tunnel_apply test=True
    """
    if side not in ("peer", "near", "both"):
        raise SaltInvocationError(f"side must be peer, near or both, got {side!r}")
    cfg = _cfg()
    local, mine = _tunnel_roles(cfg, server)
    changes, waiting, notes = {}, [], []
    stale = [] if side == "peer" else _stale_units(cfg, local, mine)
    for service in stale:
        changes[f"service {service}"] = "stopped, disabled, unit removed (no longer in pillar)"
    uid = gid = None
    if mine["near"] or mine["peer"]:
        uid, gid, change = _tunnel_user(cfg, test)
        if change:
            changes["user"] = change
    want = {}
    if side in ("peer", "both"):
        home = cfg["tunnel"]["dir"]
        by_file = {}
        peers = {t["peer"] for t in mine["peer"]}
        for name in sorted(local):
            path = _tun("authorized_keys_file")(cfg["servers"][name], home)
            # a server no longer any tunnel's far side keeps its file, emptied of keys: a
            # tunnel removed from pillar loses its access (only files the formula wrote)
            if name in peers or (_read(path) or "").startswith("# Managed by Salt (mysqlrepl)"):
                by_file.setdefault(path, []).append(name)
        nears = sorted({t["near"] for t in mine["peer"]})
        keys = {n: entry.get("client") for n, entry in _published(cfg, nears).items()}
        for path, peers in by_file.items():
            text, missing = _tun("authorized_keys")(cfg, peers, keys)
            waiting += [f"the tunnel key of {n} (apply mysqlrepl.tunnel on {cfg['servers'][n]['minion']})"
                        for n in missing]
            if uid is not None:
                _ensure_dir(os.path.dirname(path), 0o755, 0, 0, test, changes)
            want[path] = {"text": text, "mode": 0o644, "uid": 0, "gid": 0}
    # the far sshd's settings for the tunnel user: it must drop a dead client (ClientAlive*)
    dropins = {}
    if side in ("peer", "both"):
        for name in sorted({t["peer"] for t in mine["peer"]}):
            sshd = cfg["servers"][name]["sshd"]
            path = _tun("sshd_dropin_path")(sshd)
            here = [t for t in mine["peer"]
                    if _tun("sshd_dropin_path")(cfg["servers"][t["peer"]]["sshd"]) == path]
            want[path] = {"text": _tun("sshd_dropin")(cfg, here), "mode": 0o644, "uid": 0, "gid": 0}
            dropins[path] = (sshd, here)
    units = {}
    if side in ("near", "both") and mine["near"]:
        for near in sorted({t["near"] for t in mine["near"]}):
            peers = sorted({t["peer"] for t in mine["near"] if t["near"] == near})
            host_keys = {n: entry.get("host") for n, entry in _published(cfg, peers).items()}
            text, missing = _tun("known_hosts")(cfg, near, host_keys)
            waiting += [f"the sshd host key of {n} (apply mysqlrepl.tunnel on {cfg['servers'][n]['minion']})"
                        for n in missing]
            paths = _tun("paths")(cfg, near)
            if not os.path.exists(paths["key"]):
                waiting.append(f"{near}'s tunnel key ({paths['key']}: apply mysqlrepl.tunnel_key_apply)")
            want[paths["known_hosts"]] = {"text": text, "mode": 0o644, "uid": 0, "gid": 0}
        for t in mine["near"]:
            path = os.path.join(cfg["tunnel"]["unit_dir"], f"{t['service']}.service")
            want[path] = {"text": _tun("unit")(cfg, t), "mode": 0o644, "uid": 0, "gid": 0}
            units[t["service"]] = path
    have = {path: _file_facts(path) for path in want}
    differs = _tun("file_changes")(want, have)
    changes.update(differs)
    hosts = [] if side == "peer" else _tun("hosts_entries")(cfg, local)
    hosts_file = __opts__.get("hosts.file") or "/etc/hosts"
    for name in _tun("hosts_missing")(_read(hosts_file), hosts):
        changes[f"hosts {name}"] = "127.0.0.1"
    services = {}
    for service, path in units.items():
        running, enabled = __salt__["service.status"](service), __salt__["service.enabled"](service)
        if path in differs and running:
            services[service] = "restart"
        elif not running:
            services[service] = "start"
        if not enabled:
            changes[f"service {service}"] = "enabled" + (f", {services[service]}ed" if service in services else "")
        elif service in services:
            changes[f"service {service}"] = f"{services[service]}ed" if services[service] == "restart" else "started"
    if waiting:
        return {"result": None if test else False, "changes": changes if test else {},
                "comment": ("would wait for: " if test else "waiting for: ") + "; ".join(waiting)}
    if test:
        return {"result": None if changes else True, "changes": changes,
                "comment": f"would change {len(changes)} item(s)" if changes
                else ("tunnels as pillar says" if mine["near"] or mine["peer"] else "no tunnel")}
    _remove_units(cfg, stale)
    for path in differs:
        w = want[path]
        if path in dropins:
            _sshd_dropin_apply(cfg, path, w["text"], dropins[path][0])
            continue
        _write_file(path, w["text"], mode=w["mode"], uid=w["uid"], gid=w["gid"])
    for path, (sshd, here) in dropins.items():
        _sshd_effective_check(cfg, path, sshd, here)
    if hosts:
        try:
            _hosts_add(hosts_file, hosts)
        except OSError as exc:
            raise CommandExecutionError(f"cannot add the tunnel names to {hosts_file}: {exc}") from exc
    for service, path in units.items():
        if not __salt__["service.enabled"](service):
            __salt__["service.enable"](service)
        if services.get(service) == "restart":
            ok = __salt__["service.restart"](service)
        elif services.get(service) == "start":
            ok = __salt__["service.start"](service)
        else:
            continue
        if not ok:
            changes.pop(f"service {service}", None)
            return {"result": False, "changes": changes, "comment": f"service {service} did not start"}
    if wait and side != "peer":
        for t in mine["near"]:
            if not _forward_answers(t["port"], cfg["tunnel"]["connect_timeout"] * 3):
                return {"result": False, "changes": changes,
                        "comment": (f"tunnel {t['id']} is not up: 127.0.0.1:{t['port']} does not answer "
                                    f"(service {t['service']}; check {t['peer']}'s sshd at "
                                    f"{cfg['servers'][t['peer']]['sshd']['host']}:"
                                    f"{cfg['servers'][t['peer']]['sshd']['port']} and its log)")}
            notes.append(f"{t['id']} up")
    quiet = "tunnels as pillar says" if mine["near"] or mine["peer"] else "no tunnel"
    return {"result": True, "changes": changes,
            "comment": (", ".join(notes) or quiet) if not changes
            else f"{len(changes)} item(s) changed" + (f"; {', '.join(notes)}" if notes else "")}


def _forward_reaches_server(port, timeout=2.0):
    """Does 127.0.0.1:``port`` lead to a database server? (MySQL/MariaDB speak first: a
    forward whose far end refuses closes at once, one that works sends the greeting.)"""
    import socket  # pylint: disable=import-outside-toplevel

    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return bool(sock.recv(4))
    except OSError:
        return False


def _processes():
    """Every process as ``{"pid", "ppid", "argv", "started"}`` (``started``: epoch seconds)."""
    out = []
    try:
        boot = next(float(line.split()[1]) for line in open("/proc/stat", encoding="utf-8")  # noqa: SIM115
                    if line.startswith("btime"))
    except (OSError, StopIteration):
        boot = 0.0
    hz = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                fields = fh.read().rpartition(")")[2].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
        except OSError:
            continue
        out.append({"pid": int(entry), "ppid": int(fields[1]), "argv": argv,
                    "started": round(boot + int(fields[19]) / hz, 1)})
    return out


def tunnel_status(server=None):
    """
    This minion's tunnels: for each, up or down, whether the forward to the other end's
    database (and seed listener) answers, and on the side that opens it the autossh and
    ssh PIDs and the last (re)start of ssh (epoch seconds). Also part of ``status``.

    CLI Example:

    .. code-block:: bash

        salt 'db*' mysqlrepl.tunnel_status
    """
    cfg = _cfg()
    local, mine = _tunnel_roles(cfg, server)
    procs = _processes() if mine["near"] else []
    out = []
    for t in mine["near"] + mine["peer"]:
        name = t["near"] if t in mine["near"] else t["peer"]
        near_side = name == t["near"]
        db_port, seed_port = (t["port"], t["seed_port"]) if near_side else (t["peer_port"], t["peer_seed_port"])
        # the database forward must reach a server (its greeting); the seed forward only listens
        # (nothing listens behind it between seeds)
        answers = {db_port: _forward_reaches_server(db_port), seed_port: _forward_answers(seed_port, 0)}
        found = _tun("find_processes")(procs, cfg, t) if near_side else {}
        out.append(_tun("state")(cfg, t, name, found, answers))
    return out


# ---------------------------------------------------------------------------

def formula_hashes(forms=("modules", "states", "utils")):
    """
    SHA-256 of every synced custom module file of this minion (what
    ``saltutil.sync_*`` copied under ``extension_modules``), ``{"modules/x.py": hex}``;
    ``salt-run mysqlrepl.sync_minions`` compares them with the salt-master's file
    server and runs ``saltutil.sync_all`` only where they differ. Reads files only.

    CLI Example:

    .. code-block:: bash

        salt 'db*' mysqlrepl.formula_hashes
    """
    import hashlib  # pylint: disable=import-outside-toplevel

    if isinstance(forms, str):
        forms = [f.strip() for f in forms.split(",") if f.strip()]
    base = __opts__["extension_modules"]
    out = {}
    for form in forms:
        top = os.path.join(base, form)
        for dirpath, _dirs, files in os.walk(top):
            for fname in files:
                # what saltutil.sync_* copies (.py, .pyx, .so, .zip), not the loader's __pycache__
                if "__pycache__" in dirpath or not fname.endswith((".py", ".pyx", ".so", ".zip")):
                    continue
                path = os.path.join(dirpath, fname)
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 16), b""):  # pylint: disable=cell-var-from-loop
                        digest.update(chunk)
                out[f"{form}/{os.path.relpath(path, top)}"] = digest.hexdigest()
    return out
