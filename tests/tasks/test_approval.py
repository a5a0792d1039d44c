"""Approval rules without a waiting run: which answers count (no self-approval, a signature with
authentication on), a timeout is a rejection, only reviewed methods and held decisions wait."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from core import auth
from core.secrets import sign
from evaluation.gate import ApprovalRecord, Decision
from tasks import approval
from tasks.approval import Approval, NotApproved, approval_tags, approve_promotion, approve_training
from tests.tasks.conftest import make_job


def test_the_submitter_cannot_approve_and_with_auth_on_only_a_signed_answer_counts(job_settings):
    """Which answers count (the waiting itself, suspended or paused in Prefect, is tested in
    tests/flows/test_approvals.py and test_suspended_approval.py)."""
    job = make_job(job_settings, tracked=False, submitted_by="Ana", hyperparameters={"training_type": "dpo"})
    run = uuid.uuid4()

    def answer(reviewer: str, settings=job_settings, signed: bool = False) -> Approval:
        message = auth.approval_message(run, "training-approval-0", True, reviewer)
        return Approval(approved=True, reviewer=reviewer, signature=sign(settings, message) if signed else "")

    assert "Ana submitted this job and cannot also approve it" in approval._refusal(job_settings, job, run, "training-approval-0", answer("Ana"))
    assert "cannot also approve" in approval._refusal(job_settings, job, run, "training-approval-0", answer(" ana "))
    assert approval._refusal(job_settings, job, run, "training-approval-0", answer("bo")) is None  # auth off: a name is enough

    secured = job_settings.model_copy(update={"api_keys": {"k": ["*"]}})
    refused = approval._refusal(secured, job, run, "training-approval-0", answer("bo"))
    assert "without the platform's signature" in refused and f"/v1/customization/jobs/{job.job_id}/approval" in refused
    assert approval._refusal(secured, job, run, "training-approval-0", answer("bo", secured, signed=True)) is None
    # A signature covers the run and the wait it answers: replayed on another wait, it does not count.
    moved = answer("bo", secured, signed=True)
    assert approval._refusal(secured, job, run, "promotion-approval-0", moved) is not None
    assert "cannot also approve" in approval._refusal(secured, job, run, "training-approval-0", answer("ana", secured, signed=True))


def test_no_answer_within_the_timeout_is_a_rejection():
    deadline = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    record = approval._timed_out("promotion", deadline)
    assert (record.approved, record.reviewer, record.comment) == (False, None, "no approval within the timeout")
    assert record.decided_at.startswith("2026-01-02T03:04:05")


def test_lora_sft_trains_without_asking(job_settings, monkeypatch):
    monkeypatch.setattr(approval, "wait_for_approval", lambda *args: pytest.fail("LoRA SFT asked for an approval"))
    assert approve_training(make_job(job_settings, tracked=False)) is None


def test_a_rejected_training_stops_the_job_saying_who_and_why(job_settings, monkeypatch):
    job = make_job(job_settings, tracked=False, hyperparameters={"training_type": "grpo"})
    asked = []

    def reject(job, stage, question):
        asked.append((stage, question))
        return ApprovalRecord(stage=stage, approved=False, reviewer="bo", comment="too costly", decided_at="t")

    monkeypatch.setattr(approval, "wait_for_approval", reject)
    with pytest.raises(NotApproved, match=r"training was not approved \(bo: too costly\)"):
        approve_training(job)
    assert asked == [("training", f"train grpo/lora on {job.spec.config}")]


def test_only_a_held_decision_waits_and_the_answer_settles_it(job_settings, monkeypatch):
    job = make_job(job_settings, tracked=False)
    questions = []

    def approve(job, stage, question):
        questions.append(question)
        return ApprovalRecord(stage=stage, approved=True, reviewer="bo", comment="", decided_at="t")

    monkeypatch.setattr(approval, "wait_for_approval", approve)
    promoted = Decision(action="promote", reasons=["task em: passed"])
    assert approve_promotion(job, promoted) == (promoted, None)
    assert questions == []

    held = Decision(action="hold", reasons=["task em: passed", "review: dpo/lora needs a reviewer's approval before promotion"])
    settled, record = approve_promotion(job, held)
    assert settled.action == "promote" and settled.reasons[-1] == "approval: approved by bo"
    assert record.reviewer == "bo"
    assert questions == ["review: dpo/lora needs a reviewer's approval before promotion"]


def test_approval_tags_skip_stages_without_a_review():
    record = ApprovalRecord(stage="promotion", approved=True, reviewer="bo", comment="ok", decided_at="t")
    tags = approval_tags([None, record])
    assert list(tags) == ["customizer.approval.promotion"]
    assert json.loads(tags["customizer.approval.promotion"]) == record.model_dump()
