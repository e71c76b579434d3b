"""
Integration-test harness: three MariaDB servers on 127.0.0.11-13:3306 and a
Salt master with minions db1..db3 (pytest-salt-factories), started once per
session.

Everything lives under one short root ``/tmp/mr-XXXXXXXX`` (unix socket paths
must stay under 107 bytes or salt-master hangs)::

    salt/       salt-factories root: master/, db1/, db2/, db3/ (conf, logs, pki, cache)
    db/<name>/  MariaDB: my.cnf, conf.d/, data/, tmp/, run/, log/
    svc/<minion>/<service>.json   service definitions for mysqlrepl_testsvc

The root is removed at the end unless MYSQLREPL_KEEP_TMP=1.
"""

import concurrent.futures
import copy
import logging
import os
import pathlib
import shutil
import tempfile
import time

import pytest
import salt._logging
import yaml

from tests.support import mariadb

# Importing salt into a process whose logging is unconfigured installs a deferred
# stderr handler that keeps WARNING records (the daemons' forwarded logs) and dumps
# them at exit into pytest's already closed capture stream ("--- Logging error ---"
# floods). Drop it: pytest's log capture shows those records with failing tests.
salt._logging.shutdown_temp_handler()

log = logging.getLogger(__name__)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SUPPORT_SALT_DIR = REPO_ROOT / "tests" / "support" / "salt"
MINION_IDS = ("db1", "db2", "db3")
APP_MINION = "app1"
SALT_TIMEOUT = 120  # salt --timeout for salt_cli (it returns as soon as all minions answer)

# session startup timings, printed in the terminal summary
TIMINGS = {}


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items())
        terminalreporter.write_line(f"mysqlrepl harness startup: {parts}")


class _Timer:
    def __init__(self, key):
        self.key = key

    def __enter__(self):
        self.t0 = time.monotonic()  # pylint: disable=attribute-defined-outside-init
        return self

    def __exit__(self, *exc):
        TIMINGS[self.key] = time.monotonic() - self.t0


# ---------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def harness_root():
    """Short private root for everything the session starts; removed at the end."""
    # Orphaned servers (started by a minion job, or by the harness through the
    # launcher shell) are re-parented to this process instead of PID 1, which
    # reaps only lazily on the test machine; see tests/support/mariadb.py.
    mariadb.become_subreaper()
    root = pathlib.Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))
    os.chmod(root, 0o755)  # mariadbd runs as mysql and must traverse it
    yield root
    mariadb.reap_zombies()
    if os.environ.get("MYSQLREPL_KEEP_TMP") == "1":
        log.warning("keeping %s (MYSQLREPL_KEEP_TMP=1)", root)
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def testsvc_dir(harness_root):
    """Parent of the per-minion service dirs: <testsvc_dir>/<minion id>/<service>.json."""
    path = harness_root / "svc"
    path.mkdir()
    return path


# ---------------------------------------------------------------------------
# MariaDB
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mariadb_servers(harness_root, testsvc_dir):
    """{name: MariaDBServer} for db1..db3, running; stopped by PID at session end."""
    # MYSQLREPL_TEST_FIRST_OCTET=21 -> 127.0.0.21..23, to run beside another session
    first_octet = int(os.environ.get("MYSQLREPL_TEST_FIRST_OCTET", "11"))
    with _Timer("mariadb"):
        servers = mariadb.start_servers(
            harness_root / "db", names=MINION_IDS, first_octet=first_octet
        )
    for name, server in servers.items():
        # one dir per minion: a minion only sees the service of its own server
        server.write_service_json(testsvc_dir / name)
    try:
        yield servers
    finally:
        mariadb.stop_servers(servers.values())


# ---------------------------------------------------------------------------
# Salt
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def salt_factories_config(harness_root):
    return {
        "root_dir": harness_root / "salt",
        "slow_stop": False,
    }


@pytest.fixture(scope="session")
def state_tree(harness_root, repo_root):
    """
    The repo's Salt tree as a file root: symlinks to the repo's top-level ``_*`` dirs
    and ``mysqlrepl/``. (The repo root itself holds .venv and .git; salt-factories sets
    ``fileserver_list_cache_time: 0``, so every file-list request of a sync walked all
    ~13k files: sync_all on three minions took ~80 s.) Edits in the repo are live.
    """
    root = harness_root / "srv"
    root.mkdir()
    for entry in sorted(repo_root.iterdir()):
        if entry.is_dir() and (entry.name.startswith("_") or entry.name == "mysqlrepl"):
            (root / entry.name).symlink_to(entry)
    return root


@pytest.fixture(scope="session")
def salt_master(salt_factories, repo_root, state_tree):
    """
    Master serving the repo's ``_modules``, ``_states``, ``_utils``, ``mysqlrepl/``...
    (``state_tree``) and tests/support/salt from file_roots. Runners come from
    ``runner_dirs`` and the utils they use from ``utils_dirs``; ``salt-run
    saltutil.sync_all`` is also run once. Pillar: ``pillar_dir`` / ``write_pillar``.
    """
    overrides = {
        # salt-factories merges lists: its own empty state-tree/base stays first
        "file_roots": {"base": [str(state_tree), str(SUPPORT_SALT_DIR)]},
        "runner_dirs": [str(repo_root / "_runners")],
        "utils_dirs": [str(repo_root / "_utils")],
        # the formula's master record (_pillar/mysqlrepl.py, synced below)
        "ext_pillar": [{"mysqlrepl": {}}],
        "worker_threads": 3,  # Salt 3008 raises anything lower to 3 (with a warning)
        "log_level_logfile": "debug",
        "timeout": SALT_TIMEOUT,
    }
    factory = salt_factories.salt_master_daemon("master", overrides=overrides)
    with _Timer("salt-master"):
        factory.start()
    try:
        with _Timer("master sync_all"):
            ret = factory.salt_run_cli(timeout=SALT_TIMEOUT).run("saltutil.sync_all")
        assert ret.returncode == 0, ret
        yield factory
    finally:
        factory.terminate()


@pytest.fixture(scope="session")
def pillar_dir(salt_master):
    """The master's pillar_roots base dir (written by ``write_pillar``)."""
    return pathlib.Path(salt_master.config["pillar_roots"]["base"][0])


@pytest.fixture(scope="session")
def salt_cli(salt_master):
    return salt_master.salt_cli(timeout=SALT_TIMEOUT)


@pytest.fixture(scope="session")
def salt_run_cli(salt_master):
    return salt_master.salt_run_cli(timeout=SALT_TIMEOUT)


def _check_all_true(ret, minion_ids, what):
    assert ret.returncode == 0, f"{what}: {ret}"
    missing = [m for m in minion_ids if ret.data is None or m not in ret.data]
    bad = {m: ret.data[m] for m in minion_ids if m not in missing and ret.data[m] is not True}
    assert not missing and not bad, f"{what}: no return from {missing}, unexpected {bad}; {ret}"


@pytest.fixture(scope="session")
def salt_minions(salt_master, salt_cli, testsvc_dir, mariadb_servers):
    """
    {minion id: SaltMinion} for db1..db3 (keys accepted), custom modules synced.
    ``service.*`` on each minion is ``mysqlrepl_testsvc`` over
    ``<testsvc_dir>/<minion id>/`` (``providers`` option; module also in module_dirs so
    the provider is in place from the first job, before any sync).
    """
    minions = {}
    try:
        for minion_id in MINION_IDS:
            svc_dir = testsvc_dir / minion_id
            svc_dir.mkdir(exist_ok=True)
            overrides = {
                "providers": {"service": "mysqlrepl_testsvc"},
                "mysqlrepl_testsvc_dir": str(svc_dir),
                # the formula's systemd units (its SSH tunnels: mysqlrepl:tunnel:unit_dir)
                "mysqlrepl_testsvc_unit_dir": str(svc_dir.parent.parent / "units"),
                # module_dirs entries are roots holding _modules/ (or modules/)
                "module_dirs": [str(SUPPORT_SALT_DIR)],
                "log_level_logfile": "debug",
                # Salt's default: beacons count their interval in loop_interval steps while
                # running once a second (salt-factories' 0.05 would make interval: 2 last 40 s)
                "loop_interval": 1,
            }
            minions[minion_id] = salt_master.salt_minion_daemon(minion_id, overrides=overrides)
        with _Timer("salt-minions"):
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(minions)) as pool:
                for fut in [pool.submit(m.start) for m in minions.values()]:
                    fut.result()
        target = ",".join(MINION_IDS)
        with _Timer("minion sync_all"):
            ret = salt_cli.run("-L", "saltutil.sync_all", minion_tgt=target)
        assert ret.returncode == 0, ret
        assert set(ret.data or {}) == set(MINION_IDS), ret
        # the provider must be live (the stock systemd_service, in offline mode here,
        # would list units and init scripts), and each minion sees only its own service
        ret = salt_cli.run("-L", "service.get_all", minion_tgt=target)
        expected = {mid: [mariadb_servers[mid].service_name] for mid in MINION_IDS}
        assert ret.data == expected, f"service provider not active: {ret}"
        yield minions
    finally:
        for factory in reversed(list(minions.values())):
            factory.terminate()


@pytest.fixture(scope="session")
def app_minion(salt_master, salt_minions, harness_root, salt_cli):
    """
    ``app1``: an app minion (pillar ``mysqlrepl_app``, no database) whose hosts
    file is ``<root>/app1/hosts`` (``hosts.file``): the switch tests read the
    ``masterdb`` entry the orchestration renders there.
    """
    hosts = harness_root / "app1" / "hosts"
    hosts.parent.mkdir()
    hosts.write_text("127.0.0.1 localhost\n", encoding="utf-8")
    factory = salt_master.salt_minion_daemon(APP_MINION, overrides={"hosts.file": str(hosts)})
    factory.start()
    try:
        ret = salt_cli.run("saltutil.sync_all", minion_tgt=APP_MINION)
        assert ret.returncode == 0, ret
        factory.hosts_file = hosts
        yield factory
    finally:
        factory.terminate()


@pytest.fixture(scope="session")
def salt_call_cli(salt_minions):
    """{minion id: salt-call CLI} (runs on that minion, without the master round trip)."""
    return {mid: m.salt_call_cli(timeout=SALT_TIMEOUT) for mid, m in salt_minions.items()}


@pytest.fixture(scope="session")
def write_pillar(pillar_dir, salt_cli, salt_minions):
    """
    ``write_pillar(data)``: write ``top.sls`` (base: '*': [mysqlrepl]) and
    ``mysqlrepl.sls`` = YAML of ``data`` (the whole pillar, e.g.
    ``{"mysqlrepl": {...}}``; rendered as plain YAML, no Jinja), then
    ``saltutil.refresh_pillar wait=True`` on all minions. Returns the SLS path.
    The pillar stays for the rest of the session: each test writes what it needs.
    """

    def _write(data):
        # db minions get the topology; the app minion only its topology name and
        # the hosts entry apps use (seed 002's infra:hosts_entries:masterdb)
        (pillar_dir / "top.sls").write_text(
            yaml.safe_dump({"base": {"db*": ["mysqlrepl"], f"{APP_MINION}": ["mysqlrepl_app"]}}),
            encoding="utf-8",
        )
        topo = data.get("mysqlrepl") or {}
        master = (topo.get("servers") or {}).get(topo.get("master")) or {}
        app = {"mysqlrepl_app": {"topology": topo.get("topology", "main")},
               "infra": {"hosts_entries": {"masterdb": master.get("address", "127.0.0.1")}}}
        (pillar_dir / "mysqlrepl_app.sls").write_text(
            "#!yaml\n" + yaml.safe_dump(app, default_flow_style=False), encoding="utf-8")
        sls = pillar_dir / "mysqlrepl.sls"
        tmp = sls.with_suffix(".tmp")
        tmp.write_text(
            "#!yaml\n" + yaml.safe_dump(data, default_flow_style=False, sort_keys=False),
            encoding="utf-8",
        )
        os.chmod(tmp, 0o600)
        os.replace(tmp, sls)
        ret = salt_cli.run(
            "-L", "saltutil.refresh_pillar", "wait=True", minion_tgt=",".join(salt_minions)
        )
        _check_all_true(ret, list(salt_minions), "saltutil.refresh_pillar")
        _write.last = copy.deepcopy(data)
        return sls

    _write.last = None  # what the session's minions hold now (a test that changes it puts it back)
    return _write
