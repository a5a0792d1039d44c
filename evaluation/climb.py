"""Climbing the training ladder, as plain functions: a job's training rungs in order, whether the next
one fits the budget, whether a trained candidate met the target, and the ladder table's row for it.

A job trains its own method first; while a candidate's task score misses ``evaluation.target_score``
on its interval's lower bound (the bar a free rung must clear, ``evaluation.rungs.score_bounds``), it
moves to the next rung of ``hyperparameters.ladder``, as long as the sum of the rungs' estimated
device-hours stays within ``budget.max_device_hours``.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from core.catalog import CatalogError, CustomizationConfig
from core.specs import Hyperparameters
from evaluation.gate import Decision
from evaluation.ladder import MET, MISSED, NO_TARGET, LadderRow
from evaluation.rungs import score_bounds
from training.guidance import Estimate

NOT_STARTED_BUDGET, NOT_APPROVED, WAITING = "not started: budget", "not started: not approved", "waiting for approval"


def rung_name(hp: Hyperparameters) -> str:
    """How a person reads a training rung.

    >>> rung_name(Hyperparameters(finetuning_type="all_weights"))
    'sft/all_weights'
    """
    return f"{hp.training_type}/{hp.finetuning_type}"


def training_rungs(hp: Hyperparameters) -> list[Hyperparameters]:
    """The job's training rungs in climbing order: its own hyperparameters, then each later rung of
    ``hp.ladder`` with that rung's finetuning type (and learning rate and epochs, where it sets them).
    Each rung's hyperparameters name no ladder of their own.

    >>> hp = Hyperparameters(ladder=[{"finetuning_type": "lora"}, {"finetuning_type": "all_weights", "learning_rate": 1e-5}])
    >>> [(rung_name(r), r.learning_rate, r.ladder) for r in training_rungs(hp)]
    [('sft/lora', 0.0005, []), ('sft/all_weights', 1e-05, [])]
    """
    own = hp.model_copy(update={"ladder": []})
    return [own] + [
        own.model_copy(update=rung.model_dump(exclude_none=True)) for rung in hp.ladder[1:]
    ]


def check_options(hp: Hyperparameters, config: CustomizationConfig) -> None:
    """Refuse a ladder whose rung the config does not offer.

    Raises:
        ValueError: naming ``hyperparameters.ladder[i]`` and the config's allowed options.
    """
    for i, rung in enumerate(training_rungs(hp)[1:], start=1):
        try:
            config.option_for(rung.training_type, rung.finetuning_type)
        except CatalogError as exc:
            raise ValueError(f"`hyperparameters.ladder[{i}]` ({rung_name(rung)}): {exc}") from exc


def budget_stop(name: str, spent: float, cost: Estimate, budget: float | None) -> str | None:
    """Why the rung ``name`` is not started: the estimates of the rungs trained so far (``spent``
    device-hours) and its own would exceed ``budget``. None when it fits (or there is no budget).

    >>> cost = Estimate(train_examples=10, tokens_per_epoch=100, epochs=1, training_flops=1.0, devices=1, device="CPU",
    ...                 peak_tflops=1.0, utilisation=0.4, device_hours=0.5)
    >>> budget_stop("sft/all_weights", 0.75, cost, 1.0)
    'stopped the climb: sft/all_weights would take the estimate to 1.25 CPU-hours, over the budget of 1'
    >>> budget_stop("sft/all_weights", 0.5, cost, 1.0) is None
    True
    """
    total = spent + cost.device_hours
    if budget is None or total <= budget or math.isclose(total, budget):
        return None
    return f"stopped the climb: {name} would take the estimate to {total:.3g} {cost.device}-hours, over the budget of {budget:g}"


class TargetCheck(BaseModel):
    """A candidate's task score against the target, in points, with its interval (``1 - 2 alpha`` coverage)."""

    score: float
    ci_low: float
    ci_high: float
    target: float
    met: bool  # the lower bound reaches the target


def target_check(per_item: list[float], target: float, alpha: float) -> TargetCheck:
    """Whether a candidate met ``target`` points: judged on the lower bound of its task score, as a
    free rung is, so a lucky estimate on a few items does not stop the climb.

    Raises:
        ValueError: no per-item task scores (nothing to bound: the target cannot be judged).

    >>> target_check([1.0] * 38 + [0.0] * 2, 80.0, 0.05).met
    True
    >>> target_check([1.0] * 9 + [0.0], 80.0, 0.05).met  # 90 points on 10 items: the bound is lower
    False
    """
    if not per_item:
        raise ValueError("the candidate has no per-item task scores: whether it met `evaluation.target_score` cannot be judged")
    low, high = score_bounds(per_item, alpha)
    score = 100 * sum(per_item) / len(per_item)
    return TargetCheck(score=score, ci_low=100 * low, ci_high=100 * high, target=target, met=100 * low >= target)


def target_decision(check: TargetCheck | None) -> str:
    """A tried rung's decision in the ladder table: met or missed the target, or no target set."""
    return NO_TARGET if check is None else MET if check.met else MISSED


def forgetting_verdict(decision: Decision) -> str | None:
    """The gate's forgetting verdict in one word: FAILED if any limit failed, else undecided, else passed.

    >>> forgetting_verdict(Decision(action="promote", reasons=[])) is None
    True
    """
    verdicts = {d.verdict for d in decision.deltas}
    return next((v for v in ("FAILED", "undecided", "passed") if v in verdicts), None)


def training_row(name: str, metric: str, cost: Estimate, decision: str, check: TargetCheck | None = None,
                 gate: Decision | None = None) -> LadderRow:
    """The ladder table's row of a training rung: tried (with its score and the gate's forgetting
    verdict) or not started (its estimate and why).

    >>> cost = Estimate(train_examples=10, tokens_per_epoch=100, epochs=1, training_flops=1.0, devices=1, device="CPU",
    ...                 peak_tflops=1.0, utilisation=0.4, device_hours=0.5)
    >>> training_row("sft/all_weights", "exact_match", cost, NOT_STARTED_BUDGET).score is None
    True
    """
    return LadderRow(
        rung=name, kind="training", metric=metric, score=check.score / 100 if check else None,
        ci_low=check.ci_low / 100 if check else None, ci_high=check.ci_high / 100 if check else None,
        forgetting=forgetting_verdict(gate) if gate else None, device_hours=cost.device_hours, device=cost.device,
        decision=decision,
    )
