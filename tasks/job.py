"""Opening and closing a job: work folder, MLflow run, final result, and the flow's hooks."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Literal

from prefect import get_run_logger, runtime, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled, State
from pydantic import BaseModel, ValidationError

from core import __version__, tracking
from core import tags as tag
from core.catalog import CustomizationConfig
from core.settings import Settings, get_settings
from core.specs import CustomizationSpec, PromotionPolicy
from core.submission import NotSubmitted
from data.ingest import IngestedDataset
from deploy.notify import notify
from deploy.registry import CHAMPION, RegisteredVersion
from deploy.store import Published
from evaluation.gate import ApprovalRecord, Decision, Power
from evaluation.ladder import LADDER_TAG, LadderRow, free_rows, ladder_json
from evaluation.report import training_time
from evaluation.runner import StageScores
from tasks.check import AccessRefused, CheckedJob, check_origin, job_folder
from training.common import TrainResult


ADVICE = "advice only"  # the decision of a job that only scored the free rungs (evaluation.ladder_only)


class Job(BaseModel):
    """Everything a stage needs to find the job's state (all references, no models)."""

    job_id: str
    work_dir: str
    run_id: str
    spec: CustomizationSpec
    config: CustomizationConfig
    policy: PromotionPolicy
    policy_source: str


class CustomizationResult(BaseModel):
    """What a finished customize flow reports. A job that prompting already satisfies has no
    candidate, version or publication; ``outcome`` says which kind of ending it was."""

    job_id: str
    output_model: str
    outcome: Literal["trained", "prompt_sufficient", "advice"]  # advice: the free rungs only (evaluation.ladder_only)
    dataset_sha256: str
    task_metric: str
    baseline: StageScores
    prompt_baseline: str | None = None
    candidate: StageScores | None = None
    decision: Decision | None = None
    approvals: list[ApprovalRecord] = []
    registered: RegisteredVersion | None = None
    published_uri: str | None = None
    published_files: list[str] = []
    stop_reason: str | None = None
    warnings: list[str] = []
    train_loss: list[tuple[int, float]] = []
    val_loss: list[tuple[int, float]] = []
    forgetting_kl: list[tuple[int, float]] = []
    report: str | None = None
    power: list[Power] = []
    ladder: list[LadderRow] = []  # every rung tried, cheapest first (evaluation.ladder)
    climb: str | None = None  # which training rung met the target, or that none did and why the climb ended
    training_time: str | None = None  # actual training time against its estimate (evaluation.report.training_time)
    mlflow_run_id: str
    tracking_uri: str


def _flatten(prefix: str, value: object) -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, inner in value.items():
            out |= _flatten(f"{prefix}.{key}" if prefix else key, inner)
        return out
    return {prefix: json.dumps(value) if isinstance(value, list) else value}


def _open_run(settings: Settings, job_id: str, spec: CustomizationSpec, flow_run_id: object) -> str:
    """Open (or reopen) the job's MLflow run, tagged with what identifies the job."""
    return tracking.start_run(
        settings,
        job_id,
        tags={
            tag.CONFIG: spec.config,
            tag.OUTPUT_MODEL: spec.output_model,
            tag.FLOW_RUN_ID: str(flow_run_id or ""),
            tag.CODE_VERSION: __version__,
        },
        params=_flatten("", spec.hyperparameters.model_dump()) | {"config": spec.config, "dataset": spec.dataset},
    )


def log_ingest_report(client, run_id: str, data_dir: Path) -> None:
    """Attach ``ingest/report.json`` and ``ingest/report.html`` to the run (when ingest got to write them)."""
    for name in ("report.json", "report.html"):
        if (data_dir / name).is_file():
            client.log_artifact(run_id, str(data_dir / name), "ingest")


@task(name="open-job")
def open_job(checked: CheckedJob) -> Job:
    """Create the job's work folder and MLflow run, with what the pre-flight resolved (policy, base model)."""
    settings = get_settings()
    spec = checked.spec
    job_id, work_dir = job_folder(settings)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "spec.json").write_text(spec.model_dump_json(indent=2))
    run_id = _open_run(settings, job_id, spec, runtime.flow_run.id)
    client = tracking.client(settings)
    client.set_tag(run_id, tag.POLICY, json.dumps({"source": checked.policy_source, **checked.policy.model_dump()}))
    if checked.base is not None:
        client.set_tag(run_id, tag.BASE_MODEL, checked.config.target.name)
        client.set_tag(run_id, tag.BASE_MODEL_DIGEST, checked.base.digest)
    get_run_logger().info("Job %s: work folder %s, MLflow run %s, policy from %s", job_id, work_dir, run_id, checked.policy_source)
    return Job(
        job_id=job_id, work_dir=str(work_dir), run_id=run_id, spec=spec, config=checked.config,
        policy=checked.policy, policy_source=checked.policy_source,
    )


@task(name="finish-job")
def finish_job(
    job: Job,
    data: IngestedDataset,
    baseline: StageScores,
    trained: TrainResult | None = None,
    candidate: StageScores | None = None,
    decision: Decision | None = None,
    registered: RegisteredVersion | None = None,
    published: Published | None = None,
    warnings: list[str] | None = None,
    approvals: list[ApprovalRecord | None] | None = None,
    prompt_baseline: str | None = None,
    report: str | None = None,
    power: list[Power] | None = None,
    ladder: list[LadderRow] | None = None,
    climb: str | None = None,
    advice: bool = False,
) -> CustomizationResult:
    """Close the MLflow run and assemble the job's result (``advice``: the job only scored the free rungs)."""
    settings = get_settings()
    if advice:
        tracking.client(settings).set_tag(job.run_id, tag.DECISION, ADVICE)
    result = CustomizationResult(
        job_id=job.job_id,
        output_model=job.spec.output_model,
        outcome="advice" if advice else "prompt_sufficient" if trained is None else "trained",
        dataset_sha256=data.sha256,
        task_metric=baseline.task_metric,
        baseline=baseline,
        prompt_baseline=prompt_baseline,
        candidate=candidate,
        decision=decision,
        approvals=[a for a in approvals or [] if a is not None],
        registered=registered,
        published_uri=published.uri if published else None,
        published_files=sorted([*published.manifest.files, "manifest.json"]) if published else [],
        stop_reason=trained.stop_reason if trained else None,
        warnings=warnings or [],
        train_loss=trained.train_loss if trained else [],
        val_loss=trained.val_loss if trained else [],
        forgetting_kl=trained.forgetting_kl if trained else [],
        report=report,
        power=power or [],
        # Without rows from the caller, the baseline's free rungs (a job that prompting satisfied).
        ladder=free_rows(baseline, job.spec.evaluation.target_score, job.policy.forgetting_alpha) if ladder is None else ladder,
        climb=climb,
        training_time=training_time(tracking.client(settings).get_run(job.run_id).data.metrics) if trained else None,
        mlflow_run_id=job.run_id,
        tracking_uri=settings.tracking_uri,
    )
    if result.ladder:  # the API's status reads the ladder from the run
        tracking.client(settings).set_tag(job.run_id, LADDER_TAG, ladder_json(result.ladder))
    tracking.log_dict(settings, job.run_id, result.model_dump(), "result.json")
    tracking.end_run(settings, job.run_id, "FINISHED")
    if prompt_baseline:
        ending = f"no fine-tuning needed: {prompt_baseline}"
    elif registered is not None:
        role = "champion" if CHAMPION in registered.aliases else "candidate, not promoted"
        ending = f"{decision.action if decision else 'trained'}; version {registered.version} is {role}"
    else:
        ending = decision.action if decision else "trained"
    notify(settings, f"customize job {job.job_id} for {job.spec.output_model} completed: {ending}",
           namespace=job.spec.output_model.partition("/")[0])
    return result


def mark_failed(flow, flow_run, state) -> None:
    """Flow failure hook: say so on the webhook and close the job's MLflow run as FAILED, so no run is
    left dangling. A job its pre-flight refused has no run yet: it gets one, with the dataset report
    when ingest wrote one, so every job that ran leaves its record."""
    settings = get_settings()
    job_id, work_dir = job_folder(settings, flow_run.id)
    raw = flow_run.parameters.get("spec")
    output_model = raw.get("output_model") if isinstance(raw, dict) else getattr(raw, "output_model", None)
    notify(settings, f"customize job {job_id} for {output_model or 'an unknown model'} failed: {state.message}"[:3000],
           namespace=output_model.partition("/")[0] if isinstance(output_model, str) else None)
    try:
        spec = raw if isinstance(raw, CustomizationSpec) else CustomizationSpec.model_validate(raw)
    except ValidationError:
        spec = None  # the flow refused its parameter before any task ran: nothing to record but the notice
    if spec is not None:
        try:
            check_origin(spec, settings)
        except (NotSubmitted, AccessRefused):
            spec = None  # not the platform's job, or one naming what its submitter may not use: nothing recorded under its names
    if spec is not None:
        run_id = _open_run(settings, job_id, spec, flow_run.id)  # the job's run, or the refused job's new one
        log_ingest_report(tracking.client(settings), run_id, work_dir / "data")
    tracking.fail_job_runs(settings, job_id, str(state.message))


def cancelled_before_start() -> State | None:
    """A Cancelled state to end this flow run with, when its history holds a cancellation (Cancelling or
    Cancelled): a run cancelled while it was scheduled, pending or being submitted stays cancelled even
    if a process started it afterwards. Every flow calls this first, before any work; a run that was
    never cancelled (a new one, one resumed after an approval or after losing its worker) returns None.

    Raises:
        Any error of Prefect's client: the history cannot be read, so the run does not start (fail closed).
    """
    flow_run_id = runtime.flow_run.id
    if not flow_run_id:
        return None
    with get_client(sync_client=True) as client:
        history = client.read_flow_run_states(flow_run_id)
    asked = sorted((s for s in history if s.type in (StateType.CANCELLING, StateType.CANCELLED)), key=lambda s: s.timestamp)
    if not asked:
        return None
    first = asked[0]
    message = (f"cancelled before it started ({first.name} at {first.timestamp.isoformat(timespec='seconds')}"
               f"{': ' + first.message if first.message else ''}): nothing was run; submit the job again to run it")
    get_run_logger().warning(message)
    return Cancelled(message=message)


def record_process(flow, flow_run, state) -> None:
    """Flow running hook: record where the run's process is (``host:pid``) on the flow run, so a
    worker starting after a crash tells a run whose process is gone from one still running."""
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, infrastructure_pid=f"{socket.gethostname()}:{os.getpid()}")
