"""Approvals: a job waits, paused in Prefect, for a reviewer's answer on a typed form.

The form (approve or reject, reviewer, comment) shows in the Prefect UI on the paused run and can
be answered through Prefect's API (``resume_flow_run`` with ``run_input``) or ``customizer approve``.
The reviewer must not be the submitter; an approval that does not come within the policy's
timeout counts as a rejection. Who decided what is recorded on the job's MLflow run (and later on
the model version).

``wait_for_approval`` is called from the flow body: Prefect pauses flow runs, not tasks.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Literal

from prefect import get_run_logger, runtime
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from core import tags as tag
from core import tracking
from core.settings import get_settings
from deploy.notify import notify
from evaluation.gate import ApprovalRecord, Decision, settle_hold
from tasks.job import Job

Stage = Literal["training", "promotion"]


class Approval(RunInput):
    """A reviewer's answer."""

    approved: bool = Field(description="Approve (true) or reject (false).")
    reviewer: str = Field(min_length=1, description="Who decides; must not be the person who submitted the job.")
    comment: str = Field(default="", description="Why.")


class NotApproved(RuntimeError):
    """A reviewer rejected the job (or nobody answered in time)."""


def wait_for_approval(job: Job, stage: Stage, question: str) -> ApprovalRecord:
    """Pause the job until a reviewer other than the submitter answers, or the timeout passes."""
    settings = get_settings()
    logger = get_run_logger()
    deadline = time.monotonic() + job.policy.approval_timeout_hours * 3600
    attempt = 0
    record = None
    while record is None:
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            record = ApprovalRecord(stage=stage, approved=False, reviewer=None, comment="no approval within the timeout", decided_at=_now())
            break
        logger.warning("Waiting for a reviewer to approve %s: %s (Prefect UI: resume the paused run)", stage, question)
        notify(settings, f"customize job {job.job_id} for {job.spec.output_model} is waiting for approval of {stage}: "
                         f"{question} (answer on flow run {runtime.flow_run.id} in the Prefect UI, or `customizer approve {job.job_id} --reviewer NAME`)")
        try:
            answer = pause_flow_run(
                wait_for_input=Approval.with_initial_data(description=f"{stage.capitalize()} of job {job.job_id}: {question}", approved=False, reviewer=""),
                timeout=remaining,
                poll_interval=settings.approval_poll_seconds,
                key=f"{stage}-approval-{attempt}",
            )
        except FlowPauseTimeout:
            record = ApprovalRecord(stage=stage, approved=False, reviewer=None, comment="no approval within the timeout", decided_at=_now())
            break
        attempt += 1
        submitter = (job.spec.submitted_by or "").strip().lower()
        if submitter and answer.reviewer.strip().lower() == submitter:
            logger.warning("%s submitted this job and cannot also approve it; waiting for another reviewer", answer.reviewer)
            continue
        record = ApprovalRecord(stage=stage, approved=answer.approved, reviewer=answer.reviewer.strip(), comment=answer.comment, decided_at=_now())
    client = tracking.client(settings)
    client.set_tag(job.run_id, tag.approval(stage), record.model_dump_json())
    logger.info("%s %s by %s%s", stage.capitalize(), "approved" if record.approved else "REJECTED",
                record.reviewer or "nobody", f": {record.comment}" if record.comment else "")
    return record


def approve_training(job: Job) -> ApprovalRecord | None:
    """Methods the policy reviews wait for an approval before any training starts."""
    hp = job.spec.hyperparameters
    if not job.policy.needs_review(hp.training_type, hp.finetuning_type):
        return None
    record = wait_for_approval(job, "training", f"train {hp.training_type}/{hp.finetuning_type} on {job.spec.config}")
    if not record.approved:
        raise NotApproved(f"training was not approved ({record.reviewer or 'nobody'}: {record.comment or 'no reason given'})")
    return record


def approve_promotion(job: Job, decision: Decision) -> tuple[Decision, ApprovalRecord | None]:
    """A held decision waits for a reviewer; any other decision stands as it is."""
    if decision.action != "hold":
        return decision, None
    record = wait_for_approval(job, "promotion", "; ".join(r for r in decision.reasons if "FAILED" in r or "held" in r or "review" in r))
    return settle_hold(decision, record), record


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def approval_tags(records: list[ApprovalRecord | None]) -> dict[str, str]:
    """Model-version tags for the approvals a job went through."""
    return {tag.approval(r.stage): json.dumps(r.model_dump()) for r in records if r is not None}
