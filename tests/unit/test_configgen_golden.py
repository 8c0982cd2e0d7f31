"""
Golden configs per role (sidecar, front, both on one host, a DB-only monolith, upstream-only):
the rendered bytes must match tests/golden/<case>/envoy.yaml, and the real envoy must accept them.
Regenerate after an intended template change: UPDATE_GOLDEN=1 pytest tests/unit/test_configgen_golden.py
"""

import os

import pytest
import yaml
from envoy_bundle.configgen import generate

from tests.helpers.configgen_cases import GOLDEN, GOLDEN_CASES, envoy_validate, golden_inputs


def test_every_role_has_a_golden_case():
    assert {"sidecar", "front", "both", "monolith_db", "upstream_only"} <= set(GOLDEN_CASES)


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_render_matches_golden(case):
    manifests, pillar, host = golden_inputs(case)
    rendered = generate(manifests, pillar, host)
    expected_path = GOLDEN / case / "envoy.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        expected_path.write_text(rendered)
    assert expected_path.exists(), f"no golden file for {case}: run with UPDATE_GOLDEN=1"
    assert rendered == expected_path.read_text()


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_is_accepted_by_real_envoy(case, envoy_bin, tmp_path):
    text = (GOLDEN / case / "envoy.yaml").read_text()
    host = golden_inputs(case)[2]
    ok, output = envoy_validate(envoy_bin, text, tmp_path, log_dir=host["log_dir"], pki_dir=host["pki_dir"])
    assert ok, output


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_render_twice_gives_identical_bytes(case):
    manifests, pillar, host = golden_inputs(case)
    first = generate(manifests, pillar, host)
    # Same inputs in another order (manifests, pillar keys) must not change a byte.
    shuffled_pillar = dict(reversed(list(pillar.items())))
    second = generate(list(reversed(manifests)), shuffled_pillar, dict(reversed(list(host.items()))))
    assert first.encode() == second.encode()


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_is_plain_yaml_with_admin_on_loopback(case):
    config = yaml.safe_load((GOLDEN / case / "envoy.yaml").read_text())
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
