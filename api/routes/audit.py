"""The audit trail over REST (``GET /v1/audit``): who did what to which job or model, and when.

Records are read from ``core.audit`` (the table the API and the flows both append to) and answered
in the list envelope, oldest first unless ``sort`` says otherwise. A caller sees the records of the
namespaces its key may use; records that concern no namespace (platform-wide acts) only a key for
every namespace sees.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from fastapi import APIRouter

from api.deps import CallerDep, ListDep, SettingsDep, paginate
from api.errors import ApiError, BadRequest
from api.schemas import Page
from core import audit

log = logging.getLogger("customizer.api")
router = APIRouter(prefix="/v1", tags=["audit"])
FILTERS = ("job", "model", "namespace", "action")
_SORT = {"at", "action", "principal", "namespace", "job", "model"}


class AuditUnavailable(ApiError):
    """The trail could not be read: answered 503, never an empty list."""

    status_code = 503


def _wanted(filters: dict[str, Any]) -> dict[str, str]:
    """``filter[job|model|namespace|action]`` as ``core.audit.records`` arguments.

    Raises:
        BadRequest: another filter, a filter with a nested key or operator, or an unknown action.
    """
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise BadRequest(f"unknown filter `filter[{unknown[0]}]`; filterable fields: {', '.join(FILTERS)}")
    wanted = {}
    for key, value in filters.items():
        if isinstance(value, dict):
            raise BadRequest(f"`filter[{key}]` takes one value (e.g. `filter[{key}]=...`), not nested keys or operators")
        wanted[key] = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else str(value)
    if "action" in wanted and wanted["action"] not in audit.ACTIONS:
        raise BadRequest(f"`filter[action]`: unknown action {wanted['action']!r}; known: {', '.join(audit.ACTIONS)}")
    return wanted


@router.get("/audit", summary="List audit records", response_model=Page)
def list_audit(settings: SettingsDep, caller: CallerDep, params: ListDep) -> dict[str, Any]:
    """Audit records, filtered by ``filter[job]`` (a REST job id also finds its flow run's records),
    ``filter[model]`` (``namespace/name``, or ``namespace/name@version`` for one version),
    ``filter[namespace]`` and ``filter[action]``."""
    wanted = _wanted(params.filters)
    if "namespace" in wanted:
        caller.check(wanted["namespace"])
    try:
        rows = audit.records(settings, **wanted)
    except audit.AuditError as exc:  # its message names the database URL, which may hold a password: logged only
        log.error("Reading the audit trail failed: %s", exc)
        raise AuditUnavailable("the audit trail could not be read (the server log says why); try again later") from exc
    if caller.namespaces is not None:  # platform-wide records are for keys that may use every namespace
        rows = [row for row in rows if row["namespace"] is not None]
    page = paginate(rows, replace(params, filters={}), caller, set(), _SORT)
    page["filter"] = params.filters or None
    return page
