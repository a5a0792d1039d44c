"""Customizer: jobs (``/v1/customization/jobs``), configs and targets. Names carry ``@`` and ``+``
unescaped (``meta/llama-3.2-1b-instruct@v1.0.0+A100``); ``+`` is never read as a space."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from api import customization as logic
from api import orchestrator
from api.db import JobRun, iso, now
from api.deps import Caller, CallerDep, ListDep, SettingsDep, StoreDep, paginate
from api.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from api.refresh import Answers
from api.schemas import ApprovalAnswer, ConfigCreate, ConfigUpdate, JobCreate, JobLogs, JobPublic, JobStatusPublic, Page, TargetCreate, TargetUpdate
from api.status import customization_jobs as jobs_status, job_logs as logs_of

router = APIRouter(prefix="/v1/customization", tags=["customizer"])
_JOB_FILTERS = {"status", "namespace", "project", "config", "dataset", "output_model", "training_type", "finetuning_type", "name", "created_at"}
_JOB_GETTERS = {
    "training_type": lambda j: j["hyperparameters"].get("training_type"),
    "finetuning_type": lambda j: j["hyperparameters"].get("finetuning_type"),
}


def _job(store, caller, job_id: str) -> dict[str, Any]:
    job = store.get(logic.JOB, job_id)
    if job is None or not caller.sees(job.get("namespace")):  # another namespace's job is not there for this key
        raise NotFound(f"customization job {job_id} does not exist")
    return job


# ---------------------------------------------------------------- jobs


@router.post("/jobs", summary="Create a customization job", response_model=JobPublic)
def create_job(
    body: JobCreate,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    wandb_api_key: Annotated[str | None, Header(alias="wandb-api-key", include_in_schema=False)] = None,
) -> dict[str, Any]:
    """Validates the config (it must carry a version), the method, the dataset (every line) and the
    hyperparameters, then starts the job's flow run. Answers 200 with the job, status ``created``.
    Needs the ``submit`` role in the job's namespace."""
    caller.require("submit", body.namespace or "default")
    secrets = {"wandb-api-key": wandb_api_key} if wandb_api_key else {}
    return logic.public(logic.create_job(store, settings, body, secrets, caller))


# The endpoints clients poll are ``async``: a job refreshed within the last few seconds is
# answered from memory in the event loop, and only the database reads and refreshes go to the thread
# pool (a plain ``def`` endpoint costs two thread-pool hops per request, more CPU than the answer).


def _listed(store, settings, caller) -> list[dict[str, Any]]:
    jobs = [j for j in store.all(logic.JOB) if caller.sees(j.get("namespace"))]
    return jobs_status.refresh(store, settings, jobs)


@router.get("/jobs", summary="List customization jobs", response_model=Page)
async def list_jobs(request: Request, store: StoreDep, settings: SettingsDep, caller: CallerDep, params: ListDep) -> Any:
    answers: Answers = request.app.state.answers
    key, writes = (request.url.path, caller.namespaces, request.url.query), store.writes(logic.JOB)
    if (body := answers.get(key, writes)) is None:
        jobs = await run_in_threadpool(_listed, store, settings, caller)
        page = paginate([logic.public(j) for j in jobs], params, caller, _JOB_FILTERS, {"created_at", "-created_at", "updated_at", "status"}, _JOB_GETTERS)
        body = Page.model_validate(page).model_dump_json().encode()
        answers.put(key, writes, body)
    return Response(body, media_type="application/json")


def _refreshed_job(store, settings, caller, job_id: str) -> dict[str, Any]:
    return jobs_status.refresh(store, settings, [_job(store, caller, job_id)], detailed=True)[0]


async def _polled_job(store, settings, caller, job_id: str) -> dict[str, Any]:
    job = jobs_status.recent(job_id, detailed=True)
    if job is None or not caller.sees(job.get("namespace")):
        job = await run_in_threadpool(_refreshed_job, store, settings, caller, job_id)
    return job


@router.get("/jobs/{job_id}", summary="Get a customization job", response_model=JobPublic)
async def get_job(job_id: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    return logic.public(await _polled_job(store, settings, caller, job_id))


@router.get("/jobs/{job_id}/status", summary="Get a job's status and training metrics", response_model=JobStatusPublic)
async def get_job_status(job_id: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    job = await _polled_job(store, settings, caller, job_id)
    return job["status_details"] | {"status": job["status"]}


@router.post("/jobs/{job_id}/cancel", summary="Cancel a customization job", response_model=JobPublic)
def cancel_job(job_id: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """Needs the ``submit`` role in the job's namespace."""
    job = _job(store, caller, job_id)
    caller.require("submit", job.get("namespace") or "default")
    job = jobs_status.refresh(store, settings, [job])[0]
    if job["status"] in orchestrator.FINAL:
        raise Conflict(f"customization job {job_id} is already {job['status']}; only a pending or running job can be cancelled")
    logic.cancel_job(store, settings, job, caller)  # asks the run to stop, on the audit trail
    jobs_status.forget(job_id)
    return logic.public(jobs_status.refresh(store, settings, [job], detailed=True)[0])


def _reviewer(job: dict[str, Any], body: ApprovalAnswer, caller: Caller) -> str:
    """Who answers the approval: with authentication on, the caller's principal (a body cannot speak
    for someone else), never the job's submitter; with it off, the body's free-text ``reviewer``
    (the flow refuses the submitter's name and keeps waiting, as it does for any answer).

    Raises:
        Forbidden: the caller lacks the ``review`` role in the job's namespace, names another reviewer
            than itself, or submitted the job.
        Unprocessable: authentication is off and the body names no reviewer.
    """
    caller.require("review", job.get("namespace") or "default")
    if not caller.authenticated:
        if body.reviewer is None or not body.reviewer.strip():
            raise Unprocessable("`reviewer` is required: with authentication off the answer names who decides")
        return body.reviewer.strip()
    if body.reviewer is not None and body.reviewer.strip() != caller.principal:
        raise Forbidden(f"`reviewer` {body.reviewer!r} is not the caller (principal {caller.principal!r}): an answer is "
                        "given in the caller's own name; leave `reviewer` out")
    submitter = ((job.get("ownership") or {}).get("created_by") or "").strip()
    if submitter.lower() == caller.principal.lower():
        raise Forbidden(f"principal {caller.principal!r} submitted customization job {job['id']} and cannot also approve it; "
                        "another principal with the 'review' role in its namespace must answer")
    return caller.principal


@router.post("/jobs/{job_id}/approval", summary="Approve or reject a job that waits for a reviewer", response_model=JobPublic)
def answer_approval(job_id: str, body: ApprovalAnswer, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """A job whose method or gate decision needs a reviewer waits (status ``running``, last status log
    ``Suspended``, or ``Paused`` for a run started outside a deployment) until this answer arrives. Needs the ``review`` role in the job's namespace; the
    reviewer is the caller's principal (with authentication off, the body's free-text ``reviewer``).
    403 when the caller submitted the job, 409 when the job is not waiting for an answer."""
    job = _job(store, caller, job_id)
    reviewer = _reviewer(job, body, caller)
    try:
        orchestrator.answer(JobRun.of(job).flow_run_id, {"approved": body.approved, "reviewer": reviewer, "comment": body.comment})
    except orchestrator.NotWaiting as exc:
        raise Conflict(f"customization job {job_id} is not waiting for an approval (its run is {exc})") from exc
    jobs_status.forget(job_id)
    return logic.public(jobs_status.refresh(store, settings, [job], detailed=True)[0])


@router.get("/jobs/{job_id}/container-logs", summary="Get a job's logs", response_model=JobLogs)
def job_logs(job_id: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    job = jobs_status.refresh(store, settings, [_job(store, caller, job_id)], detailed=True)[0]
    return logs_of(job, settings)


# ---------------------------------------------------------------- configs

_CONFIG_FILTERS = {"name", "namespace", "finetuning_type", "training_type", "target_base_model", "base_model", "target_name",
                   "target_enabled", "enabled", "project"}
_CONFIG_GETTERS = {
    "finetuning_type": lambda c: ",".join(o["finetuning_type"] for o in c["training_options"]),
    "training_type": lambda c: ",".join(o["training_type"] for o in c["training_options"]),
    "target_base_model": lambda c: c["target"].get("base_model") if isinstance(c["target"], dict) else c["target"],
    "base_model": lambda c: c["target"].get("base_model") if isinstance(c["target"], dict) else c["target"],
    "target_name": lambda c: c["target"].get("name") if isinstance(c["target"], dict) else c["target"],
    "target_enabled": lambda c: c["target"].get("enabled", True) if isinstance(c["target"], dict) else True,
    "enabled": lambda c: c["target"].get("enabled", True) if isinstance(c["target"], dict) else True,
}


def _option_filter(page_filters: dict[str, Any], configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """finetuning_type / training_type match when any of the config's options has that value."""
    for key in ("finetuning_type", "training_type"):
        if key in page_filters:
            wanted = {v.strip() for v in str(page_filters[key]).split(",")}
            configs = [c for c in configs if any(o[key] in wanted for o in c["training_options"])]
    return configs


@router.post("/configs", summary="Create a customization config")
def create_config(body: ConfigCreate, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(body.namespace)
    return logic.public(logic.create_config(store, settings, body, caller))


@router.get("/configs", summary="List customization configs (built-in and created)", response_model=Page)
def list_configs(store: StoreDep, settings: SettingsDep, caller: CallerDep, params: ListDep) -> dict[str, Any]:
    configs = _option_filter(params.filters, logic.list_configs(store, settings))
    other = {k: v for k, v in params.filters.items() if k not in ("finetuning_type", "training_type")}
    page = paginate(configs, replace(params, filters=other), caller, _CONFIG_FILTERS, {"created_at", "updated_at", "name", "namespace"}, _CONFIG_GETTERS)
    page["filter"] = params.filters or None
    return page


@router.get("/configs/{namespace}/{config_name}", summary="Get a customization config")
def get_config(namespace: str, config_name: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    config, stored = logic.find_config(store, settings, namespace, config_name)
    return logic.config_to_wire(config, stored)


@router.patch("/configs/{namespace}/{config_name}", summary="Update a customization config")
def update_config(namespace: str, config_name: str, body: ConfigUpdate, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    _, stored = logic.find_config(store, settings, namespace, config_name)
    if stored is None:
        raise BadRequest(f"customization config {namespace}/{config_name} is built in and read-only; create a new config instead")
    changes = body.model_dump(mode="json", exclude_unset=True)
    if changes.get("namespace") is not None:
        caller.check(changes["namespace"])
    changes = {k: v for k, v in changes.items() if v is not None}
    return logic.public(logic.update_config(store, settings, stored, changes, caller)) | {"warning_message": None}


@router.delete("/configs/{namespace}/{config_name}", summary="Delete a customization config")
def delete_config(namespace: str, config_name: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    _, stored = logic.find_config(store, settings, namespace, config_name)
    if stored is None:
        raise BadRequest(f"customization config {namespace}/{config_name} is built in and read-only")
    logic.delete_config(store, settings, stored)
    return {"id": stored["id"], "deleted_at": iso(now()), "message": "config deleted"}


# ---------------------------------------------------------------- targets


@router.post("/targets", summary="Create a customization target (a base model)")
def create_target(body: TargetCreate, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(body.namespace)
    logic.check_target(settings, caller, body.model_dump())
    return logic.public(logic.create_target(store, settings, body))


@router.get("/targets", summary="List customization targets", response_model=Page)
def list_targets(store: StoreDep, settings: SettingsDep, caller: CallerDep, params: ListDep) -> dict[str, Any]:
    targets = [logic.public(t) for t in logic.list_targets(store, settings)]
    return paginate(targets, params, caller, {"base_model", "enabled", "name", "namespace", "status", "project"},
                    {"created_at", "updated_at", "name", "namespace", "num_parameters"})


@router.get("/targets/{namespace}/{target_name}", summary="Get a customization target")
def get_target(namespace: str, target_name: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    return logic.public(logic.find_target(store, settings, namespace, target_name))


def _stored_target(store, settings, namespace: str, name: str) -> dict[str, Any]:
    found = logic.find_target(store, settings, namespace, name)
    if (found.get("custom_fields") or {}).get("builtin"):
        raise BadRequest(f"customization target {namespace}/{name} is built in and read-only")
    return found


@router.patch("/targets/{namespace}/{target_name}", summary="Update a customization target")
def update_target(namespace: str, target_name: str, body: TargetUpdate, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    found = _stored_target(store, settings, namespace, target_name)
    logic.check_target(settings, caller, body.model_dump())
    saved = store.save(logic.TARGET, found | body.model_dump(mode="json", exclude_unset=True, exclude_none=True))
    return logic.public(saved) | {"warning_message": None}


@router.delete("/targets/{namespace}/{target_name}", summary="Delete a customization target")
def delete_target(namespace: str, target_name: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    found = _stored_target(store, settings, namespace, target_name)
    urn = f"{namespace}/{target_name}"
    users = [c["name"] for c in store.all(logic.CONFIG) if c.get("target") == urn or (isinstance(c.get("target"), str) and c["target"] == target_name and c["namespace"] == namespace)]
    if users:
        raise Conflict(f"customization target {urn} is used by config(s) {', '.join(users)}; delete them first")
    store.remove(logic.TARGET, found["id"])
    return {"id": found["id"], "deleted_at": iso(now()), "message": "target deleted"}
