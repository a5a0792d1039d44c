"""Score a model (a base folder, optionally with a LoRA adapter) on benchmarks through lm-eval.

Two kinds of benchmark, both lm-eval task configs:
- the *task* benchmark, built per job from the dataset's testing split with the very prompt the
  training uses (``training.prompts.render``), scored by generation against the reference answer;
- *general* benchmarks shipped as versioned YAML in ``evaluation/benchmarks/general`` (the
  forgetting check), scored by log-likelihood.

One model load serves every benchmark of a stage. Per-sample outputs are kept as JSONL next to
the scores, so baseline and candidate can be compared item by item.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from customizer.settings import Settings
from evaluation.metrics import TASK_METRICS, register_with_lm_eval
from training.catalog import CustomizationConfig
from training.data import IngestedDataset, read_examples
from training.prompts import render, stop_sequences
from training.specs import EvaluationPlan

log = logging.getLogger("customizer.evaluation")

BENCHMARKS_DIR = Path(__file__).parent / "benchmarks"
GENERAL_DIR = BENCHMARKS_DIR / "general"
TASK_BENCHMARK = "task"
TASK_BENCHMARK_VERSION = "1.0"


class EvaluationError(ValueError):
    """A benchmark that does not exist or cannot be built."""


class StageScores(BaseModel):
    """Scores of one model on one stage's benchmarks, as plain dicts the gate reads."""

    task: dict[str, float]  # task metric name -> score in [0, 1]
    general: dict[str, float]  # general benchmark name -> accuracy in [0, 1]
    versions: dict[str, str]  # benchmark name -> version
    counts: dict[str, int]  # benchmark name -> items scored
    per_sample: dict[str, list[float]]  # general benchmark -> per-item accuracy, in doc order (paired tests)
    samples_dir: str
    seconds: float


def general_benchmark(name: str) -> dict[str, Any]:
    """Load a shipped general benchmark's YAML as an lm-eval task config with absolute data paths.

    Raises:
        EvaluationError: no such benchmark (the message lists the shipped ones).
    """
    path = GENERAL_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in GENERAL_DIR.glob("*.yaml")))
        raise EvaluationError(f"general benchmark {name!r} does not exist; shipped benchmarks: {known}")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    files = config.get("dataset_kwargs", {}).get("data_files", {})
    for split, relative in files.items():
        files[split] = str((path.parent / relative).resolve())
    return config


def task_benchmark(
    dataset: IngestedDataset, config: CustomizationConfig, tokenizer: Any, plan: EvaluationPlan, out_dir: Path
) -> dict[str, Any]:
    """Build the task benchmark from the testing split, rendered with the training prompt.

    Writes ``task.jsonl`` (rendered prompt + answer per item) and ``task.yaml`` (the lm-eval config,
    kept as the record of what was scored) into ``out_dir``; returns the config.
    """
    examples = read_examples(dataset.files["testing"])
    rows, stops = [], set()
    for example in examples:
        sample = render(example.record, config, tokenizer)
        # The conversation the prompt was rendered from (as JSON text, so rows keep one schema), for
        # endpoints that render chat templates themselves.
        messages = example.record["messages"][:-1] if "messages" in example.record else [{"role": "user", "content": example.record["prompt"]}]
        rows.append({"loc": example.loc, "prompt": sample.prompt, "answer": sample.target, "messages": json.dumps(messages)})
        stops.update(stop_sequences(tokenizer, sample))
    out_dir.mkdir(parents=True, exist_ok=True)
    data_file = out_dir / "task.jsonl"
    data_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    benchmark = {
        "task": TASK_BENCHMARK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",
        "generation_kwargs": {"until": sorted(stops), "max_gen_toks": plan.max_new_tokens, "do_sample": False},
        "metric_list": [
            {"metric": f"task_{name}", "aggregation": "mean", "higher_is_better": True} for name in TASK_METRICS
        ],
        "metadata": {"version": TASK_BENCHMARK_VERSION, "dataset_sha256": dataset.sha256, "prompt_format": config.prompt_format},
    }
    (out_dir / "task.yaml").write_text(yaml.safe_dump(benchmark, sort_keys=False), encoding="utf-8")
    return benchmark


def _score(results: dict[str, Any], benchmark: str, metric: str) -> float:
    for key, value in results.get(benchmark, {}).items():
        if key.split(",")[0] == metric and isinstance(value, (int, float)):
            return float(value)
    raise EvaluationError(f"lm-eval returned no {metric!r} for benchmark {benchmark!r}")


def load_model(base_model_dir: str, adapter_dir: str | None, device: str) -> tuple[Any, Any]:
    """Load the base model, with the adapter merged in when given (merged, it runs as fast as the base)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.to(device).eval(), AutoTokenizer.from_pretrained(base_model_dir)


def evaluate_model(
    base_model_dir: str,
    adapter_dir: str | None,
    task: dict[str, Any],
    plan: EvaluationPlan,
    out_dir: Path,
    settings: Settings,
) -> StageScores:
    """Score one model on the task benchmark and the plan's general benchmarks, in one model load.

    Args:
        base_model_dir: local model folder.
        adapter_dir: LoRA adapter folder applied on top, or None for the base model alone.
        task: the task benchmark config from ``task_benchmark``.
        plan: general benchmarks, limit, batch size.
        out_dir: where per-sample outputs (``samples/<benchmark>.jsonl``) and ``scores.json`` go.
        settings: runtime settings.

    Returns:
        The stage's scores.
    """
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    register_with_lm_eval()
    general = {name: general_benchmark(name) for name in plan.general_benchmarks}
    started = time.monotonic()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded, tokenizer = load_model(base_model_dir, adapter_dir, device)
    model = HFLM(pretrained=loaded, tokenizer=tokenizer, device=device, batch_size=plan.batch_size)
    log.info("Scoring %s on %d benchmarks", "candidate" if adapter_dir else "base model", 1 + len(general))
    output = lm_eval.simple_evaluate(
        model=model,
        tasks=[task, *general.values()],
        task_manager=TaskManager(include_defaults=False),
        limit=plan.limit,
        bootstrap_iters=0,
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    return stage_scores(output, general, out_dir, started)


def stage_scores(output: dict[str, Any], general: dict[str, dict[str, Any]], out_dir: Path, started: float) -> StageScores:
    """Turn lm-eval's output into the stage's scores; per-sample outputs and ``scores.json`` go to ``out_dir``."""
    results = output["results"]
    samples_dir = out_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    counts, per_sample = {}, {}
    for name, samples in output.get("samples", {}).items():
        counts[name] = len(samples)
        if name in general:
            per_sample[name] = [float(s["acc"]) for s in sorted(samples, key=lambda s: s["doc_id"])]
        with open(samples_dir / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for sample in samples:
                fh.write(json.dumps(sample, ensure_ascii=False, default=str) + "\n")
    scores = StageScores(
        task={name: _score(results, TASK_BENCHMARK, f"task_{name}") for name in TASK_METRICS},
        general={name: _score(results, name, "acc") for name in general},
        versions={TASK_BENCHMARK: TASK_BENCHMARK_VERSION}
        | {name: str(cfg.get("metadata", {}).get("version", "")) for name, cfg in general.items()},
        counts=counts,
        per_sample=per_sample,
        samples_dir=str(samples_dir),
        seconds=time.monotonic() - started,
    )
    (out_dir / "scores.json").write_text(scores.model_dump_json(indent=2), encoding="utf-8")
    return scores
