"""The promotion gate: a pure function from scores, loss curves and policy to a decision with reasons.

Scores are plain dicts of values in [0, 1]; the policy speaks in points (0-100). Every rule that was
checked leaves a reason, passed or not, so the decision explains itself:

- task: the candidate beats the baseline (and the champion, if any) by the policy's margin;
- forgetting: a general benchmark fails when it dropped more than the limit *and* a one-sided exact
  sign test (McNemar) over the per-item results says the drop is not chance; the delta and its 95%
  confidence interval are reported either way. On an 80-item benchmark one item is 1.25 points, so
  without the test two flipped items would reject any candidate;
- curves: a validation loss that rose while the training loss kept falling (overfitting) holds the
  candidate for a person, or rejects it, as the policy says;
- review: methods the policy marks as reviewed (full weights, DPO, GRPO by default) never promote
  on their own; they wait for an approval.

The action is ``reject`` when a hard rule fails, else ``hold`` when a person must decide, else
``promote``.
"""

from __future__ import annotations

from math import comb, sqrt
from typing import Any, Literal

from pydantic import BaseModel

from training.specs import PromotionPolicy

Action = Literal["promote", "hold", "reject"]
Scores = dict[str, Any]  # {"task": {metric: v}, "general": {bench: v}, "per_sample": {bench: [0/1, ...]}}
Curves = dict[str, list[tuple[int, float]]]  # {"train_loss": [(step, v)], "val_loss": [(step, v)]}

DIVERGENCE = 0.05  # a final val loss 5% above its best counts as rising


class Delta(BaseModel):
    """A general benchmark's change, candidate minus baseline, in points."""

    benchmark: str
    baseline: float
    candidate: float
    delta: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    items_lost: int | None
    items_gained: int | None


class Decision(BaseModel):
    action: Action
    reasons: list[str]
    deltas: list[Delta] = []


class ApprovalRecord(BaseModel):
    """A reviewer's decision (or its absence) at a stage of a job."""

    stage: Literal["training", "promotion"]
    approved: bool
    reviewer: str | None
    comment: str
    decided_at: str


def settle_hold(decision: Decision, approval: ApprovalRecord) -> Decision:
    """A held decision after its reviewer answered: promote when approved, reject otherwise.

    >>> held = Decision(action="hold", reasons=["review: dpo/lora needs a reviewer's approval before promotion"])
    >>> settle_hold(held, ApprovalRecord(stage="promotion", approved=True, reviewer="ana", comment="ok", decided_at="t")).action
    'promote'
    """
    if decision.action != "hold":
        return decision
    who = approval.reviewer or "nobody"
    verdict = "approved" if approval.approved else "rejected"
    reason = f"approval: {verdict} by {who}" + (f" ({approval.comment})" if approval.comment else "")
    return Decision(action="promote" if approval.approved else "reject", reasons=[*decision.reasons, reason], deltas=decision.deltas)


def _points(value: float) -> float:
    return 100.0 * value


def sign_test_p(losses: int, gains: int) -> float:
    """One-sided exact sign test: P(at least ``losses`` of the changed items are losses by chance).

    >>> sign_test_p(0, 0)
    1.0
    >>> round(sign_test_p(2, 0), 3)
    0.25
    >>> round(sign_test_p(8, 0), 4)
    0.0039
    """
    changed = losses + gains
    if changed == 0:
        return 1.0
    return sum(comb(changed, k) for k in range(losses, changed + 1)) / 2**changed


def paired_delta(name: str, before: list[float], after: list[float]) -> Delta:
    """Mean paired difference with a 95% normal-approximation interval and the sign test.

    >>> d = paired_delta("g", [1, 1, 1, 0], [1, 0, 1, 1])
    >>> (d.delta, d.items_lost, d.items_gained)
    (0.0, 1, 1)
    """
    n = len(before)
    diffs = [a - b for b, a in zip(before, after, strict=True)]
    mean = sum(diffs) / n
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    half = 1.96 * sqrt(variance / n)
    lost = sum(1 for d in diffs if d < 0)
    gained = sum(1 for d in diffs if d > 0)
    return Delta(
        benchmark=name, baseline=_points(sum(before) / n), candidate=_points(sum(after) / n), delta=_points(mean),
        ci_low=_points(mean - half), ci_high=_points(mean + half), p_value=sign_test_p(lost, gained),
        items_lost=lost, items_gained=gained,
    )


def _forgetting(name: str, baseline: Scores, candidate: Scores, policy: PromotionPolicy) -> tuple[bool, str, Delta]:
    before, after = baseline["general"][name], candidate["general"][name]
    paired_base = baseline.get("per_sample", {}).get(name)
    paired_cand = candidate.get("per_sample", {}).get(name)
    if paired_base and paired_cand and len(paired_base) == len(paired_cand):
        delta = paired_delta(name, paired_base, paired_cand)
    else:
        delta = Delta(benchmark=name, baseline=_points(before), candidate=_points(after), delta=_points(after - before),
                      ci_low=None, ci_high=None, p_value=None, items_lost=None, items_gained=None)
    drop = -delta.delta
    ci = f", 95% CI [{delta.ci_low:+.1f}, {delta.ci_high:+.1f}]" if delta.ci_low is not None else ""
    head = f"forgetting {name}: {delta.baseline:.1f} -> {delta.candidate:.1f} ({delta.delta + 0.0:+.1f} points{ci}; limit -{policy.max_general_drop:.1f})"
    if drop <= policy.max_general_drop:
        return True, f"{head} passed", delta
    if delta.p_value is None:
        return False, f"{head} FAILED", delta
    detail = f"{delta.items_lost} items lost, {delta.items_gained} gained, paired sign test p={delta.p_value:.3f}"
    if delta.p_value < policy.forgetting_alpha:
        return False, f"{head} FAILED ({detail})", delta
    return True, f"{head} passed: within noise ({detail} >= {policy.forgetting_alpha})", delta


def curves_diverged(curves: Curves | None) -> str | None:
    """Why the curves look overfitted (val loss up while train loss down), or None.

    >>> curves_diverged({"train_loss": [(1, 2.0), (2, 1.0), (3, 0.5)], "val_loss": [(1, 1.5), (2, 1.2), (3, 1.6)]})
    'val_loss rose from 1.200 (step 2) to 1.600 (step 3) while train_loss fell from 1.000 to 0.500'
    """
    if not curves:
        return None
    val, train = curves.get("val_loss") or [], curves.get("train_loss") or []
    if len(val) < 2 or not train:
        return None
    best_step, best = min(val, key=lambda point: point[1])
    last_step, last = val[-1]
    if last <= best * (1 + DIVERGENCE):
        return None

    def train_at(step: int) -> float:
        return [v for s, v in train if s <= step][-1] if any(s <= step for s, _ in train) else train[0][1]

    if train_at(last_step) >= train_at(best_step):
        return None
    return (
        f"val_loss rose from {best:.3f} (step {best_step}) to {last:.3f} (step {last_step}) "
        f"while train_loss fell from {train_at(best_step):.3f} to {train_at(last_step):.3f}"
    )


def decide(
    baseline: Scores,
    candidate: Scores,
    champion: Scores | None,
    policy: PromotionPolicy,
    task_metric: str,
    curves: Curves | None = None,
    method: tuple[str, str] = ("sft", "lora"),
) -> Decision:
    """Decide whether a candidate is promoted, held for a reviewer, or rejected.

    Args:
        baseline: ``{"task": {metric: score}, "general": {benchmark: score}, "per_sample": {benchmark:
            [item scores]}}`` of the base model (``per_sample`` optional; it enables the paired test).
        candidate: the same for the fine-tuned model (same benchmarks, same prompt, same item order).
        champion: the current champion's scores (``task`` at least), or None if there is none.
        policy: margins, forgetting limit and test level, counted benchmarks, reviewed methods.
        task_metric: which task metric decides.
        curves: the candidate's loss curves, if it was trained.
        method: ``(training_type, finetuning_type)`` of the candidate.

    Returns:
        The action and every rule's outcome as reasons, plus the per-benchmark deltas.

    >>> base = {"task": {"em": 0.2}, "general": {"mmlu": 0.40}}
    >>> cand = {"task": {"em": 0.6}, "general": {"mmlu": 0.39}}
    >>> decide(base, cand, None, PromotionPolicy(), "em").action
    'promote'
    >>> decide(base, cand, None, PromotionPolicy(), "em", method=("dpo", "lora")).action
    'hold'
    >>> cand["general"]["mmlu"] = 0.30
    >>> decide(base, cand, None, PromotionPolicy(), "em").action
    'reject'
    """
    reasons: list[str] = []
    passed = True

    before, after = baseline["task"][task_metric], candidate["task"][task_metric]
    gain = _points(after - before)
    ok = gain > policy.min_task_gain
    passed &= ok
    reasons.append(
        f"task {task_metric}: {_points(before):.1f} -> {_points(after):.1f} "
        f"({gain:+.1f} points; needs > {policy.min_task_gain:+.1f}) {'passed' if ok else 'FAILED'}"
    )

    if champion is None:
        reasons.append("no champion yet: the baseline is the bar")
    else:
        held = champion["task"][task_metric]
        lead = _points(after - held)
        ok = lead > policy.min_task_gain
        passed &= ok
        reasons.append(
            f"vs champion {task_metric}: {_points(held):.1f} -> {_points(after):.1f} ({lead:+.1f} points) "
            f"{'passed' if ok else 'FAILED'}"
        )

    deltas = []
    counted = policy.benchmarks if policy.benchmarks is not None else sorted(baseline["general"])
    for name in sorted(baseline["general"]):
        if name not in counted:
            reasons.append(f"forgetting {name}: not counted by the policy")
            continue
        ok, reason, delta = _forgetting(name, baseline, candidate, policy)
        passed &= ok
        reasons.append(reason)
        deltas.append(delta)

    hold = False
    diverged = curves_diverged(curves)
    if diverged is None:
        reasons.append("curves: no sign of overfitting" if curves and curves.get("val_loss") else "curves: no validation curve to check")
    elif policy.diverging_curves == "reject":
        passed = False
        reasons.append(f"curves: {diverged} FAILED")
    elif policy.diverging_curves == "hold":
        hold = True
        reasons.append(f"curves: {diverged}; held for a reviewer")
    else:
        reasons.append(f"curves: {diverged}; ignored by the policy")

    if policy.needs_review(*method):
        hold = True
        reasons.append(f"review: {method[0]}/{method[1]} needs a reviewer's approval before promotion")

    action: Action = "reject" if not passed else "hold" if hold else "promote"
    return Decision(action=action, reasons=reasons, deltas=deltas)


def prompting_suffices(task: dict[str, float], few_shot: dict[str, float], task_metric: str, target: float | None) -> str | None:
    """Why no fine-tuning is needed (the base model, prompted, already reaches the target), or None.

    >>> prompting_suffices({"em": 0.5}, {"em": 0.92}, "em", 90.0)
    'few-shot prompting reaches em 92.0 >= target 90.0'
    >>> prompting_suffices({"em": 0.5}, {}, "em", 90.0) is None
    True
    """
    if target is None:
        return None
    zero, few = _points(task[task_metric]), _points(few_shot[task_metric]) if task_metric in few_shot else None
    if zero >= target:
        return f"zero-shot prompting reaches {task_metric} {zero:.1f} >= target {target:.1f}"
    if few is not None and few >= target:
        return f"few-shot prompting reaches {task_metric} {few:.1f} >= target {target:.1f}"
    return None
