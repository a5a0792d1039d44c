"""Approvals: a job waits for a reviewer's answer on a typed form, holding no worker while it waits.

How a job waits. A run that came from a deployment (every job the REST API, the Prefect UI or a
schedule starts; the worker runs them) is *suspended* (``suspend_flow_run``): its process exits and
the worker's slot is free for as long as the review takes. The answer resumes it: the worker starts
the flow again from the top and every task that already completed returns its persisted result
instead of running again (the customize flow persists results, and Prefect's default cache key holds
the flow run id, so results are reused within the same run only): check, ingest, baseline and
training are not repeated, and the job folder and MLflow run are the same ones (both derive from the
flow run id). Results live in Prefect's result storage (the local one under ``PREFECT_HOME`` by
default): workers on several machines need a shared one. A run with no deployment (the flow called
in-process: ``customizer run``, retrain's customize subflow, tests) has no worker to resume it, so it
*pauses* (``pause_flow_run``) and keeps its process while it waits.

Who may answer. The form (approve or reject, reviewer, comment) shows on the waiting run in the
Prefect UI; the REST API (``POST /v1/customization/jobs/<id>/approval``) and ``customizer approve``
answer it through Prefect's API and sign the answer with the platform key (``api.orchestrator.answer``).
With authentication on (``core.auth.enabled``) only a signed answer counts: an unsigned one (the UI's
form) is refused with a warning that says where to approve, and the job keeps waiting, neither
approved nor rejected. With authentication off any answer counts, with a free-text reviewer. Either
way the reviewer must not be the submitter (with authentication on, the REST API fills in the
submitter from the caller, so the check compares real principals).

The deadline. The policy's ``approval_timeout_hours`` starts at the stage's first wait and is kept
on the flow run (an input named ``approval-deadline-<stage>``), so a resumed run keeps it. A paused
run times out by itself; a suspended run has no process to notice, so the worker's watch
(``watch_deadlines``) resumes it once its deadline passed. Any answer that reaches Prefect after the
deadline counts as a timeout, and a timeout is a rejection. Prefect's own suspension timeout is not
used: it fails the run on the server, where no code of the job runs to record why.

Every decision is recorded once, on the job's MLflow run and in the audit trail (``record_approval``,
a task: a resumed run replays the earlier answers and gets the same records back from the cache).
``wait_for_approval`` is called from the flow body: Prefect pauses and suspends flow runs, not tasks.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from typing import Literal
from uuid import UUID

from prefect import get_run_logger, runtime, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.input.run_input import keyset_from_base_key
from pydantic import Field

from core import audit, auth, tracking
from core import tags as tag
from core.secrets import verify
from core.settings import Settings, get_settings
from deploy.notify import notify
from evaluation.gate import ApprovalRecord, Decision, settle_hold
from tasks.job import Job

Stage = Literal["training", "promotion"]
TIMED_OUT = "no approval within the timeout"
WHERE_TO_APPROVE = "approve through the REST API: POST /v1/customization/jobs/{job_id}/approval, or `customizer approve {job_id}`"
log = logging.getLogger("customizer.approval")


class Approval(RunInput):
    """A reviewer's answer."""

    approved: bool = Field(description="Approve (true) or reject (false).")
    reviewer: str = Field(min_length=1, description="Who decides; must not be the person who submitted the job.")
    comment: str = Field(default="", description="Why.")
    signature: str = Field(
        default="", description="Filled in by the REST API and `customizer approve`; with authentication on, "
        "an answer without it is refused.",
    )


class NotApproved(RuntimeError):
    """A reviewer rejected the job (or nobody answered in time)."""


def deadline_key(stage: str) -> str:
    """The flow run input that holds a stage's approval deadline."""
    return f"approval-deadline-{stage}"


def _deadline(job: Job, stage: str, flow_run_id: UUID) -> dt.datetime:
    """The stage's deadline: set at its first wait and kept on the flow run, so a resumed run (and
    the worker's watch) reads the same one."""
    with get_client(sync_client=True) as client:
        found = client.filter_flow_run_input(flow_run_id, key_prefix=deadline_key(stage), limit=1, exclude_keys=set())
        if found:
            return dt.datetime.fromisoformat(json.loads(found[0].value))
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(hours=job.policy.approval_timeout_hours)
        client.create_flow_run_input(flow_run_id, deadline_key(stage), json.dumps(deadline.isoformat()))
    return deadline


def _answered_at(flow_run_id: UUID, state_name: str, key: str) -> dt.datetime:
    """When the answer to the wait ``key`` reached Prefect (the server's clock): what the deadline is
    held against, and the decision's time, the same each time a resumed run replays it."""
    keyset = keyset_from_base_key(f"{state_name.lower()}-{key}")
    with get_client(sync_client=True) as client:
        found = client.filter_flow_run_input(flow_run_id, key_prefix=keyset["response"], limit=1, exclude_keys=set())
    if not found:
        raise RuntimeError(f"flow run {flow_run_id} resumed from {key} without an answer on record")
    return found[0].created.astimezone(dt.UTC)


def _refusal(settings: Settings, job: Job, flow_run_id: UUID, key: str, answer: Approval) -> str | None:
    """Why an answer does not count (the job keeps waiting), or None when it does."""
    message = auth.approval_message(flow_run_id, key, answer.approved, answer.reviewer)
    if auth.enabled(settings) and not verify(settings, message, answer.signature):
        return (f"An answer without the platform's signature (from {answer.reviewer!r}, e.g. the Prefect UI's form) is "
                f"refused while authentication is on; {WHERE_TO_APPROVE.format(job_id=job.job_id)}. Still waiting.")
    submitter = (job.spec.submitted_by or "").strip().lower()
    if submitter and answer.reviewer.strip().lower() == submitter:
        return f"{answer.reviewer} submitted this job and cannot also approve it; waiting for another reviewer"
    return None


def _timed_out(stage: Stage, deadline: dt.datetime) -> ApprovalRecord:
    return ApprovalRecord(stage=stage, approved=False, reviewer=None, comment=TIMED_OUT, decided_at=_iso(deadline))


def wait_for_approval(job: Job, stage: Stage, question: str, wait: str | None = None) -> ApprovalRecord:
    """Wait (suspended, or paused where the run has no deployment) until a reviewer other than the
    submitter answers with an answer that counts, or the deadline passes. ``wait`` names the wait
    (default: the stage) in its pause keys and deadline, so each rung of a ladder has its own.

    Raises:
        prefect.exceptions.Pause: the run is suspended (the flow run's process ends here; Prefect
            handles it, and the answer resumes the run).
    """
    settings = get_settings()
    logger = get_run_logger()
    flow_run_id = runtime.flow_run.id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    suspend = run.deployment_id is not None  # a worker can resume it
    state_name = "Suspended" if suspend else "Paused"
    answered = run.empirical_policy.pause_keys or set()  # the waits this run went through (a resumed run replays them)
    wait = wait or stage
    deadline = _deadline(job, wait, flow_run_id)
    attempt = 0
    while True:
        key = f"{wait}-approval-{attempt}"
        attempt += 1
        replayed = key in answered  # a resumed run replays its earlier answers; only the newest one is news
        news = not replayed or f"{wait}-approval-{attempt}" not in answered
        remaining = int((deadline - dt.datetime.now(dt.UTC)).total_seconds())
        if not replayed:
            if remaining <= 0:
                record = _timed_out(stage, deadline)
                break
            where = (WHERE_TO_APPROVE.format(job_id=job.job_id) if auth.enabled(settings) else
                     WHERE_TO_APPROVE.format(job_id=job.job_id).replace("`customizer approve", "`customizer approve --reviewer NAME")
                     + ", or the run's form in the Prefect UI")
            logger.warning("Waiting for a reviewer to approve %s: %s (%s)", stage, question, where)
            notify(settings, f"customize job {job.job_id} for {job.spec.output_model} is waiting for approval of {stage}: {question} ({where})",
                   namespace=job.spec.output_model.partition("/")[0])
        form = Approval.with_initial_data(description=f"{stage.capitalize()} of job {job.job_id}: {question}", approved=False, reviewer="")
        try:
            if suspend:
                answer = suspend_flow_run(wait_for_input=form, key=key)
            else:
                answer = pause_flow_run(wait_for_input=form, timeout=remaining, poll_interval=settings.approval_poll_seconds, key=key)
        except FlowPauseTimeout:
            record = _timed_out(stage, deadline)
            break
        answered_at = _answered_at(flow_run_id, state_name, key)
        if answered_at >= deadline:
            record = _timed_out(stage, deadline)
            break
        if refusal := _refusal(settings, job, flow_run_id, key, answer):
            if news:
                logger.warning(refusal)
            continue
        record = ApprovalRecord(stage=stage, approved=answer.approved, reviewer=answer.reviewer.strip(), comment=answer.comment,
                                decided_at=_iso(answered_at))
        break
    return record_approval(job, record)


@task(name="record-approval", task_run_name="record-{record.stage}-approval")
def record_approval(job: Job, record: ApprovalRecord) -> ApprovalRecord:
    """Record a decision on the job's MLflow run and in the audit trail (once: a resumed run that
    replays the same answer gets this task's cached result)."""
    settings = get_settings()
    tracking.client(settings).set_tag(job.run_id, tag.approval(record.stage), record.model_dump_json())
    audit.record(
        settings, "approval.approved" if record.approved else "approval.rejected", record.reviewer, job=job.job_id,
        flow_run=str(runtime.flow_run.id), model=job.spec.output_model, namespace=job.spec.output_model.partition("/")[0],
        after=record.model_dump(), detail=f"{record.stage}: {record.comment}" if record.comment else record.stage,
    )
    get_run_logger().info("%s %s by %s%s", record.stage.capitalize(), "approved" if record.approved else "REJECTED",
                          record.reviewer or "nobody", f": {record.comment}" if record.comment else "")
    return record


def approve_training(job: Job, rung: int = 0) -> ApprovalRecord | None:
    """Methods the policy reviews wait for an approval before any training starts; each later rung of
    the ladder (``rung`` > 0) waits for its own."""
    hp = job.spec.hyperparameters
    if not job.policy.needs_review(hp.training_type, hp.finetuning_type):
        return None
    wait = {"wait": f"rung{rung}-training"} if rung else {}  # a later rung's own keys; no wait name a prefix of another
    record = wait_for_approval(job, "training", f"train {hp.training_type}/{hp.finetuning_type} on {job.spec.config}", **wait)
    if not record.approved:
        raise NotApproved(f"training was not approved ({record.reviewer or 'nobody'}: {record.comment or 'no reason given'})")
    return record


def approve_promotion(job: Job, decision: Decision) -> tuple[Decision, ApprovalRecord | None]:
    """A held decision waits for a reviewer; any other decision stands as it is."""
    if decision.action != "hold":
        return decision, None
    record = wait_for_approval(job, "promotion", "; ".join(r for r in decision.reasons if "FAILED" in r or "held" in r or "review" in r))
    return settle_hold(decision, record), record


def answer_overdue(deployment: str) -> list[str]:
    """Resume the ``deployment``'s suspended runs whose approval deadline has passed: the flow then
    finds the answer late and records the timeout as a rejection. Returns the flow run ids resumed.

    Raises:
        prefect.exceptions.ObjectNotFound: the deployment does not exist.
    """
    resumed = []
    now = dt.datetime.now(dt.UTC)
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["PAUSED"]))),
        )
        for run in runs:
            stage, found, _ = (run.state.state_details.pause_key or "").partition("-approval-")
            deadlines = client.filter_flow_run_input(run.id, key_prefix=deadline_key(stage), limit=1, exclude_keys=set()) if found else []
            if not deadlines or dt.datetime.fromisoformat(json.loads(deadlines[0].value)) > now:
                continue
            try:
                resume_flow_run(run.id, run_input={"approved": False, "reviewer": "customizer", "comment": TIMED_OUT})
            except RuntimeError as exc:  # answered (or cancelled) meanwhile: nothing left to time out
                log.info("flow run %s was not resumed for its approval timeout: %s", run.id, exc)
                continue
            resumed.append(str(run.id))
    return resumed


def watch_deadlines(deployment: str, every: float) -> threading.Thread:
    """Start a daemon thread that calls ``answer_overdue`` every ``every`` seconds (the worker runs it:
    a suspended run has no process of its own to notice its deadline)."""

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(every):
            try:
                for flow_run_id in answer_overdue(deployment):
                    log.warning("flow run %s: %s; resumed to record it as a rejection", flow_run_id, TIMED_OUT)
            except Exception as exc:  # noqa: BLE001 - Prefect unreachable or the deployment not yet there: try again next time
                log.warning("could not look for approvals past their deadline: %s: %s", type(exc).__name__, exc)

    thread = threading.Thread(target=watch, name="approval-deadlines", daemon=True)
    thread.start()
    return thread


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def approval_tags(records: list[ApprovalRecord | None]) -> dict[str, str]:
    """Model-version tags for the approvals a job went through."""
    return {tag.approval(r.stage): json.dumps(r.model_dump()) for r in records if r is not None}
