"""
Database connections for mysqlrepl (PyMySQL).

* Local admin connections go over the server's unix socket with TLS disabled
  (PyMySQL otherwise tries TLS there too and each connection costs 30-50 ms).
  Credentials come, in this order, from the server's pillar ``connection`` block,
  from saltext-mysql's minion settings (``mysql.default_file``, ``mysql.user``,
  ``mysql.pass``, ``mysql.unix_socket``) or default to root over the socket
  (socket authentication, as Debian sets it up).
* Remote connections use TCP with TLS verified against the topology CA.
* Option files for client programs (mariadb-backup, mariadb-dump) are written
  0600 in a private directory: passwords never go on a command line or into
  the environment.

Errors raise ``CommandExecutionError`` carrying the server's own message.
"""

import contextlib
import os
import shutil
import tempfile

try:
    import pymysql
    import pymysql.cursors

    HAS_PYMYSQL = True
except ImportError:  # pragma: no cover
    HAS_PYMYSQL = False

from salt.exceptions import CommandExecutionError

# mysqlrepl never logs statements or their arguments (passwords travel in some).


def _read_option_file(path):
    """Client options from a my.cnf-style file ([client] and [mysql] groups)."""
    opts = {}
    group = None
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line or line[0] in "#;":
                    continue
                if line.startswith("[") and line.endswith("]"):
                    group = line[1:-1].strip()
                    continue
                if group not in ("client", "mysql", "client-server", "client-mariadb"):
                    continue
                key, sep, value = line.partition("=")
                if sep:
                    opts[key.strip().replace("-", "_")] = value.strip().strip("'\"")
    except OSError as exc:
        raise CommandExecutionError(f"cannot read option file {path}: {exc.strerror}") from exc
    return opts


def local_params(server, minion_opts=None):
    """
    Connection parameters for the local admin connection to ``server`` (a
    normalised server dict). ``minion_opts`` is ``__opts__`` (saltext-mysql keys).
    """
    minion_opts = minion_opts or {}
    conn = dict(server.get("connection") or {})
    default_file = conn.get("default_file") or minion_opts.get("mysql.default_file")
    params = {"unix_socket": server["socket"], "user": "root"}
    if default_file:
        fileopts = _read_option_file(default_file)
        for key in ("user", "password", "socket"):
            if key in fileopts:
                params["unix_socket" if key == "socket" else key] = fileopts[key]
    else:
        if minion_opts.get("mysql.user"):
            params["user"] = minion_opts["mysql.user"]
        if minion_opts.get("mysql.pass"):
            params["password"] = minion_opts["mysql.pass"]
    for key in ("user", "password"):
        if conn.get(key):
            params[key] = conn[key]
    if conn.get("unix_socket"):
        params["unix_socket"] = conn["unix_socket"]
    return params


def connect_local(server, minion_opts=None, connect_timeout=10, autocommit=True, read_timeout=None):
    """Admin connection over the unix socket, TLS off; ``read_timeout`` bounds each answer."""
    if not HAS_PYMYSQL:
        raise CommandExecutionError("PyMySQL is not installed on this minion")
    params = local_params(server, minion_opts)
    return _connect(
        f"{server['name']} (socket {params['unix_socket']})",
        unix_socket=params["unix_socket"], user=params["user"],
        password=params.get("password", ""), ssl_disabled=True,
        connect_timeout=connect_timeout, autocommit=autocommit,
        read_timeout=read_timeout, write_timeout=read_timeout,
    )


def connect_tls(host, port, user, password, ca_file, cert_file=None, key_file=None,
                connect_timeout=10, verify_identity=True, read_timeout=None):
    """TCP connection with TLS verified against ``ca_file``; ``read_timeout`` bounds each answer."""
    if not HAS_PYMYSQL:
        raise CommandExecutionError("PyMySQL is not installed on this minion")
    # PyMySQL: any ssl_* keyword replaces a whole ``ssl`` dict, so use only keywords
    return _connect(
        f"{host}:{port}", host=host, port=int(port), user=user, password=password,
        ssl_ca=ca_file, ssl_cert=cert_file, ssl_key=key_file, ssl_verify_cert=True,
        ssl_verify_identity=verify_identity, connect_timeout=connect_timeout, autocommit=True,
        read_timeout=read_timeout, write_timeout=read_timeout,
    )


def _connect(label, **kwargs):
    kwargs.setdefault("cursorclass", pymysql.cursors.DictCursor)
    kwargs.setdefault("charset", "utf8mb4")
    try:
        return pymysql.connect(**kwargs)
    except pymysql.err.MySQLError as exc:
        raise CommandExecutionError(f"cannot connect to {label}: {error_text(exc)}") from exc
    except OSError as exc:
        raise CommandExecutionError(f"cannot connect to {label}: {exc}") from exc


def error_text(exc):
    """``(1045, "Access denied ...")`` -> ``1045: Access denied ...``"""
    args = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return f"{args[0]}: {args[1]}"
    return str(exc)


def run(conn, statement):
    """Execute one ``(sql, args)`` pair; return all rows (list of dicts)."""
    sql, args = statement
    try:
        with conn.cursor() as cur:
            # always formatted: mysqlrepl_sql writes a literal % as %%
            cur.execute(sql, args if args is not None else ())
            return list(cur.fetchall() or [])
    except pymysql.err.MySQLError as exc:
        # the statement text is not echoed: it may carry a password
        raise CommandExecutionError(error_text(exc)) from exc


def run_one(conn, statement):
    rows = run(conn, statement)
    return rows[0] if rows else None


@contextlib.contextmanager
def closing(conn):
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.close()


@contextlib.contextmanager
def option_file(groups):
    """
    Write a private (0700 dir, 0600 file) option file and yield its path.
    ``groups`` maps group name -> {option: value}. Removed afterwards.
    """
    tmpdir = tempfile.mkdtemp(prefix="mysqlrepl-")
    try:
        path = os.path.join(tmpdir, "my.cnf")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for group, options in groups.items():
                handle.write(f"[{group}]\n")
                for key, value in options.items():
                    if value is None:
                        continue
                    text = str(value)
                    if any(c in text for c in "\n\r"):
                        raise CommandExecutionError(f"option {key} contains a newline")
                    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
                    handle.write(f'{key}="{escaped}"\n')
        yield path
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def client_options(server, minion_opts=None):
    """[client] options for programs connecting to the local server."""
    params = local_params(server, minion_opts)
    opts = {"socket": params["unix_socket"], "user": params["user"]}
    if params.get("password"):
        opts["password"] = params["password"]
    return opts
