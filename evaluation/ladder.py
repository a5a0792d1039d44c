"""The customization ladder as one table: every rung a job tried, cheapest first, with its task score,
interval, forgetting verdict, cost and decision. The job's report, its summary and its status show it.

The free rungs (zero-shot, candidate prompts, few-shot, retrieval few-shot) are scored at the baseline
and judged here on the lower bound of their score (``evaluation.rungs.judge``); training rungs are
added after them by whoever trains (kind ``training``), with the gate's forgetting verdict and the
device-hours they cost.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from core.catalog import CustomizationConfig
from core.settings import Settings
from core.specs import EvaluationPlan
from data.ingest import IngestedDataset
from evaluation.rungs import RungResult, RungScore, judge, prompt_benchmarks, retrieval_benchmark, score_bounds
from evaluation.runner import StageScores, cache_key, evaluate_model, few_shot_benchmark, task_benchmark

RungKind = Literal["zero-shot", "prompt", "few-shot", "retrieval", "training"]

LADDER_TAG = "customizer.ladder"  # the job run's tag holding the ladder's rows as JSON (the API's status reads it)
MET, MISSED, NO_TARGET = "met the target", "missed the target", "no target set"


class LadderRow(BaseModel):
    """One rung tried. Free rungs (prompting, retrieval) are scored at the baseline; a training rung
    (``lora``, ``all_weights``, ...) is a trained candidate judged by the gate."""

    rung: str  # how a person reads it: "zero-shot", "prompt 2", "retrieval few-shot (BM25, k=3)", "sft/lora"
    kind: RungKind
    metric: str  # the task metric the score is in
    score: float | None = None  # task score, 0-1; None: the rung was not tried (e.g. the budget stopped the climb)
    ci_low: float | None = None  # the score's interval (free rungs: one-sided bounds at the policy's alpha)
    ci_high: float | None = None
    forgetting: str | None = None  # training rungs: the gate's forgetting verdict
    device_hours: float | None = None  # training rungs: the estimate's device-hours
    device: str | None = None  # what the device-hours are counted on: "CPU", "A100-80GB", ...
    prompt_tokens: float | None = None  # mean prompt tokens per request (few-shot and retrieval prompts are longer)
    decision: str = ""  # "met the target", "missed the target", "promoted", "rejected", "not reached: budget", ...

    @property
    def cost(self) -> str:
        """``free`` for a rung that trains nothing, else its device-hours (``?`` when unknown)."""
        if self.kind != "training":
            return "free"
        if self.device_hours is None:
            return "?"
        return f"{self.device_hours:.3g} h" + (f" on {self.device}" if self.device else "")


def baseline_benchmarks(data: IngestedDataset, config: CustomizationConfig, tokenizer: Any, plan: EvaluationPlan, out_dir: Path,
                        rewards: list[str] | None = None) -> dict[str, Any]:
    """The baseline's benchmarks, written into ``out_dir``: the task benchmark (zero-shot, with the
    training prompt), its few-shot variant, and a variant per other free rung (candidate prompts,
    retrieval few-shot).

    Returns:
        ``{"task": config, "few_shot": config or None, "rungs": [config, ...]}``.
    """
    task = task_benchmark(data, config, tokenizer, plan, out_dir, rewards)
    retrieval = retrieval_benchmark(data, config, tokenizer, plan, task, out_dir)
    return {"task": task, "few_shot": few_shot_benchmark(data, config, tokenizer, plan, task, out_dir),
            "rungs": [*prompt_benchmarks(data, config, tokenizer, plan, task, out_dir), *([retrieval] if retrieval else [])]}


def baseline_scores(model_dir: str, model_digest: str, benchmarks: dict[str, Any], plan: EvaluationPlan, out_dir: Path,
                    settings: Settings) -> tuple[StageScores, bool]:
    """The base model's scores on ``benchmarks`` (``baseline_benchmarks``) and the general ones, from the
    cache when an unchanged base was scored on the same benchmarks and settings (a job after ``customizer
    check --ladder`` finds its baseline there), else scored and cached.

    Returns:
        ``(scores, from_cache)``; the scores' files are in ``out_dir`` either way.
    """
    key = cache_key(model_digest, None, benchmarks["task"], plan, settings.eval_precision, benchmarks["few_shot"], benchmarks["rungs"])
    cached = settings.root / "cache" / "eval" / key
    if (cached / "scores.json").exists():
        shutil.copytree(cached, out_dir, dirs_exist_ok=True)
        return StageScores.model_validate_json((out_dir / "scores.json").read_text()), True
    scores = evaluate_model(model_dir, None, benchmarks["task"], plan, out_dir, settings, few_shot=benchmarks["few_shot"],
                            rungs=benchmarks["rungs"])
    shutil.copytree(out_dir, cached, dirs_exist_ok=True)
    return scores, False


def free_rungs(baseline: StageScores) -> list[RungResult]:
    """The free rungs the baseline scored, in ladder order: zero-shot, candidate prompts, few-shot,
    retrieval few-shot. Zero-shot is there only when the baseline kept its per-item scores."""
    zero = baseline.zero_shot
    if zero is not None and not zero.per_item and baseline.per_sample_task:
        zero = zero.model_copy(update={"per_item": baseline.per_sample_task})
    return [*([zero] if zero is not None else []), *baseline.rungs]


def judged_rungs(baseline: StageScores, target: float, alpha: float) -> list[tuple[RungResult, RungScore]]:
    """Each free rung with per-item scores judged on its lower bound against ``target`` points
    (``evaluation.rungs.judge``); a rung without them cannot be judged and is left out (it never
    spares a job its training)."""
    zero_items = baseline.per_sample_task
    return [(r, judge(r, zero_items, baseline.task_metric, target, alpha)) for r in free_rungs(baseline) if r.per_item]


def free_rows(baseline: StageScores, target: float | None, alpha: float) -> list[LadderRow]:
    """The ladder's free rows, one per free rung the baseline scored, in ladder order.

    Args:
        baseline: the base model's scores (``evaluation.runner.StageScores``), with its free rungs.
        target: ``evaluation.target_score`` in points, or None (then no rung is judged).
        alpha: the policy's ``forgetting_alpha``: each bound is one-sided at this level.

    Returns:
        Rows with the score and its interval (0-1), the mean prompt tokens, and the decision: "met the
        target" when the lower bound reaches it, "missed the target" otherwise.
    """
    rows = []
    for rung in free_rungs(baseline):
        row = LadderRow(rung=rung.label, kind=rung.kind, metric=baseline.task_metric, score=rung.score,
                        prompt_tokens=rung.prompt_tokens)
        if not rung.per_item:
            rows.append(row.model_copy(update={"decision": "not judged: no per-item scores"}))
            continue
        low, high = score_bounds(rung.per_item, alpha)
        decision = NO_TARGET if target is None else MET if judge(rung, [], row.metric, target, alpha).verdict == "passed" else MISSED
        rows.append(row.model_copy(update={"ci_low": low, "ci_high": high, "decision": decision}))
    return rows


def ladder_dicts(rows: list[LadderRow]) -> list[dict[str, Any]]:
    """The rows as plain dicts (the report, the API's status, ``--json``), each with its ``cost``."""
    return [row.model_dump(mode="json") | {"cost": row.cost} for row in rows]


def ladder_json(rows: list[LadderRow]) -> str:
    """The rows as the JSON kept on the job's run (``LADDER_TAG``)."""
    return json.dumps(ladder_dicts(rows), separators=(",", ":"))


def _points(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def render_ladder(rows: list[LadderRow]) -> str:
    """The ladder as a text table, one line per rung: score and interval in points (0-100), the
    forgetting verdict, the cost (device-hours, or ``free``), prompt tokens and the decision.

    >>> print(render_ladder([LadderRow(rung="zero-shot", kind="zero-shot", metric="em", score=0.5, ci_low=0.4,
    ...                                ci_high=0.6, prompt_tokens=41.0, decision="missed the target"),
    ...                      LadderRow(rung="sft/lora", kind="training", metric="em", score=0.9, forgetting="passed",
    ...                                device_hours=0.25, device="A100-80GB", decision="promoted")]))
    rung       score  interval      forgetting  cost                 prompt tokens  decision
    zero-shot   50.0  [40.0, 60.0]  -           free                            41  missed the target
    sft/lora    90.0                passed      0.25 h on A100-80GB                 promoted
    """
    header = ("rung", "score", "interval", "forgetting", "cost", "prompt tokens", "decision")
    table = [header] + [
        (row.rung, _points(row.score),
         f"[{_points(row.ci_low)}, {_points(row.ci_high)}]" if row.ci_low is not None and row.ci_high is not None else "",
         row.forgetting or ("-" if row.kind != "training" else ""), row.cost,
         "" if row.prompt_tokens is None else f"{row.prompt_tokens:.0f}", row.decision)
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    right = {1, 5}  # numbers align right
    return "\n".join(
        "  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip()
        for line in table
    )
