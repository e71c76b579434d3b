"""
The replication topology the integration tests share: brought up once per
session with ``salt-run state.orchestrate mysqlrepl.orch.setup`` through the
real salt-master, while a sampler records every process's argv and
environment and the event listener records the master's event bus (the
secrets tests read both).
"""

import os
import threading
import time

import pytest

from tests.support.topology import ADMIN_PASSWORD, PASSWORD, build_pillar


class ProcSampler(threading.Thread):
    """Samples /proc/*/cmdline and /proc/*/environ every few ms, keeping hits for ``needle``."""

    def __init__(self, needle):
        super().__init__(daemon=True)
        self.needle = needle.encode()
        self.stop_event = threading.Event()
        self.samples = 0
        self.hits = []

    def run(self):
        while not self.stop_event.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                for part in ("cmdline", "environ"):
                    try:
                        with open(f"/proc/{pid}/{part}", "rb") as handle:
                            data = handle.read()
                    except OSError:
                        continue
                    if self.needle in data:
                        self.hits.append((pid, part, data[:200]))
            self.samples += 1
            time.sleep(0.005)

    def stop(self):
        self.stop_event.set()
        self.join(5)


@pytest.fixture(scope="session")
def topology(mariadb_servers, harness_root, write_pillar, salt_run_cli, salt_minions, salt_master,
             event_listener):
    """Bring the topology up with the setup orchestration (once per session)."""
    for srv in mariadb_servers.values():
        # an admin login for the wrong-password test, made before the formula runs
        srv.query("CREATE USER IF NOT EXISTS 'opadmin'@'localhost' IDENTIFIED BY %s", (ADMIN_PASSWORD,))
        srv.query("GRANT ALL ON *.* TO 'opadmin'@'localhost' WITH GRANT OPTION")
    pillar = build_pillar(mariadb_servers, harness_root)
    write_pillar(pillar)
    sampler = ProcSampler(PASSWORD)
    sampler.start()
    started = time.monotonic()
    since = time.time()
    try:
        ret = salt_run_cli.run("state.orchestrate", "mysqlrepl.orch.setup")
    finally:
        sampler.stop()
    elapsed = time.monotonic() - started
    events = [(e.tag, e.full_data) for e in event_listener.get_events([(salt_master.id, "*")], after_time=since)]
    return {"pillar": pillar, "setup_ret": ret, "setup_s": elapsed, "proc_samples": sampler.samples,
            "proc_hits": sampler.hits, "events": events}
