"""
Beacon: replication faults of this minion's mysqlrepl servers, on the event bus.

Each interval it reads its servers (``mysqlrepl.health_facts``) and applies
the rules of ``salt-run mysqlrepl.health`` to them (``_utils/mysqlrepl_health.py``):
a replica lagging over the threshold, a stopped IO or SQL thread (with its
error), a link without TLS or without verification of the master's
certificate, a certificate within ``cert_days`` of expiry, this server
writable while the record names another, the master of record read-only with
no switch in progress, a replica of the wrong server, a tunnel down, a server
that cannot be read. It fires on change only (what the last interval saw is kept
in ``<cachedir>/mysqlrepl/beacon_state.json``, across pillar refreshes and restarts):

* ``salt/beacon/<minion>/mysqlrepl/<kind>`` when a fault appears
  (``lag``, ``io_stopped``, ``sql_stopped``, ``no_tls``, ``not_verified``,
  ``cert_expiry``, ``writable_replica``, ``master_read_only``, ``wrong_source``,
  ``tunnel_down``, ``unreachable``), data ``{"server", "kind", "detail"}``;
* ``salt/beacon/<minion>/mysqlrepl/<kind>/cleared`` when it is gone;
* nothing while a fault stays, and nothing on a healthy minion.

Thresholds: pillar ``mysqlrepl:health`` (shared with the runner), overridden
by the beacon's own keys. Configuration (pillar or minion config):

.. code-block:: yaml

    beacons:
      mysqlrepl:
        - interval: 30
        - lag_s: 10          # optional: overrides mysqlrepl:health:lag_s
        - cert_days: 20      # optional
        - gtid_behind: 500   # optional
"""

import json
import logging
import os

import salt.utils.beacons

log = logging.getLogger(__name__)

__virtualname__ = "mysqlrepl"

LIMITS = ("lag_s", "gtid_behind", "cert_days")


def __virtual__():
    if "mysqlrepl.beacon_check" not in __salt__:
        return False, "the mysqlrepl execution module is not synced to this minion (saltutil.sync_all)"
    return __virtualname__


def validate(config):
    """Configuration is a list of one-key dicts: ``interval`` and the optional thresholds."""
    if not isinstance(config, list):
        return False, "mysqlrepl beacon: configuration must be a list"
    conf = salt.utils.beacons.list_to_dict(config)
    for key, value in conf.items():
        if key in LIMITS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                return False, f"mysqlrepl beacon: {key} must be a number >= 0, got {value!r}"
        elif key not in ("interval", "enabled", "disable_during_state_run", "run_once", "beacon_module"):
            return False, f"mysqlrepl beacon: unknown key {key!r} (known: interval, {', '.join(LIMITS)})"
    return True, "valid"


def _state_path():
    # a file, not __context__: a pillar refresh makes the minion load its beacons
    # afresh, and what the last interval saw must survive it (or a fault that stays
    # fires again, and one that went away meanwhile is never cleared)
    return os.path.join(__opts__["cachedir"], "mysqlrepl", "beacon_state.json")


def _load_state():
    try:
        with open(_state_path(), encoding="utf-8") as handle:
            state = json.load(handle)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_state(state):
    path = _state_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle)
    os.replace(tmp, path)


def beacon(config):
    """The events for what changed since the last interval (see the module docstring)."""
    conf = salt.utils.beacons.list_to_dict(config)
    limits = {k: conf[k] for k in LIMITS if k in conf}
    previous = _load_state()
    out = __salt__["mysqlrepl.beacon_check"](previous, **limits)
    if out["current"] != previous:
        _save_state(out["current"])
    return out["events"]
