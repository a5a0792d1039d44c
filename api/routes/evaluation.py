"""Evaluator: configs, targets and jobs under ``/v1/evaluation``."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api import evaluation as logic
from api import orchestrator
from api.customization import public
from api.db import Duplicate, JobRun, iso, now
from api.deps import CallerDep, ListDep, SettingsDep, StoreDep, paginate
from api.errors import BadRequest, Conflict, NotFound
from api.schemas import (
    DeleteResponse, EvaluationConfigCreate, EvaluationConfigUpdate, EvaluationJobCreate, EvaluationTargetCreate,
    EvaluationTargetUpdate, Page,
)
from api.status import evaluation_jobs as jobs_status, result_of, run_log
from evaluation.custom import ConfigProblem, check_config

router = APIRouter(prefix="/v1/evaluation", tags=["evaluator"])
_SORT = {"created_at", "updated_at", "name", "namespace"}


def _entity(store, kind: str, namespace: str, name: str, caller) -> dict[str, Any]:
    caller.check(namespace)
    found = store.find(kind, namespace, name)
    if found is None:
        raise NotFound(f"{kind.replace('_', ' ')} {namespace}/{name} does not exist")
    return found


def _deleted(entity_id: str, what: str) -> dict[str, Any]:
    return {"id": entity_id, "deleted_at": iso(now()), "message": f"{what} deleted"}


# ---------------------------------------------------------------- configs


@router.post("/configs", summary="Create an evaluation config")
def create_config(body: EvaluationConfigCreate, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(body.namespace)
    logic.check_config_urls(settings, caller, body.model_dump(mode="json"))
    return public(logic.create_config(store, body))


@router.get("/configs", summary="List evaluation configs", response_model=Page)
def list_configs(store: StoreDep, caller: CallerDep, params: ListDep) -> dict[str, Any]:
    return paginate([public(c) for c in store.all(logic.CONFIG)], params, caller, {"name", "namespace", "type", "project", "created_at", "custom_fields"}, _SORT)


@router.get("/configs/{namespace}/{config_name}", summary="Get an evaluation config")
def get_config(namespace: str, config_name: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    return public(_entity(store, logic.CONFIG, namespace, config_name, caller))


@router.patch("/configs/{namespace}/{config_name}", summary="Update an evaluation config")
def update_config(namespace: str, config_name: str, body: EvaluationConfigUpdate, store: StoreDep, settings: SettingsDep,
                  caller: CallerDep) -> dict[str, Any]:
    found = _entity(store, logic.CONFIG, namespace, config_name, caller)
    changes = body.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    if "namespace" in changes:
        caller.check(changes["namespace"])
    logic.check_config_urls(settings, caller, changes)
    data = found | changes
    try:
        check_config(data)
    except ConfigProblem as exc:
        raise BadRequest(str(exc)) from exc
    try:
        return public(store.save(logic.CONFIG, data, namespace=data["namespace"], name=data["name"]))
    except Duplicate as exc:
        raise Conflict(f"evaluation config {data['namespace']}/{data['name']} already exists") from exc


@router.delete("/configs/{namespace}/{config_name}", summary="Delete an evaluation config", response_model=DeleteResponse)
def delete_config(namespace: str, config_name: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    found = _entity(store, logic.CONFIG, namespace, config_name, caller)
    store.remove(logic.CONFIG, found["id"])
    return _deleted(found["id"], "evaluation config")


# ---------------------------------------------------------------- targets


@router.post("/targets", summary="Create an evaluation target")
def create_target(body: EvaluationTargetCreate, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(body.namespace)
    logic.check_target_urls(settings, caller, body.model_dump(mode="json"))
    return public(logic.create_target(store, body))


@router.get("/targets", summary="List evaluation targets", response_model=Page)
def list_targets(store: StoreDep, caller: CallerDep, params: ListDep) -> dict[str, Any]:
    return paginate([public(t) for t in store.all(logic.TARGET)], params, caller, {"name", "namespace", "type", "project", "created_at"}, _SORT)


@router.get("/targets/{namespace}/{target_name}", summary="Get an evaluation target")
def get_target(namespace: str, target_name: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    return public(_entity(store, logic.TARGET, namespace, target_name, caller))


@router.patch("/targets/{namespace}/{target_name}", summary="Update an evaluation target")
def update_target(namespace: str, target_name: str, body: EvaluationTargetUpdate, store: StoreDep, settings: SettingsDep,
                  caller: CallerDep) -> dict[str, Any]:
    found = _entity(store, logic.TARGET, namespace, target_name, caller)
    logic.check_target_urls(settings, caller, body.model_dump(mode="json"))
    return public(store.save(logic.TARGET, found | body.model_dump(mode="json", exclude_unset=True, exclude_none=True)))


@router.delete("/targets/{namespace}/{target_name}", summary="Delete an evaluation target", response_model=DeleteResponse)
def delete_target(namespace: str, target_name: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    found = _entity(store, logic.TARGET, namespace, target_name, caller)
    store.remove(logic.TARGET, found["id"])
    return _deleted(found["id"], "evaluation target")


# ---------------------------------------------------------------- jobs


def _job(store, settings, caller, job_id: str) -> dict[str, Any]:
    job = store.get(logic.JOB, job_id)
    if job is None or not caller.sees(job.get("namespace")):  # another namespace's job is not there for this key
        raise NotFound(f"evaluation job {job_id} does not exist")
    return jobs_status.refresh(store, settings, [job], detailed=True)[0]


@router.post("/jobs", summary="Create an evaluation job")
def create_job(body: EvaluationJobCreate, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """Needs the ``submit`` role in the job's namespace."""
    caller.require("submit", body.namespace or "default")
    return public(logic.create_job(store, settings, body, caller))


_JOB_GETTERS = {"config": lambda j: j["config"].get("name") or j["config"].get("type"), "target": lambda j: j["target"].get("name")}


@router.get("/jobs", summary="List evaluation jobs", response_model=Page)
def list_jobs(store: StoreDep, settings: SettingsDep, caller: CallerDep, params: ListDep) -> dict[str, Any]:
    jobs = jobs_status.refresh(store, settings, [j for j in store.all(logic.JOB) if caller.sees(j.get("namespace"))], detailed=True)
    return paginate([public(j) for j in jobs], params, caller, {"config", "target", "status", "namespace", "project", "created_at"}, _SORT | {"status"}, _JOB_GETTERS)


async def _polled_job(store, settings, caller, job_id: str) -> dict[str, Any]:
    """A job refreshed within the last few seconds is answered from memory, in the event loop."""
    job = jobs_status.recent(job_id, detailed=True)
    if job is None or not caller.sees(job.get("namespace")):
        job = await run_in_threadpool(_job, store, settings, caller, job_id)
    return job


@router.get("/jobs/{job_id}", summary="Get an evaluation job")
async def get_job(job_id: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    return public(await _polled_job(store, settings, caller, job_id))


@router.delete("/jobs/{job_id}", summary="Delete an evaluation job (cancelling it if it runs)", status_code=200)
def delete_job(job_id: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """Needs the ``submit`` role in the job's namespace (a running job is cancelled)."""
    job = _job(store, settings, caller, job_id)
    caller.require("submit", job.get("namespace") or "default")
    if job["status"] not in orchestrator.FINAL:
        orchestrator.cancel(JobRun.of(job).flow_run_id)
    store.remove(logic.JOB, job_id)
    jobs_status.forget(job_id)
    return _deleted(job_id, "evaluation job")


@router.get("/jobs/{job_id}/status", summary="Get an evaluation job's status")
async def job_status(job_id: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    job = await _polled_job(store, settings, caller, job_id)
    return job["status_details"] | {"status": job["status"]}


@router.post("/jobs/{job_id}/cancel", summary="Cancel an evaluation job")
def cancel_job(job_id: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """Needs the ``submit`` role in the job's namespace."""
    job = _job(store, settings, caller, job_id)
    caller.require("submit", job.get("namespace") or "default")
    if job["status"] in orchestrator.FINAL:
        raise Conflict(f"evaluation job {job_id} is already {job['status']}")
    orchestrator.cancel(JobRun.of(job).flow_run_id)
    jobs_status.forget(job_id)
    return public(jobs_status.refresh(store, settings, [job], detailed=True)[0])


@router.get("/jobs/{job_id}/results", summary="Get an evaluation job's results")
def job_results(job_id: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    return result_of(settings, _job(store, settings, caller, job_id))


@router.get("/jobs/{job_id}/download-results", summary="Download the results as a zip")
def download_results(job_id: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> Response:
    result = result_of(settings, _job(store, settings, caller, job_id))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("results.json", json.dumps(result, indent=2))
    return Response(buffer.getvalue(), media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{job_id}.zip"'})


@router.get("/jobs/{job_id}/logs", summary="Get an evaluation job's logs")
def job_logs(job_id: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    job = _job(store, settings, caller, job_id)
    return {"id": job_id, "logs": run_log(JobRun.of(job).flow_run_id, settings)}  # without tracebacks or server folders
