"""The promotion gate: a pure function from scores, loss curves and policy to a decision with reasons.

Scores are plain dicts of values in [0, 1] (bits-per-byte for language-modelling benchmarks); the
policy speaks in points (0-100) and percent. The candidate carries the burden of proof: every rule
is judged on a paired one-sided bound at the policy's level (``forgetting_alpha``), item by item
against the base model (``evaluation.stats``), and every rule leaves a reason, passed or not:

- task: the lower bound of the task gain beats the policy's margin (and the candidate beats the
  champion, if any); a gain whose estimate clears the margin but whose bound does not holds the
  candidate for a person;
- forgetting (non-inferiority): the candidate must *show* that it did not lose more than the limit:
  - pooled over every counted accuracy benchmark, item by item, the upper bound of the drop is
    below ``max_general_drop`` (2 points by default);
  - on each counted benchmark alone, below ``benchmark_limit`` (3x the limit by default), so a large
    drop on one benchmark blocks however well the others did (with one accuracy benchmark, it is
    judged at ``max_general_drop`` directly);
  - on language-modelling benchmarks, the upper bound of the rise in bits-per-byte of held-out prose
    is below ``max_bpb_increase`` percent.
  A drop shown to be beyond its limit rejects; one the data can neither show within nor beyond the
  limit holds for a person and says which drops the data could rule out — it never promotes;
- curves: a validation loss that rose while the training loss kept falling (overfitting) holds the
  candidate for a person, or rejects it, as the policy says;
- review: methods the policy marks as reviewed (full weights, DPO, GRPO by default) never promote
  on their own; they wait for an approval.

The action is ``reject`` when a hard rule fails, else ``hold`` when a person must decide, else
``promote``.
"""

from __future__ import annotations

from math import exp, log
from typing import Any, Literal

from pydantic import BaseModel

from evaluation.stats import detectable_drop, detectable_mean, drop_bounds, mean_bounds
from core.specs import PromotionPolicy

Action = Literal["promote", "hold", "reject"]
Verdict = Literal["passed", "undecided", "FAILED"]
Measure = Literal["accuracy", "bits_per_byte"]
# {"task": {metric: v}, "general": {bench: v}, "per_sample": {bench: [0/1, ...]}, "per_sample_task": [v, ...],
#  "per_sample_bpb": {bench: [bpb, ...]}, "per_sample_loglik": {bench: [log p(gold), ...]}, "measures": {bench: measure}}
Scores = dict[str, Any]
Curves = dict[str, list[tuple[int, float]]]  # {"train_loss": [(step, v)], "val_loss": [(step, v)]}

DIVERGENCE = 0.05  # a final val loss 5% above its best counts as rising
POOLED = "pooled"


class Delta(BaseModel):
    """One forgetting comparison, candidate against baseline: a benchmark, or the pool of them.

    Accuracy in points (``delta`` = candidate - baseline); bits-per-byte as the percent change
    (``delta`` > 0 is worse). ``bound`` is the worst change the data cannot rule out (a drop in
    points, or a rise in percent), compared with ``limit``; the interval ``[ci_low, ci_high]`` of
    ``delta`` has ``1 - 2 alpha`` coverage (its ends are the one-sided bounds).
    """

    benchmark: str
    measure: Measure = "accuracy"
    items: int
    baseline: float
    candidate: float
    delta: float
    ci_low: float | None
    ci_high: float | None
    bound: float | None
    limit: float
    verdict: Verdict
    items_lost: int | None = None
    items_gained: int | None = None
    loglik_delta: float | None = None  # mean change in log p(gold answer), nats per item
    loglik_ci: tuple[float, float] | None = None


class TaskGain(BaseModel):
    """The task metric's paired change, candidate minus baseline, in points."""

    metric: str
    items: int
    baseline: float
    candidate: float
    gain: float
    ci_low: float | None
    ci_high: float | None
    margin: float
    verdict: Verdict


class Decision(BaseModel):
    action: Action
    reasons: list[str]
    deltas: list[Delta] = []
    task: TaskGain | None = None


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
    return Decision(action="promote" if approval.approved else "reject", reasons=[*decision.reasons, reason],
                    deltas=decision.deltas, task=decision.task)


def _points(value: float) -> float:
    return 100.0 * value


def _coverage(alpha: float) -> str:
    return f"{100 * (1 - 2 * alpha):.0f}% CI"


def compare_accuracy(name: str, before: list[float], after: list[float], limit: float, alpha: float) -> Delta:
    """Paired 0/1 results: the drop's bounds (Tango) and the verdict against ``limit`` points.

    >>> d = compare_accuracy("g", [1.0] * 300, [1.0] * 300, 2.0, 0.05)
    >>> d.verdict, round(d.bound, 1)
    ('passed', 0.9)
    >>> compare_accuracy("g", [1.0] * 80, [1.0] * 80, 2.0, 0.05).verdict  # 80 unchanged items cannot rule out 2 points
    'undecided'
    """
    n = len(before)
    lost = sum(1 for b, a in zip(before, after, strict=True) if a < b)
    gained = sum(1 for b, a in zip(before, after, strict=True) if a > b)
    low, high = drop_bounds(lost, gained, n, alpha)  # of the drop, as proportions
    bound = _points(high)
    verdict: Verdict = "passed" if bound < limit else "FAILED" if _points(low) > limit else "undecided"
    return Delta(
        benchmark=name, items=n, baseline=_points(sum(before) / n), candidate=_points(sum(after) / n),
        delta=_points((gained - lost) / n), ci_low=-bound, ci_high=-_points(low), bound=bound, limit=limit,
        verdict=verdict, items_lost=lost, items_gained=gained,
    )


def compare_bits_per_byte(name: str, before: list[float], after: list[float], limit: float, alpha: float) -> Delta:
    """Paired bits-per-byte of prose: the percent rise (geometric mean of per-item ratios), its t
    bounds and the verdict against ``limit`` percent.

    >>> compare_bits_per_byte("prose", [1.0, 1.1, 0.9, 1.2], [1.01, 1.12, 0.91, 1.21], 5.0, 0.05).verdict
    'passed'
    >>> compare_bits_per_byte("prose", [1.0, 1.1, 0.9, 1.2], [1.2, 1.35, 1.1, 1.45], 5.0, 0.05).verdict
    'FAILED'
    """
    ratios = [log(a / b) for b, a in zip(before, after, strict=True)]
    mean, low, high = mean_bounds(ratios, alpha)
    percent = lambda x: 100 * (exp(x) - 1)  # noqa: E731
    bound = percent(high)
    verdict: Verdict = "passed" if bound < limit else "FAILED" if percent(low) > limit else "undecided"
    return Delta(
        benchmark=name, measure="bits_per_byte", items=len(ratios), baseline=sum(before) / len(before),
        candidate=sum(after) / len(after), delta=percent(mean), ci_low=percent(low), ci_high=bound, bound=bound,
        limit=limit, verdict=verdict,
    )


def task_gain(metric: str, before: list[float], after: list[float], margin: float, alpha: float) -> TaskGain:
    """The task gain with its paired bounds; passed only when the lower bound clears ``margin`` points.

    >>> task_gain("em", [0.0] * 40, [1.0] * 30 + [0.0] * 10, 0.0, 0.05).verdict
    'passed'
    >>> task_gain("em", [0.0] * 10 + [1.0] * 10, [1.0] * 11 + [0.0] * 9, 0.0, 0.05).verdict  # +5 points, 20 items
    'undecided'
    """
    n = len(before)
    if all(v in (0.0, 1.0) for v in (*before, *after)):
        lost = sum(1 for b, a in zip(before, after, strict=True) if a < b)
        gained = sum(1 for b, a in zip(before, after, strict=True) if a > b)
        low_drop, high_drop = drop_bounds(lost, gained, n, alpha)
        low, high = -_points(high_drop), -_points(low_drop)
    else:
        _, low, high = (_points(x) for x in mean_bounds([a - b for b, a in zip(before, after, strict=True)], alpha))
    gain = _points((sum(after) - sum(before)) / n)
    verdict: Verdict = "passed" if low > margin else "FAILED" if gain <= margin else "undecided"
    return TaskGain(metric=metric, items=n, baseline=_points(sum(before) / n), candidate=_points(sum(after) / n), gain=gain,
                    ci_low=low, ci_high=high, margin=margin, verdict=verdict)


def _loglik(delta: Delta, before: list[float] | None, after: list[float] | None, alpha: float) -> Delta:
    if before and after and len(before) == len(after):
        mean, low, high = mean_bounds([a - b for b, a in zip(before, after, strict=True)], alpha)
        delta.loglik_delta, delta.loglik_ci = mean, (low, high)
    return delta


def _beats(label: str, before: float, after: float, margin: float, needs: str = "") -> tuple[bool, str]:
    """A point-estimate rule: ``after`` beats ``before`` by more than ``margin`` points."""
    points = _points(after - before)
    ok = points > margin
    return ok, f"{label}: {_points(before):.1f} -> {_points(after):.1f} ({points:+.1f} points{needs}) {'passed' if ok else 'FAILED'}"


def describe_delta(d: Delta, alpha: float) -> str:
    """The reason line of one forgetting comparison."""
    if d.measure == "bits_per_byte":
        head = (f"forgetting {d.benchmark}: bits-per-byte {d.baseline:.3f} -> {d.candidate:.3f} ({d.delta:+.1f}%, "
                f"{_coverage(alpha)} [{d.ci_low:+.1f}%, {d.ci_high:+.1f}%]; {d.items} items; limit +{d.limit:.1f}%)")
        unit, worse = "%", "rise"
    else:
        ci = f", {_coverage(alpha)} [{d.ci_low:+.1f}, {d.ci_high:+.1f}]" if d.ci_low is not None else ""
        items = f"; {d.items} items, {d.items_lost} lost, {d.items_gained} gained" if d.items_lost is not None else ""
        head = f"forgetting {d.benchmark}: {d.baseline:.1f} -> {d.candidate:.1f} ({d.delta + 0.0:+.1f} points{ci}{items}; limit -{d.limit:.1f})"
        unit, worse = " points", "drop"
    if d.bound is None:
        return f"{head} {d.verdict}: no per-item results, so nothing can be shown" + ("" if d.verdict == "FAILED" else "; held for a person")
    if d.verdict == "passed" and d.bound <= 0:
        better = "gain" if d.measure == "accuracy" else "fall"
        return f"{head} passed: any {worse} is ruled out (a {better} of at least {-d.bound:.1f}{unit} is shown)"
    if d.verdict == "passed":
        return f"{head} passed: a {worse} over {d.bound:.1f}{unit} is ruled out"
    if d.verdict == "FAILED":
        shown = -d.ci_high if d.measure == "accuracy" else d.ci_low
        return f"{head} FAILED: the {worse} is beyond the limit (at least {shown:.1f}{unit})"
    return (f"{head} undecided: with {d.items} items this benchmark can only rule out a {worse} larger than "
            f"{d.bound:.1f}{unit}; held for a person")


def _forgetting(baseline: Scores, candidate: Scores, policy: PromotionPolicy) -> tuple[list[Delta], list[str]]:
    """Every counted benchmark's comparison, and the pool of the accuracy ones."""
    alpha, reasons, deltas = policy.forgetting_alpha, [], []
    counted = policy.benchmarks if policy.benchmarks is not None else sorted(baseline["general"])
    measures = baseline.get("measures", {})
    accuracy = [n for n in sorted(baseline["general"]) if n in counted and measures.get(n, "accuracy") == "accuracy"]
    single_limit = policy.max_general_drop if len(accuracy) <= 1 else policy.benchmark_limit
    pool_before: list[float] = []
    pool_after: list[float] = []
    for name in sorted(baseline["general"]):
        if name not in counted:
            reasons.append(f"forgetting {name}: not counted by the policy")
            continue
        before, after = baseline.get("per_sample", {}).get(name), candidate.get("per_sample", {}).get(name)
        if measures.get(name, "accuracy") == "bits_per_byte":
            before, after = baseline.get("per_sample_bpb", {}).get(name), candidate.get("per_sample_bpb", {}).get(name)
            limit = policy.max_bpb_increase
            if before and after and len(before) == len(after):
                delta = compare_bits_per_byte(name, before, after, limit, alpha)
            else:
                b, a = baseline["general"][name], candidate["general"][name]
                rise = 100 * (a / b - 1)
                delta = Delta(benchmark=name, measure="bits_per_byte", items=0, baseline=b, candidate=a, delta=rise, ci_low=None,
                              ci_high=None, bound=None, limit=limit, verdict="FAILED" if rise > limit else "undecided")
        elif before and after and len(before) == len(after):
            delta = compare_accuracy(name, before, after, single_limit, alpha)
            delta = _loglik(delta, baseline.get("per_sample_loglik", {}).get(name), candidate.get("per_sample_loglik", {}).get(name), alpha)
            pool_before += before
            pool_after += after
        else:
            b, a = _points(baseline["general"][name]), _points(candidate["general"][name])
            delta = Delta(benchmark=name, items=0, baseline=b, candidate=a, delta=a - b, ci_low=None, ci_high=None, bound=None,
                          limit=single_limit, verdict="FAILED" if b - a > single_limit else "undecided")
        deltas.append(delta)
        reasons.append(describe_delta(delta, alpha))
    paired = [d.benchmark for d in deltas if d.measure == "accuracy" and d.bound is not None]
    if len(paired) > 1:
        pool = compare_accuracy(f"{POOLED} ({', '.join(paired)})", pool_before, pool_after, policy.max_general_drop, alpha)
        deltas.append(pool)
        reasons.append(describe_delta(pool, alpha))
    return deltas, reasons


TYPICAL_FLIP_RATE = 0.10  # share of answers a fine-tune changes, where a benchmark records none observed
TYPICAL_LOG_RATIO_SD = 0.02  # spread of per-item log bits-per-byte ratios, likewise


class Power(BaseModel):
    """What one comparison can show, planned from the baseline before any training: the smallest
    limit that a candidate changing ``spread`` of its answers (or with that spread of per-item
    bits-per-byte ratios), and losing nothing on average, shows it stays within 80% of the time."""

    benchmark: str
    measure: Measure
    items: int
    spread: float
    observed: bool  # the spread was measured on this benchmark (else the typical value)
    limit: float
    detectable: float  # points, or percent for bits-per-byte

    @property
    def can_decide(self) -> bool:
        return self.detectable < self.limit

    def describe(self) -> str:
        unit, worse = ("%", "rise") if self.measure == "bits_per_byte" else (" points", "drop")
        churn = (f"{self.spread:.0%} of answers changing" if self.measure == "accuracy" else f"per-item spread {self.spread:.3f}")
        verdict = ("can show the limit" if self.can_decide
                   else "cannot show the limit: a candidate will be held for a person unless it changes less")
        return (f"with {self.items} items it can rule out a {worse} larger than {self.detectable:.1f}{unit} "
                f"(limit {self.limit:.1f}{unit}; {churn}{'' if self.observed else ', assumed'}): {verdict}")


def plan_power(baseline: Scores, counts: dict[str, int], policy: PromotionPolicy, spreads: dict[str, float]) -> list[Power]:
    """The power of every counted comparison the gate will make, and of the pool.

    Args:
        baseline: the baseline's scores (``general`` and ``measures``).
        counts: items per benchmark.
        policy: limits and level.
        spreads: per benchmark, the flip rate (accuracy) or the standard deviation of per-item log
            bits-per-byte ratios observed on earlier candidates; the typical value where absent.

    >>> [p.describe() for p in plan_power({"general": {"g": 0.6}}, {"g": 80}, PromotionPolicy(), {})]
    ['with 80 items it can rule out a drop larger than 8.8 points (limit 2.0 points; 10% of answers changing, assumed): cannot show the limit: a candidate will be held for a person unless it changes less']
    """
    alpha = policy.forgetting_alpha
    counted = policy.benchmarks if policy.benchmarks is not None else sorted(baseline["general"])
    measures = baseline.get("measures", {})
    names = [n for n in sorted(baseline["general"]) if n in counted and counts.get(n)]
    accuracy = [n for n in names if measures.get(n, "accuracy") == "accuracy"]
    single_limit = policy.max_general_drop if len(accuracy) <= 1 else policy.benchmark_limit
    rows = []
    for name in names:
        n = counts[name]
        if measures.get(name, "accuracy") == "bits_per_byte":
            spread = spreads.get(name, TYPICAL_LOG_RATIO_SD)
            detectable = 100 * (exp(detectable_mean(n, spread, alpha)) - 1)
            rows.append(Power(benchmark=name, measure="bits_per_byte", items=n, spread=spread, observed=name in spreads,
                              limit=policy.max_bpb_increase, detectable=detectable))
        else:
            spread = spreads.get(name, TYPICAL_FLIP_RATE)
            rows.append(Power(benchmark=name, measure="accuracy", items=n, spread=spread, observed=name in spreads,
                              limit=single_limit, detectable=_points(detectable_drop(n, spread, alpha))))
    if len(accuracy) > 1:
        total = sum(counts[n] for n in accuracy)
        flips = sum(counts[n] * spreads.get(n, TYPICAL_FLIP_RATE) for n in accuracy) / total
        rows.append(Power(benchmark=f"{POOLED} ({', '.join(accuracy)})", measure="accuracy", items=total, spread=flips,
                          observed=all(n in spreads for n in accuracy), limit=policy.max_general_drop,
                          detectable=_points(detectable_drop(total, flips, alpha))))
    return rows


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
            [0/1 item results]}}`` of the base model, with ``per_sample_task`` (the task metric per item),
            ``per_sample_bpb`` and ``measures`` (``bits_per_byte`` benchmarks) and ``per_sample_loglik``
            (log p(gold answer) per item, reported). Without per-item results nothing can be shown: a
            benchmark without them holds.
        candidate: the same for the fine-tuned model (same benchmarks, same prompt, same item order).
        champion: the current champion's scores (``task`` at least), or None if there is none.
        policy: margins, forgetting limit and test level, counted benchmarks, reviewed methods.
        task_metric: which task metric decides.
        curves: the candidate's loss curves, if it was trained.
        method: ``(training_type, finetuning_type)`` of the candidate.

    Returns:
        The action and every rule's outcome as reasons, plus the per-benchmark deltas.

    >>> base = {"task": {"em": 0.2}, "general": {"g": 0.60}, "per_sample": {"g": [1.0] * 600 + [0.0] * 400}}
    >>> cand = {"task": {"em": 0.6}, "general": {"g": 0.60}, "per_sample": {"g": [1.0] * 600 + [0.0] * 400}}
    >>> decide(base, cand, None, PromotionPolicy(), "em").action
    'promote'
    >>> decide(base, cand, None, PromotionPolicy(), "em", method=("dpo", "lora")).action
    'hold'
    >>> cand["per_sample"]["g"] = [1.0] * 500 + [0.0] * 500
    >>> decide(base, cand, None, PromotionPolicy(), "em").action
    'reject'
    """
    reasons: list[str] = []
    passed = True
    hold = False
    alpha = policy.forgetting_alpha

    before, after = baseline["task"][task_metric], candidate["task"][task_metric]
    items_before, items_after = baseline.get("per_sample_task"), candidate.get("per_sample_task")
    gain = None
    if items_before and items_after and len(items_before) == len(items_after):
        gain = task_gain(task_metric, items_before, items_after, policy.min_task_gain, alpha)
        passed &= gain.verdict != "FAILED"
        hold |= gain.verdict == "undecided"
        head = (f"task {task_metric}: {gain.baseline:.1f} -> {gain.candidate:.1f} ({gain.gain:+.1f} points, {_coverage(alpha)} "
                f"[{gain.ci_low:+.1f}, {gain.ci_high:+.1f}]; {gain.items} items; needs > {policy.min_task_gain:+.1f} at the lower bound)")
        reasons.append(head + {"passed": " passed", "FAILED": " FAILED",
                               "undecided": f" undecided: the gain is not shown with {gain.items} items; held for a person"}[gain.verdict])
    else:  # no per-item results (a legacy score dict): the estimate alone
        ok, reason = _beats(f"task {task_metric}", before, after, policy.min_task_gain, f"; needs > {policy.min_task_gain:+.1f}")
        passed &= ok
        reasons.append(reason)

    if champion is None:
        reasons.append("no champion yet: the baseline is the bar")
    else:
        ok, reason = _beats(f"vs champion {task_metric}", champion["task"][task_metric], after, policy.min_task_gain)
        passed &= ok
        reasons.append(reason)

    deltas, forgetting = _forgetting(baseline, candidate, policy)
    reasons += forgetting
    passed &= all(d.verdict != "FAILED" for d in deltas)
    hold |= any(d.verdict == "undecided" for d in deltas)

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
    return Decision(action=action, reasons=reasons, deltas=deltas, task=gain)

