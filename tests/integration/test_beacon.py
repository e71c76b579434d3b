"""
The mysqlrepl beacon on the session's db minions, configured from pillar
(``beacons: mysqlrepl: [interval: 2, lag_s: 3]``), its events read on the real
salt-master's event bus: quiet on a healthy topology; each fault (lag, a
stopped thread, a link that does not verify the master, a certificate near
expiry, a writable replica, the master read-only) seen within two intervals,
never repeated while it stays, and cleared once when it goes.
"""

import copy
import time

import pytest

from tests.support.topology import replica_status, wait_for

pytestmark = [pytest.mark.integration]

INTERVAL = 2
PATTERN = "salt/beacon/*/mysqlrepl/*"


@pytest.fixture(scope="module")
def beacons(topology, write_pillar, salt_cli):
    pillar = copy.deepcopy(topology["pillar"])
    pillar["beacons"] = {"mysqlrepl": [{"interval": INTERVAL}, {"lag_s": 3}]}
    write_pillar(pillar)
    yield pillar
    write_pillar(topology["pillar"])


def events_since(event_listener, salt_master, since):
    return [(e.tag, e.data) for e in event_listener.get_events([(salt_master.id, PATTERN)], after_time=since)]


def master_and_replica(mariadb_servers):
    writable = [s for s in mariadb_servers.values() if s.query("SELECT @@read_only AS ro")[0]["ro"] == 0]
    assert len(writable) == 1
    master = writable[0]
    replica = next(s for n, s in sorted(mariadb_servers.items()) if s is not master)
    return master, replica


def expect_once(event_listener, salt_master, minion, kind, fault_at, clear):
    """The event for ``kind`` from ``minion`` within two intervals of ``fault_at``, not
    repeated over two more intervals; then ``clear()`` and its ``cleared`` event."""
    tag = f"salt/beacon/{minion}/mysqlrepl/{kind}"
    # two intervals, plus what a busy 2-core machine adds to the beacon's own read
    deadline = fault_at + 2 * INTERVAL + 1.5
    seen = []
    while time.time() < deadline and not seen:
        seen = [e for e in events_since(event_listener, salt_master, fault_at) if e[0] == tag]
        time.sleep(0.1)
    assert seen, (kind, events_since(event_listener, salt_master, fault_at - 1))
    first = seen[0][1]
    assert first["kind"] == kind and first["detail"], first
    time.sleep(2 * INTERVAL + 0.5)
    again = [e for e in events_since(event_listener, salt_master, fault_at) if e[0] == tag]
    assert len(again) == 1, again
    cleared_at = time.time()
    clear()
    wait_for(lambda: any(e[0] == f"{tag}/cleared" for e in events_since(event_listener, salt_master, cleared_at)),
             timeout=3 * INTERVAL + 5, what=f"{kind} cleared")
    return first


def test_a_healthy_topology_fires_nothing(beacons, event_listener, salt_master, salt_cli):
    listed = salt_cli.run("-L", "beacons.list", "return_yaml=False", minion_tgt="db1,db2,db3")
    assert all(ret["mysqlrepl"] == [{"interval": INTERVAL}, {"lag_s": 3}] for ret in listed.data.values()), listed
    since = time.time()
    time.sleep(3 * INTERVAL + 1)
    assert events_since(event_listener, salt_master, since) == []


def test_a_stopped_sql_thread(beacons, mariadb_servers, event_listener, salt_master):
    _master, replica = master_and_replica(mariadb_servers)
    fault_at = time.time()
    replica.query("STOP SLAVE SQL_THREAD")
    data = expect_once(event_listener, salt_master, replica.name, "sql_stopped", fault_at,
                       lambda: replica.query("START SLAVE SQL_THREAD"))
    assert data["server"] == replica.name and "SQL thread No" in data["detail"]


def test_lag_over_the_threshold(beacons, mariadb_servers, event_listener, salt_master):
    master, replica = master_and_replica(mariadb_servers)
    replica.session("STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 60", "START SLAVE")
    master.query("CREATE DATABASE IF NOT EXISTS beacon")
    master.query("CREATE TABLE IF NOT EXISTS beacon.t (id BIGINT AUTO_INCREMENT PRIMARY KEY)")
    master.query("INSERT INTO beacon.t VALUES ()")
    try:
        wait_for(lambda: (replica_status(replica)["Seconds_Behind_Master"] or 0) > 3, timeout=30,
                 what="lagging")
        fault_at = time.time()
        data = expect_once(event_listener, salt_master, replica.name, "lag", fault_at,
                           lambda: replica.session("STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 0", "START SLAVE"))
        assert "behind" in data["detail"]
    finally:
        replica.session("STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 0", "START SLAVE")


def test_a_link_that_does_not_verify_the_master(beacons, mariadb_servers, event_listener, salt_master, salt_cli):
    _master, replica = master_and_replica(mariadb_servers)
    fault_at = time.time()
    replica.session("STOP SLAVE", "CHANGE MASTER TO MASTER_SSL_VERIFY_SERVER_CERT = 0", "START SLAVE")

    def fix():
        ret = salt_cli.run("mysqlrepl.replication_apply", minion_tgt=replica.name)
        assert ret.data["result"] is True, ret

    data = expect_once(event_listener, salt_master, replica.name, "not_verified", fault_at, fix)
    assert "does not verify" in data["detail"]


def test_a_writable_replica(beacons, mariadb_servers, event_listener, salt_master):
    _master, replica = master_and_replica(mariadb_servers)
    fault_at = time.time()
    replica.query("SET GLOBAL read_only = 0")
    try:
        data = expect_once(event_listener, salt_master, replica.name, "writable_replica", fault_at,
                           lambda: replica.query("SET GLOBAL read_only = 1"))
        assert "master of record is" in data["detail"]
    finally:
        replica.query("SET GLOBAL read_only = 1")


def test_the_master_read_only(beacons, mariadb_servers, event_listener, salt_master):
    master, _replica = master_and_replica(mariadb_servers)
    fault_at = time.time()
    master.query("SET GLOBAL read_only = 1")
    try:
        data = expect_once(event_listener, salt_master, master.name, "master_read_only", fault_at,
                           lambda: master.query("SET GLOBAL read_only = 0"))
        assert "no switch in progress" in data["detail"]
    finally:
        master.query("SET GLOBAL read_only = 0")


def test_a_certificate_near_expiry(beacons, mariadb_servers, event_listener, salt_master, write_pillar):
    """The beacon's cert_days over the certificates' life: every server's fires, once."""
    _master, replica = master_and_replica(mariadb_servers)
    pillar = copy.deepcopy(beacons)
    pillar["beacons"]["mysqlrepl"].append({"cert_days": 4000})
    fault_at = time.time()
    write_pillar(pillar)
    data = expect_once(event_listener, salt_master, replica.name, "cert_expiry", fault_at,
                       lambda: write_pillar(beacons))
    assert "certificate expires in" in data["detail"]
