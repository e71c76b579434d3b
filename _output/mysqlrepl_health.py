"""
Salt outputter for ``salt-run mysqlrepl.health``: the verdict first, then one
line per server and the problems. ``--out=json`` (or yaml) gives the same
data as structured fields.

CLI Example:

.. code-block:: bash

    salt-run mysqlrepl.health
    salt-run mysqlrepl.health --out=json
"""

COLUMNS = (
    ("server", "SERVER"), ("role", "ROLE (RECORD)"), ("seen", "SEEN"), ("read_only", "RO"),
    ("threads", "IO/SQL"), ("behind", "BEHIND"), ("tls", "TLS"), ("cipher", "CIPHER"),
    ("cert_days_left", "CERT DAYS"),
)


def __virtual__():
    return "mysqlrepl_health"


def _days(days):
    if days is None:
        return "-"
    return f"{days:.0f}" if abs(days) >= 1 else f"{days * 1440:.0f}m"


def _cells(row):
    behind = row.get("seconds_behind")
    trx = "?" if row.get("gtid_behind") is None else sum(row["gtid_behind"].values())
    return {
        "server": row.get("server"),
        "role": row.get("role"),
        "seen": row.get("seen"),
        "read_only": row.get("read_only") or "-",
        "threads": f"{row['io']}/{row['sql']}" if row.get("io") else "-",
        "behind": "-" if behind is None and not row.get("io") else f"{behind if behind is not None else '?'}s/{trx}trx",
        "tls": row.get("tls") or "-",
        "cipher": row.get("cipher") or "-",
        "cert_days_left": _days(row.get("cert_days_left")),
    }


def render(data):
    """The text for a ``mysqlrepl.health`` answer (any other data: its ``repr``)."""
    if not isinstance(data, dict) or "verdict" not in data:
        return str(data)
    lines = [data["verdict"]]
    if data.get("topology"):
        lines[0] = f"{data['topology']}: {lines[0]}"
    rows = [_cells(r) for r in (data.get("servers") or {}).values()]
    if rows:
        widths = {k: max([len(title)] + [len(str(r[k])) for r in rows]) for k, title in COLUMNS}
        lines.append("")
        lines.append("  ".join(title.ljust(widths[k]) for k, title in COLUMNS).rstrip())
        for r in rows:
            lines.append("  ".join(str(r[k]).ljust(widths[k]) for k, _t in COLUMNS).rstrip())
    for row in (data.get("servers") or {}).values():
        for key in ("last_io_error", "last_sql_error"):
            if row.get(key):
                lines.append(f"  {row['server']} {key}: {row[key]}")
        for t in row.get("tunnels") or []:
            lines.append(f"  {row['server']} tunnel {t['tunnel']} ({t['side']}): {'up' if t['up'] else 'DOWN'}")
    if data.get("problems"):
        lines.append("")
        lines.append("problems:")
        lines += [f"  - [{p['kind']}] {p['detail']}" for p in data["problems"]]
    if data.get("read_s") is not None:
        lines.append("")
        lines.append(f"read in {data['read_s']} s from {len(data.get('servers') or {})} servers")
    return "\n".join(lines)


def output(data, **kwargs):  # pylint: disable=unused-argument
    return render(data)
