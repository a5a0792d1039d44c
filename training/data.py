"""Dataset ingest: read a dataset folder, validate every line, split, hash, and write canonical splits.

A dataset is a folder with ``training/*.jsonl`` (required), ``validation/*.jsonl`` (optional; else a
seeded 10% of training is held out) and ``testing/*.jsonl`` (optional; the task benchmark). Each line
is one record, either ``{"prompt": str, "completion": str}`` or ``{"messages": [{"role", "content"}]}``
ending with an assistant turn. Every bad line is reported as ``file:line: reason``; nothing is
dropped silently. The dataset's identity is a sha256 over the canonical content of every record.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel

Split = Literal["training", "validation", "testing"]
SPLITS: tuple[Split, ...] = ("training", "validation", "testing")
ROLES = {"system", "user", "assistant", "tool"}
MAX_LISTED_ERRORS = 50
HOLDOUT_FRACTION = 0.1

Record = dict[str, Any]


@dataclass(frozen=True)
class Example:
    """A validated record and where it came from (``file:line``), so later errors can point at it."""

    loc: str
    record: Record


@dataclass(frozen=True)
class LineError:
    """One problem, located at a file and line (line 0: the file or folder as a whole)."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}" if self.line else f"{self.file}: {self.reason}"


class DatasetError(ValueError):
    """A dataset that cannot be used; carries every problem found (up to a cap) and their count."""

    def __init__(self, source: str, errors: list[LineError], total: int | None = None):
        self.source = source
        self.errors = errors[:MAX_LISTED_ERRORS]
        self.total = total if total is not None else len(errors)
        lines = [f"dataset {source} has {self.total} problem{'s' if self.total != 1 else ''}:"]
        lines += [f"  {e}" for e in self.errors]
        if self.total > len(self.errors):
            lines.append(f"  ... and {self.total - len(self.errors)} more")
        super().__init__("\n".join(lines))


class IngestedDataset(BaseModel):
    """A validated dataset: where its canonical splits are, how big they are, and its identity."""

    source: str
    sha256: str
    files: dict[Split, str]
    counts: dict[Split, int]
    formats: dict[Split, str]
    validation_source: Literal["validation", "holdout"]
    testing_source: Literal["testing", "validation"]
    warnings: list[str] = []


def resolve_local_dataset(source: str) -> Path:
    """A dataset reference as a local folder (a path or a ``file://`` URI).

    Raises:
        DatasetError: an unsupported scheme or a folder that does not exist.
    """
    parsed = urlparse(source)
    if parsed.scheme == "file":
        path = Path(parsed.path)
    elif parsed.scheme in ("", None) or len(parsed.scheme) == 1:  # plain path (or a Windows drive)
        path = Path(source)
    else:
        raise DatasetError(source, [LineError(source, 0, f"unsupported dataset scheme {parsed.scheme!r}; use a folder or file://")])
    path = path.expanduser()
    if not path.is_dir():
        raise DatasetError(source, [LineError(str(path), 0, "dataset folder does not exist")])
    return path


def _check_record(record: Any) -> tuple[str | None, str | None]:
    """Return ``(format, None)`` for a valid record, ``(format_or_None, reason)`` otherwise."""
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return "chat", "`messages` must be a non-empty list"
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                return "chat", f"`messages[{i}]` must be an object"
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                return "chat", f"`messages[{i}].role` is {role!r}; expected one of {sorted(ROLES)}"
            if not isinstance(content, str):
                return "chat", f"`messages[{i}].content` must be a string, got {type(content).__name__}"
        if messages[-1]["role"] != "assistant":
            return "chat", "the last message must be from the assistant (it is what the model learns to say)"
        if not messages[-1]["content"].strip():
            return "chat", "the last (assistant) message is empty"
        return "chat", None
    if "prompt" in record or "completion" in record:
        for field in ("prompt", "completion"):
            if field not in record:
                return "completion", f"missing field `{field}`"
            if not isinstance(record[field], str):
                return "completion", f"`{field}` must be a string, got {type(record[field]).__name__}"
            if not record[field].strip():
                return "completion", f"`{field}` is empty"
        return "completion", None
    keys = ", ".join(sorted(record)) or "none"
    return None, f"unknown record format (keys: {keys}); expected prompt/completion or messages"


def read_jsonl(path: Path, display: str, errors: list[LineError]) -> tuple[list[Example], str | None]:
    """Read and validate one JSONL file, appending problems to ``errors``. Returns examples and format."""
    records: list[Example] = []
    file_format: str | None = None
    first_line = 0
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        errors.append(LineError(display, 0, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
        return records, None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines hold no example
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(LineError(display, number, f"not valid JSON: {exc.msg} (column {exc.colno})"))
            continue
        fmt, reason = _check_record(record)
        if reason:
            errors.append(LineError(display, number, reason))
            continue
        if file_format is None:
            file_format, first_line = fmt, number
        elif fmt != file_format:
            errors.append(
                LineError(display, number, f"record is {fmt} but the file started as {file_format} (line {first_line}); one format per file")
            )
            continue
        records.append(Example(f"{display}:{number}", record))
    return records, file_format


def canonical_line(record: Record) -> str:
    """The canonical text of a record: key order and whitespace do not change a dataset's identity."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def holdout_split(records: list[Example], seed: int, fraction: float = HOLDOUT_FRACTION) -> tuple[list[Example], list[Example]]:
    """Deterministically move ``fraction`` of the records (at least one) into a validation split."""
    count = max(1, round(len(records) * fraction))
    chosen = set(random.Random(seed).sample(range(len(records)), count))
    kept = [r for i, r in enumerate(records) if i not in chosen]
    held = [r for i, r in enumerate(records) if i in chosen]
    return kept, held


def ingest_dataset(source: str, out_dir: Path, seed: int) -> IngestedDataset:
    """Validate a dataset folder and write its canonical splits to ``out_dir``.

    Args:
        source: dataset folder path or ``file://`` URI.
        out_dir: where ``training.jsonl``, ``validation.jsonl`` and ``testing.jsonl`` are written.
        seed: seeds the holdout split when the dataset has no ``validation/``.

    Returns:
        The ingested dataset: canonical split files, counts, formats and sha256.

    Raises:
        DatasetError: with every problem found, each as ``file:line: reason``.
    """
    root = resolve_local_dataset(source)
    errors: list[LineError] = []
    stray = sorted(p.name for p in root.glob("*.jsonl")) + sorted(p.name for p in root.glob("*.json"))
    if stray:
        errors.append(
            LineError(str(root), 0, f"data files at the dataset root ({', '.join(stray)}): move them into training/ (or validation/, testing/)")
        )
    if not (root / "training").is_dir():
        errors.append(LineError(str(root), 0, "no training/ folder: put the training JSONL files in training/"))

    digest = hashlib.sha256()
    splits: dict[Split, list[Example]] = {}
    formats: dict[Split, str] = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        files = sorted(folder.rglob("*.jsonl"))
        if not files:
            errors.append(LineError(f"{root.name}/{split}", 0, "folder has no .jsonl files"))
            continue
        split_records: list[Example] = []
        for path in files:
            relative = path.relative_to(root).as_posix()
            records, fmt = read_jsonl(path, relative, errors)
            if fmt and formats.setdefault(split, fmt) != fmt:
                errors.append(LineError(relative, 0, f"{fmt} records, but {split}/ already holds {formats[split]} records"))
            digest.update(f"{relative}\n".encode())
            for example in records:
                digest.update(canonical_line(example.record).encode() + b"\n")
            split_records += records
        if not split_records and not any(e.file.startswith(f"{split}/") for e in errors):
            errors.append(LineError(f"{root.name}/{split}", 0, "no records"))
        splits[split] = split_records
    if errors:
        raise DatasetError(source, errors)

    warnings: list[str] = []
    validation_source: Literal["validation", "holdout"] = "validation"
    if "validation" not in splits:
        if len(splits["training"]) < 2:
            raise DatasetError(source, [LineError("training", 0, "need at least 2 records to hold out a validation split")])
        splits["training"], splits["validation"] = holdout_split(splits["training"], seed)
        formats["validation"] = formats["training"]
        validation_source = "holdout"
        warnings.append(
            f"no validation/ folder: held out {len(splits['validation'])} of the training records (seed {seed})"
        )
    testing_source: Literal["testing", "validation"] = "testing"
    if "testing" not in splits:
        splits["testing"], formats["testing"] = splits["validation"], formats["validation"]
        testing_source = "validation"
        warnings.append("no testing/ folder: the task benchmark scores the validation split")

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[Split, str] = {}
    for split, records in splits.items():
        target = out_dir / f"{split}.jsonl"
        tmp = target.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"loc": e.loc, "record": e.record}, ensure_ascii=False) + "\n" for e in records), encoding="utf-8")
        tmp.replace(target)
        files[split] = str(target)
    return IngestedDataset(
        source=str(source),
        sha256=digest.hexdigest(),
        files=files,
        counts={split: len(records) for split, records in splits.items()},
        formats=formats,
        validation_source=validation_source,
        testing_source=testing_source,
        warnings=warnings,
    )


def read_examples(path: str | Path) -> list[Example]:
    """Read a canonical split file written by ``ingest_dataset``."""
    with open(path, encoding="utf-8") as fh:
        return [Example(**json.loads(line)) for line in fh if line.strip()]
