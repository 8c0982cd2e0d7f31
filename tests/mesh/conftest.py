"""The mesh lab shared by the tests of a module: one Mesh (tests/helpers/mesh.py) on lab hosts."""

import shutil
from pathlib import Path

import pytest

from tests.helpers.lab import require_lab
from tests.helpers.mesh import Mesh


@pytest.fixture(scope="session")
def lab_available():
    """Skips (with the reason) before anything expensive is built when a lab cannot run here."""
    require_lab()


@pytest.fixture(scope="session")
def upgrade_bundle(lab_available, tmp_path_factory, envoy_bin):
    """A second real bundle (same envoy, one more line in the generator's package): what a release
    with a generator change looks like to hosts. (tarball, sha256)."""
    from envoy_bundle.builder import build, default_source_dir

    base = tmp_path_factory.mktemp("upgrade")
    source = base / "bundle"
    shutil.copytree(default_source_dir(), source, ignore=shutil.ignore_patterns("__pycache__"))
    init = source / "envoy_bundle" / "__init__.py"
    init.write_text(init.read_text() + "# a later release\n")
    tarball, sha_file = build(out_dir=base / "out", envoy_path=envoy_bin, source_dir=source)
    return Path(tarball), Path(sha_file).read_text().split()[0]


@pytest.fixture(scope="module")
def mesh(lab_available, tmp_path_factory, built_bundle, upgrade_bundle):
    with Mesh(tmp_path_factory.mktemp("mesh"), built_bundle, extra_bundles=[upgrade_bundle]) as running:
        print(f"mesh up: {running.timings}")
        yield running
