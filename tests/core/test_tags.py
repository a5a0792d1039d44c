"""MLflow tag names live in one module: a writer and its readers cannot drift apart."""

import re
from pathlib import Path

import pytest

from core import tags

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "data", "training", "evaluation", "deploy", "serving", "tasks", "flows", "api", "customizer")


def test_no_module_spells_a_tag_name_itself():
    names = {value for name, value in vars(tags).items() if name.isupper()}
    literal = re.compile(r"[\"'](customizer\.[a-z_.0-9]+)[\"']")
    spelled = [f"{path.relative_to(ROOT)}:{number}: {found}"
               for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py")) if path != ROOT / "core" / "tags.py"
               for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
               if "getLogger" not in line  # logger names share the prefix
               for found in literal.findall(line) if found in names or found.startswith("customizer.approval.")]
    assert not spelled, "tag names spelled outside core/tags.py:\n" + "\n".join(spelled)


def test_tag_names_are_distinct():
    values = [value for name, value in vars(tags).items() if name.isupper()]
    assert len(values) == len(set(values))
