"""
The library's installer (``envoy_formula.bundle_releases``, what ``envoy.install_bundle``,
``bundles`` and ``current_bundle`` run) on real files, real fake-envoy bundles and a real loopback
HTTP server. Every fault must leave ``current`` as it was
and no temp dir behind. (The same through ``salt-call``: tests/integration/test_bundle_state.py.)
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from envoy_bundle import builder
from envoy_formula import bundle_releases, bundle_sources, host_settings
from envoy_formula.errors import EnvoyFormulaError

from tests.helpers.bundles import (
    BundleServer,
    build_custom_bundle,
    build_fake_bundle,
    crafted_tarball,
    rewrite_member,
    sha256_of,
    write_fake_envoy,
)


@pytest.fixture(scope="module")
def mod():
    """The installer, with short retry backoffs (the retry logic is what is tested, not the wait)."""
    saved, bundle_sources.HTTP_BACKOFF_S = bundle_sources.HTTP_BACKOFF_S, 0.01
    yield bundle_releases
    bundle_sources.HTTP_BACKOFF_S = saved


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Fake-envoy bundles A..D plus broken ones, all served over HTTP: {key: (file name, sha256)}."""
    out = tmp_path_factory.mktemp("served")
    made = {key: build_fake_bundle(out / key, marker=key) for key in "ABCD"}
    made["tampered"] = rewrite_member(made["A"][0], out / "tampered.tar.gz", "bin/envoy-configgen",
                                      b"#!/bin/sh\necho tampered\n")
    made["no-envoy"] = build_custom_bundle(out / "no-envoy", envoy_bytes=None)
    made["not-runnable"] = build_custom_bundle(out / "not-runnable", envoy_bytes=b"\x7fELF\x02\x01\x01" + b"\0" * 200)
    files = {}
    for key, (path, sha) in made.items():
        name = f"{key}-{path.name}"
        shutil.copy(path, out / name)
        files[key] = (name, sha)
    with BundleServer(out) as server:
        server.files = files
        yield server


@pytest.fixture()
def host(tmp_path):
    return host_settings.resolve({}, overrides={"install_dir": str(tmp_path / "opt" / "envoy"), "keep_releases": 3})


def url(served, key):
    return served.url(served.files[key][0])


def install(mod, served, host, key, **kwargs):
    return mod.install(host, url(served, key), served.files[key][1], **kwargs)


def current_target(host):
    link = os.path.join(host["install_dir"], "current")
    return os.readlink(link) if os.path.islink(link) else None


def snapshot(host):
    """What a fault must not change: where current points and which releases exist."""
    releases = os.path.join(host["install_dir"], "releases")
    return current_target(host), sorted(os.listdir(releases)) if os.path.isdir(releases) else []


def leftovers(host):
    return [n for n in os.listdir(host["install_dir"]) if n.startswith((".tmp-bundle-", ".current-"))]


@pytest.fixture()
def host_with_a(mod, served, host):
    install(mod, served, host, "A")
    return host


def test_first_install_then_nothing_to_do(mod, served, host):
    name, sha = served.files["A"]
    before = served.downloads(name)
    first = install(mod, served, host, "A")
    assert first["changed"] and first["downloaded"] and first["old"] is None
    bundle_id = first["new"]["bundle_id"]
    assert first["new"]["envoy_version"] == "1.40.0"
    assert current_target(host) == f"releases/{bundle_id}"
    assert mod.current_manifest(host)["bundle_id"] == bundle_id
    [listed] = mod.installed(host)
    assert listed["current"] and listed["archive_sha256"] == sha and listed["installed_at"]
    # bin/envoy of the release runs
    release = Path(host["install_dir"], "current")
    assert (release / "bin" / "envoy").stat().st_mode & 0o111

    again = install(mod, served, host, "A")
    assert (again["changed"], again["downloaded"]) == (False, False)
    assert again["old"] == again["new"] == first["new"]
    assert "already current" in again["comment"]
    assert served.downloads(name) == before + 1  # the second run downloaded nothing
    assert leftovers(host) == []


def test_upgrade_reports_old_and_new(mod, served, host_with_a):
    old_id = mod.current_manifest(host_with_a)["bundle_id"]
    result = install(mod, served, host_with_a, "B")
    assert result["changed"] and result["old"]["bundle_id"] == old_id
    assert result["new"]["bundle_id"] != old_id
    assert current_target(host_with_a) == f"releases/{result['new']['bundle_id']}"
    assert [b["current"] for b in mod.installed(host_with_a)] == [True, False]


def test_rollback_to_an_installed_release_downloads_nothing(mod, served, host_with_a):
    first_id = mod.current_manifest(host_with_a)["bundle_id"]
    install(mod, served, host_with_a, "B")
    before = served.downloads(served.files["A"][0])
    result = install(mod, served, host_with_a, "A")
    assert result["changed"] and not result["downloaded"]
    assert result["new"]["bundle_id"] == first_id
    assert served.downloads(served.files["A"][0]) == before
    assert mod.installed(host_with_a)[0]["bundle_id"] == first_id  # most recently activated first


def test_keeps_newest_releases_but_never_current_or_previous(mod, served, host):
    ids = [install(mod, served, host, key, keep=1)["new"]["bundle_id"] for key in "ABCD"]
    remaining = [b["bundle_id"] for b in mod.installed(host)]
    assert remaining == [ids[3], ids[2]]  # keep=1, but the previous one stays for rollback
    result = install(mod, served, host, "A", keep=1)
    assert result["pruned"] == [ids[2]]


def test_same_content_from_another_archive_is_not_a_change(mod, host, tmp_path):
    """A rebuild from another commit (recorded in bundle.json) has the same id: nothing flips,
    and the new archive's sha256 is remembered so the next run does nothing at all."""
    envoy = write_fake_envoy(tmp_path / "e" / "envoy", marker="rebuilt")
    source = builder.default_source_dir()
    members = [builder.file_member("bin/envoy", envoy, builder.EXEC_MODE),
               *builder.launcher_members(source), *builder.package_members(source)]
    one, _ = builder.write_bundle(tmp_path / "one", members, "1.40.0", "11.104", "commit-one")
    two, _ = builder.write_bundle(tmp_path / "two", members, "1.40.0", "11.104", "commit-two")
    assert one.name == two.name and one.read_bytes() != two.read_bytes()
    installed = mod.install(host, one.as_uri(), sha256_of(one))
    before = snapshot(host)
    result = mod.install(host, two.as_uri(), sha256_of(two))
    assert not result["changed"] and result["new"] == installed["new"] and snapshot(host) == before
    again = mod.install(host, two.as_uri(), sha256_of(two))
    assert not again["downloaded"] and "already current" in again["comment"]


def test_http_500_then_success_is_retried(mod, served, host):
    name, _ = served.files["C"]
    served.fail(name, 500, 503)
    result = install(mod, served, host, "C")
    assert result["changed"]
    assert [s for p, s in served.requests if p == "/" + name][-3:] == [500, 503, 200]


FAULTS = {
    "http 404": (lambda served: served.url("no-such-bundle.tar.gz"), "B",
                 "HTTP 404 Not Found (not retried)"),
    "wrong sha256": (lambda served: url(served, "B"), "C", "sha256 mismatch (expected"),
    "member tampered after build": (lambda served: url(served, "tampered"), "tampered",
                                    "member 'bin/envoy-configgen' does not match bundle.json"),
    "no bin/envoy": (lambda served: url(served, "no-envoy"), "no-envoy", "has no bin/envoy"),
    "bin/envoy does not run here": (lambda served: url(served, "not-runnable"), "not-runnable",
                                    "bin/envoy cannot run on this host (Exec format error)"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_leaves_current_as_it_was(mod, served, host_with_a, fault):
    make_url, sha_key, message = FAULTS[fault]
    before = snapshot(host_with_a)
    with pytest.raises(EnvoyFormulaError) as exc:
        mod.install(host_with_a, make_url(served), served.files[sha_key][1])
    assert message in str(exc.value)
    assert snapshot(host_with_a) == before
    assert leftovers(host_with_a) == []


def test_404_is_not_retried_and_500s_give_up(mod, served, host_with_a):
    before = snapshot(host_with_a)
    with pytest.raises(EnvoyFormulaError, match="HTTP 404"):
        mod.install(host_with_a, served.url("missing.tar.gz"), "a" * 64)
    assert served.downloads("missing.tar.gz") == 1
    name, sha = served.files["D"]
    served.fail(name, *[500] * bundle_sources.HTTP_ATTEMPTS)
    with pytest.raises(EnvoyFormulaError, match="failed after 4 attempts: HTTP 500"):
        install(mod, served, host_with_a, "D")
    assert snapshot(host_with_a) == before and leftovers(host_with_a) == []


def test_connection_cut_mid_body(mod, served, host_with_a):
    name, _ = served.files["B"]
    served.fail(name, *["truncate"] * bundle_sources.HTTP_ATTEMPTS)
    before = snapshot(host_with_a)
    with pytest.raises(EnvoyFormulaError, match="failed after 4 attempts: connection broken mid-body, download truncated"):
        install(mod, served, host_with_a, "B")
    assert snapshot(host_with_a) == before and leftovers(host_with_a) == []
    # once the connection holds again, the same bundle installs
    served.fail(name, "truncate")
    assert install(mod, served, host_with_a, "B")["changed"]


def test_missing_or_malformed_sha256_is_refused_before_any_download(mod, served, host_with_a):
    before, requests = snapshot(host_with_a), len(served.requests)
    for sha in (None, "", "  "):
        with pytest.raises(EnvoyFormulaError, match="a sha256 is required for every bundle source"):
            mod.install(host_with_a, url(served, "B"), sha)
    with pytest.raises(EnvoyFormulaError, match="is not 64 hex digits"):
        mod.install(host_with_a, url(served, "B"), "abc")
    assert len(served.requests) == requests and snapshot(host_with_a) == before


def test_unsupported_source_and_missing_file(mod, host, tmp_path):
    with pytest.raises(EnvoyFormulaError, match="unsupported source; use salt://, https://"):
        mod.install(host, "ftp://example.invalid/b.tar.gz", "a" * 64)
    with pytest.raises(EnvoyFormulaError, match="no such file"):
        mod.install(host, (tmp_path / "nope.tar.gz").as_uri(), "a" * 64)


def test_credentials_and_tokens_stay_out_of_messages(mod, served, host):
    secret_url = served.url("missing.tar.gz").replace("http://", "http://user:s3cret@") + "?token=s3cret"
    with pytest.raises(EnvoyFormulaError) as exc:
        mod.install(host, secret_url, "a" * 64)
    assert "s3cret" not in str(exc.value)


CRAFTED = {
    "dot-dot": ([{"name": "../escaped", "data": b"x"}], "member '../escaped' contains '..'"),
    "absolute": ([{"name": "/tmp/escaped-bundle-member", "data": b"x"}], "has an absolute path"),
    "symlink out": ([{"name": "bin/envoy", "type": "symlink", "linkname": "../../../../bin/sh"}],
                    "symlink 'bin/envoy' -> '../../../../bin/sh' points outside the release"),
    "device": ([{"name": "bin/envoy", "type": "chr"}], "member 'bin/envoy' is a device file"),
    "oversized": ([{"name": "bin/envoy", "size": 4096}], "member 'bin/envoy' is 4096 bytes, over the 1024-byte"),
}


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_crafted_tarball_is_refused(mod, host_with_a, tmp_path, kind):
    entries, message = CRAFTED[kind]
    archive, sha = crafted_tarball(tmp_path / "crafted.tar.gz", entries)
    before = snapshot(host_with_a)
    with pytest.raises(EnvoyFormulaError, match="unsafe bundle") as exc:
        mod.install(host_with_a, archive.as_uri(), sha, limits={"max_member_bytes": 1024})
    assert message in str(exc.value)
    assert snapshot(host_with_a) == before and leftovers(host_with_a) == []
    assert not Path("/tmp/escaped-bundle-member").exists()
    assert not (Path(host_with_a["install_dir"]) / "escaped").exists()


def test_nobody_listening_is_retried_then_reported(mod, host_with_a):
    from tests.helpers.net import free_port

    before = snapshot(host_with_a)
    dead = f"http://127.0.0.1:{free_port()}/envoy-bundle.tar.gz"
    with pytest.raises(EnvoyFormulaError, match="failed after 4 attempts: connection failed"):
        mod.install(host_with_a, dead, "b" * 64)
    assert snapshot(host_with_a) == before and leftovers(host_with_a) == []


def test_launchers_run_the_code_of_their_own_release(mod, host, tmp_path):
    """bin/envoy-restarter imports lib/envoy_bundle from its release, not the repo's package
    that this venv has installed."""
    envoy = write_fake_envoy(tmp_path / "e" / "envoy", marker="launcher")
    stub = b"def main():\n    print(__file__)\n    return 0\n"
    members = [builder.file_member("bin/envoy", envoy, builder.EXEC_MODE),
               *builder.launcher_members(builder.default_source_dir()),
               builder.bytes_member("lib/envoy_bundle/__init__.py", b""),
               builder.bytes_member("lib/envoy_bundle/restarter.py", stub)]
    tarball, _ = builder.write_bundle(tmp_path / "out", members, "1.40.0", "11.104", "test")
    new = mod.install(host, tarball.as_uri(), sha256_of(tarball))["new"]
    launcher = Path(host["install_dir"], "current", "bin", "envoy-restarter")
    proc = subprocess.run([sys.executable, str(launcher)], capture_output=True, text=True, cwd=tmp_path,
                          check=True)
    release = Path(host["install_dir"], "releases", new["bundle_id"])
    assert proc.stdout.strip() == str(release / "lib" / "envoy_bundle" / "restarter.py")
