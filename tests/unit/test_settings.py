"""The module's DEFAULTS (used from the command line) agree with map.jinja's defaults.yaml."""

from pathlib import Path

import yaml

from tests.helpers.bundles import load_envoy_module

REPO = Path(__file__).resolve().parents[2]


def defaults_yaml():
    return yaml.safe_load((REPO / "salt" / "envoy" / "parameters" / "defaults.yaml").read_text())["values"]


def test_module_defaults_equal_defaults_yaml():
    """Every host setting the module knows has the same default as the formula's defaults.yaml
    (formula-only keys there, such as the highstate schedule, are not the module's business)."""
    module = load_envoy_module()
    values = defaults_yaml()
    missing = sorted(set(module.DEFAULTS) - set(values))
    assert not missing, f"defaults.yaml lacks host settings the module has: {missing}"
    assert {key: values[key] for key in module.DEFAULTS} == module.DEFAULTS


def test_settings_apply_lookup_and_root_once():
    module = load_envoy_module(lookup={"root": "/sandbox", "admin_port": 9999, "unknown": 1})
    merged = module.settings(install_dir="/sandbox/opt/envoy", keep_releases=5)
    assert merged["install_dir"] == "/sandbox/opt/envoy"  # map.jinja already prefixed it
    assert merged["config_dir"] == "/sandbox/etc/envoy"
    assert merged["current_dir"] == "/sandbox/opt/envoy/current"
    assert (merged["admin_port"], merged["keep_releases"]) == (9999, 5)
    assert "unknown" not in merged
