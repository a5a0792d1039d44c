"""Dependencies every route shares: settings, the entity store, the caller's namespaces, list parameters.

They are ``async`` because they only read the request: FastAPI runs a plain ``def`` dependency in
its thread pool, a hop that costs more CPU than the work itself on every request."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request

from api.db import Store
from api.errors import BadRequest, Forbidden, Unauthorized
from api.listing import ListError, bracket_params, filtered, page_of, searched, sorted_items
from core.settings import Settings


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _store(request: Request) -> Store:
    return request.app.state.store


@dataclass(frozen=True)
class Caller:
    """Who is calling: the namespaces its API key may use (None: all)."""

    namespaces: frozenset[str] | None

    def check(self, namespace: str | None) -> None:
        """Raises Forbidden when the key may not use ``namespace``."""
        if self.namespaces is None or (namespace or "default") in self.namespaces:
            return
        raise Forbidden(f"this API key may not use namespace {namespace!r}")

    def sees(self, namespace: str | None) -> bool:
        return self.namespaces is None or (namespace or "default") in self.namespaces


async def _caller(request: Request) -> Caller:
    keys: dict[str, list[str]] = request.app.state.settings.api_keys
    if not keys:
        return Caller(None)  # the embedded default; the app warned at start
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    for key, namespaces in keys.items():
        if hmac.compare_digest(key.encode(), token.strip().encode()):
            return Caller(None if "*" in namespaces else frozenset(namespaces))
    raise Unauthorized("unknown API key")


@dataclass(frozen=True)
class ListParams:
    page: int
    page_size: int
    sort: str | None
    filters: dict[str, Any]
    search: dict[str, Any]


async def _list_params(
    request: Request,
    page: Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1.")] = 1,
    page_size: Annotated[int, Query(ge=1, le=1000, description="Items per page.")] = 10,
    sort: Annotated[str | None, Query(max_length=64, description="Field to sort by; a leading - sorts descending.")] = None,
) -> ListParams:
    try:
        return ListParams(page, page_size, sort, bracket_params(request.query_params, "filter"), bracket_params(request.query_params, "search"))
    except ListError as exc:
        raise BadRequest(str(exc)) from exc


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Store, Depends(_store)]
CallerDep = Annotated[Caller, Depends(_caller)]
ListDep = Annotated[ListParams, Depends(_list_params)]


def paginate(
    items: list[dict[str, Any]],
    params: ListParams,
    caller: Caller,
    filterable: set[str],
    sortable: set[str],
    getters: dict[str, Any] | None = None,
    namespace_key: str = "namespace",
) -> dict[str, Any]:
    """Filter, search, sort and page ``items`` the caller may see, in the list envelope.

    Raises:
        BadRequest: an unknown filter or sort field.
    """
    visible = [item for item in items if caller.sees(item.get(namespace_key))]
    try:
        chosen = sorted_items(searched(filtered(visible, params.filters, filterable, getters), params.search), params.sort, sortable)
    except ListError as exc:
        raise BadRequest(str(exc)) from exc
    return page_of(chosen, params.page, params.page_size, params.sort, params.filters)
