"""Dataset files as chunks of lines, and the batched check of a plain chunk (ingest's fast path).

A file is read a megabyte at a time and split into lines in C; a line longer than
``MAX_LINE_BYTES`` is never held whole (it stands as ``None``). A chunk whose every line is a valid
record of the file's format holding no float (most chunks of most datasets) is checked and encoded
with a few calls into C for the whole chunk (``plain_chunk``); any other chunk is read line by line
(``data.reader``), with the same result.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO

import orjson

from data.canonical import CONTENT_SETS, content_bytes, has_float, strings_only
from data.formats import (
    Format,
    check_record,
    detect_format,
    plain_canonical_lines,
    plain_records,
)

MAX_LINE_BYTES = 16 << 20  # longer lines are reported, never held in memory whole
BOM = b"\xef\xbb\xbf"
SPLIT_LINE = b'%s%d","record":%s}\n'  # a canonical split line, given its loc prefix, line and record


def overlong_reason() -> str:
    """What a line over ``MAX_LINE_BYTES`` is reported as."""
    return f"line is longer than {MAX_LINE_BYTES:,} bytes; no example is that long"


def line_chunks(fh: BinaryIO, chunk_size: int = 1 << 20) -> Iterator[tuple[int, list[bytes | None]]]:
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


def numbered_lines(fh: BinaryIO, chunk_size: int = 1 << 20) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes)`` for each line of ``line_chunks``."""
    for first, parts in line_chunks(fh, chunk_size):
        yield from enumerate(parts, start=first)


def record_lines(path: Path) -> int:
    """Lines of a file that can hold a record (neither empty nor a lone ``\\r``): the holdout needs
    the count before it picks, the duplicate index sizes itself by it. Counted in C, a chunk at a
    time; the ingest pass calls the holdout for exactly these lines. An unreadable file counts 0
    (it is reported when it is read)."""
    count, tail = 0, b""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                parts = chunk.split(b"\n")
                parts[0] = tail + parts[0]
                tail = parts.pop()[:2]  # two bytes tell an empty line, a lone "\r" and a record apart
                count += len(parts) - parts.count(b"") - parts.count(b"\r")
    except OSError:
        return 0
    return count + (tail not in (b"", b"\r"))


def first_format(raw: bytes | None) -> Format | None:
    """The format a file's first line announces (None: not a JSON object that announces one).

    >>> first_format(b'{"prompt": "2+2?", "completion": "4"}'), first_format(b"[1]")
    ('completion', None)
    """
    try:
        record = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return detect_format(record) if type(record) is dict else None


_SORTED_DUMPS = partial(orjson.dumps, option=orjson.OPT_SORT_KEYS)


def plain_chunk(chunk: list[bytes | None], fmt: Format) -> tuple[list[bytes], list[bytes]] | None:
    """The canonical lines of a chunk whose every line is a valid ``fmt`` record holding no float,
    and the contents duplicate checks compare; None when any line needs a closer look.

    Records of only their format's text fields are decoded as typed structs; others are parsed
    into dicts and checked as a list, then record by record.

    >>> plain_chunk([b'{"prompt": "2+2?", "completion": "4"}'], "completion")
    ([b'{"completion":"4","prompt":"2+2?"}'], [b'{"completion":"4","prompt":"2+2?"}'])
    >>> plain_chunk([b'{"prompt": "2+2?", "completion": "4", "score": 0.5}'], "completion") is None
    True
    """
    canonical = plain_canonical_lines(chunk, fmt)
    if canonical is not None:
        return canonical, canonical
    try:
        records = list(map(orjson.loads, chunk))  # a blank or overlong line raises too
    except (orjson.JSONDecodeError, TypeError):
        return None
    fields, plain = CONTENT_SETS[fmt], plain_records(records, fmt)
    if not plain:
        plain = True
        for record in records:
            found, reason = check_record(record, fmt)
            if reason or found != fmt or (not strings_only(record, fmt) and has_float(record)):
                return None
            plain = plain and fields.issuperset(record)
    try:
        canonical = list(map(_SORTED_DUMPS, records))
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        return None
    if plain:
        return canonical, canonical
    return canonical, [c if fields.issuperset(r) else content_bytes(r, fmt, False) for r, c in zip(records, canonical)]
