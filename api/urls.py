"""The URLs a caller may hand the service: the configured schemes, folders and hosts
(``data.sources.check_url``), and whatever lies in the platform's own stores (the Data Store,
published adapters) only in namespaces the caller's key may use, whichever way it is named (``hf://``,
``file://`` or ``s3://``).

A refused URL is a 422 in FastAPI's usual shape, naming the field and the allowed set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fastapi.exceptions import RequestValidationError

from api.deps import Caller
from core.settings import Settings
from data.datastore import DatastoreError, parse_hf_url
from data.sources import SourceError, UrlKind, check_url, local_path


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
    namespace = store_namespace(url, settings)
    if namespace is not None and not caller.sees(namespace):
        shown = repr(namespace) if namespace else "every namespace"
        raise refuse(loc, url, f"lies in the platform's store under {shown}, which this API key may not use")


def store_namespace(url: str, settings: Settings) -> str | None:
    """The namespace a URL inside the store or the Data Store belongs to ("" for their roots, which
    span namespaces), or None for a URL outside both.

    The store keeps ``<namespace>/<name>/<version>``; the Data Store ``<datasets|models>/<namespace>/<name>``.
    """
    path = local_path(url)
    for root_uri, depth in ((settings.publish_uri, 0), (settings.datastore_root_uri, 1)):
        root = urlparse(root_uri)
        if root.scheme == "file" and path is not None:
            base, resolved = Path(root.path).resolve(), path.resolve()
            if resolved != base and base not in resolved.parents:
                continue
            parts = resolved.relative_to(base).parts
        elif root.scheme == "s3" and url.startswith("s3://"):
            base, target = f"{root.netloc}/{root.path.strip('/')}".strip("/"), url.removeprefix("s3://").strip("/")
            if target != base and not target.startswith(base + "/"):
                continue
            parts = tuple(p for p in target[len(base):].split("/") if p)
        else:
            continue
        return parts[depth] if len(parts) > depth else ""
    return None
