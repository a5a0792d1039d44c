"""The stage's benchmarks written as YAML the ``lm_eval`` command line runs as they are: the same
items, the same metrics (through a small module that imports customizer's own), for parity checks
and for users who want to re-run a job's evaluation with lm-eval alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from core.specs import EvaluationPlan
from evaluation.general import general_benchmark
from evaluation.runner import TASK_BENCHMARK

SHIM = """# Task metrics for the lm_eval command line: the same functions customizer scores with.
import json

from evaluation.instructions import process_results as instruction_following  # noqa: F401
from evaluation.metrics import TASK_METRICS
from training.rewards import resolve_reward, reward_name

REWARDS = {rewards!r}


def _item(name):
    def metric(references, predictions):
        return TASK_METRICS[name](predictions, answer=references)[0]

    metric.__name__ = name
    return metric


for _name in TASK_METRICS:
    globals()[_name] = _item(_name)


def process_results(doc, results):
    columns = {{key: [value] for key, value in json.loads(doc["columns"]).items()}}
    return {{reward_name(n): float(resolve_reward(n)([results[0]], **columns)[0]) for n in REWARDS}}
"""


def export_for_lm_eval(task: dict[str, Any], plan: EvaluationPlan, folder: Path, rewards: list[str] | None = None) -> list[str]:
    """Write the stage's benchmarks as YAML the ``lm_eval`` command line runs as they are.

    The task benchmark's metrics become ``!function`` references to a small module written next to
    the YAML that imports customizer's own metric functions, so both sides compute the same thing.

    Returns:
        The task names to pass to ``lm_eval --tasks`` (with ``--include_path folder``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task_metrics.py").write_text(SHIM.format(rewards=list(rewards or ["exact_answer"])), encoding="utf-8")
    meta = task["metadata"]
    config = {k: v for k, v in task.items() if k != "process_results"}
    if meta["kind"] == "answer":
        config["metric_list"] = [
            {"metric": f"__FUNCTION__task_metrics.{m}", "aggregation": "mean", "higher_is_better": True} for m in meta["metrics"]
        ]
    elif meta["kind"] == "reward":
        config["process_results"] = "__FUNCTION__task_metrics.process_results"
    text = yaml.safe_dump(config, sort_keys=False)
    text = text.replace("'__FUNCTION__", "!function ").replace("__FUNCTION__", "!function ")
    text = "\n".join(line[:-1] if line.startswith(("  metric: !function", "process_results: !function", "- metric: !function")) and line.endswith("'") else line for line in text.splitlines())
    (folder / f"{TASK_BENCHMARK}.yaml").write_text(text + "\n", encoding="utf-8")
    names = [TASK_BENCHMARK]
    for name in plan.general_benchmarks:
        general = general_benchmark(name)
        if general.get("registry"):
            names.append(general["task"])
            continue
        text = yaml.safe_dump(general, sort_keys=False)
        if general.get("metadata", {}).get("scorer") == "instruction_following":  # the same scorer, through the shim
            text += "process_results: !function task_metrics.instruction_following\n"
        (folder / f"{general['task']}.yaml").write_text(text, encoding="utf-8")
        names.append(general["task"])
    return names
