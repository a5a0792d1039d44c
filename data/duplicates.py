"""Exact and near duplicates within a split, and leakage between training and validation/testing,
found in memory that does not grow with the dataset.

Each example is reduced to three 64-bit numbers: a hash of its content (the fields that make the
example, see ``formats.CONTENT_FIELDS``), a hash of that content *normalized* (ASCII letters
lowercased, whitespace and ASCII punctuation removed), and where it is (split, file, line). They
collect in a fixed-size buffer; a full buffer is spilled to files on disk, partitioned by the
normalized hash, so copies of an example always meet in the same partition. The number of
partitions is chosen from the number of lines of the dataset so that each holds about one
buffer's worth. At the end each partition is sorted on its own (numpy) and runs of equal hashes
are the duplicate groups.

Trade-offs, chosen so the check costs about a microsecond per example and bounded memory:

- *near* means equal after normalization: copies that differ in letter case, spacing or
  punctuation are caught, paraphrases and edits of a word are not (that takes MinHash/LSH over
  shingles, at ~100x the time and memory per example);
- the hashes are 64-bit (XXH3), so two different examples collide with probability ~n^2 / 2^65
  (about 3e-6 for ten million examples);
- peak memory is the buffer (16,384 examples, ~400 KB) plus one partition (about as much) while
  it is sorted; past ``MAX_PARTITIONS`` partitions (4 million examples) a partition grows by
  ~100 KB per million examples more.
"""

from __future__ import annotations

import heapq
import math
import operator
import shutil
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import xxhash
from pydantic import BaseModel

SPLIT_CODES = ("training", "validation", "testing")
BUFFER_EXAMPLES = 1 << 14
HASH_BATCH = 1 << 10
MAX_PARTITIONS = 256
MAX_LISTED = 20
LOCS_PER_GROUP = 5
ENTRY = np.dtype([("near", "<u8"), ("exact", "<u8"), ("where", "<u8")])
# Deleted before the near hash: ASCII whitespace and punctuation (JSON's own syntax included, so
# `"a, b"` and `"a b"` normalize alike). Non-ASCII text is kept as it is.
NOISE = bytes(range(0, 0x30)) + bytes(range(0x3A, 0x41)) + bytes(range(0x5B, 0x61)) + bytes(range(0x7B, 0x80))
LINE_BITS = 40
FILE_BITS = 21  # with 40 line bits and 2 split bits, a location fits a signed 64-bit integer


class DuplicateGroup(BaseModel):
    """Copies of one example inside a split (``exact``), or variants equal after normalization (``near``)."""

    kind: str
    split: str
    locs: list[str]


class Leak(BaseModel):
    """An example of validation or testing that also appears in training."""

    kind: str
    split: str
    locs: list[str]
    training: list[str]


class DuplicateReport(BaseModel):
    """Duplicates per split and leakage into validation/testing (counts, and a few listed)."""

    method: str = "exact: same content; near: same after lowercasing and removing whitespace and punctuation"
    exact_copies: dict[str, int] = {}  # split -> examples that repeat an earlier one exactly
    near_copies: dict[str, int] = {}  # split -> examples that repeat one only after normalization
    leaked: dict[str, int] = {}  # validation/testing -> examples also in training
    groups: list[DuplicateGroup] = []
    leaks: list[Leak] = []


_LOWER = bytes.maketrans(bytes(range(0x41, 0x5B)), bytes(range(0x61, 0x7B)))


def near_key(content: bytes) -> bytes:
    """The normalized form near duplicates share (lowercased and deleted in one pass).

    >>> near_key(b'{"prompt":"Hello,  World!"}') == near_key(b'{"prompt":"hello world"}')
    True
    """
    return content.translate(_LOWER, NOISE)


_NORMALIZE = operator.methodcaller("translate", _LOWER, NOISE)  # near_key, callable from C
_HASH = xxhash.xxh3_64_intdigest  # unsalted: the same numbers in every process and run


@dataclass
class DuplicateIndex:
    """Collects ``(near, exact, where)`` per example; ``report()`` groups them."""

    spill_dir: Path
    expected: int = 0  # examples the dataset may hold: sizes the partitions
    files: list[str] = field(default_factory=list)  # file index -> display name
    contents: list[bytes] = field(default_factory=list)  # examples not hashed yet
    wheres: array = field(default_factory=lambda: array("q"))  # and their locations
    buffer: list[np.ndarray] = field(default_factory=list)  # hashed batches not spilled yet
    buffered: int = 0
    partition_bits: int = 0  # 0 until the first spill
    spill_files: dict[int, BinaryIO] = field(default_factory=dict)

    def file_index(self, display: str) -> int:
        self.files.append(display)
        return len(self.files) - 1

    def where(self, split: int, file_index: int) -> int:
        """The location code of line 0 of a file in a split; add the line number to it."""
        return (split << (LINE_BITS + FILE_BITS)) | (file_index << LINE_BITS)

    def add(self, where: int, content: bytes) -> None:
        """Record one example's content at ``where`` (from ``where()`` plus its line number)."""
        self.contents.append(content)
        self.wheres.append(where)
        if len(self.contents) >= HASH_BATCH:
            self._flush_added()

    def add_batch(self, wheres: np.ndarray, contents: list[bytes]) -> None:
        """Record many examples at once (``wheres``: their location codes, int64)."""
        self._store(wheres, contents)

    def _flush_added(self) -> None:
        if self.contents:
            self._store(np.frombuffer(self.wheres, dtype=np.int64), self.contents)
            self.contents, self.wheres = [], array("q")

    def _store(self, wheres: np.ndarray, contents: list[bytes]) -> None:
        """Hash a batch of examples, iterating in C rather than with a call each."""
        count = len(contents)
        batch = np.empty(count, dtype=ENTRY)
        batch["near"] = np.fromiter(map(_HASH, map(_NORMALIZE, contents)), dtype=np.uint64, count=count)
        batch["exact"] = np.fromiter(map(_HASH, contents), dtype=np.uint64, count=count)
        batch["where"] = wheres.view(np.uint64)
        self.buffer.append(batch)
        self.buffered += count
        if self.buffered >= BUFFER_EXAMPLES:
            self._spill()

    def _spill(self) -> None:
        entries = np.concatenate(self.buffer) if self.buffer else np.empty(0, dtype=ENTRY)
        if not self.partition_bits:
            wanted = max(2.0, self.expected / BUFFER_EXAMPLES)
            self.partition_bits = min(MAX_PARTITIONS.bit_length() - 1, math.ceil(math.log2(wanted)))
            self.spill_dir.mkdir(parents=True, exist_ok=True)
        part = (entries["near"] >> np.uint64(64 - self.partition_bits)).astype(np.intp)
        order = np.argsort(part, kind="stable")
        entries, part = entries[order], part[order]
        bounds = np.searchsorted(part, np.arange((1 << self.partition_bits) + 1))
        for p in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
            if p not in self.spill_files:
                self.spill_files[p] = open(self.spill_dir / f"{p:03x}.bin", "wb")
            self.spill_files[p].write(entries[bounds[p] : bounds[p + 1]].tobytes())
        self.buffer, self.buffered = [], 0

    def _partitions(self):
        self._flush_added()
        if not self.partition_bits:
            yield np.concatenate(self.buffer) if self.buffer else np.empty(0, dtype=ENTRY)
            return
        if self.buffer:
            self._spill()
        for p, fh in sorted(self.spill_files.items()):
            fh.close()
            yield np.fromfile(self.spill_dir / f"{p:03x}.bin", dtype=ENTRY)

    def close(self) -> None:
        """Remove the spill files (also when ingest stops early)."""
        for fh in self.spill_files.values():
            fh.close()
        self.spill_files.clear()
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def _loc(self, where: int) -> str:
        file_index = (where >> LINE_BITS) & ((1 << FILE_BITS) - 1)
        return f"{self.files[file_index]}:{where & ((1 << LINE_BITS) - 1)}"

    def report(self) -> DuplicateReport:
        """Count and list duplicates and leaks, then remove the spill files."""
        exact = {s: 0 for s in SPLIT_CODES}
        near = {s: 0 for s in SPLIT_CODES}
        leaked = {"validation": 0, "testing": 0}
        groups: list[tuple] = []  # kept as a heap of the MAX_LISTED first by location
        leaks: list[tuple] = []
        for entries in self._partitions():
            order = np.lexsort((entries["where"], entries["exact"], entries["near"]))
            entries = entries[order]
            keys = entries["near"]
            starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            sizes = np.diff(np.r_[starts, len(keys)])
            for start, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
                self._group(entries[start : start + size], exact, near, leaked, groups, leaks)
        self.close()
        return DuplicateReport(
            exact_copies={k: v for k, v in exact.items() if v},
            near_copies={k: v for k, v in near.items() if v},
            leaked={k: v for k, v in leaked.items() if v},
            groups=[g for *_, g in sorted(groups, key=lambda entry: entry[:2], reverse=True)],
            leaks=[leak for *_, leak in sorted(leaks, key=lambda entry: entry[:2], reverse=True)],
        )

    def _group(self, entries, exact, near, leaked, groups, leaks) -> None:
        """Account for one set of examples that share a normalized hash (sorted by exact, where)."""
        wheres = entries["where"].tolist()
        exacts = entries["exact"].tolist()
        splits = [w >> (LINE_BITS + FILE_BITS) for w in wheres]
        by_split: dict[int, list[tuple[int, int]]] = {}
        for split, key, where in zip(splits, exacts, wheres):
            by_split.setdefault(split, []).append((key, where))
        for split, members in by_split.items():
            distinct = {key for key, _ in members}
            exact[SPLIT_CODES[split]] += len(members) - len(distinct)
            near[SPLIT_CODES[split]] += len(distinct) - 1
            for key in distinct:
                copies = [w for k, w in members if k == key]
                if len(copies) > 1:
                    _keep(groups, min(copies), DuplicateGroup(kind="exact", split=SPLIT_CODES[split], locs=[self._loc(w) for w in sorted(copies)[:LOCS_PER_GROUP]]))
            if len(distinct) > 1:
                firsts = sorted(min(w for k, w in members if k == key) for key in distinct)
                _keep(groups, firsts[0], DuplicateGroup(kind="near", split=SPLIT_CODES[split], locs=[self._loc(w) for w in firsts[:LOCS_PER_GROUP]]))
        training = by_split.get(0, [])
        if not training:
            return
        training_keys = {key for key, _ in training}
        training_locs = [self._loc(w) for _, w in sorted(training, key=lambda m: m[1])[:LOCS_PER_GROUP]]
        for split in (1, 2):
            members = by_split.get(split, [])
            if not members:
                continue
            leaked[SPLIT_CODES[split]] += len(members)
            kind = "exact" if any(key in training_keys for key, _ in members) else "near"
            wheres_sorted = sorted(w for _, w in members)
            _keep(leaks, wheres_sorted[0], Leak(kind=kind, split=SPLIT_CODES[split], locs=[self._loc(w) for w in wheres_sorted[:LOCS_PER_GROUP]], training=training_locs))


def _keep(heap: list, where: int, item) -> None:
    """Keep the MAX_LISTED items with the smallest location (a max-heap on location, negated)."""
    entry = (-where, item.kind, item)  # the kind breaks ties, so items themselves are never compared
    if len(heap) < MAX_LISTED:
        heapq.heappush(heap, entry)
    elif entry[:2] > heap[0][:2]:
        heapq.heapreplace(heap, entry)
