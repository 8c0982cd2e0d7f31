"""
The verifier suite: pytest-testinfra checks of a host after a real highstate, run by
`kitchen verify` (over ssh into a Docker container) and, in CI, inside a throwaway unshare host
(tests/fleet/test_throwaway_host.py runs `pytest tests/verify --hosts=local://` there).

It checks the production paths, so it is skipped in a plain `make test` run: only a run that names
a host with --hosts (or sets ENVOY_VERIFY_HOST=1) collects it.
"""

import os

import pytest
import yaml


def pytest_ignore_collect(collection_path, config):
    if collection_path.name == "conftest.py":
        return None
    wanted = os.environ.get("ENVOY_VERIFY_HOST") == "1" or config.getoption("hosts", default=None)
    return None if wanted else True


@pytest.fixture(scope="module")
def settings(host):
    """What the formula resolved for this host, from the dump `envoy._mapdata` writes
    (/tmp/salt_mapdata_dump/<minion id>.yaml); the production defaults without one."""
    dumps = host.run("ls /tmp/salt_mapdata_dump/").stdout.split()
    if dumps:
        values = yaml.safe_load(host.file(f"/tmp/salt_mapdata_dump/{dumps[0]}").content_string)["values"]
        return {key: values[key] for key in ("install_dir", "config_file", "log_dir", "run_dir", "user",
                                             "admin_port")}
    return {
        "install_dir": "/opt/envoy",
        "config_file": "/etc/envoy/envoy.yaml",
        "log_dir": "/var/log/envoy",
        "run_dir": "/run/envoy",
        "user": "envoy",
        "admin_port": 9901,
    }
