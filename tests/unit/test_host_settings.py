"""
``envoy_formula.host_settings``: the one place the formula's settings are resolved (map.jinja gets
the same dict through ``envoy.settings``; tests/integration/test_formula_layout.py checks that).
"""

import pytest
from envoy_formula import host_settings
from envoy_formula.errors import EnvoyFormulaError


def resolve(pillar=None, grains=None, euid=1000, **overrides):
    return host_settings.resolve(pillar or {}, grains=grains or {}, euid=euid, overrides=overrides)


def test_production_defaults():
    host = resolve()
    assert (host["install_dir"], host["config_file"], host["current_dir"]) == (
        "/opt/envoy", "/etc/envoy/envoy.yaml", "/opt/envoy/current")
    assert (host["user"], host["admin_port"], host["base_id"], host["supervisor"]) == ("envoy", 9901, 0, "daemon")
    assert host["schedule"] == {"method": "none", "minutes": 15, "seconds": 0, "splay": 300,
                                "salt_call": "/usr/bin/salt-call"}
    assert host["bundle"] == {"source": None, "sha256": None, "keep": 3}
    assert host["lookup"]["supervisor"] == "auto"  # as configured: the resolved kind is host["supervisor"]


def test_root_prefixes_every_path_once():
    pillar = {"lookup": {"root": "/sandbox", "admin_port": 9999}}
    host = resolve(pillar, install_dir="/sandbox/opt/envoy", keep_releases=5)
    assert host["install_dir"] == "/sandbox/opt/envoy"  # already prefixed: not twice
    assert host["config_dir"] == "/sandbox/etc/envoy" and host["current_dir"] == "/sandbox/opt/envoy/current"
    assert (host["systemd_dir"], host["cron_dir"]) == ("/sandbox/etc/systemd/system", "/sandbox/etc/cron.d")
    assert host["discovery"]["server"]["sqlite"] == "/sandbox/var/lib/envoy-discovery/hosts.sqlite3"
    assert (host["admin_port"], host["keep_releases"]) == (9999, 5)
    # The resolved lookup reproduces the host: resolving it again changes nothing.
    assert resolve(**host["lookup"]) == {**host, "discovery": host["discovery"]}


def test_lookup_from_minion_config_wins_over_pillar_lookup():
    host = host_settings.resolve({"lookup": {"admin_port": 1111}}, lookup={"admin_port": 2222}, euid=1000)
    assert host["admin_port"] == 2222


@pytest.mark.parametrize(("overrides", "pillar", "message"), [
    ({"colour": "red"}, {}, "unknown host setting(s) colour"),
    ({}, {"lookup": {"admin_port": "soon"}}, "envoy:lookup:admin_port='soon': expected a whole number"),
    ({}, {"lookup": {"admin_port": 70000}}, "envoy:lookup:admin_port=70000: expected a port"),
    ({}, {"lookup": {"log_dir": "logs"}}, "envoy:lookup:log_dir='logs': expected an absolute path"),
    ({}, {"lookup": {"supervisor": "upstart"}}, "envoy:lookup:supervisor='upstart'"),
    ({}, {"schedule": {"method": "at"}}, "envoy:schedule:method='at': expected minion, cron, systemd, none"),
    ({}, {"schedule": {"splay": -1}}, "envoy:schedule:splay=-1"),
    ({}, {"restart": "fast"}, "pillar envoy:restart must be a mapping"),
])
def test_bad_settings_name_the_pillar_field(overrides, pillar, message):
    with pytest.raises(EnvoyFormulaError) as exc:
        resolve(pillar, **overrides)
    assert message in str(exc.value)


def test_sidecar_defaults_and_front_takes_the_longer_timings():
    sidecar = resolve({"roles": ["sidecar"]})["restart"]
    assert (sidecar["drain_time_s"], sidecar["parent_shutdown_time_s"], sidecar["full_restart_drain_s"]) == (60, 90, 60)
    both = resolve({"roles": ["sidecar", "front"]})["restart"]
    assert (both["drain_time_s"], both["parent_shutdown_time_s"]) == (300, 450)


def test_pillar_role_tables_then_flat_keys_win():
    pillar = {"roles": ["front"], "restart": {
        "roles": {"front": {"drain_time_s": 120}}, "stop_timeout_s": 9, "full_restart_drain_s": 5}}
    timing = resolve(pillar)["restart"]
    assert (timing["drain_time_s"], timing["parent_shutdown_time_s"]) == (120, 450)
    assert (timing["stop_timeout_s"], timing["full_restart_drain_s"], timing["live_timeout_s"]) == (9, 5, 60)


@pytest.mark.parametrize(("restart", "message"), [
    ({"drain_time_s": 90, "parent_shutdown_time_s": 60}, "drain_time_s=90 must be below parent_shutdown_time_s=60"),
    ({"live_timeout_s": 0}, "envoy:restart:live_timeout_s=0: expected a positive number"),
    ({"stop_timeout_s": "soon"}, "envoy:restart:stop_timeout_s='soon'"),
    ({"envoy_args": "--log-level warn"}, "envoy:restart:envoy_args must be a list"),
])
def test_bad_restart_pillar_names_the_field(restart, message):
    with pytest.raises(EnvoyFormulaError, match=message):
        resolve({"restart": restart})


def test_supervisor_auto_is_systemd_only_for_root_on_a_systemd_host_without_sandbox(monkeypatch):
    monkeypatch.setattr("os.access", lambda path, mode: True)
    assert resolve(grains={"init": "systemd"}, euid=0)["supervisor"] == "systemd"
    assert resolve(grains={"init": "sysvinit"}, euid=0)["supervisor"] == "daemon"
    assert resolve({"lookup": {"root": "/tmp/sandbox"}}, grains={"init": "systemd"}, euid=0)["supervisor"] == "daemon"
    assert resolve(grains={"init": "systemd"}, euid=1000)["supervisor"] == "daemon"
    assert resolve({"lookup": {"supervisor": "systemd"}})["supervisor"] == "systemd"


def test_discovery_url_from_address_and_a_job_carries_its_own_section():
    host = resolve({"discovery": {"address": "10.0.0.5:8080", "register": {"tags": {"az": "a"}}}})
    assert host["discovery"]["url"] == "http://10.0.0.5:8080"
    assert host["discovery"]["register"]["tags"] == {"az": "a"} and host["discovery"]["register"]["minutes"] == 1
    # A scheduled envoy.register carries envoy:discovery itself (a masterless minion's scheduler
    # has no pillar): it wins over pillar's.
    carried = resolve({}, discovery={"url": "http://127.0.0.1:1", "register": {"ip": "127.0.0.8"}})
    assert carried["discovery"]["url"] == "http://127.0.0.1:1"
    assert carried["discovery"]["register"]["ip"] == "127.0.0.8"
    assert carried["discovery"]["register"]["schedule_offline"] is True  # not a minion schedule


def test_several_instances_give_one_url_each_and_a_carried_job_keeps_them():
    host = resolve({"discovery": {"address": ["10.0.0.5:8080", "10.0.0.6:8080"]}})
    assert host["discovery"]["urls"] == ["http://10.0.0.5:8080", "http://10.0.0.6:8080"]
    carried = resolve({}, discovery=host["discovery"])
    assert carried["discovery"]["urls"] == host["discovery"]["urls"]
    assert resolve({"discovery": {"url": ["http://a:1/", "http://b:2"]}})["discovery"]["urls"] == [
        "http://a:1", "http://b:2"]


def test_secrets_from_pillar_never_reach_the_settings():
    pillar = {"discovery": {"auth": {"token": "edt1.k1.claims.sig", "mode": "audit"},
                            "server": {"auth_keys": "k1 " + "s" * 40}}}
    host = resolve(pillar)
    assert "token" not in host["discovery"]["auth"] and "auth_keys" not in host["discovery"]["server"]
    assert "edt1" not in repr(host) and "s" * 40 not in repr(host)
    assert host["discovery"]["auth"]["token_file"] == "/etc/envoy/discovery/token"
    assert host["discovery"]["server"]["keys_file"] == "/etc/envoy/discovery/keys"


def test_an_unquoted_off_is_off():
    assert resolve({"discovery": {"auth": {"mode": False}}})["discovery"]["auth"]["mode"] == "off"


@pytest.mark.parametrize(("discovery", "message"), [
    ({"server": {"workers": 0}}, "envoy:discovery:server:workers=0: expected a whole number from 1 to 64"),
    ({"server": {"workers": "2"}}, "envoy:discovery:server:workers='2'"),
    ({"server": {"sweep_guard": 0}}, "envoy:discovery:server:sweep_guard=0: expected a number above 0 to 1"),
    ({"server": {"sweep_guard": 1.5}}, "envoy:discovery:server:sweep_guard=1.5"),
    ({"server": {"sweep_guard_min": -1}}, "envoy:discovery:server:sweep_guard_min=-1"),
    ({"server": {"sweep_grace": 0}}, "envoy:discovery:server:sweep_grace=0"),
    ({"auth": {"mode": "strict"}}, "envoy:discovery:auth:mode='strict': expected off, audit, enforce"),
    ({"auth": {"services": "bar"}}, "envoy:discovery:auth:services='bar': expected a list"),
    ({"auth": {"peer_check": "no"}}, "envoy:discovery:auth:peer_check='no'"),
    ({"address": ["10.0.0.5:8080", 7]}, "envoy:discovery:address=['10.0.0.5:8080', 7]: expected host:port"),
])
def test_bad_discovery_settings_name_the_pillar_field(discovery, message):
    with pytest.raises(EnvoyFormulaError) as exc:
        resolve({"discovery": discovery})
    assert message in str(exc.value)
