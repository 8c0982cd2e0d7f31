"""The Salt front ends (``_modules/envoy.py``, ``_states/envoy.py``, ``_runners/*.py``) imported as
plain modules, for unit tests that give them Salt's dunders through pytest-salt-factories'
``configure_loader_modules``. The library they call is the real one (``envoy_formula``)."""

import importlib.util
from pathlib import Path

import envoy_formula

REPO = Path(__file__).resolve().parents[2]


def load(kind, name="envoy"):
    """``_<kind>/<name>.py`` as a module named ``<name>_<kind>_under_test``."""
    path = REPO / f"_{kind}" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_{kind}_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def utils():
    """``__utils__`` as Salt's loader builds it for the front ends."""
    return {"envoy_formula.library": envoy_formula.library}
