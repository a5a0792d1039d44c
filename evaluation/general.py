"""General benchmarks (the forgetting check): shipped as versioned lm-eval YAML under
``evaluation/benchmarks/general``, a user's own benchmark YAML, or a task of lm-eval's registry;
loaded as lm-eval task configs with absolute data paths, with the customizer scorer they name
attached and the churn they record read for the power figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evaluation.instructions import process_results

BENCHMARKS_DIR = Path(__file__).parent / "benchmarks"
GENERAL_DIR = BENCHMARKS_DIR / "general"


class EvaluationError(ValueError):
    """A benchmark that does not exist or cannot be built."""


LM_EVAL_PREFIX = "lm-eval:"


def general_benchmark(name: str) -> dict[str, Any]:
    """Load a general benchmark as an lm-eval task config with absolute data paths.

    ``name`` is a shipped benchmark (``capitals``), the path of your own benchmark YAML (its data
    files relative to it), or ``lm-eval:<task>`` for a task of lm-eval's registry (``mmlu``,
    ``arc_easy``, ...), which needs that task's data in the local Hugging Face cache.

    Raises:
        EvaluationError: no such benchmark (the message lists the shipped ones).
    """
    if name.startswith(LM_EVAL_PREFIX):
        return {"task": name.removeprefix(LM_EVAL_PREFIX), "registry": True}
    path = Path(name).expanduser() if name.endswith((".yaml", ".yml")) else GENERAL_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in GENERAL_DIR.glob("*.yaml")))
        raise EvaluationError(
            f"general benchmark {name!r} does not exist; shipped benchmarks: {known} "
            f"(or give a path to a benchmark YAML, or lm-eval:<task>)"
        )
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    files = config.get("dataset_kwargs", {}).get("data_files", {})
    for split, relative in files.items():
        files[split] = str((path.parent / relative).resolve())
    return config


def observed_spreads(names: list[str]) -> dict[str, float]:  # names as the plan gives them
    """Per general benchmark, the churn recorded on it (``metadata.observed``: the flip rate of an
    accuracy benchmark, the spread of per-item log bits-per-byte ratios of a prose benchmark), for
    the power figures. Benchmarks that record none are left out (the gate assumes a typical value)."""
    spreads = {}
    for name in names:
        config = general_benchmark(name)
        if config.get("registry"):
            continue
        observed = config.get("metadata", {}).get("observed") or {}
        value = observed.get("log_ratio_sd" if measure_of(config) == "bits_per_byte" else "flip_rate")
        if value is not None:
            spreads[config["task"]] = float(value)  # scores are keyed by the benchmark's task name
    return spreads


def attach_scorers(config: dict[str, Any]) -> dict[str, Any]:
    """The config lm-eval runs: a shipped benchmark that names a customizer scorer
    (``metadata.scorer``) gets that pure function as its ``process_results`` (YAML stays data: no
    ``!function``, no code named by a file)."""
    scorer = config.get("metadata", {}).get("scorer")
    if scorer is None:
        return config
    if scorer != "instruction_following":
        raise EvaluationError(f"benchmark {config.get('task')!r}: unknown scorer {scorer!r}")
    return config | {"process_results": process_results}


def measure_of(config: dict[str, Any]) -> str:
    """``bits_per_byte`` for language-modelling benchmarks (scored by rolling log-likelihood), else ``accuracy``."""
    return "bits_per_byte" if config.get("output_type") == "loglikelihood_rolling" else "accuracy"
