"""Job status: customization and evaluation jobs brought up to date from their Prefect flow runs and
their MLflow runs, by one refresh loop.

A job is a flow run; its record holds the status last seen. ``JobStatus.refresh`` asks Prefect about
the unfinished jobs (at most once per job every few seconds however many clients poll, see
``api.refresh``), maps each run's state onto the job's ``status_details`` (the kind's ``details``),
adds what a finished job carries (the kind's ``finish``) and saves it; a job in a final state is
not asked about again. The two kinds differ only in those two functions:

- customization: status logs from the run's state history, training progress and loss series from
  the MLflow run; a finished job completes (or fails) its output model's Entity Store entry.
- evaluation: a message per state and the progress the evaluation reports; a completed job points
  at its results (read back from its MLflow run's ``results.json``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api import customization, evaluation, orchestrator
from api.db import JobRun, Store, iso, now
from api.errors import Conflict, NotFound, for_caller
from api.refresh import SharedRefresh
from api.routes import published
from core import tags as tag
from core import tracking
from core.ids import prefixed_id
from core.settings import Settings
from deploy.store import StoreError, parse_published_uri
from evaluation.ladder import LADDER_TAG

log = logging.getLogger("customizer.api")

Job = dict[str, Any]
Tags = dict[str, str]
# (settings, job, its run's state, read MLflow too?) -> (the job's status_details, its MLflow run's tags)
Details = Callable[[Settings, Job, orchestrator.RunState, bool], tuple[dict[str, Any], Tags]]
# (store, settings, the job in its final state, its MLflow run's tags) -> the job with what a finished job adds
Finish = Callable[[Store, Settings, Job, Tags], Job]


class JobStatus:
    """The status of one kind of job (``kind``: its Entity Store kind), refreshed by one loop shared
    by every client that polls (``shared``)."""

    def __init__(self, kind: str, label: str, details: Details, finish: Finish, history: bool):
        """
        Args:
            kind: the store kind of the jobs.
            label: how log lines name them.
            details: how a run's state maps onto a job's ``status_details``.
            finish: what a job that reached a final state adds (called once, before it is saved).
            history: whether a detailed refresh reads each run's state history (for status logs).
        """
        self.kind, self.label, self.details, self.finish, self.history = kind, label, details, finish, history
        self.shared = SharedRefresh(self._refresh, orchestrator.FINAL)

    def refresh(self, store: Store, settings: Settings, jobs: list[Job], detailed: bool = False) -> list[Job]:
        """``jobs`` with the unfinished ones brought up to date from their flow runs (``detailed``:
        and from MLflow), each at most once every ``shared.seconds``. A job that reached a final state
        is saved with its final details. When Prefect is unreachable the last known state is returned.

        Raises:
            ValueError: an unfinished job's record names no flow run.
        """
        return self.shared.jobs(store, settings, jobs, detailed)

    def recent(self, job_id: str, detailed: bool = False) -> Job | None:
        """The job as refreshed within the last few seconds, without asking anyone (None: not that recently)."""
        return self.shared.recent(job_id, detailed)

    def forget(self, job_id: str) -> None:
        """The next refresh of this job asks again (after an action that changed its run)."""
        self.shared.forget(job_id)

    def _refresh(self, store: Store, settings: Settings, open_jobs: list[Job], detailed: bool) -> list[Job]:
        """Ask Prefect (and MLflow) about unfinished jobs; each job as it is now."""
        runs = {job["id"]: JobRun.of(job).flow_run_id for job in open_jobs}
        try:
            found = orchestrator.states(list(runs.values()), history=detailed and self.history)
        except orchestrator.OrchestratorUnavailable as exc:
            log.warning("%s status not refreshed: %s", self.label, exc)
            return open_jobs
        refreshed = {}
        for job in open_jobs:
            run_id = runs[job["id"]]
            state = found.get(run_id)
            if state is None:
                continue
            final = state.status in orchestrator.FINAL
            if state.status == job["status"] and not detailed and not final:
                continue  # nothing new to record without reading MLflow
            if final and self.history and not state.history:
                state = orchestrator.states([run_id], history=True).get(run_id, state)
            details, tags = self.details(settings, job, state, detailed or final)
            updated = {**job, "status": state.status, "status_details": details}
            if final:
                updated = self.finish(store, settings, updated, tags)
            refreshed[job["id"]] = store.save(self.kind, updated)
        return [refreshed.get(j["id"], j) for j in open_jobs]


def tracked_run(settings: Settings, job_id: str) -> tuple[Any, Any]:
    """(an MLflow client, the job's run in ``settings.mlflow_experiment`` or None before it exists)."""
    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return client, None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`customizer.job_id` = '{job_id}'", max_results=1)
    return client, (runs[0] if runs else None)


def _detail(message: str | None, settings: Settings, flow_run_id: str) -> str | None:
    """A run state's message as the job's caller sees it: without Prefect's preamble, tracebacks or server
    folders (the run's log keeps the full text)."""
    if not message:
        return None
    return for_caller(message.removeprefix("Flow run encountered an exception: ").strip(), settings, f"flow run {flow_run_id}")


# ---------------------------------------------------------------- customization jobs


def _ts(millis: int) -> str:
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC).replace(tzinfo=None).isoformat()


def training_metrics(settings: Settings, job_id: str) -> tuple[dict[str, Any], Tags]:
    """(progress fields, MLflow tags) of a job from its MLflow run; empty before the run exists.

    ``metrics`` holds the train_loss, val_loss and forgetting_kl series (forgetting_kl: KL of the
    model from its base on general prompts, at each validation). The best val_loss is that of a
    validation the training could keep: not one whose forgetting_kl exceeded the policy's
    max_forgetting_kl (that one stopped training and was not saved).
    """
    mlflow, run = tracked_run(settings, job_id)
    if run is None:
        return {}, {}
    out: dict[str, Any] = {}
    series: dict[str, list[dict[str, Any]]] = {}
    for key in ("train_loss", "val_loss", "forgetting_kl"):
        points = sorted(mlflow.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        if points:
            series[key] = [{"step": m.step, "value": m.value, "timestamp": _ts(m.timestamp)} for m in points]
    out["metrics"] = {"keys": list(series), "metrics": series}
    limit = json.loads(run.data.tags.get(tag.POLICY) or "{}").get("max_forgetting_kl")
    rejected = {p["step"] for p in series.get("forgetting_kl", []) if limit is not None and not p["value"] <= limit}
    progress = json.loads(run.data.tags.get(tag.PROGRESS, "{}") or "{}")
    for field in ("steps_completed", "epochs_completed", "steps_per_epoch", "percentage_done", "elapsed_time"):
        if progress.get(field) is not None:
            out[field] = progress[field]
    kept = [p for p in series.get("val_loss", []) if p["step"] not in rejected]
    if kept:
        best = min(kept, key=lambda p: p["value"])
        out["val_loss"] = best["value"]
        if progress.get("steps_per_epoch"):
            out["best_epoch"] = max(0, round(best["step"] / progress["steps_per_epoch"]) - 1)
        before = [p for p in series.get("train_loss", []) if p["step"] <= best["step"]]
        if before:
            out["train_loss"] = before[-1]["value"]
    elif series.get("train_loss"):
        out["train_loss"] = series["train_loss"][-1]["value"]
    # customizer's additions: what the general suite can rule out (planned before training), once
    # the gate ran, each forgetting comparison with its interval and verdict, and the ladder's rungs
    # tried (the free ones from the baseline on).
    for field, name in (("power", tag.POWER), ("forgetting", tag.FORGETTING), ("ladder", LADDER_TAG)):
        if run.data.tags.get(name):
            out[field] = json.loads(run.data.tags[name])
    return out, dict(run.data.tags)


def _customization_details(settings: Settings, job: Job, state: orchestrator.RunState, with_metrics: bool) -> tuple[dict[str, Any], Tags]:
    """Status logs from the run's states (the first, ``created``, kept), elapsed time, and with
    ``with_metrics`` the training progress and loss series from MLflow."""
    details = dict(job["status_details"])
    logs = [details["status_logs"][0]]
    for status, name, at, message in state.history:
        entry = {"updated_at": iso(at) if at else iso(now()), "message": name}
        if status in ("failed", "cancelled") and message:
            entry["detail"] = _detail(message, settings, state.flow_run_id)
        logs.append(entry)
    if not state.history:
        logs.append({"updated_at": iso(state.timestamp or now()), "message": state.state_name}
                    | ({"detail": _detail(state.message, settings, state.flow_run_id)} if state.status == "failed" else {}))
    if logs[-1]["message"] == "Late":  # Prefect marks a run no worker picked up in time
        logs[-1]["detail"] = "no worker has started this job yet: is `customizer worker` (or `customizer up`) running?"
    if logs[-1]["message"] in ("Paused", "Suspended"):  # an approval gate: the job waits for a reviewer
        logs[-1]["detail"] = (f"waiting for a reviewer: POST /v1/customization/jobs/{job['id']}/approval "
                              '{"approved": true|false, "comment": "..."} or `customizer approve` (with authentication '
                              'off, also a "reviewer", or the form on the run in the Prefect UI)')
    details["status_logs"] = logs
    details["status"] = state.status
    details["updated_at"] = iso(state.timestamp or now())
    if state.started:
        end = state.timestamp if state.status in orchestrator.FINAL and state.timestamp else now()
        details["elapsed_time"] = max(0.0, (end - state.started).total_seconds())
    tags: Tags = {}
    if with_metrics:
        try:
            progress, tags = training_metrics(settings, job["id"])
            details |= {k: v for k, v in progress.items() if k != "elapsed_time"}
        except Exception as exc:  # noqa: BLE001 - metrics are an addition; the status stands without them
            log.warning("Metrics of %s not read from MLflow: %s", job["id"], exc)
    return details, tags


def _finish_customization(store: Store, settings: Settings, job: Job, tags: Tags) -> Job:
    """Complete the output model's Entity Store entry: its published artifact (or the failed upload)
    and the gate's decision."""
    namespace, _, name = job["output_model"].partition("/")
    model = store.find(customization.MODEL, namespace, name)
    if model is None:
        return job
    artifact = dict(model.get("artifact") or {})
    custom = dict(model.get("custom_fields") or {})
    if job["status"] == "completed" and tags.get(tag.PUBLISHED_URI):
        # files_url: the version as a Data Store model repo (what huggingface_hub downloads and an
        # evaluation target names); the store folder itself stays beside it, a customizer extension.
        try:
            _, output_model, version = parse_published_uri(tags[tag.PUBLISHED_URI])
        except StoreError as exc:
            log.warning("%s: %s; its files_url stays unset", job["id"], exc)
        else:
            artifact |= {"files_url": published.repo_url(output_model, version), "status": "upload_completed"}
            custom["published_uri"] = tags[tag.PUBLISHED_URI]
    elif job["status"] != "completed":
        artifact |= {"status": "upload_failed"}
    if tags.get(tag.DECISION):
        custom["decision"] = tags[tag.DECISION]
    store.save(customization.MODEL, {**model, "artifact": artifact, "custom_fields": custom})
    return job


customization_jobs = JobStatus(customization.JOB, "Job", _customization_details, _finish_customization, history=True)


def job_logs(job: Job, settings: Settings) -> dict[str, Any]:
    """The flow run's log in NeMo's ``JobLogs`` shape: one entry for the job's run, each line as a
    caller may see it (``run_log``).

    Raises:
        OrchestratorUnavailable: Prefect cannot be reached.
    """
    flow_run_id = JobRun.of(job).flow_run_id
    lines = run_log(flow_run_id, settings)
    failed = job["status"] == "failed"
    last = job["status_details"]["status_logs"][-1]
    entry = {
        "object": f"flow-run/{flow_run_id}",
        "status": {"phase": job["status"]},
        "events": [
            {"count": 1, "first_seen": log["updated_at"], "last_seen": log["updated_at"],
             "message": for_caller(log.get("detail") or log["message"], settings, f"flow run {flow_run_id}"),
             "reason": log["message"], "type": "Warning" if log.get("detail") else "Normal"}
            for log in job["status_details"]["status_logs"]
        ],
        "logs": {"customize": [f"{line['timestamp']} {line['logger']}: {line['message']}" for line in lines]},
    }
    error = None
    if failed:
        error = {"message": for_caller(last.get("detail") or "the job failed", settings, f"flow run {flow_run_id}"), "timestamp": last["updated_at"],
                 "exception_type": (last.get("detail") or "").split(":", 1)[0] or None}
    return {"entries": {job["id"]: entry}, "error": error}


def run_log(flow_run_id: str, settings: Settings) -> list[dict[str, Any]]:
    """A flow run's log lines (``orchestrator.logs``) as a caller may see them: each message without
    tracebacks or server folders (``api.errors.for_caller``; the run's own log keeps the full text).

    Raises:
        OrchestratorUnavailable: Prefect cannot be reached.
    """
    where = f"flow run {flow_run_id}"
    return [line | {"message": for_caller(str(line["message"] or ""), settings, where)} for line in orchestrator.logs(flow_run_id)]


# ---------------------------------------------------------------- evaluation jobs


def _evaluation_settings(settings: Settings) -> Settings:
    """Settings whose MLflow experiment is the one that holds evaluation runs."""
    return settings.model_copy(update={"mlflow_experiment": f"{settings.mlflow_experiment}-evaluations"})


def read_results(settings: Settings, job_id: str) -> dict[str, Any] | None:
    """A finished evaluation's results from its MLflow run (None when there are none)."""
    # delayed: mlflow is heavy (start-up time)
    from mlflow.exceptions import MlflowException

    client, run = tracked_run(_evaluation_settings(settings), job_id)
    if run is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = client.download_artifacts(run.info.run_id, "results.json", scratch)
        except (MlflowException, OSError):  # no results recorded (the job did not finish)
            return None
        return json.loads(Path(path).read_text(encoding="utf-8"))


def _evaluation_details(settings: Settings, job: Job, state: orchestrator.RunState, with_progress: bool) -> tuple[dict[str, Any], Tags]:
    """A message for the run's state and, with ``with_progress``, the progress the evaluation reports."""
    details = dict(job["status_details"])
    if state.status == "failed":
        details["message"] = _detail(state.message, settings, state.flow_run_id) or "failed"
    elif state.status == "completed":
        details["message"] = "Job completed successfully"
    else:
        details["message"] = state.state_name
    tags: Tags = {}
    if with_progress:
        try:
            _, run = tracked_run(_evaluation_settings(settings), job["id"])
            tags = dict(run.data.tags) if run is not None else {}
            if tags.get(tag.PROGRESS):
                details |= json.loads(tags[tag.PROGRESS])
        except Exception as exc:  # noqa: BLE001 - progress is an addition; the status stands without it
            log.warning("Progress of %s not read: %s", job["id"], exc)
    return details, tags


def _finish_evaluation(store: Store, settings: Settings, job: Job, tags: Tags) -> Job:
    """A completed evaluation is done and points at its results (when it recorded any)."""
    if job["status"] != "completed":
        return job
    job = {**job, "status_details": job["status_details"] | {"progress": 100.0}}
    if read_results(settings, job["id"]) is not None:
        job["result"] = stable_result_id(job["id"])
    return job


# Evaluation status always carries the progress MLflow has: refresh these jobs with ``detailed=True``.
evaluation_jobs = JobStatus(evaluation.JOB, "Evaluation", _evaluation_details, _finish_evaluation, history=False)


def stable_result_id(job_id: str) -> str:
    """The id of an evaluation job's result, the same on every read."""
    return prefixed_id("evaluation_result", uuid.uuid5(uuid.NAMESPACE_URL, f"customizer:evaluation_result:{job_id}"))


def result_of(settings: Settings, job: Job) -> dict[str, Any]:
    """NeMo's ``EvaluationResult`` for a completed job.

    Raises:
        Conflict: the job has not completed.
        NotFound: the job recorded no results.
    """
    if job["status"] != "completed":
        raise Conflict(f"evaluation job {job['id']} is {job['status']}; results exist once it is completed")
    results = read_results(settings, job["id"])
    if results is None:
        raise NotFound(f"evaluation job {job['id']} recorded no results")
    return {"id": stable_result_id(job["id"]), "job": job["id"], "namespace": job.get("namespace"), "created_at": job["updated_at"],
            "updated_at": job["updated_at"], "tasks": results.get("tasks", {}), "groups": results.get("groups", {})}
