"""Operator promotion policies over REST, for admins: ``/v1/policies`` is the global layer (every
namespace), ``/v1/policies/{namespace}`` a namespace's layer over it.

Each layer is a YAML file in the policy folder (``evaluation.policy``), so the REST API, the CLI and
the flows read the same policy. A ``PUT`` states the fields the layer sets (the others come from the
layer below), is validated as a ``PromotionPolicy``, replaces the file atomically and appends
``policy.changed`` to the audit trail with the layer before and after; a change whose record cannot
be written is undone. A ``GET`` answers the layer's own fields and the operator policy that results,
with the layer each field comes from. Jobs may only tighten that policy.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path

from api.deps import Caller, CallerDep, SettingsDep
from api.errors import ApiError, Forbidden, NotFound
from core import audit
from core.settings import Settings
from core.specs import PromotionPolicy
from evaluation.policy import (
    NAMESPACE_PATTERN, PolicyError, operator_policy, policy_file, policy_text, read_policy_file, restore_policy, stated, write_policy,
)

log = logging.getLogger("customizer.api")
router = APIRouter(prefix="/v1", tags=["policies"])
NamespacePath = Annotated[str, Path(pattern=NAMESPACE_PATTERN, description="The namespace whose layer this is.")]


class PolicyUnreadable(ApiError):
    """An operator's policy file that cannot be read: answered 503 naming the file, never as no policy."""

    status_code = 503


class PolicyNotRecorded(ApiError):
    """The audit record of a policy change could not be written, so the change was undone: answered 503."""

    status_code = 503


def _admin(caller: Caller, namespace: str | None) -> None:
    """The caller must be an admin, for the namespace; the global layer needs a key for every namespace.

    Raises:
        Forbidden: naming what the caller lacks.
    """
    caller.require("admin", namespace=namespace)
    if namespace is None and caller.namespaces is not None:
        raise Forbidden("the global policy governs every namespace: changing or reading it needs a key for every namespace")


def _layer(settings: Settings, namespace: str | None) -> dict[str, Any]:
    """A layer's own fields, the operator policy that results and where each field comes from.

    Raises:
        PolicyUnreadable: a policy file cannot be read.
    """
    try:
        own, result = read_policy_file(policy_file(settings, namespace)), operator_policy(settings, namespace)
    except PolicyError as exc:
        raise PolicyUnreadable(str(exc)) from exc
    return {
        "namespace": namespace,
        "file": str(policy_file(settings, namespace)),
        "policy": stated(own),
        "effective": result.policy.model_dump(mode="json"),
        "sources": result.sources,
        "layers": result.layers,
    }


def _current(settings: Settings, namespace: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """A layer's file as it stands (to put back) and the fields it states, for the audit record; an
    admin may replace or remove a file that is not a valid policy (it is recorded as unreadable).

    Raises:
        PolicyUnreadable: the file cannot be read at all.
    """
    try:
        text = policy_text(settings, namespace)
    except PolicyError as exc:
        raise PolicyUnreadable(str(exc)) from exc
    try:
        return text, stated(read_policy_file(policy_file(settings, namespace)))
    except PolicyError as exc:
        return text, {"unreadable": str(exc)}


def _recorded(settings: Settings, caller: Caller, namespace: str | None, text: str | None,
              before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    """Append ``policy.changed``; when it cannot be written, put the file back as it was (``text``).

    Raises:
        PolicyNotRecorded: the record could not be written (the change is undone).
    """
    file = policy_file(settings, namespace)
    try:
        audit.record(settings, "policy.changed", caller.principal, namespace=namespace, before=before, after=after,
                     detail=f"{file} {'written' if after is not None else 'removed'}")
    except audit.AuditError as exc:  # its message names the database URL, which may hold a password: logged only
        log.error("Policy change of %s undone: %s", file, exc)
        restore_policy(settings, namespace, text)
        raise PolicyNotRecorded("the policy change could not be recorded in the audit trail, so it was undone "
                                "(the server log says why); try again later") from exc


def _put(settings: Settings, caller: Caller, namespace: str | None, policy: PromotionPolicy) -> dict[str, Any]:
    _admin(caller, namespace)
    text, before = _current(settings, namespace)
    write_policy(settings, namespace, policy)
    _recorded(settings, caller, namespace, text, before, stated(policy))
    return _layer(settings, namespace)


def _delete(settings: Settings, caller: Caller, namespace: str | None) -> dict[str, Any]:
    _admin(caller, namespace)
    text, before = _current(settings, namespace)
    if text is None:
        raise NotFound(f"there is no policy file {policy_file(settings, namespace)} to remove")
    restore_policy(settings, namespace, None)
    _recorded(settings, caller, namespace, text, before, None)
    return _layer(settings, namespace)


@router.get("/policies", summary="Read the global operator policy (the layer under every namespace's)")
def get_global(settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """The global layer's own fields (``policy``, null without a file) over the built-in defaults,
    the ``effective`` operator policy, and the layer (``sources``) each field comes from."""
    _admin(caller, None)
    return _layer(settings, None)


@router.put("/policies", summary="Set the global operator policy (the layer under every namespace's)")
def put_global(policy: PromotionPolicy, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """Replace the global layer with the fields the body states; the others come from the built-in defaults."""
    return _put(settings, caller, None, policy)


@router.delete("/policies", summary="Remove the global operator policy (back to the built-in defaults)")
def delete_global(settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """Remove the global layer; answers what then applies."""
    return _delete(settings, caller, None)


@router.get("/policies/{namespace}", summary="Read a namespace's operator policy (over the global one)")
def get_namespace(namespace: NamespacePath, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """The namespace layer's own fields (``policy``, null without a file), the ``effective`` operator
    policy (built-in < global < namespace) and the layer (``sources``) each field comes from."""
    _admin(caller, namespace)
    return _layer(settings, namespace)


@router.put("/policies/{namespace}", summary="Set a namespace's operator policy (over the global one)")
def put_namespace(namespace: NamespacePath, policy: PromotionPolicy, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """Replace the namespace's layer with the fields the body states; the others come from the global
    layer and the built-in defaults."""
    return _put(settings, caller, namespace, policy)


@router.delete("/policies/{namespace}", summary="Remove a namespace's operator policy (back to the global one)")
def delete_namespace(namespace: NamespacePath, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """Remove the namespace's layer; answers what then applies."""
    return _delete(settings, caller, namespace)
