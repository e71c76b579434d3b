"""
The master record: who the master of each mysqlrepl topology is, after a switch.

``salt-run mysqlrepl.switch`` writes ``<master cachedir>/mysqlrepl/<topology>.json``
on the salt-master; this ext_pillar lays it over the pillar files so that, with
nobody editing a pillar file:

* db minions (pillar ``mysqlrepl:topology``) get ``mysqlrepl:master`` (and,
  while a switch runs, ``mysqlrepl:switching``: states then leave replication
  alone);
* app minions (pillar ``mysqlrepl_app:topology``) and db minions get the
  master's address under ``hosts_key`` (default ``infra:hosts_entries:masterdb``,
  seed 002's key).

Without a record file the pillar files rule (a topology that never switched).

Master configuration:

.. code-block:: yaml

    ext_pillar:
      - mysqlrepl: {}
      # or another key for the apps' hosts entry:
      - mysqlrepl:
          hosts_key: infra:hosts_entries:masterdb

The module reaches the master with ``salt-run saltutil.sync_all`` (the
formula's orchestrations run it first). Read the record with ``salt-run
mysqlrepl.record``; set it by hand with ``salt-run mysqlrepl.record_set``.
"""

import json
import logging

log = logging.getLogger(__name__)

__virtualname__ = "mysqlrepl"


def __virtual__():
    return __virtualname__


def record_path(opts, topology):
    """Where the record of ``topology`` lives on the salt-master (``mysqlrepl_config.record_path``)."""
    return __utils__["mysqlrepl_config.record_path"](opts["cachedir"], topology)


def _topology_of(pillar):
    db = pillar.get("mysqlrepl")
    if isinstance(db, dict) and db:
        return str(db.get("topology") or "main")
    app = pillar.get("mysqlrepl_app")
    if isinstance(app, dict) and app.get("topology"):
        return str(app["topology"])
    return None


def _nested(path, value):
    out = value
    for key in reversed(path.split(":")):
        out = {key: out}
    return out


def ext_pillar(minion_id, pillar, hosts_key="infra:hosts_entries:masterdb", **kwargs):  # pylint: disable=unused-argument
    topology = _topology_of(pillar or {})
    if topology is None:
        return {}
    try:
        path = record_path(__opts__, topology)
    except ValueError:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # a broken record must not silently fall back to the pillar files' master
        log.error("mysqlrepl ext_pillar: cannot read %s: %s", path, exc)
        if "mysqlrepl" not in pillar:
            return {}
        return {"mysqlrepl": {"switching": {"from": None, "to": None, "jid": None,
                                            "since": None, "phase": f"record unreadable: {exc}"}}}
    out = {}
    if (pillar.get("mysqlrepl") or {}).get("masters"):
        # a two-master pair has no master of record: a record left from its one-master
        # past must not turn it back into one (nor make its pillar invalid)
        return {}
    if "mysqlrepl" in pillar and record.get("master"):
        out["mysqlrepl"] = {"master": record["master"],
                            "record": dict({k: record.get(k) for k in ("previous", "since", "jid")},
                                           # what the pillar files say (salt-run mysqlrepl.unpair checks it)
                                           pillar_master=pillar["mysqlrepl"].get("master"))}
        if record.get("switching"):
            out["mysqlrepl"]["switching"] = record["switching"]
    if hosts_key and record.get("address"):
        address = record["address"]
        nested = _nested(hosts_key, address)
        for key, value in nested.items():
            if key in out and isinstance(value, dict):
                out[key].update(value)
            else:
                out[key] = value
    return out
