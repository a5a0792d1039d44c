"""General benchmarks (the forgetting check): shipped as versioned lm-eval YAML under
``evaluation/benchmarks/general``, added by the operator in the ``benchmark_dirs`` folders, or a task
of lm-eval's registry by name; loaded as lm-eval task
configs with absolute data paths, with the customizer scorer they name attached and the churn they
record read for the power figures.

A benchmark is named, never given as a file: lm-eval renders a task YAML's templates with an
unsandboxed Jinja and runs its ``!function`` code, so a YAML from anywhere but the package or the
operator's folders would be code run by the worker. ``check_benchmark_name`` is that rule, checked by the API and again right before
lm-eval is called.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from core.settings import get_settings
from evaluation.instructions import process_results

BENCHMARKS_DIR = Path(__file__).parent / "benchmarks"
GENERAL_DIR = BENCHMARKS_DIR / "general"


class EvaluationError(ValueError):
    """A benchmark that does not exist or cannot be built."""


LM_EVAL_PREFIX = "lm-eval:"
# A shipped benchmark's or an lm-eval registry task's name: letters, digits, `_`, `-` and inner dots.
_BENCHMARK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*")


def check_benchmark_name(name: Any, field: str = "config.type") -> str:
    """Refuse a benchmark name that is, or could be, a file: lm-eval would load it as a task YAML.

    >>> check_benchmark_name("lm-eval:arc_easy")
    'lm-eval:arc_easy'

    Returns:
        ``name``, a shipped benchmark's name or ``[lm-eval:]<registry task>``.

    Raises:
        EvaluationError: naming ``field``: a path, a ``.yaml``/``.yml`` name, a path separator, a name
            that is an existing file, or any other character outside a task name.
    """
    if not isinstance(name, str) or not name:
        raise EvaluationError(f"`{field}` must name a benchmark, got {name!r}")
    bare = name.removeprefix(LM_EVAL_PREFIX)
    as_file = bare.lower().endswith((".yaml", ".yml")) or any(sep in bare for sep in ("/", "\\", ":")) or bare.startswith(("~", "."))
    if as_file or not _BENCHMARK_NAME.fullmatch(bare) or Path(bare).exists():
        raise EvaluationError(
            f"`{field}` {name!r} is not a benchmark name: use a shipped benchmark ({', '.join(shipped_benchmarks())}), "
            "an lm-eval task name (e.g. arc_easy), or `custom` with tasks; a benchmark YAML file or path is not supported"
        )
    return name


def _benchmark_files() -> dict[str, Path]:
    """Every named benchmark's YAML: the operator's folders, then the shipped ones (which keep their names)."""
    files: dict[str, Path] = {}
    for folder in [*reversed(get_settings().benchmark_dirs), GENERAL_DIR]:
        files |= {p.stem: p for p in sorted(Path(folder).glob("*.yaml"))}
    return files


def shipped_benchmarks() -> list[str]:
    """The benchmarks a job may name besides lm-eval's: the shipped ones and the operator's."""
    return sorted(_benchmark_files())


def general_benchmark(name: str) -> dict[str, Any]:
    """Load a general benchmark as an lm-eval task config with absolute data paths.

    ``name`` is a shipped or operator benchmark (``capitals``) or ``lm-eval:<task>`` for a task of lm-eval's
    registry (``mmlu``, ``arc_easy``, ...), which needs that task's data in the local Hugging Face cache.

    Raises:
        EvaluationError: a name that is a file (``check_benchmark_name``), or no such benchmark (the
            message lists the shipped ones).
    """
    check_benchmark_name(name, "general_benchmarks")
    if name.startswith(LM_EVAL_PREFIX):
        return {"task": name.removeprefix(LM_EVAL_PREFIX), "registry": True}
    path = _benchmark_files().get(name)
    if path is None:
        raise EvaluationError(
            f"general benchmark {name!r} does not exist; benchmarks: {', '.join(shipped_benchmarks())} "
            f"(or lm-eval:<task>; a benchmark YAML file is not supported)"
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
