"""The URLs a caller may hand the service, as 422s: ``data.sources.check_access`` decides (the
configured schemes, folders and hosts; the platform's own stores only in the namespaces the caller's
key may use, whichever way they are named), this module names the field.

A refused URL is a 422 in FastAPI's usual shape, naming the field and the allowed set.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError

from api.deps import Caller
from core.settings import Settings
from data.sources import SourceError, UrlKind, check_access


def refuse(loc: tuple[str | int, ...], url: Any, message: str) -> RequestValidationError:
    """A 422 for the field at ``loc`` (FastAPI's ``{loc, msg, type}`` shape)."""
    field = ".".join(str(part) for part in loc[1:] if part != "body") or str(loc[-1])
    return RequestValidationError([{"loc": loc, "msg": f"`{field}`: {message}", "type": "url_not_allowed", "input": url}])


def checked_url(settings: Settings, caller: Caller, loc: tuple[str | int, ...], url: Any, kind: UrlKind = "dataset") -> None:
    """Refuse a URL the server may not read or call for ``caller`` (``data.sources.check_access``).

    Raises:
        RequestValidationError: naming the field at ``loc`` and why.
    """
    if url is None or url == "":  # nothing to read (e.g. a model whose artifact is not uploaded yet)
        return
    if not isinstance(url, str):
        raise refuse(loc, url, "expected a URL")
    try:
        check_access(url, settings, caller.namespaces, kind)
    except SourceError as exc:
        raise refuse(loc, url, str(exc)) from exc
