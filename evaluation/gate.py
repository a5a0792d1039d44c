"""The promotion gate: a pure function from scores and policy to a decision with reasons.

Scores are plain dicts of values in [0, 1]; the policy speaks in points (0-100). Every rule that
was checked leaves a reason, passed or not, so the decision explains itself.

Forgetting is judged on paired per-item results: a general benchmark fails when it dropped more
than the policy's limit *and* a one-sided exact sign test (McNemar) over the items that changed
says the drop is not chance. On an 80-item benchmark one item is 1.25 points, so without the test
two flipped items would reject any candidate.
"""

from __future__ import annotations

from math import comb
from typing import Any, Literal

from pydantic import BaseModel

from training.specs import PromotionPolicy

Action = Literal["promote", "reject"]
Scores = dict[str, Any]  # {"task": {metric: v}, "general": {bench: v}, "per_sample": {bench: [0/1, ...]}}


class Decision(BaseModel):
    action: Action
    reasons: list[str]


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


def _forgetting(name: str, baseline: Scores, candidate: Scores, policy: PromotionPolicy) -> tuple[bool, str]:
    before, after = baseline["general"][name], candidate["general"][name]
    drop = _points(before - after)
    head = f"forgetting {name}: {_points(before):.1f} -> {_points(after):.1f} ({_points(after - before) + 0.0:+.1f} points; limit -{policy.max_general_drop:.1f})"
    if drop <= policy.max_general_drop:
        return True, f"{head} passed"
    paired_base = baseline.get("per_sample", {}).get(name)
    paired_cand = candidate.get("per_sample", {}).get(name)
    if not paired_base or not paired_cand or len(paired_base) != len(paired_cand):
        return False, f"{head} FAILED"
    losses = sum(1 for b, c in zip(paired_base, paired_cand) if b > c)
    gains = sum(1 for b, c in zip(paired_base, paired_cand) if c > b)
    p = sign_test_p(losses, gains)
    significant = p < policy.forgetting_alpha
    detail = f"{losses} items lost, {gains} gained, paired sign test p={p:.3f}"
    if significant:
        return False, f"{head} FAILED ({detail})"
    return True, f"{head} passed: within noise ({detail} >= {policy.forgetting_alpha})"


def decide(
    baseline: Scores,
    candidate: Scores,
    champion: Scores | None,
    policy: PromotionPolicy,
    task_metric: str,
) -> Decision:
    """Decide whether a candidate is promoted.

    Args:
        baseline: ``{"task": {metric: score}, "general": {benchmark: score}, "per_sample": {benchmark:
            [item scores]}}`` of the base model (``per_sample`` optional; it enables the paired test).
        candidate: the same for the fine-tuned model (same benchmarks, same prompt, same item order).
        champion: the current champion's scores (``task`` at least), or None if there is none.
        policy: margins in points and the test's significance level.
        task_metric: which task metric decides.

    Returns:
        ``promote`` when the task score beats the baseline (and the champion, if any) by more than
        the policy's margin and no general benchmark shows forgetting; ``reject`` otherwise.
        Reasons list every rule's outcome.

    >>> base = {"task": {"em": 0.2}, "general": {"mmlu": 0.40}}
    >>> cand = {"task": {"em": 0.6}, "general": {"mmlu": 0.39}}
    >>> decide(base, cand, None, PromotionPolicy(), "em").action
    'promote'
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

    for name in sorted(baseline["general"]):
        ok, reason = _forgetting(name, baseline, candidate, policy)
        passed &= ok
        reasons.append(reason)

    return Decision(action="promote" if passed else "reject", reasons=reasons)
