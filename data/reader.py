"""One streaming pass of ingest over a dataset's files: each file read a chunk of lines at a time,
every line validated and sent to its split, with the dataset's identity, the holdout, duplicates
and token lengths accumulated as it goes.

A chunk of plain records takes the batched path (``data.chunks.plain_chunk``); any other chunk is
read line by line (``IngestPass._read_line``), which reports every problem at its line. Both write
the same canonical split lines: ``{"loc": "file:line", "record": {...}}`` (with
``"truncated": true`` where training cuts the example).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from itertools import compress, repeat
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from data.canonical import (
    CONTENT_SETS,
    BadLine,
    canonical_bytes,
    content_bytes,
    has_float,
    parse_exactly,
    parse_line,
    strings_only,
)
from data.chunks import (
    BOM,
    SPLIT_LINE,
    first_format,
    line_chunks,
    overlong_reason,
    plain_chunk,
)
from data.duplicates import DuplicateIndex
from data.formats import Format, check_record
from data.layout import SPLITS, Problems, Split
from data.lengths import LengthCheck

HOLDOUT_BLOCK = 4096


@dataclass
class Holdout:
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


@dataclass
class FileState:
    """One file being read: where its examples go and what it held so far."""

    display: str
    split: Split
    loc_prefix: bytes
    where: dict[str, int]  # target split -> location code of the file's line 0 (duplicate index)
    format: Format | None = None
    first_line: int = 0
    records: int = 0


@dataclass
class IngestPass:
    """The state of one streaming pass over a dataset: identity, outputs and accumulators."""

    out: Path
    holdout: Holdout | None
    lengths: LengthCheck | None
    index: DuplicateIndex
    problems: Problems = field(default_factory=Problems)
    warnings: list[str] = field(default_factory=list)
    digest: Any = field(default_factory=hashlib.sha256)
    writers: dict[str, BinaryIO] = field(default_factory=dict)
    examples: Counter = field(default_factory=Counter)
    formats: dict[Split, Format] = field(default_factory=dict)  # split -> the format its files hold
    format_at: dict[Split, tuple[str, int]] = field(default_factory=dict)  # split -> (file, line) that set it
    blank_lines: int = 0

    def open_writers(self, splits: list[str]) -> None:
        """Open the canonical split files this pass writes (``<out>/<split>.jsonl``)."""
        for split in splits:
            self.writers[split] = open(self.out / f"{split}.jsonl", "wb", buffering=1 << 20)

    def read_file(self, path: Path, display: str, split: Split) -> None:
        """Validate one file line by line and send each example to its split."""
        self.digest.update(f"{display}\n".encode())
        index = self.index.file_index(display)
        file = FileState(
            display, split, loc_prefix=b'{"loc":' + orjson.dumps(f"{display}:")[:-1],  # the JSON string, still open
            where={target: self.index.where(SPLITS.index(target), index) for target in self.writers},
        )
        try:
            with open(path, "rb") as fh:
                self._read_chunks(file, fh)
        except OSError as exc:
            self.problems.add(display, 0, f"cannot be read: {exc.strerror}")
            return
        if file.format and split not in self.formats:
            self.format_at[split] = (display, file.first_line)
        if file.format and self.formats.setdefault(split, file.format) != file.format:
            self.problems.add(display, 0, f"{file.format} records, but {split}/ already holds {self.formats[split]} records")
        if not file.records and not any(e.file == display for e in self.problems.listed):
            self.warnings.append(f"{display}: no records (empty file)")

    def _read_chunks(self, file: FileState, fh: BinaryIO) -> None:
        for first, chunk in line_chunks(fh):
            if self.lengths is None and self._read_plain_chunk(file, first, chunk):
                continue
            for number, raw in enumerate(chunk, start=first):
                if not self._read_line(file, number, raw):
                    return  # a binary file: the rest is not worth reading

    def _read_plain_chunk(self, file: FileState, first: int, chunk: list[bytes | None]) -> bool:
        """The fast path: a chunk whose every line is a valid record of the file's format, holding
        no float, read with a few calls into C per chunk instead of several per line. Returns False,
        having changed nothing, when any line needs ``_read_line``'s closer look."""
        if first == 1 and chunk[0] is not None and chunk[0].startswith(BOM):
            return False
        fmt = file.format or first_format(chunk[0])
        if fmt is None:
            return False
        plain = plain_chunk(chunk, fmt)
        if plain is None:
            return False
        canonical, contents = plain
        count = len(canonical)
        if file.format is None:
            file.format, file.first_line = fmt, first
        file.records += count
        self.digest.update(b"\n".join(canonical))
        self.digest.update(b"\n")
        lines = list(map(SPLIT_LINE.__mod__, zip(repeat(file.loc_prefix), range(first, first + count), canonical)))
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

    def _read_line(self, file: FileState, number: int, raw: bytes | None) -> bool:
        """Validate one line and send it to its split; every problem is reported at its line.
        Returns False when the rest of the file is not worth reading."""
        display, problem = file.display, self.problems.add
        if raw is None:
            problem(display, number, overlong_reason())
            return True
        if not raw or raw == b"\r":
            self.blank_lines += 1
            return True
        held = file.split == "training" and self.holdout and self.holdout.flags(1)[0]  # for each line record_lines counts
        target = "validation" if held else file.split
        if raw.isspace():
            self.blank_lines += 1
            return True
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
            self.warnings.append(f"{display}: starts with a UTF-8 byte-order mark (ignored)")
        try:
            record, exact = parse_line(raw)
        except BadLine as exc:
            if exc.binary and number == 1:  # a binary file: one error, not one per "line" of it
                problem(display, number, f"{exc}: the file is not JSON Lines text (compressed? UTF-16?); the rest of it was not read")
                return False
            problem(display, number, str(exc))
            return True
        fmt, reason = check_record(record, file.format)
        if not reason and not exact and not strings_only(record, fmt) and has_float(record):
            # orjson reads an integer beyond 64 bits as a float, and writes floats unlike the
            # standard encoder: a record with floats is parsed and encoded exactly.
            record, exact = parse_exactly(raw), True
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
        content = canonical if CONTENT_SETS[fmt].issuperset(record) else content_bytes(record, fmt, exact)
        self.index.add(file.where[target] + number, content)
        return True

    def close(self) -> None:
        """Close the canonical split files."""
        for writer in self.writers.values():
            writer.close()
