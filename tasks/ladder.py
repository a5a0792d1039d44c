"""Climbing the training ladder: train the job's own method, and while a trained candidate misses
``evaluation.target_score``, the next rung ``hyperparameters.ladder`` names, as long as the rungs'
estimated device-hours together stay within ``budget.max_device_hours``. A rung whose method the
policy reviews waits for its own approval before it trains (``tasks.approval``).

``climb`` runs in the flow body, not as a task: an approval pauses or suspends the flow run, which a
task cannot. Each rung trains and is scored by the ``train`` and ``evaluate`` tasks with that rung's
job (its hyperparameters, its own work folder), so a run resumed after an approval reuses each rung's
results, and no two rungs share a cache key or a checkpoint folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel

from core import tracking
from core.settings import get_settings
from core.specs import Hyperparameters
from data.ingest import IngestedDataset
from evaluation.climb import (
    NOT_APPROVED,
    NOT_STARTED_BUDGET,
    WAITING,
    TargetCheck,
    budget_stop,
    rung_name,
    target_check,
    target_decision,
    training_row,
    training_rungs,
)
from evaluation.gate import ApprovalRecord, Decision, decide
from evaluation.ladder import LADDER_TAG, LadderRow, free_rows, ladder_json
from evaluation.runner import StageScores
from tasks.approval import NotApproved, approve_training
from tasks.evaluation import evaluate
from tasks.job import Job
from tasks.training import TrainingPlan, train
from training.base_model import ResolvedModel
from training.common import TrainResult
from training.guidance import Estimate


class TriedRung(BaseModel):
    """A rung that trained: its job, cost, approval, trained model, scores and the target's verdict."""

    job: Job
    estimate: Estimate
    approval: ApprovalRecord | None
    trained: TrainResult
    candidate: StageScores
    target: TargetCheck | None  # None when the job sets no target


class Climb(BaseModel):
    """The rungs tried, cheapest first, and the one the climb stopped before, with why."""

    tried: list[TriedRung]
    stopped_at: tuple[str, Estimate, str] | None = None  # (rung, its estimate, the row's decision)
    outcome: str  # which rung met the target, or that none did and why the climb ended

    @property
    def chosen(self) -> TriedRung:
        """The candidate that goes to the gate: the one that met the target, else the last tried."""
        return self.tried[-1]

    @property
    def approvals(self) -> list[ApprovalRecord | None]:
        """Each tried rung's training approval, in climbing order (None where its method is self-service)."""
        return [rung.approval for rung in self.tried]

    def rows(self, baseline: StageScores, decision: Decision) -> list[LadderRow]:
        """The whole ladder table, cheapest first: the free rungs scored at the baseline, then one row per
        training rung, each tried rung with its target verdict and forgetting (the chosen one's from the
        gate's decision, the others' from the same rules without a champion)."""
        job = self.chosen.job
        rows = free_rows(baseline, job.spec.evaluation.target_score, job.policy.forgetting_alpha)
        for rung in self.tried:
            hp = rung.job.spec.hyperparameters
            gated = decision if rung is self.chosen else decide(
                baseline.gate_scores(), rung.candidate.gate_scores(), None, rung.job.policy, baseline.task_metric,
                method=(hp.training_type, hp.finetuning_type))
            rows.append(training_row(rung_name(hp), baseline.task_metric, rung.estimate, target_decision(rung.target), rung.target, gated))
        if self.stopped_at:
            name, cost, why = self.stopped_at
            rows.append(training_row(name, baseline.task_metric, cost, why))
        return rows


def rung_job(job: Job, hp: Hyperparameters, index: int) -> Job:
    """The job as rung ``index`` trains it: the job itself for its own method, else with the rung's
    hyperparameters and a work folder of its own (a rung never resumes another's checkpoints)."""
    if index == 0:
        return job
    folder = Path(job.work_dir) / "rungs" / hp.finetuning_type
    folder.mkdir(parents=True, exist_ok=True)
    return job.model_copy(update={"spec": job.spec.model_copy(update={"hyperparameters": hp}), "work_dir": str(folder)})


def climb(
    job: Job, base: ResolvedModel, data: IngestedDataset, benchmarks: dict[str, Any], baseline: StageScores, plan: TrainingPlan,
) -> Climb:
    """Train the job's rungs in order until one meets the target, the budget stops the next, a
    reviewer declines the next, or none is left.

    Raises:
        NotApproved: the job's own method was not approved (nothing trained; a later rung that is not
            approved ends the climb instead, and the candidates trained so far go on).
    """
    logger = get_run_logger()
    target, alpha, budget = job.spec.evaluation.target_score, job.policy.forgetting_alpha, job.spec.budget.max_device_hours
    rungs = training_rungs(job.spec.hyperparameters)
    if len(plan.rungs) != len(rungs):  # fail closed: a rung without an estimate cannot be held to the budget
        raise ValueError(f"job {job.job_id}: the plan estimates {len(plan.rungs)} of the ladder's {len(rungs)} rungs")
    tried: list[TriedRung] = []
    spent = 0.0
    for index, (hp, cost) in enumerate(zip(rungs, plan.rungs, strict=True)):
        name = rung_name(hp)
        if index and (reason := budget_stop(name, spent, cost, budget)):  # the first rung's budget: plan_training
            return _stopped(tried, (name, cost, NOT_STARTED_BUDGET), reason, target)
        this = rung_job(job, hp, index)
        if index and job.policy.needs_review(hp.training_type, hp.finetuning_type):
            _record_waiting(job, baseline, tried, (name, cost, WAITING))  # the job's status shows the table while it waits
        try:
            approval = approve_training(this, rung=index)  # a reviewed method waits for a person first
        except NotApproved as exc:
            if not index:
                raise
            return _stopped(tried, (name, cost, NOT_APPROVED), f"stopped the climb: {exc}", target)
        spent += cost.device_hours
        trained = train(this, base, data)
        candidate = evaluate(this, base, benchmarks, trained=trained, stage="candidate" if not index else f"candidate-{hp.finetuning_type}")
        check = target_check(candidate.per_sample_task, target, alpha) if target is not None else None
        tried.append(TriedRung(job=this, estimate=cost, approval=approval, trained=trained, candidate=candidate, target=check))
        if check is None:
            return Climb(tried=tried, outcome=f"trained {name}; no target set")
        logger.info("Rung %s: %s %.1f (interval %.1f-%.1f), target %.1f: %s", name, candidate.task_metric, check.score,
                    check.ci_low, check.ci_high, target, target_decision(check))
        if check.met:
            return Climb(tried=tried, outcome=f"{name} met the target {target:g} ({check.ci_low:.1f} at the lower bound)")
    return _stopped(tried, None, "no rung is left", target)


def _record_waiting(job: Job, baseline: StageScores, tried: list[TriedRung], waiting: tuple[str, Estimate, str]) -> None:
    """The ladder so far on the job's run (``LADDER_TAG``, which the job's status reads): the free
    rungs, the training rungs tried, and the one waiting for its approval."""
    metric = baseline.task_metric
    rows = free_rows(baseline, job.spec.evaluation.target_score, job.policy.forgetting_alpha)
    rows += [training_row(rung_name(t.job.spec.hyperparameters), metric, t.estimate, target_decision(t.target), t.target)
             for t in tried]
    rows.append(training_row(waiting[0], metric, waiting[1], waiting[2]))
    tracking.client(get_settings()).set_tag(job.run_id, LADDER_TAG, ladder_json(rows))


def _stopped(tried: list[TriedRung], at: tuple[str, Estimate, str] | None, reason: str, target: float | None) -> Climb:
    get_run_logger().warning("No training rung met the target %s: %s", target, reason)
    return Climb(tried=tried, stopped_at=at, outcome=f"no training rung met the target {target:g}: {reason}")
