"""The URLs a caller may hand the service: the configured schemes, folders and hosts
(``training.data_sources.check_url``), and Data Store datasets only in namespaces the caller's key may use.

A refused URL is a 422 in FastAPI's usual shape, naming the field and the allowed set.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError

from api.deps import Caller
from customizer.settings import Settings
from deploy.datastore import DatastoreError, parse_hf_url
from training.data_sources import SourceError, UrlKind, check_url


def refuse(loc: tuple[str | int, ...], url: Any, message: str) -> RequestValidationError:
    """A 422 for the field at ``loc`` (FastAPI's ``{loc, msg, type}`` shape)."""
    field = ".".join(str(part) for part in loc[1:] if part != "body") or str(loc[-1])
    return RequestValidationError([{"loc": loc, "msg": f"`{field}`: {message}", "type": "url_not_allowed", "input": url}])


def checked_url(settings: Settings, caller: Caller, loc: tuple[str | int, ...], url: Any, kind: UrlKind = "dataset") -> None:
    """Refuse a URL the server may not read or call, or a Data Store dataset outside the caller's namespaces.

    Raises:
        RequestValidationError: naming the field at ``loc`` and why.
    """
    if url is None or url == "":  # nothing to read (e.g. a model whose artifact is not uploaded yet)
        return
    if not isinstance(url, str):
        raise refuse(loc, url, "expected a URL")
    try:
        check_url(url, settings, kind)
    except SourceError as exc:
        raise refuse(loc, url, str(exc)) from exc
    if kind == "dataset" and url.startswith("hf://"):
        try:
            _, namespace, _, _ = parse_hf_url(url)
        except DatastoreError as exc:
            raise refuse(loc, url, str(exc)) from exc
        if not caller.sees(namespace):
            raise refuse(loc, url, f"names Data Store namespace {namespace!r}, which this API key may not use")
