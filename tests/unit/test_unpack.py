"""The safe unpacker and member verification of the installer (``envoy_formula.bundle_archive``,
``bundle_releases.verify``) on crafted archives."""

import os
from pathlib import Path

import pytest
from envoy_formula import bundle_archive, bundle_releases
from envoy_formula.errors import EnvoyFormulaError

from tests.helpers.bundles import build_fake_bundle, crafted_tarball


def unpack(tmp_path, entries, **limits):
    tmp_path.mkdir(parents=True, exist_ok=True)
    archive, _ = crafted_tarball(tmp_path / "crafted.tar.gz", entries)
    dest = tmp_path / "dest"
    return bundle_archive.unpack(str(archive), str(dest), "crafted.tar.gz", limits or None), dest


def test_unpacks_files_dirs_and_links_inside(tmp_path):
    old_umask = os.umask(0o077)  # a strict minion umask must not leave dirs unreadable to envoy
    try:
        names, dest = unpack(tmp_path, [
            {"name": "bin", "type": "dir"},
            {"name": "bin/tool", "data": b"#!/bin/sh\n", "mode": 0o755},
            {"name": "./lib/a.txt", "data": b"a"},
            {"name": "lib/link", "type": "symlink", "linkname": "a.txt"},
            {"name": "lib/hard", "type": "hardlink", "linkname": "lib/a.txt"},
        ])
    finally:
        os.umask(old_umask)
    assert names == ["bin", "bin/tool", "lib/a.txt", "lib/hard", "lib/link"]
    assert (dest / "lib" / "link").read_bytes() == b"a"
    assert os.readlink(dest / "lib" / "link") == "a.txt"
    assert (dest / "lib" / "hard").read_bytes() == b"a"
    assert os.stat(dest / "bin" / "tool").st_mode & 0o777 == 0o755
    assert [os.stat(d).st_mode & 0o777 for d in (dest, dest / "bin", dest / "lib")] == [0o755] * 3


@pytest.mark.parametrize(("entries", "message"), [
    ([{"name": "../evil", "data": b"x"}], "member '../evil' contains '..'"),
    ([{"name": "lib/../../evil", "data": b"x"}], "contains '..'"),
    ([{"name": "/etc/evil", "data": b"x"}], "member '/etc/evil' has an absolute path"),
    ([{"name": "lib/out", "type": "symlink", "linkname": "../../outside"}], "symlink 'lib/out' -> '../../outside' points outside"),
    ([{"name": "abs", "type": "symlink", "linkname": "/etc/passwd"}], "symlink 'abs' -> '/etc/passwd' points outside"),
    ([{"name": "hard", "type": "hardlink", "linkname": "/etc/passwd"}], "hard link 'hard'"),
    ([{"name": "dev/null", "type": "chr"}], "member 'dev/null' is a device file"),
    ([{"name": "pipe", "type": "fifo"}], "member 'pipe' is a fifo"),
    ([{"name": "a", "data": b"1"}, {"name": "./a", "data": b"2"}], "member 'a' appears twice"),
    ([{"name": ".install.json", "data": b"{}"}], "member '.install.json' is a name the installer uses"),
])
def test_refuses_unsafe_members(tmp_path, entries, message):
    with pytest.raises(EnvoyFormulaError, match="unsafe bundle crafted.tar.gz") as exc:
        unpack(tmp_path, entries)
    assert message in str(exc.value)
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_symlink_then_write_through_it_is_refused(tmp_path):
    """A link to outside followed by a file "inside" it: the link itself is refused first."""
    with pytest.raises(EnvoyFormulaError, match="points outside"):
        unpack(tmp_path, [
            {"name": "escape", "type": "symlink", "linkname": str(tmp_path)},
            {"name": "escape/planted", "data": b"x"},
        ])
    assert not (tmp_path / "planted").exists()


def test_refuses_oversized_member_and_total(tmp_path):
    with pytest.raises(EnvoyFormulaError, match=r"member 'big' is 2000 bytes, over the 1000-byte limit"):
        unpack(tmp_path, [{"name": "big", "size": 2000}], max_member_bytes=1000)
    with pytest.raises(EnvoyFormulaError, match=r"more than the 2500-byte limit \(at 'c'\)"):
        unpack(tmp_path / "t", [{"name": n, "size": 1000} for n in "abc"], max_total_bytes=2500)


def test_refuses_too_many_members(tmp_path):
    with pytest.raises(EnvoyFormulaError, match="more than 2 members"):
        unpack(tmp_path, [{"name": n} for n in "abc"], max_members=2)


def test_not_a_tarball(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(EnvoyFormulaError, match="not a readable tar.gz archive"):
        bundle_archive.unpack(str(junk), str(tmp_path / "dest"), "junk.tar.gz")


# --- verification against bundle.json ---------------------------------------------------------


@pytest.fixture(scope="module")
def fake_release(tmp_path_factory):
    out = tmp_path_factory.mktemp("fake-bundle")
    tarball, _ = build_fake_bundle(out)
    dest = out / "release"
    bundle_archive.unpack(str(tarball), str(dest))
    return dest


def copy_release(src, dst):
    import shutil
    shutil.copytree(src, dst, symlinks=True)
    return Path(dst)


def test_verify_accepts_a_built_bundle(fake_release):
    manifest = bundle_releases.verify(str(fake_release))
    assert manifest["members"]["bin/envoy"]["mode"] == "0755"
    assert manifest["bundle_id"].startswith("1.40.0-")


def test_verify_catches_a_changed_member(fake_release, tmp_path):
    release = copy_release(fake_release, tmp_path / "r")
    (release / "bin" / "envoy-configgen").write_text("#!/bin/sh\necho pwned\n")
    with pytest.raises(EnvoyFormulaError, match="member 'bin/envoy-configgen' does not match bundle.json"):
        bundle_releases.verify(str(release))


def test_verify_catches_missing_extra_and_mode(fake_release, tmp_path):
    release = copy_release(fake_release, tmp_path / "missing")
    (release / "bin" / "envoy-restarter").unlink()
    with pytest.raises(EnvoyFormulaError, match=r"\['bin/envoy-restarter'\] listed in bundle.json but missing"):
        bundle_releases.verify(str(release))
    release = copy_release(fake_release, tmp_path / "extra")
    (release / "lib" / "sneaky.py").write_text("x = 1\n")
    with pytest.raises(EnvoyFormulaError, match=r"\['lib/sneaky.py'\] present but not listed"):
        bundle_releases.verify(str(release))
    release = copy_release(fake_release, tmp_path / "mode")
    os.chmod(release / "bin" / "envoy-restarter", 0o777)
    with pytest.raises(EnvoyFormulaError, match="'bin/envoy-restarter' has mode 0777"):
        bundle_releases.verify(str(release))


def test_verify_catches_a_forged_bundle_id(fake_release, tmp_path):
    import json
    release = copy_release(fake_release, tmp_path / "forged")
    manifest = json.loads((release / "bundle.json").read_text())
    manifest["bundle_id"] = "1.40.0-000000000000"
    (release / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(EnvoyFormulaError, match="bundle id 1.40.0-000000000000 does not match its members"):
        bundle_releases.verify(str(release))
