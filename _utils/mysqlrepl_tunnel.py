"""
SSH tunnels: replication (and seeding) between servers that cannot reach each
other's database port, through a port-forwarding ssh connection that autossh
keeps up (seeds 000 and 001). Pure logic, no Salt: the execution module reads
files, the mine and processes, calls these functions and writes what they
return; ``tests/unit/test_tunnel.py`` covers each of them.

The model (pillar ``servers:<near>:tunnels: [{peer, port, ...}]``, validated by
``mysqlrepl_config``): *near*'s host opens one ssh connection to *peer*'s sshd
as the tunnel user and holds four forwards, all bound to 127.0.0.1:

====================  ===========  ==========================================
listens on            port         reaches
====================  ===========  ==========================================
near's host (``-L``)  port         peer's database (address:port)
near's host (``-L``)  seed_port    peer's seed listener (address:seed port)
peer's host (``-R``)  peer_port    near's database
peer's host (``-R``)  peer_seed_p  near's seed listener
====================  ===========  ==========================================

so whichever end replicates from the other goes through it (a replica behind
``-L``, seed 000; a master behind a firewall opening ``-R``, seed 001), and the
master's side reaches the replica for seeding and for the switch's checks.

TLS stays verified end to end: a server reached through a tunnel is reached by
its *tunnel name* (``<server>.<topology>.<domain>``), which resolves to
127.0.0.1 on the other end's host (a hosts-file line) and is in that server's
certificate only. ``MASTER_HOST`` is that name, so the replica's IO thread
checks the certificate against it: a tunnel pointed at another server of the
same CA presents a certificate without the name and is refused.

What the far side allows: one ``authorized_keys`` line per near key,
``restrict`` (no pty, no agent/X11 forwarding, no ~/.ssh/rc) with
``port-forwarding`` back on, ``command="/bin/false"`` (no shell, no command),
``permitopen`` for exactly the peer's database and seed listener and
``permitlisten`` for exactly the two 127.0.0.1 ports of the ``-R`` forwards.
The far sshd's host key is pinned in a known_hosts file of the formula's under
a fixed alias (``HostKeyAlias``); ``StrictHostKeyChecking=yes``.
"""

import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

LOOPBACK = "127.0.0.1"
KEY_NAME = "id_ed25519"
# what a public key line looks like (type, base64, optional comment)
_PUBKEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) ([A-Za-z0-9+/=]+)(?: .*)?$")


# ---------------------------------------------------------------------------
# where a server is reached from another server's host
# ---------------------------------------------------------------------------

def between(cfg, a, b):
    """The tunnel joining servers ``a`` and ``b`` (either way), or ``None``."""
    for t in cfg.get("tunnels") or ():
        if {t["near"], t["peer"]} == {a, b}:
            return t
    return None


def reach(cfg, frm, to):
    """
    How a client on ``frm``'s host reaches ``to`` (``mysqlrepl_config`` works it out
    with the pillar): ``{"host", "port", "seed_port", "tunnel"}``. ``host`` is also
    the name ``to``'s certificate is verified against. ``frm=None``: directly.
    """
    if frm is None or frm == to:
        srv = cfg["servers"][to]
        return {"host": srv["address"], "port": srv["port"], "seed_port": cfg["seed"]["port"], "tunnel": None}
    return cfg["reach"][frm][to]


def hosts_entries(cfg, local_servers):
    """
    The hosts-file names this host must resolve to 127.0.0.1: the tunnel names
    of the servers its own servers reach through a tunnel. Sorted.
    """
    names = set()
    for t in cfg.get("tunnels") or ():
        for mine, other in ((t["near"], t["peer"]), (t["peer"], t["near"])):
            if mine in local_servers:
                names.add(cfg["servers"][other]["tunnel_host"])
    return sorted(names)


# ---------------------------------------------------------------------------
# the near side: files, the ssh command, the service
# ---------------------------------------------------------------------------

def paths(cfg, near):
    """The near side's files for server ``near``: its key pair and known_hosts."""
    base = f"{cfg['tunnel']['dir'].rstrip('/')}/{near}"
    return {
        "dir": base,
        "key": f"{base}/{KEY_NAME}",
        "pub": f"{base}/{KEY_NAME}.pub",
        "known_hosts": f"{base}/known_hosts",
    }


def host_alias(cfg, server):
    """The name the far sshd's host key is pinned under (``HostKeyAlias``)."""
    return f"sshd.{cfg['servers'][server]['tunnel_host']}"


def key_comment(cfg, near):
    return f"mysqlrepl:{cfg['topology']}:{near}"


def forwards(cfg, t):
    """The four forwards of tunnel ``t`` as ssh arguments, in a fixed order."""
    servers = cfg["servers"]
    near, peer = servers[t["near"]], servers[t["peer"]]
    seed = cfg["seed"]["port"]
    return [
        ("-L", f"{LOOPBACK}:{t['port']}:{peer['address']}:{peer['port']}"),
        ("-L", f"{LOOPBACK}:{t['seed_port']}:{peer['address']}:{seed}"),
        ("-R", f"{LOOPBACK}:{t['peer_port']}:{near['address']}:{near['port']}"),
        ("-R", f"{LOOPBACK}:{t['peer_seed_port']}:{near['address']}:{seed}"),
    ]


def ssh_options(cfg, t):
    """``-o`` options of the tunnel's ssh: keys and host pinned, nothing else forwarded."""
    p = paths(cfg, t["near"])
    return [
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        f"IdentityFile={p['key']}",
        f"UserKnownHostsFile={p['known_hosts']}",
        "GlobalKnownHostsFile=/dev/null",
        "StrictHostKeyChecking=yes",
        f"HostKeyAlias={host_alias(cfg, t['peer'])}",
        "CheckHostIP=no",
        "UpdateHostKeys=no",
        f"ServerAliveInterval={t['alive_interval']}",
        f"ServerAliveCountMax={t['alive_count']}",
        "ExitOnForwardFailure=yes",
        f"ConnectTimeout={cfg['tunnel']['connect_timeout']}",
        "ControlMaster=no",
        "ControlPath=none",
        "ForwardAgent=no",
        "ForwardX11=no",
        "PermitLocalCommand=no",
        "RequestTTY=no",
    ]


def command(cfg, t):
    """
    autossh's argv for tunnel ``t``: ``-M 0`` (no monitor port: ssh's
    ServerAlive* notice a dead link and ssh exits, autossh starts it again),
    ``-N`` (no remote command), ``-F /dev/null`` (no ssh_config can change it).
    """
    sshd = cfg["servers"][t["peer"]]["sshd"]
    argv = [cfg["tunnel"]["autossh"], "-M", "0", "-N", "-T", "-F", "/dev/null"]
    for opt in ssh_options(cfg, t):
        argv += ["-o", opt]
    for flag, spec in forwards(cfg, t):
        argv += [flag, spec]
    argv += ["-p", str(sshd["port"]), "-l", cfg["tunnel"]["user"], sshd["host"]]
    return argv


def environment(cfg):
    """autossh's environment: retry even when the first connection fails (the far side's
    key may arrive a moment later), and the ssh binary to run."""
    return {"AUTOSSH_GATETIME": "0", "AUTOSSH_PATH": cfg["tunnel"]["ssh"]}


def unit(cfg, t):
    """The systemd unit that supervises tunnel ``t`` (``<service>.service``)."""
    env = environment(cfg)
    lines = [
        "# Managed by Salt (mysqlrepl): do not edit, changes are overwritten.",
        "[Unit]",
        f"Description=mysqlrepl tunnel {t['near']} -> {t['peer']} (topology {cfg['topology']})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        f"User={cfg['tunnel']['user']}",
    ]
    lines += [f"Environment={k}={v}" for k, v in sorted(env.items())]
    lines += [
        "ExecStart=" + " ".join(command(cfg, t)),
        "Restart=always",
        "RestartSec=5",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def known_hosts(cfg, near, host_keys):
    """
    The near side's known_hosts text: one pinned line per peer of ``near``'s
    tunnels, ``host_keys`` ``{peer: "ssh-ed25519 AAAA..."}`` from the mine.
    Returns ``(text, missing)``; ``missing`` names the peers whose key is not
    published yet (no line is written for them: ssh then refuses to connect).
    """
    lines, missing = [], []
    for t in cfg.get("tunnels") or ():
        if t["near"] != near:
            continue
        key = parse_key(host_keys.get(t["peer"]))
        if key is None:
            missing.append(t["peer"])
            continue
        lines.append(f"{host_alias(cfg, t['peer'])} {key[0]} {key[1]}")
    return ("".join(f"{line}\n" for line in sorted(lines)), sorted(missing))


# ---------------------------------------------------------------------------
# the far side: the tunnel user's authorized_keys
# ---------------------------------------------------------------------------

def parse_key(text):
    """``(type, base64)`` of a public key line, or ``None`` when it is not one."""
    if not isinstance(text, str):
        return None
    m = _PUBKEY_RE.match(text.strip())
    return (m.group(1), m.group(2)) if m else None


def authorized_line(cfg, t, near_key):
    """
    The far side's line for tunnel ``t``'s near key: forwarding only, to and from
    exactly the tunnel's ports.
    """
    key = parse_key(near_key)
    if key is None:
        raise ValueError(f"not a public key: {near_key!r}")
    servers = cfg["servers"]
    peer = servers[t["peer"]]
    opts = ["restrict", "port-forwarding", 'command="/bin/false"',
            f'permitopen="{peer["address"]}:{peer["port"]}"',
            f'permitopen="{peer["address"]}:{cfg["seed"]["port"]}"',
            f'permitlisten="{LOOPBACK}:{t["peer_port"]}"',
            f'permitlisten="{LOOPBACK}:{t["peer_seed_port"]}"']
    return f"{','.join(opts)} {key[0]} {key[1]} {key_comment(cfg, t['near'])}"


def authorized_keys(cfg, peers, client_keys):
    """
    The authorized_keys text for the tunnels whose peer is one of ``peers`` (this
    host's servers sharing one file), ``client_keys`` ``{near: public key}`` from
    the mine. Returns ``(text, missing)``: ``missing`` names near servers whose
    key is not published yet.
    """
    lines, missing = [], []
    for t in cfg.get("tunnels") or ():
        if t["peer"] not in peers:
            continue
        near_key = client_keys.get(t["near"])
        if parse_key(near_key) is None:
            missing.append(t["near"])
            continue
        lines.append(authorized_line(cfg, t, near_key))
    header = "# Managed by Salt (mysqlrepl): tunnel keys only, do not edit.\n"
    return (header + "".join(f"{line}\n" for line in sorted(lines)), sorted(missing))


def authorized_keys_file(srv, user_home):
    """The far side's authorized_keys path for server ``srv`` (pillar, or the user's own)."""
    return srv["sshd"]["authorized_keys_file"] or f"{user_home.rstrip('/')}/.ssh/authorized_keys"


# ---------------------------------------------------------------------------
# reading a tunnel's state
# ---------------------------------------------------------------------------

def find_processes(procs, cfg, t):
    """
    The tunnel's autossh and its ssh child among ``procs`` (``[{"pid", "ppid",
    "argv", "started"}]``, read from /proc): autossh is the process whose argv is
    the unit's command; ssh is its child. Returns ``{"autossh": proc or None,
    "ssh": proc or None}``.
    """
    want = command(cfg, t)
    autossh = None
    for p in procs:
        argv = p.get("argv") or []
        if argv and argv[0].rsplit("/", 1)[-1] == "autossh" and argv[1:] == want[1:]:
            autossh = p
            break
    ssh = None
    if autossh is not None:
        children = [p for p in procs if p.get("ppid") == autossh["pid"]]
        ssh = next((p for p in children if (p.get("argv") or [""])[0].rsplit("/", 1)[-1] == "ssh"), None)
    return {"autossh": autossh, "ssh": ssh}


def state(cfg, t, server, found, answers):
    """
    One tunnel as ``mysqlrepl.status`` shows it, seen from ``server``'s host
    (``near`` or ``peer``): ``found`` from :func:`find_processes` (near side only),
    ``answers`` ``{port: True/False}``: for the database forward, whether a server
    greeted through it; for the seed forward, whether it listens (nothing is
    behind it between seeds). ``up`` when the database forward reaches the other
    end's server (and, on the near side, ssh runs under autossh).
    """
    near_side = server == t["near"]
    other = t["peer"] if near_side else t["near"]
    db_port = t["port"] if near_side else t["peer_port"]
    seed_port = t["seed_port"] if near_side else t["peer_seed_port"]
    out = {
        "tunnel": t["id"],
        "side": "near" if near_side else "peer",
        "other": other,
        "service": t["service"] if near_side else None,
        "forward": f"{LOOPBACK}:{db_port} -> {other} database",
        "forward_answers": bool(answers.get(db_port)),
        "seed_forward_listens": bool(answers.get(seed_port)),
    }
    if near_side:
        a, s = found.get("autossh"), found.get("ssh")
        out.update({
            "autossh_pid": a["pid"] if a else None,
            "ssh_pid": s["pid"] if s else None,
            # autossh starts a new ssh for every (re)connection: its start is the last restart
            "last_restart": s["started"] if s else None,
        })
        out["up"] = bool(a and s and out["forward_answers"])
    else:
        out["up"] = out["forward_answers"]
    return out


# ---------------------------------------------------------------------------
# keys and files
# ---------------------------------------------------------------------------

def new_key():
    """A new ed25519 private key in OpenSSH's format (text)."""
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()


def public_line(private_text, comment):
    """The ``ssh-ed25519 AAAA... comment`` line of an OpenSSH private key, or ``None`` when
    the text is not an unencrypted ed25519 key."""
    try:
        key = serialization.load_ssh_private_key(private_text.encode(), password=None)
    except (ValueError, TypeError, AttributeError):
        return None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{pub.decode()} {comment}"


def file_changes(want, have):
    """
    ``want``: ``{path: {"text", "mode", "uid", "gid"}}``; ``have``: the same read from
    disk (``None``: missing; ``text`` ``None``: not read, e.g. a private key). Returns
    ``{path: what differs}`` ("missing", "content differs", "mode 0644, want 0600", "owner").
    """
    out = {}
    for path, w in sorted(want.items()):
        h = have.get(path)
        if h is None:
            out[path] = "missing"
            continue
        why = []
        if w.get("text") is not None and h.get("text") != w["text"]:
            why.append("content differs")
        if h.get("mode") != w["mode"]:
            why.append(f"mode {h.get('mode'):04o}, want {w['mode']:04o}" if h.get("mode") is not None
                       else f"want mode {w['mode']:04o}")
        if (h.get("uid"), h.get("gid")) != (w["uid"], w["gid"]):
            why.append(f"owner {h.get('uid')}:{h.get('gid')}, want {w['uid']}:{w['gid']}")
        if why:
            out[path] = ", ".join(why)
    return out


def roles(cfg, local_servers):
    """``{"near": [tunnels whose near end is local], "peer": [... peer end ...]}``."""
    tunnels = cfg.get("tunnels") or []
    return {"near": [t for t in tunnels if t["near"] in local_servers],
            "peer": [t for t in tunnels if t["peer"] in local_servers]}


HOSTS_MARK = "# mysqlrepl tunnel"


def hosts_missing(text, names):
    """The ``names`` that ``text`` (a hosts file) does not map to 127.0.0.1."""
    have = set()
    for line in (text or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == LOOPBACK:
            have.update(fields[1:])
    return [n for n in names if n not in have]


def hosts_with(text, names):
    """``text`` with a ``127.0.0.1 <name>`` line added for each missing name (nothing else changes)."""
    missing = hosts_missing(text, names)
    if not missing:
        return text
    out = text or ""
    if out and not out.endswith("\n"):
        out += "\n"
    return out + "".join(f"{LOOPBACK}\t{name}\t{HOSTS_MARK}\n" for name in missing)


SSHD_DROPIN = "60-mysqlrepl-tunnel.conf"


def sshd_dropin_path(sshd):
    """Where the tunnel user's sshd settings go for a server's ``sshd`` block."""
    return f"{sshd['config_dir'].rstrip('/')}/{SSHD_DROPIN}"


def sshd_dropin(cfg, peer_tunnels):
    """
    The far side's sshd settings for the tunnel user (a ``Match User`` block): sshd checks
    that a silent client is alive every ``alive_interval`` s and drops it after
    ``alive_count`` misses (the smallest of the tunnels that log in here), so a dead
    client's ``-R`` ports are freed for the next connection; TCP forwarding on, nothing
    else (no pty, X11, agent forwarding, tunnel devices).
    """
    interval = min(t["alive_interval"] for t in peer_tunnels)
    count = min(t["alive_count"] for t in peer_tunnels)
    return "\n".join([
        "# Managed by Salt (mysqlrepl): the SSH tunnels' user; do not edit.",
        f"Match User {cfg['tunnel']['user']}",
        f"    ClientAliveInterval {interval}",
        f"    ClientAliveCountMax {count}",
        "    AllowTcpForwarding yes",
        "    PermitTTY no",
        "    X11Forwarding no",
        "    AllowAgentForwarding no",
        "    PermitTunnel no",
        "",
    ])


def sshd_effective_ok(sshd_t_output, peer_tunnels):
    """Does ``sshd -T -C user=<tunnel user>,...`` show the drop-in's ClientAlive* (sshd reads it)?"""
    have = {}
    for line in (sshd_t_output or "").splitlines():
        key, _, value = line.strip().partition(" ")
        have[key.lower()] = value.strip()
    want = {"clientaliveinterval": str(min(t["alive_interval"] for t in peer_tunnels)),
            "clientalivecountmax": str(min(t["alive_count"] for t in peer_tunnels))}
    return all(have.get(k) == v for k, v in want.items()), {k: have.get(k) for k in want}
