"""Dependencies every route shares: settings, the entity store, the caller (principal, namespaces,
roles), list parameters.

They are ``async`` because they only read the request: FastAPI runs a plain ``def`` dependency in
its thread pool, a hop that costs more CPU than the work itself on every request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError

from api.db import Store
from api.errors import ApiError, BadRequest, Forbidden, TooManyRequests, Unauthorized
from api.listing import ListError, QueryError, bracket_params, filtered, page_of, searched, sorted_items
from api.principals import ROLES, FailedKeys, PrincipalsUnreadable, store_for
from core.settings import Settings


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _store(request: Request) -> Store:
    return request.app.state.store


@dataclass(frozen=True)
class Caller:
    """Who is calling: a principal (None with auth off), the namespaces its key may use (None: all)
    and its roles."""

    namespaces: frozenset[str] | None
    principal: str | None = None
    roles: frozenset[str] = frozenset(ROLES)

    @property
    def authenticated(self) -> bool:
        """Auth is on and the caller proved who it is (with auth off nobody is named)."""
        return self.principal is not None

    def check(self, namespace: str | None) -> None:
        """Raises Forbidden when the key may not use ``namespace``."""
        if self.namespaces is None or (namespace or "default") in self.namespaces:
            return
        raise Forbidden(f"this API key may not use namespace {namespace!r}")

    def sees(self, namespace: str | None) -> bool:
        return self.namespaces is None or (namespace or "default") in self.namespaces

    def require(self, role: str, namespace: str | None = None) -> None:
        """Raises Forbidden unless the caller has ``role`` (in ``namespace``, when given)."""
        if namespace is not None:
            self.check(namespace)
        if role not in self.roles:
            who = f"principal {self.principal!r}" if self.principal else "this API key"
            raise Forbidden(f"{who} lacks the {role!r} role" + (f" in namespace {namespace!r}" if namespace else ""))


class AuthUnavailable(ApiError):
    """Who the caller is cannot be decided (the principals file cannot be read): answered 503, never
    "authentication off"."""

    status_code = 503


async def _caller(request: Request) -> Caller:
    """The caller of ``request``: nobody in particular with authentication off (no bootstrap key and
    no principal in the file), else the principal whose key the bearer token is.

    Raises:
        AuthUnavailable: the principals file cannot be read (its name is in the message).
        TooManyRequests: this client address presented too many unknown keys lately (``FailedKeys``).
        Unauthorized: authentication is on and the key is missing, unknown or revoked.
    """
    settings = request.app.state.settings
    principals = store_for(settings)  # one stat per request; the file is read again only when it changed
    failed_keys: FailedKeys = request.app.state.failed_keys
    client = request.client.host if request.client else "unknown"
    try:
        if not principals.enabled(settings):
            return Caller(None)  # the embedded default; the app warned at start
        if wait := failed_keys.wait(client):
            raise TooManyRequests(f"too many unknown API keys from this address: try again in {wait} s", retry_after=wait)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        principal = principals.lookup(settings, token.strip())
    except PrincipalsUnreadable as exc:
        raise AuthUnavailable(str(exc)) from exc
    if principal is None:
        failed_keys.failed(client)
        raise Unauthorized("unknown or revoked API key")
    namespaces = None if "*" in principal.namespaces else frozenset(principal.namespaces)
    return Caller(namespaces, principal=principal.name, roles=frozenset(principal.roles))


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
    sort: Annotated[str | None, Query(max_length=64, pattern=r"^-?[A-Za-z0-9_.]{1,63}$",
                                      description="Field to sort by; a leading - sorts descending.")] = None,
) -> ListParams:
    try:
        return ListParams(page, page_size, sort, bracket_params(request.query_params, "filter"), bracket_params(request.query_params, "search"))
    except QueryError as exc:  # answered like FastAPI's own refusal of a query parameter: 422 naming it
        raise RequestValidationError([{"loc": ("query", exc.key), "msg": exc.reason, "type": "value_error"}]) from exc
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
