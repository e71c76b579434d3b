"""
Certificate rotation under load, on the session's real topology: pillar
shortens the certificates' life to minutes (``tls:cert_days``), the setup
orchestration re-issues them and the servers load them live (FLUSH SSL), then,
once they are within ``tls:renew_days`` of expiry, it renews them again. A
writer commits on the master throughout: nothing is lost or doubled, every
link stays encrypted and verified (a replica's IO thread reconnects with the
new certificates), and no server restarts.
"""

import copy
import time

import pytest

from tests.support import workload
from tests.support.topology import orch_failures, replica_status, wait_for

pytestmark = [pytest.mark.integration]

# 0.02 days = 28.8 minutes; renewed once 0.0195 days (28.1 min) or less are left: 43 s after issue
CERT_DAYS = 0.02
RENEW_DAYS = 0.0195


def presented(salt_run_cli):
    """The health answer, and {server: days left of the certificate it presents now}."""
    ret = salt_run_cli.run("mysqlrepl.health")
    assert isinstance(ret.data, dict) and "servers" in ret.data, ret
    return ret.data, {n: r["cert_days_left"] for n, r in ret.data["servers"].items()}


def ends(left):
    """{server: when its certificate ends (epoch s)}, from days left now."""
    now = time.time()
    return {n: now + days * 86400 for n, days in left.items()}


def uptimes(servers):
    return {n: (s.pid(), int(s.query("SHOW GLOBAL STATUS LIKE 'Uptime'")[0]["Value"])) for n, s in servers.items()}


def test_certificates_rotate_live_under_load(topology, mariadb_servers, write_pillar, salt_run_cli):
    writable = [s for s in mariadb_servers.values() if s.query("SELECT @@read_only AS ro")[0]["ro"] == 0]
    assert len(writable) == 1
    master = writable[0]
    workload.create_schema(master)
    before = uptimes(mariadb_servers)
    short = copy.deepcopy(topology["pillar"])
    short["mysqlrepl"].setdefault("tls", {}).update(cert_days=CERT_DAYS, renew_days=RENEW_DAYS)
    writer = workload.Writer({n: (s.address, s.port) for n, s in mariadb_servers.items()}, name="rotation")
    writer.start()
    try:
        # 1. pillar shortens the lifetime: every certificate is re-issued and loaded live
        write_pillar(short)
        ret = salt_run_cli.run("state.orchestrate", "mysqlrepl.orch.setup")
        assert orch_failures(ret) == {}, orch_failures(ret)
        _data, left = presented(salt_run_cli)
        assert all(0 < days <= CERT_DAYS for days in left.values()), left
        first = ends(left)
        # 2. once within renew_days of expiry, the orchestration renews them (the CA re-signs
        # the same keys' CSRs, the servers install and FLUSH SSL)
        time.sleep((CERT_DAYS - RENEW_DAYS) * 86400 + 2)
        ret = salt_run_cli.run("state.orchestrate", "mysqlrepl.orch.setup")
        assert orch_failures(ret) == {}, orch_failures(ret)
        data, left = presented(salt_run_cli)
        # renewed: each ends about as much later as the renewal came after the first issue
        assert all(ends(left)[n] > first[n] + 30 for n in left), (first, ends(left))
        assert data["healthy"] is False and {p["kind"] for p in data["problems"]} == {"cert_expiry"}, \
            data["problems"]  # minutes from expiry: health says so (cert_days 14)
        # every replica reconnects with the renewed certificates, verified
        for srv in mariadb_servers.values():
            if srv is not master:
                srv.query("STOP SLAVE IO_THREAD")
                srv.query("START SLAVE IO_THREAD")
        for srv in mariadb_servers.values():
            if srv is not master:
                wait_for(lambda s=srv: replica_status(s)["Slave_IO_Running"] == "Yes", what=f"{srv.name} IO")
        time.sleep(1)
    finally:
        writer.stop()
    assert writer.failure is None and writer.acked, (writer.failure, len(writer.acked))
    ciphers = master.query(
        "SELECT s.VARIABLE_VALUE AS cipher FROM performance_schema.threads t "
        "JOIN performance_schema.status_by_thread s ON s.THREAD_ID = t.THREAD_ID "
        "WHERE t.PROCESSLIST_COMMAND = 'Binlog Dump' AND s.VARIABLE_NAME = 'Ssl_cipher'")
    assert len(ciphers) == len(mariadb_servers) - 1 and all(r["cipher"] for r in ciphers), ciphers
    pos = master.query("SELECT @@gtid_binlog_pos AS p")[0]["p"]
    seqs = sorted(seq for seq, _sid, _t in writer.acked)
    for srv in mariadb_servers.values():
        if srv is not master:
            assert srv.query("SELECT MASTER_GTID_WAIT(%s, 60) AS w", (pos,))[0]["w"] == 0, srv.name
        rows = srv.query("SELECT seq, COUNT(*) AS n FROM app.seqlog WHERE writer = 'rotation' GROUP BY seq")
        got = {r["seq"]: r["n"] for r in rows}
        assert sorted(got) == seqs and set(got.values()) == {1}, (srv.name, len(got), len(seqs))
        if srv is not master:
            rs = replica_status(srv)
            assert rs["Master_SSL_Verify_Server_Cert"] == "Yes" and rs["Slave_SQL_Running"] == "Yes"
    after = uptimes(mariadb_servers)
    assert all(after[n][0] == before[n][0] and after[n][1] >= before[n][1] for n in before), (before, after)
    # back to the session's pillar: year-long certificates again (now within renew_days)
    write_pillar(topology["pillar"])
    ret = salt_run_cli.run("state.orchestrate", "mysqlrepl.orch.setup")
    assert orch_failures(ret) == {}, orch_failures(ret)
    data, left = presented(salt_run_cli)
    assert data["healthy"] is True and all(days > 300 for days in left.values()), (left, data["problems"])
