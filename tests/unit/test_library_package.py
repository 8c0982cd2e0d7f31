"""
The library package as Salt's loader uses it: ``library()`` imports every module after the loader
has registered the package, and a re-executed package (what the loader does after
``saltutil.sync_all``) reloads modules imported before, so a long-lived process runs the synced
code. (tests/fleet/test_library_sync.py shows the same through a real minion.)
"""

import importlib
import shutil
import sys

import envoy_formula
import pytest


@pytest.fixture
def package_copy(tmp_path):
    """The library copied under another name, so edits to it touch nothing else."""
    shutil.copytree(envoy_formula.library().__path__[0], tmp_path / "envoy_formula_copy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(tmp_path))
    yield tmp_path / "envoy_formula_copy"
    sys.path.remove(str(tmp_path))
    for name in [n for n in sys.modules if n.startswith("envoy_formula_copy")]:
        del sys.modules[name]


def test_library_loads_every_module():
    lib = envoy_formula.library()
    for name in lib.MODULES:
        assert getattr(lib, name).__name__ == f"envoy_formula.{name}"


def test_a_re_executed_package_reloads_modules_changed_on_disk(package_copy):
    package = importlib.import_module("envoy_formula_copy")
    assert package.library().host_settings.LOOKUP_DEFAULTS["keep_releases"] == 3
    settings = package_copy / "host_settings.py"
    settings.write_text(settings.read_text().replace('"keep_releases": 3,', '"keep_releases": 7,'))
    importlib.invalidate_caches()
    importlib.reload(package)  # what Salt's loader does with a package after a sync
    assert package.library().host_settings.LOOKUP_DEFAULTS["keep_releases"] == 7
    # Modules reach each other by attribute, so one already reloaded sees the new code too.
    assert package.library().host_settings.resolve({}, euid=1000)["keep_releases"] == 7
    # An error raised by a reloaded module is the class the front ends catch after the reload.
    with pytest.raises(package.library().errors.EnvoyFormulaError):
        package.library().host_settings.resolve({"lookup": {"admin_port": "soon"}}, euid=1000)
