"""
``state.apply envoy.bundle`` through the real ``salt-call --local`` on a sandbox host, from a real
loopback HTTP server started here and from ``salt://``. The real-binary bundle is the session's
``built_bundle``; fake-envoy bundles (a few KB) serve the fault cases.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.bundles import BundleServer, build_fake_bundle
from tests.helpers.sandbox import SandboxHost

STATE = "envoy-bundle-installed"


@pytest.fixture(scope="module")
def server(tmp_path_factory, built_bundle):
    out = tmp_path_factory.mktemp("served")
    real, real_sha = built_bundle
    shutil.copy(real, out / real.name)
    files = {"real": (real.name, real_sha)}
    for key in ("retry", "truncate", "salt"):
        tarball, sha = build_fake_bundle(out / key, marker=key)
        shutil.copy(tarball, out / f"{key}-{tarball.name}")
        files[key] = (f"{key}-{tarball.name}", sha)
    with BundleServer(out) as srv:
        srv.files = files
        srv.dir = out
        yield srv


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    sandbox = SandboxHost(tmp_path_factory.mktemp("bundle-host"), minion_id="bundle-host")
    sandbox.sync()
    return sandbox


def use_bundle(host, source, sha256):
    bundle = {"source": source}
    if sha256 is not None:
        bundle["sha256"] = sha256
    host.set_pillar({"envoy": {"bundle": bundle}})


def current(host):
    link = Path(host.settings["install_dir"]) / "current"
    return os.readlink(link) if link.is_symlink() else None


def apply_bundle(host, test=False):
    return host.apply("envoy.bundle", test=test)[STATE]


def test_http_install_is_idempotent_and_test_mode_predicts(host, server):
    name, sha = server.files["real"]
    use_bundle(host, server.url(name), sha)

    predicted = apply_bundle(host, test=True)
    assert predicted["result"] is None
    assert predicted["changes"] == {"old": None, "new": f"bundle with sha256 {sha}"}
    assert current(host) is None and server.downloads(name) == 0

    applied = apply_bundle(host)
    assert applied["result"] is True, applied["comment"]
    new = applied["changes"]["new"]
    assert applied["changes"]["old"] is None and new["envoy_version"] == "1.40.0"
    assert name == f"envoy-bundle-{new['bundle_id']}.tar.gz"
    assert current(host) == f"releases/{new['bundle_id']}"
    envoy = Path(host.settings["install_dir"]) / "current" / "bin" / "envoy"
    assert "/1.40.0/" in subprocess.run([envoy, "--version"], capture_output=True, text=True, check=True).stdout
    assert server.downloads(name) == 1

    again = apply_bundle(host)
    assert again["result"] is True and again["changes"] == {}
    assert "already current; nothing downloaded" in again["comment"]
    assert apply_bundle(host, test=True)["changes"] == {}
    assert server.downloads(name) == 1  # neither run fetched anything

    _, listed = host.salt_call("envoy.bundles")
    assert [(b["bundle_id"], b["current"], b["archive_sha256"]) for b in listed] == [(new["bundle_id"], True, sha)]
    _, manifest = host.salt_call("envoy.current_bundle")
    assert manifest["hot_restart_version"] and manifest["bundle_id"] == new["bundle_id"]


def test_http_500_then_success_and_truncation_are_retried(host, server):
    for key, fault in (("retry", 500), ("truncate", "truncate")):
        name, sha = server.files[key]
        previous_id = (current(host) or "").split("/")[-1] or None
        use_bundle(host, server.url(name), sha)
        predicted = apply_bundle(host, test=True)
        assert predicted["result"] is None and (predicted["changes"]["old"] or {}).get("bundle_id") == previous_id
        assert predicted["changes"]["new"] == f"bundle with sha256 {sha}"
        server.fail(name, fault)
        result = apply_bundle(host)
        assert result["result"] is True, result["comment"]
        assert (result["changes"]["old"] or {}).get("bundle_id") == previous_id
        assert current(host) == f"releases/{result['changes']['new']['bundle_id']}"
        # the fault was answered, then the retry fetched the whole archive
        assert server.downloads(name) == 2


@pytest.mark.parametrize(("case", "message"), [
    ("404", "HTTP 404 Not Found (not retried)"),
    ("wrong sha256", "sha256 mismatch"),
    ("no sha256", "a sha256 is required for every bundle source"),
])
def test_failure_is_reported_and_current_kept(host, server, case, message):
    before, requests = current(host), len(server.requests)
    name, sha = server.files["salt"]
    source = server.url("missing.tar.gz") if case == "404" else server.url(name)
    use_bundle(host, source, {"404": sha, "wrong sha256": "0" * 64, "no sha256": None}[case])
    result = apply_bundle(host)
    assert result["result"] is False
    assert message in result["comment"]
    assert current(host) == before
    assert len(server.requests) == requests + (0 if case == "no sha256" else 1)
    leftovers = [n for n in os.listdir(host.settings["install_dir"]) if n.startswith(".tmp-bundle-")]
    assert leftovers == []


def test_salt_source_then_no_change(host, server):
    name, sha = server.files["salt"]
    bundles_dir = host.ext_dir / "bundles"
    bundles_dir.mkdir(exist_ok=True)
    shutil.copy(server.dir / name, bundles_dir / name)
    use_bundle(host, f"salt://bundles/{name}", sha)
    result = apply_bundle(host)
    assert result["result"] is True, result["comment"]
    assert current(host) == f"releases/{result['changes']['new']['bundle_id']}"
    (bundles_dir / name).unlink()  # a second run must not even look for the file
    again = apply_bundle(host)
    assert again["result"] is True and again["changes"] == {}, again["comment"]


def test_no_bundle_in_pillar_is_a_clear_no_op(host):
    before = current(host)
    host.set_pillar({})
    result = apply_bundle(host)
    assert result["result"] is True and result["changes"] == {}
    assert "envoy:bundle:source is not set" in result["comment"]
    assert current(host) == before
