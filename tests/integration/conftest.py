"""
The replication topology the integration tests share: brought up once per
session with ``salt-run state.orchestrate mysqlrepl.orch.setup`` through the
real salt-master, while a sampler records every process's argv and
environment and the event listener records the master's event bus (the
secrets tests read both).
"""

import time

import pytest

from tests.support.secrets import ProcSampler, ServerSampler
from tests.support.topology import ADMIN_PASSWORD, PASSWORD, SWITCH_PASSWORD, build_pillar


def pytest_collection_modifyitems(items):
    """Tests marked ``after_all`` run last: they check what the whole session did (secrets)."""
    items.sort(key=lambda item: item.get_closest_marker("after_all") is not None)


@pytest.fixture(scope="session")
def secrets_watch(mariadb_servers):
    """
    Watches argv/environ of every process and what PROCESS holders see on every
    server (processlist, performance_schema) for the replication password, from
    before the setup orchestration to the end of the session: seeds, switches,
    rotations included. ``test_secrets.py``'s last test reads the hits.
    """
    # argv/environ: every password of the harness; the servers: the replication password
    # (the only one any statement could carry: the others go as client-side hashes or in
    # option files)
    procs = ProcSampler([PASSWORD, ADMIN_PASSWORD, SWITCH_PASSWORD])
    servers = ServerSampler(PASSWORD, mariadb_servers)
    procs.start()
    servers.start()
    try:
        yield {"procs": procs, "servers": servers}
    finally:
        procs.stop()
        servers.stop()


@pytest.fixture(scope="session")
def topology(mariadb_servers, harness_root, write_pillar, salt_run_cli, salt_minions, salt_master,
             event_listener, secrets_watch):
    """Bring the topology up with the setup orchestration (once per session)."""
    for srv in mariadb_servers.values():
        # an admin login for the wrong-password test, made before the formula runs
        srv.query("CREATE USER IF NOT EXISTS 'opadmin'@'localhost' IDENTIFIED BY %s", (ADMIN_PASSWORD,))
        srv.query("GRANT ALL ON *.* TO 'opadmin'@'localhost' WITH GRANT OPTION")
    pillar = build_pillar(mariadb_servers, harness_root)
    write_pillar(pillar)
    procs = secrets_watch["procs"]
    samples_before = procs.samples
    started = time.monotonic()
    since = time.time()
    ret = salt_run_cli.run("state.orchestrate", "mysqlrepl.orch.setup")
    elapsed = time.monotonic() - started
    events = [(e.tag, e.full_data) for e in event_listener.get_events([(salt_master.id, "*")], after_time=since)]
    return {"pillar": pillar, "setup_ret": ret, "setup_s": elapsed,
            "proc_samples": procs.samples - samples_before, "proc_hits": list(procs.hits), "events": events}
