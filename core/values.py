"""Raw input values checked before any field is read: numbers that fit what stores and torch hold,
valid text, bounded nesting. Shared by the job spec (``core.specs``) and the REST API (``api.bounds``)."""

from __future__ import annotations

import math
from typing import Any

# The largest integer any spec field takes: what Prefect's run parameters, SQLite, PostgreSQL and torch all hold.
INT32_MAX = 2**31 - 1
INT64_MAX, MAX_DEPTH, MAX_VALUES = 2**63 - 1, 32, 100_000  # any integer; nesting levels and values in one input


def check_value(value: Any) -> None:
    """Refuse decoded JSON holding a number that is not finite, an integer outside 64 bits, text that is not
    valid Unicode or holds NUL, or more than ``MAX_DEPTH`` levels or ``MAX_VALUES`` values; the ValueError
    names the dotted path. It runs before fields are read: a refusal that echoed such a value could not be sent.

    >>> check_value({"a": [1, float("nan")]})
    Traceback (most recent call last):
    ...
    ValueError: `a.1` is not a finite number: send a number (NaN and Infinity are refused)
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    for seen in range(1, MAX_VALUES + 2):
        if not stack:
            return
        item, path = stack.pop()
        where = ".".join(map(str, path)) or "the body"
        if seen > MAX_VALUES or len(path) > MAX_DEPTH:
            where = ".".join(map(str, path[:3])) + "..."
            raise ValueError(f"`{where}` is nested over {MAX_DEPTH} levels deep or holds over {MAX_VALUES} values: send less")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"`{where}` is not a finite number: send a number (NaN and Infinity are refused)")
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > INT64_MAX:
            raise ValueError(f"`{where}` is an integer outside 64 bits: send one between -2^63 and 2^63-1")
        texts = [item] if isinstance(item, str) else [k for k in item if isinstance(k, str)] if isinstance(item, dict) else []
        if any("\x00" in text or not text.isascii() and not _encodable(text) for text in texts):
            raise ValueError(f"`{where}` holds NUL or text that is not valid Unicode: send valid UTF-8 text without NUL")
        children = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, (list, tuple)) else ()
        stack.extend((child, (*path, key)) for key, child in children)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a "\ud800" JSON escape
        return False
    return True
