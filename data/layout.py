"""Where a dataset's examples are: the ``.jsonl`` files of its split folders, and the problems of
its layout (data files at the root, a missing ``training/``, links to folders, ``.json`` files),
collected as located problems.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from data.sources import SPLIT_FOLDERS

Split = Literal["training", "validation", "testing"]
SPLITS: tuple[Split, ...] = SPLIT_FOLDERS
MAX_LISTED_ERRORS = 50


@dataclass(frozen=True)
class LineError:
    """One problem, located at a file and line (line 0: the file or folder as a whole)."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}" if self.line else f"{self.file}: {self.reason}"


@dataclass
class Problems:
    """Errors found so far: the first MAX_LISTED_ERRORS, and how many in all."""

    listed: list[LineError] = field(default_factory=list)
    total: int = 0

    def add(self, file: str, line: int, reason: str) -> None:
        """Count a problem at ``file:line`` (line 0: the file as a whole); list it while under the cap."""
        self.total += 1
        if len(self.listed) < MAX_LISTED_ERRORS:
            self.listed.append(LineError(file, line, reason))


def split_files(root: Path, split: str, problems: Problems, warnings: list[str]) -> list[tuple[Path, str]]:
    """The ``.jsonl`` files of a split folder (recursively, in a stable order) with their display names."""
    found: list[tuple[Path, str]] = []

    def unreadable(exc: OSError) -> None:
        problems.add(Path(exc.filename or root / split).relative_to(root).as_posix(), 0, f"cannot be read: {exc.strerror}")

    for folder, subfolders, names in os.walk(root / split, onerror=unreadable):
        base = Path(folder)
        for name in sorted(subfolders):
            relative = (base / name).relative_to(root).as_posix()
            if (base / name).is_symlink():
                problems.add(relative, 0, "is a link to a folder; links to folders are not followed: copy the files in")
            elif name.startswith("."):
                warnings.append(f"{relative}/: hidden folder, not read")
        subfolders[:] = [n for n in subfolders if not n.startswith(".") and not (base / n).is_symlink()]
        for name in names:
            path = base / name
            relative = path.relative_to(root).as_posix()
            if name.startswith("."):
                if name.endswith(".jsonl"):
                    warnings.append(f"{relative}: hidden file, not read")
                continue
            if not name.endswith(".jsonl"):
                if name.endswith(".json"):
                    problems.add(relative, 0, "a .json file is not read: write one JSON object per line in a .jsonl file")
                else:
                    warnings.append(f"{relative}: not read (only .jsonl files hold examples)")
                continue
            try:
                mode = path.stat().st_mode
            except OSError as exc:
                problems.add(relative, 0, "is a broken link" if path.is_symlink() else f"cannot be read: {exc.strerror}")
                continue
            if not stat.S_ISREG(mode):
                problems.add(relative, 0, "is not a regular file")
                continue
            found.append((path, relative))
    return sorted(found, key=lambda item: PurePosixPath(item[1]).parts)


def layout(root: Path, problems: Problems, warnings: list[str]) -> dict[Split, list[tuple[Path, str]]]:
    """The data files of each split folder present; layout mistakes become problems."""
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        problems.add(str(root), 0, f"cannot be read: {exc.strerror}")
        return {}
    stray = [p.name for p in entries if p.suffix == ".jsonl" and not p.is_dir()]
    stray += [p.name for p in entries if p.suffix == ".json" and not p.is_dir()]
    if stray:
        problems.add(str(root), 0, f"data files at the dataset root ({', '.join(stray)}): move them into training/ (or validation/, testing/)")
    others = [p.name for p in entries if p.is_dir() and p.name not in SPLITS and not p.name.startswith(".")]
    if not (root / "training").exists():
        hint = f" (the dataset has {', '.join(f'{name}/' for name in others)}; rename the training one)" if others else ""
        problems.add(str(root), 0, f"no training/ folder: put the training JSONL files in training/{hint}")
    elif others:
        warnings.append(f"folders not read: {', '.join(f'{name}/' for name in others)} (only training/, validation/, testing/ hold data)")
    files: dict[Split, list[tuple[Path, str]]] = {}
    for split in SPLITS:
        folder = root / split
        if not folder.exists():
            continue
        if not folder.is_dir():
            problems.add(f"{root.name}/{split}", 0, "is a file; it must be a folder of .jsonl files")
            continue
        files[split] = split_files(root, split, problems, warnings)
        if not files[split]:
            problems.add(f"{root.name}/{split}", 0, "folder has no .jsonl files")
    return files
