"""``envoy-bundle build``: naming, bundle.json, reproducible bytes, CLI and errors."""

import hashlib
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from envoy_bundle import builder

from tests.helpers.bundles import sha256_of, write_fake_envoy

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def fake_envoy(tmp_path):
    return write_fake_envoy(tmp_path / "envoy-bin" / "envoy", version="1.99.3", hot_restart_version="12.7")


def read_members(tarball):
    with tarfile.open(tarball, "r:gz") as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_names_sha256_file_and_manifest(tmp_path, fake_envoy):
    tarball, sha_file = builder.build(tmp_path / "out", envoy_path=fake_envoy)
    match = re.fullmatch(r"envoy-bundle-(1\.99\.3-([0-9a-f]{12}))\.tar\.gz", tarball.name)
    assert match, tarball.name
    assert sha_file.name == tarball.name + ".sha256"
    assert sha_file.read_text() == f"{sha256_of(tarball)}  {tarball.name}\n"
    # the file is what `sha256sum -c` expects
    subprocess.run(["sha256sum", "-c", "--quiet", sha_file.name], cwd=sha_file.parent, check=True)

    members = dict((m.name, (m, data)) for m, data in read_members(tarball))
    manifest = json.loads(members["bundle.json"][1])
    assert manifest["bundle_id"] == match.group(1)
    assert manifest["content_sha256"].startswith(match.group(2))
    assert (manifest["envoy_version"], manifest["hot_restart_version"], manifest["format"]) == ("1.99.3", "12.7", 1)
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", manifest["source_commit"])
    assert {"bin/envoy", "bin/envoy-configgen", "bin/envoy-restarter",
            "lib/envoy_bundle/__init__.py", "lib/envoy_bundle/builder.py"} <= set(manifest["members"])
    assert set(manifest["members"]) == set(members) - {"bundle.json"}
    for name, meta in manifest["members"].items():
        info, data = members[name]
        assert meta == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "mode": f"{info.mode:04o}"}
    assert members["bin/envoy"][1] == fake_envoy.read_bytes()
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in members)


def test_headers_are_normalized(tmp_path, fake_envoy):
    tarball, _ = builder.build(tmp_path, envoy_path=fake_envoy)
    members = read_members(tarball)
    names = [m.name for m, _ in members]
    assert names == sorted(names)
    for info, _ in members:
        assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "", "", 0)
        assert info.isfile() and info.mode in (0o644, 0o755)
    raw = tarball.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip header without mtime
    assert raw[3] & 0x08 == 0  # ... and without a file name


def test_same_inputs_give_the_same_bytes(tmp_path, fake_envoy):
    first, _ = builder.build(tmp_path / "a", envoy_path=fake_envoy)
    fake_envoy.touch()  # a new mtime on an input must not matter
    second, _ = builder.build(tmp_path / "b", envoy_path=fake_envoy)
    assert first.name == second.name
    assert first.read_bytes() == second.read_bytes()


def test_id_follows_content_not_commit(tmp_path, fake_envoy):
    """The same sources outside git (commit "unknown") keep the id; other content changes it."""
    source = tmp_path / "src"
    shutil.copytree(REPO / "bundle", source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    in_repo, _ = builder.build(tmp_path / "repo", envoy_path=fake_envoy)  # right after the copy
    outside, _ = builder.build(tmp_path / "outside", envoy_path=fake_envoy, source_dir=source)
    assert outside.name == in_repo.name
    outside_manifest = json.loads(dict((m.name, d) for m, d in read_members(outside))["bundle.json"])
    assert outside_manifest["source_commit"] == "unknown"

    other_envoy = write_fake_envoy(tmp_path / "other" / "envoy", version="1.99.3", hot_restart_version="12.7",
                                   marker="another build")
    different, _ = builder.build(tmp_path / "different", envoy_path=other_envoy)
    assert different.name != in_repo.name


def test_cli_prints_both_paths(tmp_path, fake_envoy, capsys):
    assert builder.main(["build", "--out", str(tmp_path / "cli"), "--envoy", str(fake_envoy)]) == 0
    tarball, sha_file = capsys.readouterr().out.split()
    assert Path(tarball).is_file() and Path(sha_file).read_text().split()[1] == Path(tarball).name


def test_cli_writes_the_pillar_that_points_hosts_at_the_bundle(tmp_path, fake_envoy, capsys):
    sls = tmp_path / "pillar" / "envoy" / "bundle.sls"
    argv = ["build", "--out", str(tmp_path / "cli"), "--envoy", str(fake_envoy), "--pillar", str(sls)]
    assert builder.main(argv) == 0
    tarball, sha_file, pillar_path = capsys.readouterr().out.split()
    bundle = yaml.safe_load(sls.read_text())["envoy"]["bundle"]
    assert pillar_path == str(sls)
    assert bundle == {"source": Path(tarball).resolve().as_uri(), "sha256": sha256_of(tarball)}
    assert builder.main([*argv, "--source-prefix", "salt://envoy-bundles/"]) == 0
    assert yaml.safe_load(sls.read_text())["envoy"]["bundle"]["source"] == f"salt://envoy-bundles/{Path(tarball).name}"


def test_cli_refuses_a_binary_that_is_not_envoy(tmp_path, capsys):
    not_envoy = tmp_path / "not-envoy"
    not_envoy.write_text("#!/bin/sh\necho hello\n")
    not_envoy.chmod(0o755)
    assert builder.main(["build", "--out", str(tmp_path / "o"), "--envoy", str(not_envoy)]) == 2
    assert f"cannot find a version in the output of {not_envoy} --version" in capsys.readouterr().err
    assert builder.main(["build", "--out", str(tmp_path / "o"), "--envoy", str(tmp_path / "missing")]) == 2
    assert f"envoy binary {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert not list(tmp_path.glob("o/*.tar.gz"))


def test_default_envoy_path_is_the_wheels_binary(envoy_bin):
    path = builder.default_envoy_path()
    assert path.parts[-3:] == ("envoy", "_bin", "envoy")
    assert str(path) == envoy_bin


def test_real_bundle_reports_the_binarys_versions(built_bundle, envoy_bin):
    """The one bundle with the real 107 MB envoy: versions asked of the binary itself."""
    tarball, sha256 = built_bundle
    assert sha256 == sha256_of(tarball)
    with tarfile.open(tarball, "r:gz") as tar:
        manifest = json.load(tar.extractfile("bundle.json"))
    hot_restart = subprocess.run([envoy_bin, "--hot-restart-version"], capture_output=True, text=True)
    assert manifest["hot_restart_version"] == (hot_restart.stdout + hot_restart.stderr).strip()
    assert f"/{manifest['envoy_version']}/" in subprocess.run([envoy_bin, "--version"], capture_output=True,
                                                              text=True).stdout
    assert manifest["members"]["bin/envoy"]["sha256"] == sha256_of(envoy_bin)
    assert tarball.name == f"envoy-bundle-{manifest['bundle_id']}.tar.gz"
