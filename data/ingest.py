"""Dataset ingest: read a dataset folder as a stream, validate every line, split, hash, report, and
write canonical splits.

A dataset is a folder (or ``file://``, ``s3://``, see ``data.sources``) with
``training/*.jsonl`` (required), ``validation/*.jsonl`` (optional; else a seeded 10% of training is
held out) and ``testing/*.jsonl`` (optional; the task benchmark; else the validation split). Each
line is one record in one of the formats of ``data.formats``, one format per file. Every bad
line is reported as ``file:line: reason`` (all of them counted, the first ones listed); nothing is
dropped silently. The dataset's identity is a sha256 over the canonical content of every record.

Ingest streams: it holds one chunk of lines (a megabyte) at a time, writes the canonical splits as
it goes, draws the holdout a block of lines at a time (exact count, no index in memory) and finds
duplicates through fixed-size hashes (``data.duplicates``), so memory does not grow with the
dataset. A chunk of plain records is checked and encoded with a few batched calls; any other chunk,
line by line, with the same result. With a
tokenizer (``data.lengths``) it also measures every example as training will see it and applies
the job's long-example policy. Each ingest writes ``report.json`` and ``report.html``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import compress, repeat
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

import numpy as np
import orjson
from pydantic import BaseModel

from core.settings import Settings
from data.report import DataReport, ReplayReport, SplitReport, render_html
from data.sources import SPLIT_FOLDERS, SourceError, resolve_dataset
from data.duplicates import DuplicateIndex
from data.formats import (
    CONTENT_FIELDS,
    METHOD_FORMATS,
    Format,
    Record,
    check_record,
    detect_format,
    plain_canonical_lines,
    plain_records,
)
from data.lengths import LengthCheck

Split = Literal["training", "validation", "testing"]
SPLITS: tuple[Split, ...] = SPLIT_FOLDERS
MAX_LISTED_ERRORS = 50
HOLDOUT_FRACTION = 0.1
MAX_LINE_BYTES = 16 << 20  # longer lines are reported, never held in memory whole
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Example:
    """A validated record and where it came from (``file:line``), so later errors can point at it.

    ``truncated``: ingest accepted it over max_seq_length under the ``truncate`` policy, so training
    cuts it to max_seq_length tokens.
    """

    loc: str
    record: Record
    truncated: bool = False


@dataclass(frozen=True)
class LineError:
    """One problem, located at a file and line (line 0: the file or folder as a whole)."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}" if self.line else f"{self.file}: {self.reason}"


class DatasetError(ValueError):
    """A dataset that cannot be used; carries every problem found (up to a cap), their count and
    the report of what was read."""

    def __init__(self, source: str, errors: list[LineError], total: int | None = None, report: DataReport | None = None):
        self.source = source
        self.errors = errors[:MAX_LISTED_ERRORS]
        self.total = total if total is not None else len(errors)
        self.report = report
        lines = [f"dataset {source} has {self.total} problem{'s' if self.total != 1 else ''}:"]
        lines += [f"  {e}" for e in self.errors]
        if self.total > len(self.errors):
            lines.append(f"  ... and {self.total - len(self.errors)} more")
        super().__init__("\n".join(lines))

    def __reduce__(self):  # pickled across processes by the orchestrator: rebuild from the fields
        return (DatasetError, (self.source, self.errors, self.total, self.report))


class IngestedDataset(BaseModel):
    """A validated dataset: where its canonical splits and report are, how big they are, its identity."""

    source: str
    sha256: str
    files: dict[Split, str]
    counts: dict[Split, int]
    formats: dict[Split, str]
    validation_source: Literal["validation", "holdout"]
    testing_source: Literal["testing", "validation"]
    dropped: dict[Split, int] = {}
    truncated: dict[Split, int] = {}
    report_files: dict[str, str] = {}  # "json" / "html" -> path
    warnings: list[str] = []
    # General examples mixed into training (``training.replay``); counts["training"] includes them,
    # sha256 stays the user's data.
    replay: ReplayReport | None = None


# --- canonical JSON --------------------------------------------------------------------------

_EXACT_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def canonical_line(record: Record) -> str:
    """The canonical text of a record: key order and whitespace do not change a dataset's identity."""
    return _EXACT_ENCODER.encode(record)


def _has_float(value: Any) -> bool:
    """Whether a parsed JSON value holds a float anywhere (most records hold strings only)."""
    if type(value) is not dict and type(value) is not list:
        return type(value) is float
    stack = [value]
    while stack:
        item = stack.pop()
        for inner in item.values() if type(item) is dict else item:
            kind = type(inner)
            if kind is float:
                return True
            if kind is dict or kind is list:
                stack.append(inner)
    return False


def canonical_bytes(record: Record, exact: bool | None = None) -> bytes:
    """``canonical_line(record)`` in UTF-8.

    orjson writes the same bytes as the standard encoder for strings, integers, booleans and null,
    ten times faster; floats are formatted differently (``1e-05`` vs ``0.00001``), so records with
    floats, and anything orjson refuses (nesting deeper than 254, integers beyond 64 bits), go
    through the standard encoder. That keeps a dataset's sha256 what it always was. ``exact``:
    whether the record holds floats, when the caller already knows.

    Raises:
        UnicodeEncodeError: the record holds an unpaired surrogate (a lone ``\\ud800`` escape).
        RecursionError: nesting deeper than Python's encoder goes.
    """
    if exact is None:
        exact = _has_float(record)
    if not exact:
        try:
            return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            exact = True
    return _EXACT_ENCODER.encode(record).encode("utf-8")


class _BadLine(ValueError):
    """A line that is not a JSON value; ``binary`` when the rest of the file is not worth reading."""

    def __init__(self, reason: str, binary: bool = False):
        super().__init__(reason)
        self.binary = binary


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is too large for a float")
    return value


_EXACT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _parse_exactly(raw: bytes) -> Any:
    """Parse with the standard decoder: integers of any size stay exact, and its messages name the column."""
    if b"\x00" in raw:
        raise _BadLine("binary data (NUL bytes), not JSON text", binary=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadLine(f"not UTF-8 text ({exc.reason} at byte {exc.start + 1} of the line)") from None
    try:
        return _EXACT_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise _BadLine(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise _BadLine("not valid JSON: nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, a float overflow, an integer over Python's digit limit
        raise _BadLine(f"not valid JSON: {exc}") from None


def _parse(raw: bytes) -> tuple[Any, bool]:
    """One line's JSON value, and whether the standard decoder parsed it (exactly).

    orjson parses the common case about five times faster than the standard library. Where it
    fails, the standard decoder parses the line again, for its message (or to accept what only it
    accepts, such as an unpaired surrogate escape, which is then refused with its own reason).

    Raises:
        _BadLine: with the reason.
    """
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError:
        return _parse_exactly(raw), True


_CONTENT_SETS = {fmt: frozenset(fields) for fmt, fields in CONTENT_FIELDS.items()}
_ROLE_CONTENT = frozenset(("role", "content"))


def _strings_only(record: Record, fmt: Format) -> bool:
    """Whether a valid record cannot hold a float, judged from its shape alone: a
    completion record with no other fields, a chat record whose messages hold only role and text.
    Cheaper than walking it; anything else is walked (``_has_float``)."""
    if not _CONTENT_SETS[fmt].issuperset(record):
        return False
    if fmt == "completion":
        return True
    if fmt == "chat":
        return "tools" not in record and all(map(_ROLE_CONTENT.issuperset, record["messages"]))
    if fmt == "preference":
        prompt = record["prompt"]
        return type(prompt) is str or all(map(_ROLE_CONTENT.issuperset, prompt))
    return False


# --- files -----------------------------------------------------------------------------------


def _line_chunks(fh: BinaryIO, chunk_size: int = 1 << 20) -> Iterator[tuple[int, list[bytes | None]]]:
    """The lines of a file a chunk at a time: ``(number of the first line, [line bytes without the
    newline, ...])``; ``None`` stands for a line over MAX_LINE_BYTES, skipped without being held whole.

    Reads in chunks and splits them in C: about twice as fast as ``readline`` per line.
    """
    number, tail, overlong = 0, b"", False
    while chunk := fh.read(chunk_size):
        parts: list[bytes | None] = chunk.split(b"\n")
        last = parts.pop()
        if parts:  # the line carried over from the previous chunk ends here
            first = tail + parts[0]
            parts[0] = None if overlong or len(first) > MAX_LINE_BYTES else first
            if len(chunk) > MAX_LINE_BYTES:
                parts[1:] = [raw if len(raw) <= MAX_LINE_BYTES else None for raw in parts[1:]]
            tail, overlong = b"", False
            yield number + 1, parts
            number += len(parts)
        if not overlong:
            tail += last
            if len(tail) > MAX_LINE_BYTES:
                tail, overlong = b"", True
    if overlong or tail:
        yield number + 1, [None if overlong else tail]


def _lines(fh: BinaryIO, chunk_size: int = 1 << 20) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes)`` for each line of ``_line_chunks``."""
    for first, parts in _line_chunks(fh, chunk_size):
        yield from enumerate(parts, start=first)


def _holdout_lines(path: Path) -> int:
    """Lines of a file that can hold a record (neither empty nor a lone ``\\r``): the holdout needs
    the count before it picks, the duplicate index sizes itself by it. Counted in C, a chunk at a
    time; the ingest pass calls the holdout for exactly these lines."""
    count, tail = 0, b""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                parts = chunk.split(b"\n")
                parts[0] = tail + parts[0]
                tail = parts.pop()[:2]  # two bytes tell an empty line, a lone "\r" and a record apart
                count += len(parts) - parts.count(b"") - parts.count(b"\r")
    except OSError:
        return 0  # reported when the file is read
    return count + (tail not in (b"", b"\r"))


@dataclass
class _Problems:
    """Errors found so far: the first MAX_LISTED_ERRORS, and how many in all."""

    listed: list[LineError] = field(default_factory=list)
    total: int = 0

    def add(self, file: str, line: int, reason: str) -> None:
        self.total += 1
        if len(self.listed) < MAX_LISTED_ERRORS:
            self.listed.append(LineError(file, line, reason))


def _split_files(root: Path, split: str, problems: _Problems, warnings: list[str]) -> list[tuple[Path, str]]:
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


def _layout(root: Path, problems: _Problems, warnings: list[str]) -> dict[Split, list[tuple[Path, str]]]:
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
        files[split] = _split_files(root, split, problems, warnings)
        if not files[split]:
            problems.add(f"{root.name}/{split}", 0, "folder has no .jsonl files")
    return files


# --- the pass --------------------------------------------------------------------------------


HOLDOUT_BLOCK = 4096


@dataclass
class _Holdout:
    """Picks exactly ``wanted`` of ``remaining`` lines, each subset equally likely, deterministic for
    a seed, with memory for one block of lines: how many of a block's lines are picked is drawn from
    the hypergeometric distribution (as a uniform pick of the whole would place them), then which
    ones, uniformly."""

    remaining: int
    wanted: int
    rng: np.random.Generator
    block: list[bool] = field(default_factory=list)
    position: int = 0

    def _next_block(self) -> None:
        size = min(HOLDOUT_BLOCK, self.remaining)
        picked = int(self.rng.hypergeometric(self.wanted, self.remaining - self.wanted, size)) if size else 0
        flags = np.zeros(size, dtype=bool)
        flags[self.rng.choice(size, picked, replace=False)] = True
        self.block, self.position = flags.tolist(), 0
        self.remaining -= size
        self.wanted -= picked

    def flags(self, count: int) -> list[bool]:
        """Whether each of the next ``count`` lines is held out."""
        out: list[bool] = []
        while count > 0:
            if self.position >= len(self.block):
                if not self.remaining:
                    return out + [False] * count
                self._next_block()
            step = min(count, len(self.block) - self.position)
            out += self.block[self.position : self.position + step]
            self.position += step
            count -= step
        return out


def _content(record: Record, fmt: Format, exact: bool) -> bytes:
    """The bytes duplicate checks compare for a record with more than its example's own fields
    (an id, metadata): those fields alone. (A record of only those is its canonical line.)"""
    return canonical_bytes({key: record[key] for key in CONTENT_FIELDS[fmt] if key in record}, exact)


def _first_format(raw: bytes | None) -> Format | None:
    """The format a file's first line announces (None: not a JSON object that announces one)."""
    try:
        record = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return detect_format(record) if type(record) is dict else None


_SORTED_DUMPS = partial(orjson.dumps, option=orjson.OPT_SORT_KEYS)


def _plain_chunk(chunk: list[bytes | None], fmt: Format) -> tuple[list[bytes], list[bytes]] | None:
    """The canonical lines of a chunk whose every line is a valid ``fmt`` record holding no float,
    and the contents duplicate checks compare; None when any line needs a closer look.

    Records of only their format's text fields are decoded as typed structs; others are parsed
    into dicts and checked as a list, then record by record."""
    canonical = plain_canonical_lines(chunk, fmt)
    if canonical is not None:
        return canonical, canonical
    try:
        records = list(map(orjson.loads, chunk))  # a blank or overlong line raises too
    except (orjson.JSONDecodeError, TypeError):
        return None
    fields, plain = _CONTENT_SETS[fmt], plain_records(records, fmt)
    if not plain:
        plain = True
        for record in records:
            found, reason = check_record(record, fmt)
            if reason or found != fmt or (not _strings_only(record, fmt) and _has_float(record)):
                return None
            plain = plain and fields.issuperset(record)
    try:
        canonical = list(map(_SORTED_DUMPS, records))
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        return None
    if plain:
        return canonical, canonical
    return canonical, [c if fields.issuperset(r) else _content(r, fmt, False) for r, c in zip(records, canonical)]
_SPLIT_LINE = b'%s%d","record":%s}\n'  # a canonical split line, given its loc prefix, line and record


@dataclass
class _File:
    """One file being read: where its examples go and what it held so far."""

    display: str
    split: Split
    loc_prefix: bytes
    where: dict[str, int]  # target split -> location code of the file's line 0 (duplicate index)
    format: Format | None = None
    first_line: int = 0
    records: int = 0


@dataclass
class _Pass:
    """The state of one streaming pass over a dataset: identity, outputs and accumulators."""

    out: Path
    holdout: _Holdout | None
    lengths: LengthCheck | None
    index: DuplicateIndex
    problems: _Problems = field(default_factory=_Problems)
    warnings: list[str] = field(default_factory=list)
    digest: Any = field(default_factory=hashlib.sha256)
    writers: dict[str, BinaryIO] = field(default_factory=dict)
    examples: Counter = field(default_factory=Counter)
    formats: dict[str, str] = field(default_factory=dict)
    blank_lines: int = 0

    def open_writers(self, splits: list[str]) -> None:
        for split in splits:
            self.writers[split] = open(self.out / f"{split}.jsonl", "wb", buffering=1 << 20)

    def read_file(self, path: Path, display: str, split: Split) -> None:
        """Validate one file line by line and send each example to its split."""
        self.digest.update(f"{display}\n".encode())
        index = self.index.file_index(display)
        file = _File(
            display, split, loc_prefix=b'{"loc":' + orjson.dumps(f"{display}:")[:-1],  # the JSON string, still open
            where={target: self.index.where(SPLITS.index(target), index) for target in self.writers},
        )
        try:
            with open(path, "rb") as fh:
                self._read_chunks(file, fh)
        except OSError as exc:
            self.problems.add(display, 0, f"cannot be read: {exc.strerror}")
            return
        if file.format and self.formats.setdefault(split, file.format) != file.format:
            self.problems.add(display, 0, f"{file.format} records, but {split}/ already holds {self.formats[split]} records")
        if not file.records and not any(e.file == display for e in self.problems.listed):
            self.warnings.append(f"{display}: no records (empty file)")

    def _read_chunks(self, file: _File, fh: BinaryIO) -> None:
        for first, chunk in _line_chunks(fh):
            if self.lengths is None and self._read_plain_chunk(file, first, chunk):
                continue
            for number, raw in enumerate(chunk, start=first):
                if not self._read_line(file, number, raw):
                    return  # a binary file: the rest is not worth reading

    def _read_plain_chunk(self, file: _File, first: int, chunk: list[bytes | None]) -> bool:
        """The fast path: a chunk whose every line is a valid record of the file's format, holding
        no float, read with a few calls into C per chunk instead of several per line. Returns False,
        having changed nothing, when any line needs ``_read_line``'s closer look."""
        if first == 1 and chunk[0] is not None and chunk[0].startswith(BOM):
            return False
        fmt = file.format or _first_format(chunk[0])
        if fmt is None:
            return False
        plain = _plain_chunk(chunk, fmt)
        if plain is None:
            return False
        canonical, contents = plain
        count = len(canonical)
        if file.format is None:
            file.format, file.first_line = fmt, first
        file.records += count
        self.digest.update(b"\n".join(canonical))
        self.digest.update(b"\n")
        lines = list(map(_SPLIT_LINE.__mod__, zip(repeat(file.loc_prefix), range(first, first + count), canonical)))
        numbers = np.arange(first, first + count, dtype=np.int64)
        if file.split == "training" and self.holdout:
            held = self.holdout.flags(count)
            kept = [not h for h in held]
            self.writers["validation"].write(b"".join(compress(lines, held)))
            self.writers["training"].write(b"".join(compress(lines, kept)))
            self.examples["validation"] += sum(held)
            self.examples["training"] += count - sum(held)
            wheres = np.where(held, file.where["validation"], file.where["training"]) + numbers
        else:
            self.writers[file.split].write(b"".join(lines))
            self.examples[file.split] += count
            wheres = numbers + file.where[file.split]
        self.index.add_batch(wheres, contents)
        return True

    def _read_line(self, file: _File, number: int, raw: bytes | None) -> bool:
        """Validate one line and send it to its split; every problem is reported at its line.
        Returns False when the rest of the file is not worth reading."""
        display, problem = file.display, self.problems.add
        if raw is None:
            problem(display, number, f"line is longer than {MAX_LINE_BYTES:,} bytes; no example is that long")
            return True
        if not raw or raw == b"\r":
            self.blank_lines += 1
            return True
        held = file.split == "training" and self.holdout and self.holdout.flags(1)[0]  # for each line _holdout_lines counts
        target = "validation" if held else file.split
        if raw.isspace():
            self.blank_lines += 1
            return True
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
            self.warnings.append(f"{display}: starts with a UTF-8 byte-order mark (ignored)")
        try:
            record, exact = _parse(raw)
        except _BadLine as exc:
            if exc.binary and number == 1:  # a binary file: one error, not one per "line" of it
                problem(display, number, f"{exc}: the file is not JSON Lines text (compressed? UTF-16?); the rest of it was not read")
                return False
            problem(display, number, str(exc))
            return True
        fmt, reason = check_record(record, file.format)
        if not reason and not exact and not _strings_only(record, fmt) and _has_float(record):
            # orjson reads an integer beyond 64 bits as a float, and writes floats unlike the
            # standard encoder: a record with floats is parsed and encoded exactly.
            record, exact = _parse_exactly(raw), True
            fmt, reason = check_record(record, file.format)
        if reason:
            problem(display, number, reason)
            return True
        if file.format is None:
            file.format, file.first_line = fmt, number
        elif fmt != file.format:
            problem(display, number, f"record is {fmt} but the file started as {file.format} (line {file.first_line}); one format per file")
            return True
        try:
            canonical = canonical_bytes(record, exact)
        except UnicodeEncodeError:
            problem(display, number, "holds an unpaired surrogate escape (such as \\ud800): not valid Unicode text")
            return True
        except RecursionError:
            problem(display, number, "not valid JSON: nested too deeply")
            return True
        file.records += 1
        self.digest.update(canonical + b"\n")
        ending = b"}\n"
        if self.lengths is not None:
            decision = self.lengths.check(record, fmt, target, f"{display}:{number}")
            if decision == "drop":
                return True
            if decision not in ("keep", "truncate"):
                problem(display, number, decision)
                return True
            if decision == "truncate":
                ending = b',"truncated":true}\n'
        self.writers[target].write(b'%s%d","record":%s%s' % (file.loc_prefix, number, canonical, ending))
        self.examples[target] += 1
        content = canonical if _CONTENT_SETS[fmt].issuperset(record) else _content(record, fmt, exact)
        self.index.add(file.where[target] + number, content)
        return True

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def ingest_dataset(
    source: str,
    out_dir: Path,
    seed: int,
    *,
    lengths: LengthCheck | None = None,
    method: str | None = None,
    settings: Settings | None = None,
) -> IngestedDataset:
    """Validate a dataset and write its canonical splits and report to ``out_dir``.

    Args:
        source: dataset folder path, ``file://`` URI or ``s3://bucket/prefix``.
        out_dir: where ``training.jsonl``, ``validation.jsonl``, ``testing.jsonl``, ``report.json``
            and ``report.html`` are written (an S3 dataset is downloaded to ``out_dir/source``).
        seed: seeds the holdout split when the dataset has no ``validation/``.
        lengths: the target model's tokenizer, config and long-example policy; None skips token
            statistics (and leaves the length check to training).
        method: a training type (``sft``, ``dpo``, ``grpo``): the splits must hold the formats it reads.
        settings: the S3 endpoint for ``s3://`` sources.

    Returns:
        The ingested dataset: canonical split files, counts, formats, sha256 and report files.

    Raises:
        DatasetError: with every problem found, each as ``file:line: reason``, and the report.
    """
    for stale in ("report.json", "report.html"):  # a re-run must not leave the last run's report behind
        (out_dir / stale).unlink(missing_ok=True)
    try:
        root = resolve_dataset(source, out_dir / "source", settings)
    except SourceError as exc:
        raise DatasetError(source, [LineError(source, 0, str(exc))]) from None
    partial = out_dir / ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    problems, warnings = _Problems(), []
    files = _layout(root, problems, warnings)
    lines = {split: sum(_holdout_lines(path) for path, _ in found) for split, found in files.items()}
    holdout = None
    if "training" in files and "validation" not in files and lines["training"] >= 2:
        holdout = _Holdout(lines["training"], max(1, round(lines["training"] * HOLDOUT_FRACTION)), np.random.default_rng(seed))
    index = DuplicateIndex(partial / "duplicates", expected=sum(lines.values()))
    state = _Pass(partial, holdout, lengths, index, problems, warnings)
    state.open_writers(["training", "validation", *(["testing"] if "testing" in files else [])])
    try:
        for split in SPLITS:
            for path, display in files.get(split, []):
                state.read_file(path, display, split)
    finally:
        state.close()
    _check_splits(state, files, holdout, method)
    splits = _split_reports(state, files, holdout, seed)
    report = DataReport(
        source=str(source),
        sha256=None if problems.total else state.digest.hexdigest(),
        ok=not problems.total,
        seed=seed,
        splits=splits,
        blank_lines=state.blank_lines,
        lengths=lengths.report() if lengths else None,
        lengths_skipped=None if lengths else "no config given: token lengths need the target model's tokenizer",
        duplicates=state.index.report(),
        warnings=warnings,
        errors=[str(e) for e in problems.listed],
        error_count=problems.total,
    )
    report_files = _write_report(report, out_dir)
    if problems.total:
        shutil.rmtree(partial, ignore_errors=True)
        raise DatasetError(source, problems.listed, problems.total, report)

    paths: dict[Split, str] = {}
    for split in SPLITS:
        target = out_dir / f"{split}.jsonl"
        if split == "testing" and "testing" not in files:
            shutil.copyfile(out_dir / "validation.jsonl", target)
        else:
            (partial / f"{split}.jsonl").replace(target)
        paths[split] = str(target)
    shutil.rmtree(partial, ignore_errors=True)
    return IngestedDataset(
        source=str(source),
        sha256=report.sha256,
        files=paths,
        counts={split: splits[split].examples for split in SPLITS},
        formats={split: splits[split].format for split in SPLITS},
        validation_source="holdout" if holdout else "validation",
        testing_source="testing" if "testing" in files else "validation",
        dropped={split: s.dropped for split, s in splits.items() if s.dropped},
        truncated={split: s.truncated for split, s in splits.items() if s.truncated},
        report_files=report_files,
        warnings=warnings,
    )


def _check_splits(state: _Pass, files: dict[Split, list], holdout: _Holdout | None, method: str | None) -> None:
    """Problems of whole splits: none left, too few to hold out, formats the method does not read."""
    problems = state.problems
    for split, found in files.items():
        if not found or state.examples[split] or any(e.file.startswith(f"{split}/") for e in problems.listed):
            continue  # a folder without files, or whose files have errors, is reported already
        dropped = state.lengths.dropped[split] if state.lengths else 0
        reason = f"every example was dropped ({dropped} longer than max_seq_length)" if dropped else "no records"
        problems.add(f"{split}/", 0, reason)
    if "training" in files and "validation" not in files and holdout is None and not problems.total:
        problems.add("training", 0, "need at least 2 records to hold out a validation split")
    if holdout and not state.examples["validation"] and not problems.total:
        problems.add("validation", 0, "every held-out example was dropped as too long: add a validation/ folder")
    if method in METHOD_FORMATS:
        for split, fmt in state.formats.items():
            if fmt not in METHOD_FORMATS[method]:
                problems.add(split, 0, f"{split}/ holds {fmt} records; training_type {method} reads {' or '.join(METHOD_FORMATS[method])} records")


def _split_reports(state: _Pass, files: dict[Split, list], holdout: _Holdout | None, seed: int) -> dict[str, SplitReport]:
    def summary(split: str, source: str, fmt: str | None, names: list[str]) -> SplitReport:
        lengths = state.lengths
        return SplitReport(
            source=source,
            format=fmt,
            files=names,
            examples=state.examples[split],
            dropped=lengths.dropped[split] if lengths else 0,
            truncated=lengths.truncated[split] if lengths else 0,
        )

    names = {split: [display for _, display in found] for split, found in files.items()}
    reports = {"training": summary("training", "training/", state.formats.get("training"), names.get("training", []))}
    if holdout:
        fraction = f"{HOLDOUT_FRACTION:.0%}"
        reports["validation"] = summary("validation", f"held out from training/ ({fraction}, seed {seed})", state.formats.get("training"), [])
        state.warnings.append(f"no validation/ folder: held out {state.examples['validation']} of the training records (seed {seed})")
    else:
        reports["validation"] = summary("validation", "validation/", state.formats.get("validation"), names.get("validation", []))
    if "testing" in files:
        reports["testing"] = summary("testing", "testing/", state.formats.get("testing"), names["testing"])
    else:
        reports["testing"] = reports["validation"].model_copy(update={"source": "the validation split (no testing/ folder)"})
        state.warnings.append("no testing/ folder: the task benchmark scores the validation split")
    return reports


def _write_report(report: DataReport, out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "html": out_dir / "report.html"}
    paths["json"].write_text(report.model_dump_json(indent=2), encoding="utf-8")
    paths["html"].write_text(render_html(report), encoding="utf-8")
    return {kind: str(path) for kind, path in paths.items()}


def iter_examples(path: str | Path) -> Iterator[Example]:
    """Stream a canonical split file written by ``ingest_dataset``."""
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield Example(**json.loads(line))


def read_examples(path: str | Path) -> list[Example]:
    """Read a canonical split file written by ``ingest_dataset``."""
    return list(iter_examples(path))
