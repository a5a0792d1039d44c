"""Retraining as tasks: find the champions, guard against overlapping retrains, and check whether a
champion's dataset changed since it was trained.

A champion's dataset is read again from its lineage (``customizer.dataset.uri``: where the data came
from, e.g. the Data Store's ``hf://datasets/<namespace>/<name>`` for a job created through the API),
into a fresh snapshot; its identity is compared with the champion's, and a retrain trains on that
very snapshot, so what is trained is what was compared."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Literal

from prefect import get_run_logger, runtime, task
from pydantic import BaseModel

from core import tags as tag
from core.settings import get_settings
from core.specs import CustomizationSpec
from core.submission import NotSubmitted, namespaces_of, signed, verified
from data.ingest import ingest_dataset
from data.sources import SourceError, resolve_dataset
from deploy import registry
from deploy.trust import UntrustedChampion, trusted_champion
from tasks.check import AccessRefused, check_read
from tasks.deploy import transient_io_error
from tasks.job import CustomizationResult

RETRAIN_FLOW = "retrain"


class Champion(BaseModel):
    """A registered output model's champion and the job that produced it."""

    output_model: str
    version: str
    dataset_uri: str
    dataset_sha256: str
    spec: CustomizationSpec


class DatasetNow(BaseModel):
    """A champion's dataset as it is now: the folder to train on and its identity."""

    source: str  # the champion's lineage, where the folder was read from
    folder: str
    sha256: str
    copied: bool  # a snapshot made for this retrain (a local folder is read in place)


class RetrainOutcome(BaseModel):
    """What a retrain did for one output model, and why."""

    output_model: str
    action: Literal["unchanged", "retrained", "skipped"]
    reason: str
    champion_version: str | None = None
    dataset_sha256: str | None = None
    promoted: bool = False
    result: CustomizationResult | None = None


def champion_spec(output_model: str, tags: dict[str, str]) -> CustomizationSpec:
    """The spec that produced a champion: its ``customizer.spec`` tag, else rebuilt from the config,
    dataset and hyperparameter tags (evaluation plan and policy then take their defaults).

    Raises:
        ValueError: the version carries neither the spec nor the tags to rebuild it.
    """
    if tag.SPEC in tags:
        return CustomizationSpec.model_validate_json(tags[tag.SPEC])
    missing = [k for k in (tag.CONFIG, tag.DATASET_URI, tag.HYPERPARAMETERS) if k not in tags]
    if missing:
        raise ValueError(f"{output_model}: the champion has no `customizer.spec` tag and lacks {', '.join(missing)} to rebuild it")
    return CustomizationSpec(
        config=tags[tag.CONFIG],
        dataset=tags[tag.DATASET_URI],
        output_model=output_model,
        hyperparameters=json.loads(tags[tag.HYPERPARAMETERS]),
    )


@task(name="find-champions")
def find_champions(output_models: list[str] | None) -> tuple[list[Champion], list[RetrainOutcome]]:
    """The champions of the given output models (default: every registered one), and a skip for
    each model that has no champion to retrain, or whose champion the platform's signed decision
    does not allow (``deploy.trust``: that refusal is on the audit trail, and nothing is retrained).

    Raises:
        RegistryUnavailable: the registry could not be read; the retrain fails rather than skip
            models whose champion it could not see.
    """
    settings = get_settings()
    champions, skipped = [], []
    for output_model, version, _ in registry.champions(settings, output_models):
        try:
            trusted = None if version is None else trusted_champion(settings, output_model, purpose="retrain")
        except UntrustedChampion as exc:
            skipped.append(RetrainOutcome(output_model=output_model, action="skipped", reason=str(exc), champion_version=version))
            continue
        if trusted is None:
            skipped.append(RetrainOutcome(output_model=output_model, action="skipped", reason="no champion to retrain"))
            continue
        version, tags = trusted.version, trusted.tags
        champions.append(Champion(
            output_model=output_model, version=version, dataset_uri=tags[tag.DATASET_URI],
            dataset_sha256=tags[tag.DATASET_SHA256], spec=champion_spec(output_model, tags),
        ))
    get_run_logger().info("Champions: %s", ", ".join(f"{c.output_model}@{c.version}" for c in champions) or "none")
    return champions, skipped


@task(name="other-retrain")
def other_retrain(output_model: str) -> str | None:
    """Why this model must be skipped because another retrain of it is still going, or None."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    me = runtime.flow_run.id
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PAUSED])),
                id=FlowRunFilterId(not_any_=[me]) if me else None,
            ),
        )
    for run in runs:
        covered = run.parameters.get("output_models")
        if covered is None or output_model in covered:
            reason = (f"retrain {run.name!r} ({run.id}) is still {run.state_name.lower()} for {output_model}, "
                      f"started {run.start_time}: skipped")
            get_run_logger().warning(reason)
            return reason
    return None


@task(name="dataset-identity", retries=2, retry_delay_seconds=5, retry_condition_fn=transient_io_error)
def dataset_now(champion: Champion) -> DatasetNow:
    """Snapshot the dataset at the champion's lineage URI (a local folder is read in place) and
    compute its sha256 as ingest does (the identity does not depend on the tokenizer or the split
    seed, so none is loaded).

    Raises:
        SourceError: the source cannot be read, naming it.
        DatasetError: the dataset there no longer validates.
    """
    settings = get_settings()
    settings.root.mkdir(parents=True, exist_ok=True)  # a fresh worker may not have its data folder yet
    dest = settings.root / "retrain" / "dataset-snapshots" / uuid.uuid4().hex
    try:
        folder = resolve_dataset(champion.dataset_uri, dest, settings)
    except SourceError as exc:
        raise SourceError(f"dataset {champion.dataset_uri} of {champion.output_model}: {exc}") from exc
    now = DatasetNow(source=champion.dataset_uri, folder=str(folder), sha256="", copied=folder == dest)
    try:
        with tempfile.TemporaryDirectory(prefix="retrain-", dir=settings.root) as out:
            data = ingest_dataset(str(folder), Path(out), seed=champion.spec.hyperparameters.seed,
                                  method=champion.spec.hyperparameters.training_type, settings=settings)
    except BaseException:
        discard(now)
        raise
    return now.model_copy(update={"sha256": data.sha256})


def discard(now: DatasetNow) -> None:
    """Remove a snapshot no retrain will train on (a folder read in place is left alone)."""
    if now.copied:
        shutil.rmtree(now.folder, ignore_errors=True)


def not_resubmittable(champion: Champion, namespaces: list[str] | None) -> str | None:
    """Why a champion's job may not be retrained by this retrain, or None: its namespace is not one the
    retrain may use, or its spec carries no valid submission of the platform (with authentication on,
    or a signature that does not verify), so there is no submitter to retrain it for."""
    if namespaces is not None and champion.output_model.partition("/")[0] not in namespaces:
        return f"{champion.output_model} is in a namespace this retrain's submitter may not use: skipped"
    settings = get_settings()
    try:
        submission = verified(champion.spec, settings)
        # Read before the job's own checks run: the lineage must be the submitter's to read.
        check_read(champion.dataset_uri, tag.DATASET_URI, settings, submission, namespaces_of(submission))
    except (NotSubmitted, AccessRefused) as exc:
        return f"the champion's job cannot be submitted again: {exc}"
    return None


def retrain_spec(champion: Champion, now: DatasetNow) -> CustomizationSpec:
    """The champion's job again, on the snapshot of its dataset, with the same lineage, submitted for
    the champion's own submitter: signed again with the platform key, for the same principal,
    namespaces and roles (``not_resubmittable`` checked the original signature first)."""
    source = None if now.folder == now.source else now.source
    spec = champion.spec.model_copy(update={"dataset": now.folder, "dataset_source": source, "submission": None})
    original = champion.spec.submission
    if original is None:  # authentication is off: the job runs unsigned, within the allowed folders
        return spec
    return signed(spec, get_settings(), original.principal, original.namespaces, original.roles, original.door)


@task(name="retrain-outcome")
def outcome(champion: Champion, sha256: str, result: CustomizationResult | None = None) -> RetrainOutcome:
    """Record (and log) what happened to one model."""
    logger = get_run_logger()
    if result is None:
        reason = f"dataset {champion.dataset_uri} unchanged (sha256 {sha256[:16]}): champion version {champion.version} stays"
        logger.info("%s: %s", champion.output_model, reason)
        return RetrainOutcome(output_model=champion.output_model, action="unchanged", reason=reason,
                              champion_version=champion.version, dataset_sha256=sha256)
    promoted = result.registered is not None and registry.CHAMPION in result.registered.aliases
    decision = result.decision.action if result.decision else result.outcome
    reason = (f"dataset changed ({champion.dataset_sha256[:16]} -> {sha256[:16]}): {decision}; "
              + (f"version {result.registered.version} is the champion" if promoted
                 else f"champion version {champion.version} stays"))
    logger.info("%s: %s", champion.output_model, reason)
    return RetrainOutcome(output_model=champion.output_model, action="retrained", reason=reason,
                          champion_version=result.registered.version if promoted else champion.version,
                          dataset_sha256=sha256, promoted=promoted, result=result)
