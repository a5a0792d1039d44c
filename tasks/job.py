"""Opening and closing a job: config check, work folder, MLflow run, base model, final result."""

from __future__ import annotations

import json
import os
import socket
from typing import Literal

from prefect import get_run_logger, runtime, task
from pydantic import BaseModel

from core import __version__
from core.ids import prefixed_id
from core.settings import get_settings
from core import tracking
from deploy.notify import notify
from deploy.registry import CHAMPION, RegisteredVersion
from deploy.store import Published
from evaluation.gate import ApprovalRecord, Decision, Power
from evaluation.policy import effective_policy
from evaluation.runner import StageScores
from training.base_model import ResolvedModel, resolve_base_model
from core.catalog import CustomizationConfig, get_config
from data.ingest import IngestedDataset
from training.common import TrainResult
from core.specs import CustomizationSpec, PromotionPolicy


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
    outcome: Literal["trained", "prompt_sufficient"]
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
    mlflow_run_id: str
    tracking_uri: str


def _flatten(prefix: str, value: object) -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, inner in value.items():
            out |= _flatten(f"{prefix}.{key}" if prefix else key, inner)
        return out
    return {prefix: json.dumps(value) if isinstance(value, list) else value}


@task(name="open-job")
def open_job(spec: CustomizationSpec) -> Job:
    """Check the config allows the method, create the work folder and the job's MLflow run."""
    settings = get_settings()
    config = get_config(spec.config, settings)
    config.option_for(spec.hyperparameters.training_type, spec.hyperparameters.finetuning_type)
    policy, policy_source = effective_policy(spec, settings)
    flow_run_id = runtime.flow_run.id
    job_id = prefixed_id("cust", flow_run_id) if flow_run_id else prefixed_id("cust")
    work_dir = settings.jobs_dir / job_id
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "spec.json").write_text(spec.model_dump_json(indent=2))
    run_id = tracking.start_run(
        settings,
        job_id,
        tags={
            "customizer.config": spec.config,
            "customizer.output_model": spec.output_model,
            "customizer.flow_run_id": str(flow_run_id or ""),
            "customizer.code_version": __version__,
        },
        params=_flatten("", spec.hyperparameters.model_dump()) | {"config": spec.config, "dataset": spec.dataset},
    )
    tracking.client(settings).set_tag(run_id, "customizer.policy", json.dumps({"source": policy_source, **policy.model_dump()}))
    get_run_logger().info("Job %s: work folder %s, MLflow run %s, policy from %s", job_id, work_dir, run_id, policy_source)
    return Job(job_id=job_id, work_dir=str(work_dir), run_id=run_id, spec=spec, config=config, policy=policy, policy_source=policy_source)


@task(name="resolve-base-model")
def base_model(job: Job) -> ResolvedModel:
    """Find (or convert once into the cache) the config's base model."""
    settings = get_settings()
    resolved = resolve_base_model(job.config.target, settings)
    client = tracking.client(settings)
    client.set_tag(job.run_id, "customizer.base_model", job.config.target.name)
    client.set_tag(job.run_id, "customizer.base_model.digest", resolved.digest)
    return resolved


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
) -> CustomizationResult:
    """Close the MLflow run and assemble the job's result."""
    settings = get_settings()
    result = CustomizationResult(
        job_id=job.job_id,
        output_model=job.spec.output_model,
        outcome="prompt_sufficient" if trained is None else "trained",
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
        mlflow_run_id=job.run_id,
        tracking_uri=settings.tracking_uri,
    )
    tracking.log_dict(settings, job.run_id, result.model_dump(), "result.json")
    tracking.end_run(settings, job.run_id, "FINISHED")
    if prompt_baseline:
        ending = f"no fine-tuning needed: {prompt_baseline}"
    elif registered is not None:
        role = "champion" if CHAMPION in registered.aliases else "candidate, not promoted"
        ending = f"{decision.action if decision else 'trained'}; version {registered.version} is {role}"
    else:
        ending = decision.action if decision else "trained"
    notify(settings, f"customize job {job.job_id} for {job.spec.output_model} completed: {ending}")
    return result


def mark_failed(flow, flow_run, state) -> None:
    """Flow failure hook: say so on the webhook, close the job's MLflow run as FAILED so no run is left dangling."""
    settings = get_settings()
    job_id = prefixed_id("cust", flow_run.id)
    spec = flow_run.parameters.get("spec")
    output_model = spec.get("output_model") if isinstance(spec, dict) else getattr(spec, "output_model", None)
    notify(settings, f"customize job {job_id} for {output_model or 'an unknown model'} failed: {state.message}"[:3000])
    tracking.fail_job_runs(settings, job_id, str(state.message))


def record_process(flow, flow_run, state) -> None:
    """Flow running hook: record where the run's process is (``host:pid``) on the flow run, so a
    worker starting after a crash tells a run whose process is gone from one still running."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, infrastructure_pid=f"{socket.gethostname()}:{os.getpid()}")
