"""
Server settings: the drop-in and live variables pillar wants against what a
server has, and what ``mysqlrepl.config_apply`` may do about it. Nothing here
talks to Salt or to a server: the execution module reads the file and the
variables, calls :func:`compare` and :func:`decide`, and carries the decision
out in the order :func:`decide` documents.

Invariant: a static variable that differs is only applied by a restart, and a
restart only happens where pillar allows it; otherwise nothing is changed at
all (not even the file or the dynamic variables), so the server is never left
half applied.
"""

import os

SIZE_SUFFIX = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}

# static on every version we know; used when the server cannot say
# (information_schema.SYSTEM_VARIABLES, MariaDB 10.1+)
KNOWN_STATIC = {"log_bin", "log_slave_updates", "relay_log", "relay_log_recovery", "report_host", "report_port",
                "ssl_ca", "ssl_cert", "ssl_key", "bind_address"}
# managed at runtime by role (the master of record is made writable by a switch
# or a guarded highstate), never by the drop-in comparison
RUNTIME_ONLY = {"read_only"}
TLS_FILES = ("ssl_ca", "ssl_cert", "ssl_key")


def live_value(value):
    """Normalise a variable value (live or from the drop-in) for comparison: ON/OFF, sizes in bytes."""
    if value is None:
        return None
    text = str(value).strip()
    if text.upper() in ("ON", "YES", "TRUE"):
        return "ON"
    if text.upper() in ("OFF", "NO", "FALSE"):
        return "OFF"
    if len(text) > 1 and text[:-1].isdigit() and text[-1].upper() in SIZE_SUFFIX:
        return str(int(text[:-1]) * SIZE_SUFFIX[text[-1].upper()])
    return text


def set_value(want):
    """The value to send with SET GLOBAL for a drop-in value: 1/0 for ON/OFF, bytes for sizes."""
    norm = live_value(want)
    if norm in ("ON", "OFF"):
        return 1 if norm == "ON" else 0
    if norm.isdigit():
        return int(norm)
    return want


def compare(desired, live, static, current_text, wanted_text, plugin_active=True):
    """
    ``desired``: ``[(variable, value)]`` from ``mysqlrepl_config.desired_settings``;
    ``live``: the server's values of those variables (plus ``log_bin_basename``,
    ``relay_log_basename``); ``static``: the names the server says are read-only
    at runtime (``None``: it cannot say, use :data:`KNOWN_STATIC`);
    ``current_text`` / ``wanted_text``: the drop-in on disk (``None``: missing) and
    as pillar renders it; ``plugin_active``: is ``metadata_lock_info`` loaded
    (MariaDB; the switch's precheck reads lock holders from it).

    Returns ``{"file": None | "missing" | "differs", "live": {var: [have, want]},
    "restart": [static vars that differ], "running": True[, "plugins": [...]]}``
    (``config_check``'s documented shape).
    """
    static = KNOWN_STATIC if static is None else set(static)
    plan = {"file": None, "live": {}, "restart": [], "running": True}
    if current_text != wanted_text:
        plan["file"] = "missing" if current_text is None else "differs"
    if not plugin_active:
        plan["plugins"] = ["metadata_lock_info"]
    for key, want in desired:
        if key in RUNTIME_ONLY:
            continue
        have = live.get(key)
        if key == "log_bin":
            ok = have == "ON" and os.path.basename(live.get("log_bin_basename") or "") == want
        elif key == "relay_log":
            ok = os.path.basename(live.get("relay_log_basename") or live.get("relay_log") or "") == want
        elif key not in live:
            ok = False
        else:
            ok = live_value(have) == live_value(want)
        if not ok:
            plan["live"][key] = [have, want]
            if key in static:
                plan["restart"].append(key)
    return plan


def decide(name, plan, restart_allowed, config_file, test=False):
    """
    What ``config_apply`` does with a :func:`compare` plan for server ``name``.

    Returns ``{"result", "changes", "comment", "steps"}``; ``result`` is ``True``
    when there is nothing to do or the steps should run, ``None`` for a dry run
    with changes, ``False`` for a refusal (no steps). ``steps``, in this order
    (each only when needed): ``("set_live", {var: want})`` — dynamic values first,
    so a value the server refuses fails the state before the file is touched;
    ``("install_plugins", [...])``; ``("write_file",)``; ``("restart",)`` — then the
    module compares again and fails if anything still differs; ``("check_tls",)``
    — ``have_ssl`` must be YES after a restart or a TLS file change.
    """
    if not plan["running"]:
        return {"result": False, "changes": {}, "steps": [],
                "comment": f"server {name} is not reachable: {plan.get('error')}"}
    changes = {}
    if plan["file"]:
        changes["config_file"] = f"{config_file} {plan['file']}"
    live_set = {k: v for k, v in plan["live"].items() if k not in plan["restart"]}
    for key, (have, want) in live_set.items():
        changes[f"variable {key}"] = {"old": have, "new": want}
    for plugin in plan.get("plugins", []):
        changes[f"plugin {plugin}"] = {"old": "not loaded", "new": "loaded"}
    restart = sorted(plan["restart"])
    if restart:
        changes["restart"] = f"needed for {', '.join(restart)}"
        if not restart_allowed:
            return {"result": False, "changes": {}, "steps": [],
                    "comment": (f"server {name} needs a restart for {', '.join(restart)} but restart_allowed "
                                f"is false in pillar (mysqlrepl:restart_allowed or "
                                f"mysqlrepl:servers:{name}:restart_allowed); nothing changed")}
    if test:
        return {"result": None if changes else True, "changes": changes, "steps": [],
                "comment": "would apply" if changes else "server settings are as pillar says"}
    steps = []
    if live_set:
        steps.append(("set_live", {k: want for k, (_have, want) in live_set.items()}))
    if plan.get("plugins"):
        steps.append(("install_plugins", list(plan["plugins"])))
    if plan["file"]:
        steps.append(("write_file",))
    if restart:
        steps.append(("restart",))
    if restart or any(k in TLS_FILES for k in plan["live"]):
        steps.append(("check_tls",))
    return {"result": True, "changes": changes, "steps": steps,
            "comment": "applied" if changes else "server settings are as pillar says"}
