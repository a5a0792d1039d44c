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


def uuid_from_id(value: str) -> uuid.UUID:
    """The UUID behind a prefixed id (the inverse of ``prefixed_id``).

    >>> str(uuid_from_id("cust-21"))
    '00000000-0000-0000-0000-00000000003a'

    Raises:
        ValueError: not a ``prefix-base58`` id.
    """
    _, dash, encoded = value.rpartition("-")
    if not dash or not encoded or any(ch not in _ALPHABET for ch in encoded):
        raise ValueError(f"{value!r} is not an id of the form prefix-<base58>")
    number = 0
    for ch in encoded:
        number = number * 58 + _ALPHABET.index(ch)
    return uuid.UUID(int=number)
