"""Who submitted a flow run, signed by the platform.

A flow's parameters arrive through Prefect, whose API anyone who reaches it can call: the REST API
and the CLI therefore sign what they submit (``signed``, ``sign_parameters``) with the platform key
(``core.secrets.sign``), over the parameters and the submitter (principal, namespaces, roles). Every
flow checks the signature at its start (``admitted``): with authentication on, a run that carries
none, or one that does not verify (created or edited outside the platform), stops at once; the
namespaces of a valid one bound what the run may read and write.

Sealed secrets are left out of what is signed: they are sealed with the platform key themselves, and
the spec a champion keeps (for its retrain) is stored without them.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from core import auth
from core.secrets import sign, verify
from core.settings import Settings
from core.specs import Submission

EVERY = "*"
Door = Literal["api", "cli"]
Signable = TypeVar("Signable", bound=BaseModel)

HOW_TO_SUBMIT = ("submit it through the REST API (POST /v1/customization/jobs, /v1/evaluation/jobs) or the customizer CLI "
                 "on the server; runs created or edited in Prefect's API or UI are not accepted")


class NotSubmitted(ValueError):
    """A run without a valid signature of the platform; the message says what to do."""


def message(kind: str, parameters: dict[str, Any], submission: Submission) -> str:
    """The text a submission's signature covers: which flow, its parameters and the submitter, as canonical JSON.

    >>> message("ingest", {"seed": 1, "dataset": "/d"}, Submission(principal="op", door="cli"))
    '{"door":"cli","kind":"ingest","namespaces":["*"],"parameters":{"dataset":"/d","seed":1},"principal":"op","roles":[]}'
    """
    fields = submission.model_dump(mode="json", exclude={"signature"})
    return json.dumps({"kind": kind, "parameters": parameters} | fields, sort_keys=True, separators=(",", ":"))


def sign_parameters(settings: Settings, kind: str, parameters: dict[str, Any], principal: str | None,
                    namespaces: Collection[str] | None, roles: Collection[str], door: Door = "api") -> Submission:
    """The signed submission of a flow run's ``parameters`` (JSON values, without the submission itself).

    Args:
        kind: the flow (``customize``, ``evaluate``, ``ingest``, ``retrain``): a signature is not valid for another.
        namespaces: those the submitter may use; None or containing ``*``: every namespace.
        door: ``api`` or ``cli`` (``Submission.door``).
    """
    everyone = namespaces is None or EVERY in namespaces
    unsigned = Submission(principal=principal, namespaces=[EVERY] if everyone else sorted(namespaces), roles=sorted(roles), door=door)
    return unsigned.model_copy(update={"signature": sign(settings, message(kind, parameters, unsigned))})


def admitted(settings: Settings, kind: str, parameters: dict[str, Any], submission: Submission | None) -> Submission | None:
    """The submission a run acts for, once its signature is checked; None for a run without one while
    authentication is off (it may then use every namespace, within the allowed folders).

    Raises:
        NotSubmitted: no submission while authentication is on, or one whose signature does not verify
            (whatever the authentication: a signature is never trusted unchecked).
    """
    if submission is None:
        if auth.enabled(settings):
            raise NotSubmitted(f"not submitted through the platform: this {kind} run carries no submission signed by the "
                               f"platform, and authentication is on; {HOW_TO_SUBMIT}")
        return None
    if not verify(settings, message(kind, parameters, submission), submission.signature):
        raise NotSubmitted(f"not submitted through the platform: the signature of this {kind} run's submission (by "
                           f"{submission.principal or 'an unnamed caller'}) does not match its parameters; {HOW_TO_SUBMIT}")
    return submission


def namespaces_of(submission: Submission | None) -> frozenset[str] | None:
    """The namespaces a run may use: None for every namespace (no submission with authentication off, or ``*``).

    >>> namespaces_of(None), namespaces_of(Submission(namespaces=["team-a"]))
    (None, frozenset({'team-a'}))
    """
    if submission is None or EVERY in submission.namespaces:
        return None
    return frozenset(submission.namespaces)


def _parameters(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude={"submission", "secrets"})


def _kind(model: BaseModel) -> str:
    return {"CustomizationSpec": "customize", "EvaluationRequest": "evaluate"}.get(type(model).__name__, type(model).__name__)


def signed(model: Signable, settings: Settings, principal: str | None, namespaces: Collection[str] | None,
           roles: Collection[str], door: Door = "api") -> Signable:
    """A copy of a job's spec (``CustomizationSpec``, ``EvaluationRequest``) carrying its signed ``submission``."""
    submission = sign_parameters(settings, _kind(model), _parameters(model), principal, namespaces, roles, door)
    return model.model_copy(update={"submission": submission})


def verified(model: BaseModel, settings: Settings) -> Submission | None:
    """The checked submission of a job's spec (``admitted`` on its fields).

    Raises:
        NotSubmitted: see ``admitted``.
    """
    return admitted(settings, _kind(model), _parameters(model), getattr(model, "submission", None))
