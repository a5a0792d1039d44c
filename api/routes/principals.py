"""Principals over REST, for admins: ``POST /v1/principals`` adds one and answers its API key once,
``GET /v1/principals`` lists them (never a key or a digest), ``DELETE /v1/principals/{name}``
revokes one; its key stops working at the next request, without a restart.

The principals live in ``api.principals`` (the file ``customizer keys`` also writes). Managing them
needs the ``admin`` role with every namespace (``*``): a principal may be given any namespace, so a
key limited to some could otherwise mint one for the rest. Each change is on the audit trail
(``principal.added`` / ``principal.revoked``); a change whose record cannot be written is undone.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path

from api.deps import AuthUnavailable, Caller, CallerDep, SettingsDep
from api.errors import ApiError, Conflict, Forbidden, NotFound
from api.principals import (
    BOOTSTRAP_PREFIX, Principal, PrincipalError, PrincipalSpec, PrincipalsUnreadable, add_principal, bootstrap_principals,
    revoke_principal, store_for,
)
from core import audit

log = logging.getLogger("customizer.api")
router = APIRouter(prefix="/v1", tags=["principals"])
NamePath = Annotated[str, Path(max_length=200, description="The principal's name.")]


class ChangeNotRecorded(ApiError):
    """The audit record of a change could not be written, so the change was undone: answered 503."""

    status_code = 503


def _admin(caller: Caller) -> None:
    """The caller must be an admin for every namespace.

    Raises:
        Forbidden: naming what the caller lacks.
    """
    caller.require("admin")
    if caller.namespaces is not None:
        raise Forbidden("managing principals needs an admin key for every namespace (\"*\")")


def _public(principal: Principal) -> dict[str, Any]:
    return principal.model_dump()


@router.post("/principals", status_code=201, summary="Add a principal (answers its API key once)")
def add(body: PrincipalSpec, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """A new principal with a random key. The key is in this answer only: the platform keeps its
    sha256. 409 when the name is taken."""
    _admin(caller)
    try:
        key, principal = add_principal(settings, body, caller.principal, "REST API")
    except PrincipalError as exc:
        raise Conflict(str(exc)) from exc
    except PrincipalsUnreadable as exc:
        raise AuthUnavailable(str(exc)) from exc
    except audit.AuditError as exc:
        log.error("Recording principal.added for %s failed: %s", body.name, exc)
        raise ChangeNotRecorded(f"principal {body.name!r} was not added: its audit record could not be written "
                                "(the server log says why); try again later") from exc
    return _public(principal) | {"key": key, "message": "keep this key now: it is not shown again"}


@router.get("/principals", summary="List principals (no keys)")
def list_principals(settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """The principals in the file and the bootstrap keys of the ``api_keys`` setting (``source``
    says which), by name; keys and their digests are never answered."""
    _admin(caller)
    try:
        stored = store_for(settings).principals()
    except PrincipalsUnreadable as exc:
        raise AuthUnavailable(str(exc)) from exc
    listed = sorted(stored + [p for _, p in bootstrap_principals(settings)], key=lambda p: p.name)
    return {"object": "list", "data": [_public(p) for p in listed]}


@router.delete("/principals/{name}", summary="Revoke a principal")
def revoke(name: NamePath, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """Remove a principal from the file: its key is refused from the next request on. A bootstrap
    key is removed from the ``api_keys`` setting instead (409 here)."""
    _admin(caller)
    if name.startswith(BOOTSTRAP_PREFIX) and any(p.name == name for _, p in bootstrap_principals(settings)):
        raise Conflict(f"principal {name!r} is a bootstrap key of the api_keys setting: remove it there and restart the API")
    try:
        principal = revoke_principal(settings, name, caller.principal, "REST API")
    except PrincipalError as exc:
        raise NotFound(str(exc)) from exc
    except PrincipalsUnreadable as exc:
        raise AuthUnavailable(str(exc)) from exc
    except audit.AuditError as exc:
        log.error("Recording principal.revoked for %s failed: %s", name, exc)
        raise ChangeNotRecorded(f"principal {name!r} was not revoked: its audit record could not be written "
                                "(the server log says why); try again later") from exc
    return _public(principal) | {"revoked": True}
