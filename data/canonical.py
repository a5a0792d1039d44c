"""Canonical JSON of a record, and parsing one line of a dataset file into a JSON value.

A record's canonical text (sorted keys, no whitespace, UTF-8) is what a dataset's sha256 covers
and what the canonical splits hold: key order and spacing do not change a dataset's identity.
orjson parses and writes the common case several times faster than the standard library; the
standard library takes over wherever the two would differ (floats, integers beyond 64 bits,
unpaired surrogate escapes), so the bytes are always the standard encoder's.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from data.formats import CONTENT_FIELDS, Format, Record

_EXACT_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))

# The fields that make up an example of each format, as sets (duplicate checks compare these).
CONTENT_SETS = {fmt: frozenset(fields) for fmt, fields in CONTENT_FIELDS.items()}
_ROLE_CONTENT = frozenset(("role", "content"))


def canonical_line(record: Record) -> str:
    """The canonical text of a record: key order and whitespace do not change a dataset's identity.

    >>> canonical_line({"prompt": "2+2?", "completion": "4"})
    '{"completion":"4","prompt":"2+2?"}'
    """
    return _EXACT_ENCODER.encode(record)


def has_float(value: Any) -> bool:
    """Whether a parsed JSON value holds a float anywhere (most records hold strings only).

    >>> has_float({"prompt": "p", "meta": [1, {"score": 0.5}]}), has_float({"prompt": "p", "n": 3})
    (True, False)
    """
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
    through the standard encoder. That keeps a dataset's sha256 what it always was.

    Args:
        record: a parsed record.
        exact: whether the record holds floats, when the caller already knows.

    Returns:
        The canonical JSON bytes.

    Raises:
        UnicodeEncodeError: the record holds an unpaired surrogate (a lone ``\\ud800`` escape).
        RecursionError: nesting deeper than Python's encoder goes.
    """
    if exact is None:
        exact = has_float(record)
    if not exact:
        try:
            return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            exact = True
    return _EXACT_ENCODER.encode(record).encode("utf-8")


def content_bytes(record: Record, fmt: Format, exact: bool) -> bytes:
    """The bytes duplicate checks compare for a record with more than its example's own fields
    (an id, metadata): those fields alone. (A record of only those is its canonical line.)"""
    return canonical_bytes({key: record[key] for key in CONTENT_FIELDS[fmt] if key in record}, exact)


def strings_only(record: Record, fmt: Format) -> bool:
    """Whether a valid record cannot hold a float, judged from its shape alone: a completion
    record with no other fields, a chat record whose messages hold only role and text. Cheaper
    than walking it; anything else is walked (``has_float``)."""
    if not CONTENT_SETS[fmt].issuperset(record):
        return False
    if fmt == "completion":
        return True
    if fmt == "chat":
        return "tools" not in record and all(map(_ROLE_CONTENT.issuperset, record["messages"]))
    if fmt == "preference":
        prompt = record["prompt"]
        return type(prompt) is str or all(map(_ROLE_CONTENT.issuperset, prompt))
    return False


class BadLine(ValueError):
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

# orjson's own nesting limit. The standard decoder's limit depends on the Python version (about
# 1000 on 3.11, the C stack on 3.12+), so deeper values are refused here for the same verdict on each.
MAX_NESTING = 1024


def _nesting(value: Any) -> int:
    """How deeply lists and objects nest in a parsed value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_exactly(raw: bytes) -> Any:
    """Parse with the standard decoder: integers of any size stay exact, and its messages name the column.

    Raises:
        BadLine: with the reason (binary data, not UTF-8, not JSON).
    """
    if b"\x00" in raw:
        raise BadLine("binary data (NUL bytes), not JSON text", binary=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine(f"not UTF-8 text ({exc.reason} at byte {exc.start + 1} of the line)") from None
    try:
        value = _EXACT_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise BadLine(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise BadLine("not valid JSON: nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, a float overflow, an integer over Python's digit limit
        raise BadLine(f"not valid JSON: {exc}") from None
    # Counting brackets first keeps the walk off every line that cannot nest that deep.
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING and _nesting(value) > MAX_NESTING:
        raise BadLine("not valid JSON: nested too deeply")
    return value


def parse_line(raw: bytes) -> tuple[Any, bool]:
    """One line's JSON value, and whether the standard decoder parsed it (exactly).

    orjson parses the common case about five times faster than the standard library. Where it
    fails, the standard decoder parses the line again, for its message (or to accept what only it
    accepts, such as an unpaired surrogate escape, which is then refused with its own reason).

    >>> parse_line(b'{"prompt": "p", "completion": "c"}')
    ({'prompt': 'p', 'completion': 'c'}, False)

    Raises:
        BadLine: with the reason.
    """
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError:
        return parse_exactly(raw), True
