"""List conventions shared by every endpoint: ``page``/``page_size``/``sort``/``filter[...]`` and the
``{"object": "list", "data", "pagination"}`` envelope.

Query encoding follows NeMo's SDK: nested keys in brackets (``filter[peft][lora]=true``), booleans
as ``true``/``false``, lists comma-joined, a leading ``-`` in ``sort`` for descending. A page past
the end is an empty page, not an error: the SDK's auto-pagination stops on it.

``filter[...]``/``search[...]`` parameters are bounded like every other input: at most
``MAX_PARAMS`` of them, ``MAX_KEY_DEPTH`` brackets deep, values of at most ``MAX_VALUE_CHARS``
characters, no NUL or other control characters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

_KEY = re.compile(r"^(filter|search)((?:\[[^\[\]]*\])+)$")
_OPERATORS = {"eq", "neq", "gt", "gte", "lt", "lte"}
MAX_PARAMS, MAX_KEY_DEPTH, MAX_VALUE_CHARS = 32, 4, 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ListError(ValueError):
    """A ``filter``/``sort`` parameter that cannot be applied (the message names it)."""


class QueryError(ListError):
    """A malformed or out-of-bounds ``filter[...]``/``search[...]`` query parameter; ``key`` names it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"`{key}`: {message}")
        self.key, self.reason = key, message


def _scalar(text: str) -> Any:
    return {"true": True, "false": False}.get(text, text)


def bracket_params(query: Mapping[str, str] | Any, root: str) -> dict[str, Any]:
    """``filter[a][b]=x`` query parameters as ``{"a": {"b": "x"}}`` (booleans parsed)."""
    out: dict[str, Any] = {}
    count = 0
    for key, value in query.multi_items() if hasattr(query, "multi_items") else query.items():
        match = _KEY.match(key)
        if not match or match.group(1) != root:
            continue
        count += 1
        parts = re.findall(r"\[([^\[\]]*)\]", match.group(2))
        if count > MAX_PARAMS:
            raise QueryError(key, f"more than {MAX_PARAMS} {root}[...] parameters; send fewer")
        if len(parts) > MAX_KEY_DEPTH or len(key) > 256:
            raise QueryError(key[:256], f"more than {MAX_KEY_DEPTH} brackets or 256 characters; use a shorter key")
        if any(not p for p in parts):
            raise QueryError(key, "empty key in brackets")
        if len(value) > MAX_VALUE_CHARS or _CONTROL.search(key + value):
            raise QueryError(key, f"values are at most {MAX_VALUE_CHARS} characters, without control characters")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise QueryError(key, f"conflicts with another {root} parameter")
            node = child
        node[parts[-1]] = _scalar(value)
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "eq":
        return _text(actual) == _text(expected)
    if op == "neq":
        return _text(actual) != _text(expected)
    if actual is None:
        return False
    left, right = _text(actual), _text(expected)
    try:  # numbers compare as numbers, anything else (ISO timestamps) as text
        left, right = float(left), float(right)  # type: ignore[assignment]
    except ValueError:
        pass
    return {"gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[op]


def matches(item: Any, condition: Any) -> bool:
    """Whether ``item`` (a value from an entity) meets ``condition`` (one parsed filter value)."""
    if isinstance(condition, dict):
        if condition and set(condition) <= _OPERATORS:
            return all(_compare(item, op, expected) for op, expected in condition.items())
        if not isinstance(item, dict):
            # filter[peft][lora]=true on an entity without peft, or filter[base_model][name] on a string
            if isinstance(item, str) and set(condition) == {"name"}:
                return matches(item, condition["name"])
            return all(expected is False for expected in condition.values())
        return all(matches(item.get(key), expected) for key, expected in condition.items())
    if isinstance(condition, bool):
        return bool(item) is condition
    if isinstance(item, dict) and "name" in item:  # e.g. filter[base_model]=meta/llama against an object
        item = item["name"]
    return _text(item) in {part.strip() for part in str(condition).split(",")}


def filtered(
    items: list[dict[str, Any]],
    filters: dict[str, Any],
    allowed: set[str],
    getters: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
) -> list[dict[str, Any]]:
    """Items meeting every filter. A filter key outside ``allowed`` is a ListError naming it."""
    getters = getters or {}
    unknown = sorted(set(filters) - allowed)
    if unknown:
        raise ListError(f"unknown filter `filter[{unknown[0]}]`; filterable fields: {', '.join(sorted(allowed))}")
    return [
        item for item in items
        if all(matches(getters[key](item) if key in getters else item.get(key), value) for key, value in filters.items())
    ]


def searched(items: list[dict[str, Any]], search: dict[str, Any]) -> list[dict[str, Any]]:
    """Items whose fields contain every ``search[field]`` text (case-insensitive; commas: any of)."""
    def hit(item: dict[str, Any], key: str, value: Any) -> bool:
        text = _text(item.get(key)).lower()
        return any(part.strip().lower() in text for part in str(value).split(","))

    return [item for item in items if all(hit(item, k, v) for k, v in search.items() if not isinstance(v, dict))]


def sorted_items(items: list[dict[str, Any]], sort: str | None, allowed: set[str]) -> list[dict[str, Any]]:
    """Items sorted by ``sort`` (``field`` or ``-field``); missing values last either way."""
    if not sort:
        return items
    field = sort.removeprefix("-")
    if field not in allowed:
        raise ListError(f"cannot sort by `{sort}`; sortable fields: {', '.join(sorted(allowed))} (prefix - for descending)")
    present = [i for i in items if i.get(field) is not None]
    missing = [i for i in items if i.get(field) is None]
    present.sort(key=lambda i: (str(type(i[field])), i[field]) if not isinstance(i[field], (dict, list)) else ("", str(i[field])),
                 reverse=sort.startswith("-"))
    return present + missing


def page_of(items: list[dict[str, Any]], page: int, page_size: int, sort: str | None, filters: dict[str, Any]) -> dict[str, Any]:
    """One page in NeMo's list envelope; past the end the page is empty."""
    total = len(items)
    data = items[(page - 1) * page_size: page * page_size]
    return {
        "object": "list",
        "data": data,
        "sort": sort,
        "filter": filters or None,
        "pagination": {
            "page": page,
            "page_size": page_size,
            "current_page_size": len(data),
            "total_pages": math.ceil(total / page_size) if total else 0,
            "total_results": total,
        },
    }
