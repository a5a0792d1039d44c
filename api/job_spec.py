"""A job request on the wire as the ``customize`` flow's one parameter: who submits it, the output
model it names (or NeMo's default name for it), and the spec, customizer's extensions included."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from api.deps import Caller
from api.errors import BadRequest
from api.schemas import JobCreate
from core.specs import CustomizationSpec, default_output_model, method_name


def submitter(body: JobCreate, caller: Caller) -> str | None:
    """Who submits the job: the caller's principal with auth on (a body cannot speak for someone
    else), else the body's ``ownership.created_by``."""
    if caller.authenticated:
        return caller.principal
    return body.ownership.created_by if body.ownership else None


def to_spec(body: JobCreate, dataset_dir: str, output_model: str, dataset_source: str | None = None,
            submitted_by: str | None = None) -> CustomizationSpec:
    """Translate a wire job request into the ``customize`` flow's one parameter (names already match;
    the customizer extensions ``evaluation``, ``budget`` and ``policy`` are the spec's own fields).

    Args:
        dataset_dir: the folder the job trains on (the server's snapshot of the dataset).
        dataset_source: where that folder was copied from, recorded as the job's lineage.
        submitted_by: who submitted the job (``submitter``); a reviewer must be someone else.

    Raises:
        BadRequest: naming the field that does not fit the spec.
    """
    extensions = {name: value for name in ("evaluation", "budget", "policy") if (value := getattr(body, name)) is not None}
    try:
        return CustomizationSpec(
            config=body.config, dataset=dataset_dir, dataset_source=dataset_source, output_model=output_model,
            hyperparameters=body.hyperparameters, submitted_by=submitted_by, **extensions,
        )
    except ValidationError as exc:
        problems = "; ".join(f"`{'.'.join(map(str, e['loc']))}`: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise BadRequest(problems) from exc


def output_model_of(body: JobCreate, dataset: dict[str, Any]) -> tuple[str, str]:
    """(the spec's ``namespace/name``, the wire's name suffix): NeMo appends ``@<job id>`` unless a
    version is given. None named: NeMo's ``<namespace>/<base model>-<dataset>-<method>``."""
    if body.output_model:
        base, at, version = body.output_model.strip().partition("@")
        namespace, _, name = base.rpartition("/")
        return f"{namespace or body.namespace}/{name}", (f"@{version}" if at else "")
    hp = body.hyperparameters
    return default_output_model(body.config, dataset["name"], method_name(hp.training_type, hp.finetuning_type), body.namespace), ""
