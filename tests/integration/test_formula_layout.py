"""
The formula's shape, through the real ``salt-call --local``: map.jinja and the modules resolve the
same settings (one source of truth), ``envoy.clean`` undoes the components in reverse order, and a
site can replace the systemd unit template without forking the formula (TOFS).
"""

from pathlib import Path

import yaml

from tests.helpers.sandbox import REPO, SandboxHost

COMPONENTS = ["user", "bundle", "config", "service", "discovery", "report", "schedule"]


def test_formula_metadata():
    meta = yaml.safe_load((REPO / "FORMULA").read_text())
    assert meta["name"] == "envoy" and meta["top_level_dir"] == "envoy"
    for key in ("os_family", "version", "minimum_version", "summary", "description"):
        assert meta[key], key
    for component in COMPONENTS:
        assert (REPO / "salt" / "envoy" / component / "init.sls").is_file(), component
        if component != "user":  # the envoy user stays: files elsewhere may be owned by it
            assert (REPO / "salt" / "envoy" / component / "clean.sls").is_file(), component


def test_mapdata_dumps_exactly_what_the_modules_resolve(tmp_path):
    host = SandboxHost(tmp_path / "h", minion_id="mapdata-host", pillar={"envoy": {
        "roles": ["front"], "lookup": {"keep_releases": 5}, "schedule": {"method": "cron", "minutes": 10},
        "discovery": {"address": "127.0.0.1:8080"}}})
    host.sync()
    out = host.apply("envoy._mapdata")
    assert out["envoy-mapdata-dumped"]["result"] is True, out
    dumped = yaml.safe_load((Path(host.root) / "tmp/salt_mapdata_dump/mapdata-host.yaml").read_text())["values"]
    _, settings = host.salt_call("envoy.settings")
    assert dumped == settings
    assert dumped["keep_releases"] == 5 and dumped["schedule"]["minutes"] == 10
    assert dumped["restart"]["drain_time_s"] == 300  # the front's role defaults
    assert dumped["discovery"]["url"] == "http://127.0.0.1:8080"


def test_clean_undoes_the_components_in_reverse_order(tmp_path):
    host = SandboxHost(tmp_path / "h", minion_id="clean-order", pillar={"envoy": {
        "discovery": {"address": "127.0.0.1:1"}}})
    host.sync()
    _, shown = host.salt_call("state.show_sls", "envoy.clean")
    first = {}
    for state in shown.values():
        [args] = [v for k, v in state.items() if not k.startswith("__")]
        [order] = [item["order"] for item in args if isinstance(item, dict) and "order" in item]
        first[state["__sls__"]] = min(first.get(state["__sls__"], 10**9), order)
    order = sorted(first, key=first.get)
    assert order == ["envoy.schedule.clean", "envoy.report.clean", "envoy.discovery.clean", "envoy.service.clean",
                     "envoy.config.clean", "envoy.identity.clean", "envoy.bundle.clean"]


def test_a_site_template_replaces_the_unit_without_forking_the_formula(tmp_path):
    site = tmp_path / "site"
    override = site / "envoy" / "files" / "tofs-host" / "envoy.service.jinja"
    override.parent.mkdir(parents=True)
    override.write_text("# the site's own unit for {{ envoy.user }}\nExecStart={{ command | join(' ') }}\n")
    host = SandboxHost(tmp_path / "h", minion_id="tofs-host", extra_file_roots=[site],
                       pillar={"envoy": {"lookup": {"supervisor": "systemd"}}})
    host.sync()
    code, out = host.salt_call("state.sls_id", "envoy-service-unit-managed", "envoy.service", check=False)
    assert code == 0, out
    unit = (Path(host.root) / "etc/systemd/system/envoy.service").read_text()
    assert unit.startswith(f"# the site's own unit for {host.lookup['user']}\nExecStart=")
    assert "envoy-restarter" in unit
