"""Prefixed ids in NeMo's style: ``<prefix>-<base58(uuid)>``, e.g. ``cust-FarcM8gwhL1XFDXQ57qGLL``."""

from __future__ import annotations

import uuid

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58(value: int) -> str:
    out = ""
    while value:
        value, rest = divmod(value, 58)
        out = _ALPHABET[rest] + out
    return out or _ALPHABET[0]


def prefixed_id(prefix: str, value: uuid.UUID | str | None = None) -> str:
    """A prefixed id; deterministic when ``value`` (a UUID) is given.

    >>> prefixed_id("cust", "00000000-0000-0000-0000-00000000003a")
    'cust-21'
    """
    number = uuid.UUID(str(value)).int if value is not None else uuid.uuid4().int
    return f"{prefix}-{base58(number)}"
