"""
SSH tunnels and two-master pairs without servers: the pillar's tunnel and
``masters`` keys (each refusal names its key), where one server reaches another
(``cfg["reach"]``), and what ``_utils/mysqlrepl_tunnel.py`` renders: autossh's
command and unit, the far side's authorized_keys line, the pinned known_hosts,
the hosts-file names, and a tunnel's state read from its processes.
"""

import copy

import pytest
from salt.exceptions import SaltInvocationError

import _utils.mysqlrepl_config as conf
import _utils.mysqlrepl_tunnel as tn

# seed 000: db3 sits in another datacenter and reaches db1 only through its sshd
PILLAR = {
    "topology": "prod",
    "master": "db1",
    "ca": {"minion": "db1"},
    "replication": {"password": "s3cret"},
    "servers": {
        "db1": {"address": "10.0.0.11", "sshd": {"port": 2345}},
        "db2": {"address": "10.0.0.12"},
        "db3": {"address": "192.0.2.13", "tunnels": [{"peer": "db1", "port": 4406}]},
    },
}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ2p0m3Q1iZbXf8+E0Qm6kIuT0i2bT3b9o2kq1Jr5G9x db3"
HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyHostKeyHostKeyHostKeyHostKeyHostKey1"


def load(**changes):
    raw = copy.deepcopy(PILLAR)
    for path, value in changes.items():
        node = raw
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return conf.load(raw)


def err(**changes):
    with pytest.raises(SaltInvocationError) as info:
        load(**changes)
    return str(info.value)


CFG = load()
T = CFG["tunnels"][0]


# -- pillar ------------------------------------------------------------------------------

def test_a_tunnel_entry_is_normalised_with_its_ports_and_service():
    assert T == {"id": "db3-db1", "near": "db3", "peer": "db1", "port": 4406, "seed_port": 4407,
                 "peer_port": 4406, "peer_seed_port": 4407, "service": "mysqlrepl-tunnel-db3-db1",
                 "alive_interval": 10, "alive_count": 3}
    assert CFG["servers"]["db1"]["sshd"] == {"host": "10.0.0.11", "port": 2345,
                                             "host_key_file": "/etc/ssh/ssh_host_ed25519_key.pub",
                                             "authorized_keys_file": None,
                                             "config_file": "/etc/ssh/sshd_config",
                                             "config_dir": "/etc/ssh/sshd_config.d", "service": "ssh",
                                             "sshd": "/usr/sbin/sshd"}


def test_both_ends_carry_their_tunnel_name_in_their_certificate_and_no_other_server_does():
    assert CFG["servers"]["db1"]["cert_names"] == ["10.0.0.11", "db1.prod.mysqlrepl.internal"]
    assert CFG["servers"]["db3"]["cert_names"] == ["192.0.2.13", "db3.prod.mysqlrepl.internal"]
    assert CFG["servers"]["db2"]["cert_names"] == ["10.0.0.12"]
    server_cert = CFG["servers"]["db1"]["certs"][0]
    assert server_cert["san"] == ["10.0.0.11", "db1.prod.mysqlrepl.internal"]


@pytest.mark.parametrize("entry, key, words", [
    ({"peer": "db9", "port": 4406}, "peer", "unknown server 'db9'"),
    ({"peer": "db3", "port": 4406}, "peer", "to itself"),
    ({"peer": "db1"}, "port", "missing required key"),
    ({"peer": "db1", "port": 70000}, "port", "TCP port"),
    ({"peer": "db1", "port": 4406, "seed_port": 4406}, "seed_port", "must differ from port"),
    ({"peer": "db1", "port": 4406, "forward": "local"}, "forward", "unknown key"),
])
def test_a_bad_tunnel_entry_names_its_key(entry, key, words):
    text = err(servers__db3__tunnels=[entry])
    assert text.startswith(f"mysqlrepl:servers:db3:tunnels:0:{key}")
    assert words in text


def test_a_tunnel_to_a_server_on_the_same_minion_is_a_tunnel_to_itself():
    text = err(servers__db2__minion="db3", servers__db3__tunnels=[{"peer": "db2", "port": 4406}])
    assert "same minion" in text and "to itself" in text


def test_two_tunnels_joining_the_same_two_servers_are_refused():
    text = err(servers__db1__tunnels=[{"peer": "db3", "port": 5506}])
    assert text.startswith("mysqlrepl:servers:db3:tunnels:0:peer") and "already joined" in text


def test_a_forward_port_taken_on_its_host_is_refused_naming_what_holds_it():
    # db3's host already serves db3's database on 3306 (bound to every address)
    text = err(servers__db3__tunnels=[{"peer": "db1", "port": 3306}])
    assert text.startswith("mysqlrepl:servers:db3:tunnels:0:port")
    assert "db3's database port" in text
    # the -R side: 4406 on db1's host (the peer) is free, but db2's tunnel wants it too there
    text = err(servers__db2__minion="db3-other",
               servers__db2__tunnels=[{"peer": "db1", "port": 5506, "peer_port": 4406}])
    assert text == ("mysqlrepl:servers:db3:tunnels:0:peer_port: port 4406 on 127.0.0.1 of db1 is already "
                    "tunnel db2-db1's forward to db2's database")


def test_a_database_bound_to_one_address_leaves_127_0_0_1_free():
    cfg = load(servers__db3__bind_address="192.0.2.13",
               servers__db3__tunnels=[{"peer": "db1", "port": 3306, "seed_port": 3307, "peer_port": 5506}])
    assert cfg["tunnels"][0]["port"] == 3306


def test_bad_tunnel_defaults_are_refused():
    assert err(tunnel={"alive_interval": 0}).startswith("mysqlrepl:tunnel:alive_interval")
    assert err(tunnel={"dir": "relative/dir"}).startswith("mysqlrepl:tunnel:dir")
    assert err(tunnel={"autossh": "/usr/bin/auto ssh"}).startswith("mysqlrepl:tunnel:autossh")
    assert "not a DNS name" in err(tunnel={"domain": "bad_domain!"})


# -- two masters ----------------------------------------------------------------------------

PAIR = {"masters": ["db1", "db2"], "master": None}


def test_a_pair_gets_offsets_domains_and_sources():
    cfg = load(**PAIR)
    assert cfg["two_masters"] and cfg["masters"] == ["db1", "db2"] and cfg["master"] == "db1"
    assert cfg["sources"] == {"db1": "db2", "db2": "db1", "db3": "db1"}
    s = cfg["servers"]
    assert (s["db1"]["auto_increment_offset"], s["db2"]["auto_increment_offset"]) == (1, 2)
    assert (s["db1"]["gtid_domain_id"], s["db2"]["gtid_domain_id"]) == (0, 1)
    settings = dict(conf.desired_settings(cfg, "db2"))
    assert settings["auto_increment_increment"] == "2" and settings["auto_increment_offset"] == "2"
    assert "auto_increment_offset" not in dict(conf.desired_settings(cfg, "db3"))
    assert "auto_increment_offset" not in dict(conf.desired_settings(load(), "db1"))


def test_a_replica_of_the_second_master_follows_it():
    cfg = load(servers__db3__source="db2", **PAIR)
    assert cfg["sources"]["db3"] == "db2"


@pytest.mark.parametrize("changes, key, words", [
    ({"masters": ["db1", "db2"]}, "masters", "not both"),
    ({"masters": ["db1"], "master": None}, "masters", "exactly two"),
    ({"masters": ["db1", "db1"], "master": None}, "masters", "exactly two distinct"),
    ({"masters": ["db1", "db9"], "master": None}, "masters", "unknown server 'db9'"),
    ({"master": None}, "master", "missing required key"),
    (dict(PAIR, servers__db3__source="db3"), "servers:db3:source", "must be one of the masters"),
    (dict(PAIR, servers__db1__source="db2"), "servers:db1:source", "is a master"),
    ({"servers__db3__source": "db1"}, "servers:db3:source", "only with masters"),
    (dict(PAIR, servers__db1__auto_increment_offset=2), "servers:db2:auto_increment_offset",
     "both masters would make the same keys"),
    (dict(PAIR, servers__db1__auto_increment_offset=3), "servers:db1:auto_increment_offset",
     "between 1 and auto_increment_increment"),
    (dict(PAIR, servers__db3__auto_increment_offset=3), "servers:db3:auto_increment_offset",
     "only masters"),
    (dict(PAIR, auto_increment_increment=1), "auto_increment_increment", "between 2 and"),
    (dict(PAIR, servers__db1__gtid_domain_id=5, servers__db2__gtid_domain_id=5),
     "servers:db2:gtid_domain_id", "its own GTID domain"),
])
def test_a_bad_pair_names_its_key(changes, key, words):
    text = err(**changes)
    assert text.startswith(f"mysqlrepl:{key}"), text
    assert words in text


def test_domains_set_by_hand_are_kept_and_a_pair_with_increment_10_like_seed_001_loads():
    cfg = load(auto_increment_increment=10, servers__db1__gtid_domain_id=7,
               servers__db2__auto_increment_offset=5, **PAIR)
    s = cfg["servers"]
    assert (s["db1"]["gtid_domain_id"], s["db2"]["gtid_domain_id"]) == (7, 1)
    assert (s["db1"]["auto_increment_offset"], s["db2"]["auto_increment_offset"]) == (1, 5)


# -- where one server reaches another -------------------------------------------------------

def test_reach_goes_through_the_tunnel_in_both_directions_and_directly_otherwise():
    # db3 (near) reaches db1 through -L on its own host
    assert tn.reach(CFG, "db3", "db1") == {"host": "db1.prod.mysqlrepl.internal", "port": 4406,
                                           "seed_port": 4407, "tunnel": "db3-db1"}
    # db1 reaches db3 through the -R forwards db3's ssh opens on db1's host
    assert tn.reach(CFG, "db1", "db3") == {"host": "db3.prod.mysqlrepl.internal", "port": 4406,
                                           "seed_port": 4407, "tunnel": "db3-db1"}
    assert tn.reach(CFG, "db2", "db1") == {"host": "10.0.0.11", "port": 3306, "seed_port": 4444,
                                           "tunnel": None}
    assert tn.reach(CFG, None, "db3")["host"] == "192.0.2.13"


def test_hosts_entries_name_the_other_ends_of_local_tunnels_only():
    assert tn.hosts_entries(CFG, ["db3"]) == ["db1.prod.mysqlrepl.internal"]
    assert tn.hosts_entries(CFG, ["db1"]) == ["db3.prod.mysqlrepl.internal"]
    assert tn.hosts_entries(CFG, ["db2"]) == []


# -- the near side: autossh -----------------------------------------------------------------

def test_the_command_pins_the_host_key_and_forwards_exactly_four_ports():
    argv = tn.command(CFG, T)
    assert argv[:7] == ["/usr/bin/autossh", "-M", "0", "-N", "-T", "-F", "/dev/null"]
    assert argv[-5:] == ["-p", "2345", "-l", "mysqlrepl-tunnel", "10.0.0.11"]
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert "StrictHostKeyChecking=yes" in opts and "ExitOnForwardFailure=yes" in opts
    assert "HostKeyAlias=sshd.db1.prod.mysqlrepl.internal" in opts
    assert "UserKnownHostsFile=/var/lib/mysqlrepl-tunnel/db3/known_hosts" in opts
    assert "IdentityFile=/var/lib/mysqlrepl-tunnel/db3/id_ed25519" in opts
    assert "ServerAliveInterval=10" in opts and "ServerAliveCountMax=3" in opts
    assert not [o for o in opts if "StrictHostKeyChecking=no" in o or "accept-new" in o]
    fwd = [(a, argv[i + 1]) for i, a in enumerate(argv) if a in ("-L", "-R")]
    assert fwd == [("-L", "127.0.0.1:4406:10.0.0.11:3306"), ("-L", "127.0.0.1:4407:10.0.0.11:4444"),
                   ("-R", "127.0.0.1:4406:192.0.2.13:3306"), ("-R", "127.0.0.1:4407:192.0.2.13:4444")]


def test_the_unit_runs_the_command_as_the_tunnel_user_and_restarts_it():
    text = tn.unit(CFG, T)
    lines = text.splitlines()
    assert "User=mysqlrepl-tunnel" in lines and "Restart=always" in lines
    assert "Environment=AUTOSSH_GATETIME=0" in lines
    assert "ExecStart=" + " ".join(tn.command(CFG, T)) in lines
    assert "WantedBy=multi-user.target" in lines


def test_known_hosts_pins_each_peer_under_its_alias_and_says_which_key_is_missing():
    text, missing = tn.known_hosts(CFG, "db3", {"db1": HOSTKEY + " root@db1"})
    assert text == f"sshd.db1.prod.mysqlrepl.internal {HOSTKEY}\n" and missing == []
    assert tn.known_hosts(CFG, "db3", {}) == ("", ["db1"])
    assert tn.known_hosts(CFG, "db3", {"db1": "not a key"}) == ("", ["db1"])


# -- the far side: authorized_keys ----------------------------------------------------------

def test_the_far_side_line_allows_forwarding_only_to_and_from_the_tunnels_ports():
    line = tn.authorized_line(CFG, T, KEY)
    opts, key_type, blob, comment = line.split(" ")
    assert opts.split(",") == ["restrict", "port-forwarding", 'command="/bin/false"',
                               'permitopen="10.0.0.11:3306"', 'permitopen="10.0.0.11:4444"',
                               'permitlisten="127.0.0.1:4406"', 'permitlisten="127.0.0.1:4407"']
    assert (key_type, blob) == tuple(KEY.split(" ")[:2]) and comment == "mysqlrepl:prod:db3"
    for bad in ("ssh-ed25519", "ssh-dss AAAAB3Nza", KEY + "\nrestrict ssh-ed25519 AAAA", 'from="*" ' + KEY):
        with pytest.raises(ValueError):
            tn.authorized_line(CFG, T, bad)


def test_authorized_keys_holds_the_lines_of_this_hosts_peers_and_names_missing_keys():
    text, missing = tn.authorized_keys(CFG, ["db1"], {"db3": KEY})
    assert text.splitlines()[1:] == [tn.authorized_line(CFG, T, KEY)] and missing == []
    assert tn.authorized_keys(CFG, ["db1"], {})[1] == ["db3"]
    assert tn.authorized_keys(CFG, ["db2"], {"db3": KEY})[0].splitlines()[1:] == []
    assert tn.authorized_keys_file(CFG["servers"]["db1"], "/var/lib/mysqlrepl-tunnel") == \
        "/var/lib/mysqlrepl-tunnel/.ssh/authorized_keys"


# -- reading a tunnel's state ---------------------------------------------------------------

def _procs(ssh=True):
    procs = [{"pid": 10, "ppid": 1, "argv": tn.command(CFG, T), "started": 100.0},
             {"pid": 12, "ppid": 1, "argv": ["/usr/bin/autossh", "-M", "0", "other"], "started": 90.0}]
    if ssh:
        procs.append({"pid": 11, "ppid": 10, "argv": ["/usr/bin/ssh"] + tn.command(CFG, T)[1:],
                      "started": 160.0})
    return procs


def test_state_on_the_near_side_is_up_with_autossh_ssh_and_an_answering_forward():
    found = tn.find_processes(_procs(), CFG, T)
    assert found["autossh"]["pid"] == 10 and found["ssh"]["pid"] == 11
    st = tn.state(CFG, T, "db3", found, {4406: True, 4407: True})
    assert st["up"] is True and st["side"] == "near" and st["autossh_pid"] == 10
    assert st["ssh_pid"] == 11 and st["last_restart"] == 160.0 and st["service"] == T["service"]


def test_state_is_down_without_ssh_or_when_the_forward_does_not_answer():
    found = tn.find_processes(_procs(ssh=False), CFG, T)
    st = tn.state(CFG, T, "db3", found, {4406: False})
    assert st["up"] is False and st["autossh_pid"] == 10 and st["ssh_pid"] is None
    st = tn.state(CFG, T, "db3", tn.find_processes(_procs(), CFG, T), {4406: False})
    assert st["up"] is False
    assert tn.find_processes([], CFG, T) == {"autossh": None, "ssh": None}


def test_state_on_the_peer_side_is_its_reverse_forward():
    st = tn.state(CFG, T, "db1", {}, {4406: True})
    assert st["up"] is True and st["side"] == "peer" and st["other"] == "db3" and st["service"] is None


def test_hosts_lines_are_added_once_and_nothing_else_changes():
    text = "127.0.0.1\tlocalhost\n::1 localhost\n127.0.0.1 db9.prod.mysqlrepl.internal # elsewhere\n"
    names = ["db1.prod.mysqlrepl.internal", "db9.prod.mysqlrepl.internal"]
    assert tn.hosts_missing(text, names) == ["db1.prod.mysqlrepl.internal"]
    new = tn.hosts_with(text, names)
    assert new.startswith(text) and new[len(text):] == "127.0.0.1\tdb1.prod.mysqlrepl.internal\t# mysqlrepl tunnel\n"
    assert tn.hosts_with(new, names) == new
    assert tn.hosts_with("127.0.0.1 localhost", ["a.b"]) == "127.0.0.1 localhost\n127.0.0.1\ta.b\t# mysqlrepl tunnel\n"
    assert tn.hosts_missing("10.0.0.1 a.b\n", ["a.b"]) == ["a.b"]


def test_a_forward_on_the_peers_sshd_port_is_refused():
    text = err(servers__db3__tunnels=[{"peer": "db1", "port": 4406, "peer_port": 2345}])
    assert text == ("mysqlrepl:servers:db3:tunnels:0:peer_port: port 2345 on 127.0.0.1 of db1 is already "
                    "db1's sshd port")


def test_the_far_sshd_drops_a_silent_tunnel_client_and_allows_only_forwarding():
    text = tn.sshd_dropin(CFG, [T, dict(T, alive_interval=5, alive_count=4)])
    lines = [ln.strip() for ln in text.splitlines()]
    assert lines[1] == "Match User mysqlrepl-tunnel"
    assert "ClientAliveInterval 5" in lines and "ClientAliveCountMax 3" in lines
    assert {"AllowTcpForwarding yes", "PermitTTY no", "X11Forwarding no", "AllowAgentForwarding no",
            "PermitTunnel no"} <= set(lines)
    assert tn.sshd_dropin_path(CFG["servers"]["db1"]["sshd"]) == "/etc/ssh/sshd_config.d/60-mysqlrepl-tunnel.conf"
    good = "port 22\nclientaliveinterval 10\nclientalivecountmax 3\n"
    assert tn.sshd_effective_ok(good, [T]) == (True, {"clientaliveinterval": "10", "clientalivecountmax": "3"})
    assert tn.sshd_effective_ok("clientaliveinterval 0\nclientalivecountmax 3\n", [T])[0] is False
    assert tn.sshd_effective_ok("", [T])[0] is False
