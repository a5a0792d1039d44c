"""Evaluation jobs as tasks: open the job's MLflow run, load the model, run the benchmarks, record
the results. The results live in the run (``results.json``) where the API reads them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import get_run_logger, runtime, task
from pydantic import BaseModel

from core import objects, tracking
from core import tags as tag
from core.catalog import get_config
from core.ids import prefixed_id
from core.settings import Settings, get_settings
from evaluation.custom import (
    EvaluationRequest,
    endpoint_generator,
    local_generator,
    model_kind,
    run_custom_task,
    run_lm_eval,
)
from training.base_model import resolve_base_model

RESULTS = "results.json"


def evaluation_settings(settings: Settings | None = None) -> Settings:
    """Settings whose MLflow experiment is the one that holds evaluation runs."""
    settings = settings or get_settings()
    return settings.model_copy(update={"mlflow_experiment": f"{settings.mlflow_experiment}-evaluations"})


class EvaluationJob(BaseModel):
    job_id: str
    work_dir: str
    run_id: str
    request: EvaluationRequest


class LoadedModel(BaseModel):
    """A local model (folder + optional adapter) or an endpoint."""

    model_dir: str | None = None
    adapter_dir: str | None = None
    api_url: str | None = None
    model_id: str | None = None


@task(name="open-evaluation")
def open_evaluation(request: EvaluationRequest) -> EvaluationJob:
    """Create the work folder and the evaluation's MLflow run."""
    settings = evaluation_settings()
    flow_run_id = runtime.flow_run.id
    job_id = prefixed_id("eval", flow_run_id) if flow_run_id else prefixed_id("eval")
    work_dir = settings.root / "evaluations" / job_id
    work_dir.mkdir(parents=True, exist_ok=True)
    run_id = tracking.start_run(
        settings, job_id, tags={tag.KIND: "evaluation", tag.FLOW_RUN_ID: str(flow_run_id or "")},
        params={"type": request.config.get("type"), "model": request.model.model_dump_json(exclude_none=True)},
    )
    return EvaluationJob(job_id=job_id, work_dir=str(work_dir), run_id=run_id, request=request)


def _download(uri: str, dest: Path, settings: Settings) -> Path:
    """A model's folder: the folder itself for ``file://``, else a copy of ``s3://bucket/prefix``."""
    parsed = urlparse(uri)
    if parsed.scheme in ("file", ""):
        return Path(parsed.path)
    if parsed.scheme != "s3":
        raise ValueError(f"model {uri}: use a folder, file:// or s3://")
    if not objects.download_prefix(objects.s3_client(settings), parsed.netloc, parsed.path, dest, settings=settings):
        raise ValueError(f"model {uri}: no objects under that prefix")
    return dest


@task(name="load-model", retries=2, retry_delay_seconds=2)
def locate_model(job: EvaluationJob) -> LoadedModel:
    """Resolve the model to local folders: the config's base model and, if given, the published weights."""
    settings = get_settings()
    spec = job.request.model
    if spec.api_url:
        return LoadedModel(api_url=spec.api_url, model_id=spec.model_id or "")
    base = resolve_base_model(get_config(spec.config, settings).target, settings).path if spec.config else None
    if not spec.model_uri:
        return LoadedModel(model_dir=base)
    folder = _download(spec.model_uri, Path(job.work_dir) / "model", settings)
    if (folder / "adapter_config.json").exists():
        if base is None:
            raise ValueError(f"{spec.model_uri} holds a LoRA adapter, but the model names no config (base model) to apply it to")
        return LoadedModel(model_dir=base, adapter_dir=str(folder))
    return LoadedModel(model_dir=str(folder))


@task(name="run-benchmarks")
def run_benchmarks(job: EvaluationJob, model: LoadedModel) -> dict[str, Any]:
    """Score the model on the config's tasks; progress goes to the run's ``customizer.progress`` tag."""
    settings = evaluation_settings()
    client = tracking.client(settings)
    config = job.request.config
    params = config.get("params") or {}
    logger = get_run_logger()
    if model_kind(config) == "lm-eval":
        if not model.model_dir:
            raise ValueError(f"benchmark {config['type']!r} runs through lm-eval on a local model; an endpoint cannot be scored this way")
        client.set_tag(job.run_id, tag.PROGRESS, json.dumps({"task_status": {config["type"]: "running"}, "progress": 0.0}))
        return {"tasks": run_lm_eval(config["type"], model.model_dir, model.adapter_dir, params), "groups": {}}
    generate = endpoint_generator(model.api_url, model.model_id or "") if model.api_url else local_generator(model.model_dir, model.adapter_dir)
    task_status = {name: "pending" for name in config["tasks"]}
    done: dict[str, Any] = {}
    last = [0.0]

    def progress(update: dict[str, Any]) -> None:
        if time.monotonic() - last[0] < 2 and update["samples_processed"] < update["samples_total"]:
            return
        last[0] = time.monotonic()
        share = (len(done) + update["samples_processed"] / max(update["samples_total"], 1)) / len(task_status)
        client.set_tag(job.run_id, tag.PROGRESS, json.dumps(
            {"task_status": task_status, "progress": round(100 * share, 2), "samples_processed": update["samples_processed"]}))

    for name, task_config in config["tasks"].items():
        task_status[name] = "running"
        done[name] = run_custom_task(name, task_config, job.request.data_files[name], generate, params | (task_config.get("params") or {}), progress)
        task_status[name] = "completed"
        logger.info("Task %s: %s", name, {k: {s: v["value"] for s, v in r["scores"].items()} for k, r in done[name]["metrics"].items()})
    client.set_tag(job.run_id, tag.PROGRESS, json.dumps({"task_status": task_status, "progress": 100.0}))
    return {"tasks": done, "groups": {}}


@task(name="finish-evaluation")
def finish_evaluation(job: EvaluationJob, results: dict[str, Any]) -> dict[str, Any]:
    """Record the results on the run (per-row samples as a separate artifact) and close it."""
    settings = evaluation_settings()
    samples = {name: task.pop("data", []) for name, task in results["tasks"].items()}
    tracking.log_dict(settings, job.run_id, results, RESULTS)
    tracking.log_dict(settings, job.run_id, samples, "samples.json")
    for name, task in results["tasks"].items():
        for metric, result in task["metrics"].items():
            for score, value in result["scores"].items():
                tracking.log_metric(settings, job.run_id, f"{name}.{metric}.{score}"[:250], value["value"])
    tracking.end_run(settings, job.run_id, "FINISHED")
    return results


def mark_evaluation_failed(flow, flow_run, state) -> None:
    """Flow failure hook: close the evaluation's MLflow run as FAILED."""
    tracking.fail_job_runs(evaluation_settings(), prefixed_id("eval", flow_run.id), str(state.message))
