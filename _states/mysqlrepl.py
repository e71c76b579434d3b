"""
States for MySQL/MariaDB replication over TLS, driven from the ``mysqlrepl`` pillar.

Every state takes ``name``: a server of ``mysqlrepl:servers`` owned by this
minion, or ``local`` (the default in the formula's SLS) for all of them. The
real work is in the ``mysqlrepl`` execution module; these functions turn its
plans into state returns, honour ``test=True`` and never print a secret.

.. code-block:: yaml

    mysqlrepl-preflight:
      mysqlrepl.preflight: []

    mysqlrepl-replication:
      mysqlrepl.replication_running:
        - name: local
        - require:
          - mysqlrepl: mysqlrepl-preflight
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "mysqlrepl"


def __virtual__():
    if "mysqlrepl.settings" in __salt__:
        return __virtualname__
    return (False, "the mysqlrepl execution module is not available (saltutil.sync_all?)")


def _ret(name):
    return {"name": name, "changes": {}, "result": True, "comment": ""}


def _servers(name):
    cfg = __salt__["mysqlrepl.settings"]()
    if name in ("local", None, ""):
        return cfg["local_servers"]
    if name not in cfg["local_servers"]:
        raise SaltInvocationError(
            f"server {name} is not owned by this minion (it owns: {', '.join(cfg['local_servers']) or 'none'})"
        )
    return [name]


def _each(name, func):
    """
    Run ``func(server) -> (result, changes, comment)`` for each server and fold
    the answers into one state return. Errors become a failed state whose
    comment carries the error (the server's own message).
    """
    ret = _ret(name)
    try:
        servers = _servers(name)
    except (SaltInvocationError, CommandExecutionError) as exc:
        ret.update(result=False, comment=str(exc))
        return ret
    if not servers:
        ret["comment"] = "this minion owns no server of mysqlrepl:servers"
        return ret
    comments = []
    for server in servers:
        try:
            result, changes, comment = func(server)
        except (SaltInvocationError, CommandExecutionError) as exc:
            result, changes, comment = False, {}, str(exc)
        if changes:
            ret["changes"][server] = changes
        comments.append(f"{server}: {comment}")
        if result is False:
            ret["result"] = False
        elif result is None and ret["result"] is not False:
            ret["result"] = None
    ret["comment"] = "\n".join(comments)
    return ret


def preflight(name="local"):
    """
    Validate the whole ``mysqlrepl`` pillar tree and reach every server this
    minion owns. Every other state of the formula requires this one, so a bad
    pillar, an unreachable server or a wrong password stops the run before
    anything changes.
    """
    def check(server):
        __salt__["mysqlrepl.status"](server)
        return True, {}, "pillar valid, server reachable"

    ret = _ret(name)
    try:
        __salt__["mysqlrepl.settings"]()
    except (SaltInvocationError, CommandExecutionError) as exc:
        ret.update(result=False, comment=f"invalid pillar: {exc}")
        return ret
    return _each(name, check)


def ca_present(name="mysqlrepl"):
    """
    On the CA minion (``mysqlrepl:ca:minion``): the topology CA exists, made
    with ``mysqlrepl.create_ca`` from the ``mysqlrepl:ca`` pillar. Its key stays
    on this minion.
    """
    ret = _ret(name)
    try:
        cfg = __salt__["mysqlrepl.settings"]()
    except (SaltInvocationError, CommandExecutionError) as exc:
        ret.update(result=False, comment=f"invalid pillar: {exc}")
        return ret
    ca = cfg["ca"]
    if ca["minion"] != __opts__["id"]:
        ret.update(result=False, comment=f"the CA lives on minion {ca['minion']}, not {__opts__['id']}")
        return ret
    exists = __salt__["file.file_exists"](ca["cert_file"]) and __salt__["file.file_exists"](ca["key_file"])
    if exists:
        ret["comment"] = f"CA {ca['ca_name']} exists at {ca['dir']}"
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes={"ca": f"would create {ca['cert_file']}"},
                   comment=f"CA {ca['ca_name']} would be created")
        return ret
    # absent subject fields stay absent (tls.create_ca would default to Utah)
    fields = {k: ca.get(k) for k in ("C", "ST", "L", "O", "OU", "emailAddress")}
    try:
        message = __salt__["mysqlrepl.create_ca"](
            ca["ca_name"], bits=ca["bits"], days=ca["days"], CN=ca["CN"],
            cacert_path=ca["cacert_path"], digest=ca["digest"], **fields,
        )
    except CommandExecutionError as exc:
        ret.update(result=False, comment=str(exc))
        return ret
    ret.update(changes={"ca": ca["cert_file"]}, comment=message)
    return ret


def certificates_signed(name="mysqlrepl"):
    """
    On the CA minion: sign the servers' CSRs published to the mine when they
    match pillar, re-issue certificates near expiry, publish the result. A CSR
    that asks for another name than pillar gives is refused (failed state).
    Servers that have not published a CSR yet are listed, not failed: their
    own ``tls_ready`` state fails until they get a certificate.
    """
    ret = _ret(name)
    try:
        res = __salt__["mysqlrepl.sign_pending"](test=__opts__["test"])
    except (SaltInvocationError, CommandExecutionError) as exc:
        ret.update(result=False, comment=str(exc))
        return ret
    notes = []
    if res["signed"]:
        ret["changes"]["signed"] = res["signed"]
        notes.append(("would sign " if __opts__["test"] else "signed ") + ", ".join(res["signed"]))
        if __opts__["test"]:
            ret["result"] = None
    if res["missing"]:
        notes.append("no CSR published yet for " + ", ".join(res["missing"]))
    if res["refused"]:
        ret["result"] = False
        notes.append("refused: " + "; ".join(res["refused"]))
    ret["comment"] = "; ".join(notes) or "every certificate is issued and current"
    return ret


_KEY_ITEMS = ("server.key", "server.csr", "client.key", "client.csr")


def csr_published(name="local"):
    """
    The server's private key exists (0600, owned by its OS user; made on this
    minion, never sent anywhere) and a CSR for the names pillar gives is
    published to the mine for the CA minion.
    """
    def apply(server):
        if __opts__["test"]:
            problems = {item: why for item, why in __salt__["mysqlrepl.tls_check"](server)
                        if item in _KEY_ITEMS}
            return (None, problems, "key/CSR would change") if problems else (True, {}, "key and CSR in place")
        changes = __salt__["mysqlrepl.csr_apply"](server)
        return True, changes, "key/CSR updated" if changes else "key and CSR in place"

    return _each(name, apply)


def tls_ready(name="local"):
    """
    The server's certificate (signed by the topology CA, with the server's
    address in its SAN, renewed before expiry) and the CA certificate are in
    place. Fails, naming what it waits for, while the CA minion has not signed.
    """
    def apply(server):
        if __opts__["test"]:
            problems = {item: why for item, why in __salt__["mysqlrepl.tls_check"](server)
                        if item not in _KEY_ITEMS}
            return (None, problems, "certificates would change") if problems else (True, {}, "certificates in place")
        res = __salt__["mysqlrepl.cert_apply"](server)
        if res["waiting"]:
            return False, res["changes"], "waiting for: " + "; ".join(res["waiting"])
        comment = "certificates updated" if res["changes"] else "certificates in place"
        if res.get("pending"):
            comment += "; renewal due, the current one is still valid: " + "; ".join(res["pending"])
        return True, res["changes"], comment

    return _each(name, apply)


def server_configured(name="local"):
    """
    The server's config drop-in holds the replication settings (server_id,
    binary log, ROW, GTID domain, crash safety, report_host, TLS files,
    ``read_only=ON``). Dynamic settings are applied live; static ones restart
    the server only when ``restart_allowed`` (test=True says "restart"). After
    TLS is on, ``have_ssl`` must be YES.
    """
    def apply(server):
        res = __salt__["mysqlrepl.config_apply"](server, test=__opts__["test"])
        return res["result"], res["changes"], res["comment"]

    return _each(name, apply)


def users_present(name="local"):
    """
    The replication account exists on the server with the TLS requirement pillar
    asks for (REQUIRE SSL / X509 / SUBJECT), its password (never shown) and
    REPLICATION SLAVE; anonymous accounts are gone. Applied with
    ``sql_log_bin=0``.
    """
    def apply(server):
        plan = __salt__["mysqlrepl.users_apply"](server, test=__opts__["test"])
        if not plan:
            return True, {}, "accounts as pillar says"
        if __opts__["test"]:
            return None, plan, "accounts would change"
        return True, plan, "accounts updated"

    return _each(name, apply)


def replication_running(name="local"):
    """
    The server plays the role pillar gives it: the master of record is writable
    and replicates from nobody; a replica is read-only and replicates from the
    master over verified TLS with GTID, both threads running. Refuses (failed
    state) when the live topology differs from pillar, or when a replica was
    never seeded.
    """
    def apply(server):
        res = __salt__["mysqlrepl.replication_apply"](server, test=__opts__["test"])
        return res["result"], res["changes"], res["comment"]

    return _each(name, apply)


def tunnel_keys_ready(name="local"):
    """
    On a server that opens an SSH tunnel (``servers:<name>:tunnels``): the tunnel user
    and an ed25519 key made on this minion (0600, never sent anywhere), its public
    half published to the mine; on a server a tunnel logs into: its sshd's host key
    published. Nothing for servers without tunnels.
    """
    def apply(server):
        changes = __salt__["mysqlrepl.tunnel_key_apply"](server, test=__opts__["test"])
        if __opts__["test"]:
            return (None, changes, "tunnel key would change") if changes else (True, {}, "tunnel key in place")
        return True, changes, "tunnel key updated" if changes else "tunnel key in place"

    return _each(name, apply)


def tunnels_ready(name="local", side="both", wait=True):
    """
    The server's SSH tunnels as pillar says. ``side: peer``: the far side only (tunnel
    user, ``authorized_keys`` lines that allow forwarding to and from the tunnel's ports
    and nothing else); ``near``: the side that opens them (pinned known_hosts, the
    autossh service unit, enabled and running, its forward answering); ``both``.
    Fails, saying which key it needs, while one is not in the mine yet (test=True: None).
    """
    def apply(server):
        res = __salt__["mysqlrepl.tunnel_apply"](server, test=__opts__["test"], side=side, wait=wait)
        return res["result"], res["changes"], res["comment"]

    return _each(name, apply)
