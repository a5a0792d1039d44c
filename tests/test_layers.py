"""The layers are a contract the suite checks: the import-linter contract in pyproject.toml, and no
import cycle between any two of the project's modules (a cycle dodged by an import delayed into a
function counts too: grimp reads imports wherever they are written)."""

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("customizer", "api", "flows", "tasks", "serving", "deploy", "evaluation", "training", "data", "core")


def test_the_layers_contract_holds():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_the_contract_names_every_package_in_order():
    import tomllib

    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = [name.strip() for layer in contract["contracts"][0]["layers"] for name in layer.split("|")]
    assert tuple(layers) == PACKAGES
    assert sorted(contract["root_packages"]) == sorted(PACKAGES)


def test_no_module_imports_itself_back():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)  # no .grimp_cache in the checkout
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                chain = graph.find_shortest_chain(importer=imported, imported=module)
                cycles.append(" -> ".join((module, *chain)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_is_over_500_lines():
    long = [f"{path.relative_to(ROOT)}: {n} lines" for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500]
    assert not long, "modules over 500 lines:\n" + "\n".join(long)


def test_no_project_import_is_delayed_without_a_reason():
    """An import of the project's own modules inside a function hides a cycle the layers would show;
    one delayed for start-up time (the module imports something heavy) says so with ``# delayed:``."""
    import ast

    hidden = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            lines = source.splitlines()
            for function in ast.walk(ast.parse(source)):
                if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(function):
                    if isinstance(node, ast.Import):
                        names = [alias.name for alias in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names = [node.module]
                    else:
                        continue
                    ours = [n for n in names if n.split(".")[0] in PACKAGES]
                    # the reason sits on the import's line(s) or on the comment line just above
                    said = "# delayed:" in " ".join(lines[node.lineno - 2:node.end_lineno])
                    if ours and not said:
                        hidden.append(f"{path.relative_to(ROOT)}:{node.lineno}: {', '.join(ours)}")
    assert not hidden, "imports of the project delayed into functions:\n" + "\n".join(hidden)
