"""Every module of the project imports, and the examples in its docstrings hold: each module with
examples runs them through ``doctest`` as one test, so a docstring that drifts from the code fails."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "data", "training", "evaluation", "deploy", "serving", "tasks", "flows", "api", "customizer")


def _modules() -> list[str]:
    """Dotted names of every module in the packages, found on disk (nothing imported to list them)."""
    names = []
    for package in PACKAGES:
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}.")]
    return sorted(names)


def _source(name: str) -> Path:
    path = ROOT.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


MODULES = _modules()
# Read from the source so that collecting the suite imports nothing heavy; the test itself checks
# that doctest finds the examples this scan saw.
WITH_EXAMPLES = [name for name in MODULES if ">>> " in _source(name).read_text(encoding="utf-8")]


def test_every_package_is_listed():
    assert sorted(PACKAGES) == sorted(p.name for p in ROOT.iterdir() if p.name in PACKAGES and (p / "__init__.py").is_file())
    assert len(WITH_EXAMPLES) >= 10, WITH_EXAMPLES


@pytest.mark.parametrize("name", MODULES)
def test_the_module_imports(name: str):
    assert importlib.import_module(name).__name__ == name


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_the_docstring_examples_hold(name: str):
    module = importlib.import_module(name)
    failed, tried = doctest.testmod(module, verbose=False)
    assert tried > 0, f"{name} has '>>> ' in its source but doctest found no example in its docstrings"
    assert failed == 0, f"{failed} of {tried} examples in {name} failed (the report above names each)"
