"""Approvals without a paused run: Prefect's pause is replaced by a fake that answers as reviewers
would, so the rules (no self-approval, timeout is a rejection, held decisions settle) are checked."""

from __future__ import annotations

import json

import pytest
from prefect.exceptions import FlowPauseTimeout

from evaluation.gate import ApprovalRecord, Decision
from tasks import approval
from tasks.approval import Approval, NotApproved, approval_tags, approve_promotion, approve_training, wait_for_approval
from tests.tasks.conftest import make_job, run_tags


class Reviewers:
    """Stands in for ``pause_flow_run``: hands out the queued answers one pause at a time."""

    def __init__(self, *answers: Approval | Exception):
        self.answers = list(answers)
        self.pauses: list[dict] = []

    def __call__(self, wait_for_input, timeout, poll_interval, key):
        self.pauses.append({"timeout": timeout, "key": key, "description": wait_for_input._description,
                            "form": wait_for_input})
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_submitter_cannot_approve_and_the_next_reviewer_decides(job_settings, monkeypatch):
    job = make_job(job_settings, submitted_by="Ana", hyperparameters={"training_type": "dpo"})
    reviewers = Reviewers(Approval(approved=True, reviewer=" ana ", comment="mine"),
                          Approval(approved=True, reviewer="bo", comment="looks fine"))
    monkeypatch.setattr(approval, "pause_flow_run", reviewers)

    record = wait_for_approval(job, "training", "train dpo/lora")

    assert (record.approved, record.reviewer, record.comment) == (True, "bo", "looks fine")
    assert [p["key"] for p in reviewers.pauses] == ["training-approval-0", "training-approval-1"]
    assert "train dpo/lora" in reviewers.pauses[0]["description"]
    assert 0 < reviewers.pauses[0]["timeout"] <= 72 * 3600
    assert json.loads(run_tags(job_settings, job)["customizer.approval.training"])["reviewer"] == "bo"


def test_no_answer_within_the_timeout_is_a_rejection(job_settings, monkeypatch):
    job = make_job(job_settings)
    monkeypatch.setattr(approval, "pause_flow_run", Reviewers(FlowPauseTimeout("timed out")))

    record = wait_for_approval(job, "promotion", "held")

    assert (record.approved, record.reviewer, record.comment) == (False, None, "no approval within the timeout")
    assert json.loads(run_tags(job_settings, job)["customizer.approval.promotion"])["approved"] is False


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
