"""
The verifier suite: pytest-testinfra checks of a host after a real highstate, run by
`kitchen verify` (over ssh into a Docker container) and, in CI, inside a throwaway unshare host
(tests/fleet/test_throwaway_host.py runs `pytest tests/verify --hosts=local://` there).

It checks the production paths, so it is skipped in a plain `make test` run: only a run that names
a host with --hosts (or sets ENVOY_VERIFY_HOST=1) collects it.
"""

import os

import pytest


def pytest_ignore_collect(collection_path, config):
    if collection_path.name == "conftest.py":
        return None
    wanted = os.environ.get("ENVOY_VERIFY_HOST") == "1" or config.getoption("hosts", default=None)
    return None if wanted else True


@pytest.fixture(scope="module")
def settings():
    """Production paths and the ports the verify pillar (pillar/) gives this host."""
    return {
        "install_dir": "/opt/envoy",
        "config_file": "/etc/envoy/envoy.yaml",
        "log_dir": "/var/log/envoy",
        "run_dir": "/run/envoy",
        "user": os.environ.get("ENVOY_VERIFY_USER", "envoy"),
        "admin_port": int(os.environ.get("ENVOY_VERIFY_ADMIN_PORT", "9901")),
    }
