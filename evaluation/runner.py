"""Score a model (a base folder, optionally with a LoRA adapter) on benchmarks through lm-eval.

Two kinds of benchmark, both lm-eval task configs:
- the *task* benchmark, built per job from the dataset's testing split with the very prompt the
  training uses (``data.prompts.render``), scored by generation against the reference answer;
- *general* benchmarks shipped as versioned YAML in ``evaluation/benchmarks/general`` (the
  forgetting check), scored by log-likelihood.

One model load serves every benchmark of a stage. Per-sample outputs are kept as JSONL next to
the scores, so baseline and candidate can be compared item by item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from core.catalog import CustomizationConfig
from core.settings import Settings
from core.specs import EvaluationPlan
from data.ingest import IngestedDataset, read_examples
from data.preference import preference_row, render_with_answer, reward_row
from data.prompts import render, stop_sequences
from evaluation.general import (  # noqa: F401  (GENERAL_DIR, LM_EVAL_PREFIX, observed_spreads: callers import them from here too)
    GENERAL_DIR,
    LM_EVAL_PREFIX,
    EvaluationError,
    attach_scorers,
    general_benchmark,
    measure_of,
    observed_spreads,
)
from evaluation.metrics import TASK_METRICS, register_with_lm_eval
from evaluation.rungs import RungResult, derived_benchmark, mean_prompt_tokens, rung_results, shot_row, training_prompt
from training.rewards import references, resolve_reward, reward_name

log = logging.getLogger("customizer.evaluation")

TASK_BENCHMARK = "task"
TASK_BENCHMARK_VERSION = "1.0"
GENERATION_BATCH = 64  # batch of the general generation benchmarks (instruction following)
RUNNER_VERSION = "3"  # what the scores hold (per-item measures, dtype); cached scores of another version are not reused


class StageScores(BaseModel):
    """Scores of one model on one stage's benchmarks, as plain dicts the gate reads."""

    task: dict[str, float]  # task metric name -> score in [0, 1]
    task_metric: str  # the one the gate reads
    few_shot: dict[str, float] = {}  # the task benchmark with examples in the prompt (baseline only)
    zero_shot: RungResult | None = None  # the task benchmark read as the ladder's first rung (its prompt and length)
    rungs: list[RungResult] = []  # the other free rungs scored at the baseline, in ladder order: prompts, few-shot, retrieval
    general: dict[str, float]  # general benchmark name -> accuracy in [0, 1], or bits-per-byte (see measures)
    measures: dict[str, str] = {}  # general benchmark -> "accuracy" | "bits_per_byte"
    skills: dict[str, str] = {}  # general benchmark -> the skill it stands for (knowledge, reasoning, ...)
    versions: dict[str, str]  # benchmark name -> version
    counts: dict[str, int]  # benchmark name -> items scored
    per_sample: dict[str, list[float]]  # accuracy benchmark -> per-item 0/1, in doc order (paired tests)
    per_sample_bpb: dict[str, list[float]] = {}  # language-modelling benchmark -> per-item bits-per-byte
    per_sample_loglik: dict[str, list[float]] = {}  # multiple-choice benchmark -> per-item log p(gold | choices)
    per_sample_task: list[float] = []  # the gate's task metric per item, in doc order
    precision: str = "float32"  # the dtype the model was scored in
    samples_dir: str
    seconds: float

    def gate_scores(self) -> dict[str, Any]:
        """The dict ``evaluation.gate.decide`` reads."""
        return self.model_dump(include={"task", "general", "measures", "per_sample", "per_sample_bpb", "per_sample_loglik", "per_sample_task"})


def eval_dtype(precision: str = "auto") -> str:
    """The dtype to score in: ``precision`` (the ``eval_precision`` setting) unless it is ``auto``, then
    bfloat16 where the hardware runs it natively (GPUs with bf16, CPUs with AVX512-BF16 or AMX: ~3.5x
    fp32 there), float32 elsewhere. Base and candidate are always scored in the same dtype."""
    # delayed: training.common imports torch, transformers and peft at import time (start-up time)
    from training.common import native_bf16

    if precision != "auto":
        return precision
    return "bfloat16" if native_bf16() else "float32"


def benchmark_digest(config: dict[str, Any]) -> str:
    """Identity of a benchmark: its config and the bytes of its data files (not where they lie: each
    job writes its task benchmark into its own folder, and an unchanged one must find its cached scores)."""
    settings = {k: v for k, v in config.items() if not callable(v) and k != "dataset_kwargs"}
    settings["dataset_kwargs"] = {k: v for k, v in config.get("dataset_kwargs", {}).items() if k != "data_files"}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in sorted(config.get("dataset_kwargs", {}).get("data_files", {}).values()):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def cache_key(
    model_digest: str, adapter_digest: str | None, task: dict[str, Any], plan: EvaluationPlan, precision: str = "auto",
    few_shot: dict[str, Any] | None = None, rungs: list[dict[str, Any]] | None = None,
) -> str:
    """What a stage's scores depend on: the model, every benchmark's content and version, and the
    pinned settings. A retraining run on an unchanged base finds its baseline under this key."""
    import lm_eval  # delayed: lm_eval is heavy (start-up time)

    general = {name: benchmark_digest(general_benchmark(name)) for name in plan.general_benchmarks}
    parts = {
        "model": model_digest, "adapter": adapter_digest, "task": benchmark_digest(task), "general": general,
        "few_shot": benchmark_digest(few_shot) if few_shot else None,
        "limit": plan.limit, "batch_size": plan.batch_size, "max_new_tokens": plan.max_new_tokens,
        "lm_eval": lm_eval.__version__, "seed": 0, "runner": RUNNER_VERSION,
        "dtype": eval_dtype(precision),
    } | ({"rungs": [benchmark_digest(r) for r in rungs]} if rungs else {})
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# What the task benchmark does with each record format: generate and compare with the answer
# (completion, chat), compare the likelihoods of the two answers (preference), or generate and
# score with the job's rewards (reward).
BENCHMARK_KINDS = {"completion": "answer", "chat": "answer", "preference": "preference", "reward": "reward"}


def benchmark_kind(fmt: str) -> str:
    """``answer``, ``preference`` or ``reward``: how the task benchmark scores a split of format ``fmt``
    (``IngestedDataset.formats``).

    >>> benchmark_kind("chat"), benchmark_kind("reward")
    ('answer', 'reward')

    Raises:
        EvaluationError: a format the task benchmark cannot score.
    """
    if fmt not in BENCHMARK_KINDS:
        raise EvaluationError(f"the testing split holds {fmt!r} records; the task benchmark scores {', '.join(BENCHMARK_KINDS)} records")
    return BENCHMARK_KINDS[fmt]


def default_task_metric(kind: str, rewards: list[str]) -> str:
    return {"answer": "exact_match", "preference": "preference_accuracy"}.get(kind) or reward_name(rewards[0])


def _reward_results(rewards: list[str]):
    """lm-eval ``process_results`` for reward benchmarks: every reward sees the whole record."""
    functions = {reward_name(name): resolve_reward(name) for name in rewards}

    def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
        columns = {key: [value] for key, value in json.loads(doc["columns"]).items()}
        return {name: float(fn([results[0]], **columns)[0]) for name, fn in functions.items()}

    return process_results


def task_benchmark(
    dataset: IngestedDataset,
    config: CustomizationConfig,
    tokenizer: Any,
    plan: EvaluationPlan,
    out_dir: Path,
    rewards: list[str] | None = None,
) -> dict[str, Any]:
    """Build the task benchmark from the testing split, rendered with the training prompt.

    - completion/chat records: generate, then exact match and JSON-field match against the answer;
    - preference records: the log-likelihood of the chosen vs the rejected answer (preference accuracy);
    - reward records: generate, then score with the job's reward functions (what GRPO optimises).

    Writes ``task.jsonl`` (rendered items) and ``task.yaml`` (the lm-eval config, kept as the record
    of what was scored) into ``out_dir``; returns the config (``metadata.task_metric`` is the default
    metric for the gate).
    """
    rewards = rewards or ["exact_answer"]
    fmt = dataset.formats["testing"]
    kind = benchmark_kind(fmt)
    examples = read_examples(dataset.files["testing"])
    rows, stops = [], set()
    for example in examples:
        record = example.record
        if kind == "preference":
            row = preference_row(record, config, tokenizer)
            rows.append({"loc": example.loc, "prompt": row["prompt"], "choices": [row["chosen"], row["rejected"]], "label": 0})
        elif kind == "reward":
            row = reward_row(record, config, tokenizer)
            columns = {k: v for k, v in row.items() if k != "prompt"}
            answer = references(1, **{k: [v] for k, v in columns.items()})[0]
            rows.append({"loc": example.loc, "prompt": row["prompt"], "answer": answer, "columns": json.dumps(columns)})
            stops.update(s for s in (tokenizer.eos_token, render_with_answer(record["prompt"], "", config, tokenizer).end_text) if s)
        else:
            sample = render(record, config, tokenizer)
            rows.append({"loc": example.loc, "prompt": sample.prompt, "answer": sample.target})
            stops.update(stop_sequences(tokenizer, sample))
        # The conversation the prompt was rendered from (as JSON text, so rows keep one schema), for
        # endpoints that render chat templates themselves.
        rows[-1]["messages"] = json.dumps(_prompt_messages(record, fmt))
    out_dir.mkdir(parents=True, exist_ok=True)
    data_file = out_dir / "task.jsonl"
    data_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    benchmark: dict[str, Any] = {
        "task": TASK_BENCHMARK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "doc_to_text": "{{prompt}}",
        "metadata": {
            "version": TASK_BENCHMARK_VERSION,
            "dataset_sha256": dataset.sha256,
            "kind": kind,
            "task_metric": plan.task_metric or default_task_metric(kind, rewards),
            "prompt_format": config.prompt_format,
            "rung": {"kind": "zero-shot", "label": "zero-shot", "template": training_prompt(config),
                     "prompt_tokens": mean_prompt_tokens([r["prompt"] for r in rows], tokenizer)},
        },
    }
    if kind == "preference":
        benchmark |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{label}}",
            "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
        metrics = ["preference_accuracy"]
    else:
        benchmark |= {
            "output_type": "generate_until",
            "doc_to_target": "{{answer}}",
            "target_delimiter": "",
            "generation_kwargs": {"until": sorted(stops), "max_gen_toks": plan.max_new_tokens, "do_sample": False},
        }
        if kind == "reward":
            metrics = [reward_name(name) for name in rewards]
            benchmark["metric_list"] = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics]
        else:
            metrics = list(TASK_METRICS)
            benchmark["metric_list"] = [{"metric": f"task_{m}", "aggregation": "mean", "higher_is_better": True} for m in metrics]
    benchmark["metadata"]["metrics"] = metrics
    if benchmark["metadata"]["task_metric"] not in metrics:
        raise EvaluationError(
            f"`evaluation.task_metric` {benchmark['metadata']['task_metric']!r} does not apply to {kind} data; "
            f"available: {', '.join(metrics)}"
        )
    record_of_benchmark = dict(benchmark)
    if kind == "reward":
        record_of_benchmark["process_results"] = f"customizer rewards: {', '.join(rewards)}"
        benchmark["process_results"] = _reward_results(rewards)
    (out_dir / "task.yaml").write_text(yaml.safe_dump(record_of_benchmark, sort_keys=False), encoding="utf-8")
    return benchmark


def _prompt_messages(record: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    """The conversation up to the answer a model is asked for."""
    if fmt == "chat":
        return record["messages"][:-1]
    prompt = record["prompt"]
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


FEW_SHOT_BENCHMARK = "task_few_shot"


def few_shot_benchmark(
    dataset: IngestedDataset, config: CustomizationConfig, tokenizer: Any, plan: EvaluationPlan, task: dict[str, Any], out_dir: Path
) -> dict[str, Any] | None:
    """The prompt baseline with examples: each task item preceded by ``plan.few_shot`` training
    examples (the first ones, so the prompt is the same every run). Completion/chat data only.

    Returns:
        The few-shot benchmark config (its first prompt is kept in ``metadata.example_prompt``), or
        None when few-shot does not apply.
    """
    if plan.few_shot == 0 or task["metadata"]["kind"] != "answer":
        return None
    shots = []
    for example in read_examples(dataset.files["training"]):
        if len(shots) == plan.few_shot:
            break
        shots.append(example.record)
    if not shots:
        return None
    rows = [{"loc": e.loc, **shot_row(e.record, shots, dataset, config, tokenizer)} for e in read_examples(dataset.files["testing"])]
    rung = {"kind": "few-shot", "label": f"few-shot (k={len(shots)})", "template": training_prompt(config),
            "shots": {"k": len(shots), "examples": "the first of the training split", "dataset_sha256": dataset.sha256,
                      "dataset": dataset.source}}
    return derived_benchmark(task, FEW_SHOT_BENCHMARK, rows, rung, out_dir, tokenizer, few_shot=len(shots))


def _score(results: dict[str, Any], benchmark: str, metric: str) -> float:
    for key, value in results.get(benchmark, {}).items():
        if key.split(",")[0] == metric and isinstance(value, (int, float)):
            return float(value)
    raise EvaluationError(f"lm-eval returned no {metric!r} for benchmark {benchmark!r}")


def load_model(base_model_dir: str, adapter_dir: str | None, device: str, precision: str = "auto") -> tuple[Any, Any]:
    """Load the base model, with the adapter merged in when given (merged, it runs as fast as the base),
    in ``eval_dtype``."""
    # delayed: torch, transformers and peft are heavy (start-up time)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=getattr(torch, eval_dtype(precision)))
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
    few_shot: dict[str, Any] | None = None,
    rungs: list[dict[str, Any]] | None = None,
) -> StageScores:
    """Score one model on the task benchmark and the plan's general benchmarks, in one model load.

    Args:
        base_model_dir: local model folder.
        adapter_dir: LoRA adapter folder applied on top, or None for the base model alone.
        task: the task benchmark config from ``task_benchmark``.
        few_shot: the few-shot variant of it (``few_shot_benchmark``), scored in the same load.
        rungs: the free rungs' variants of it (``evaluation.rungs``), scored in the same load.
        plan: general benchmarks, limit, batch size.
        out_dir: where per-sample outputs (``samples/<benchmark>.jsonl``) and ``scores.json`` go.
        settings: runtime settings.

    Returns:
        The stage's scores.
    """
    # delayed: lm_eval and torch are heavy (start-up time)
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    register_with_lm_eval()
    configs = [attach_scorers(general_benchmark(name)) for name in plan.general_benchmarks]
    general = {c["task"]: c for c in configs}
    registry = any(c.get("registry") for c in configs)
    started = time.monotonic()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded, tokenizer = load_model(base_model_dir, adapter_dir, device, settings.eval_precision)
    model = HFLM(pretrained=loaded, tokenizer=tokenizer, device=device, batch_size=plan.batch_size)
    log.info("Scoring %s on %d benchmarks", "candidate" if adapter_dir else "base model", 1 + len(general))
    # Benchmarks that ask for it (instruction following) see the model's own chat template, as an
    # instruct model is used; lm-eval applies a template to every task of a call, so they get a second call.
    templated = bool(getattr(tokenizer, "chat_template", None))
    chat = [c for c in configs if templated and c.get("metadata", {}).get("chat_template")]
    plain = [c for c in configs if not (templated and c.get("metadata", {}).get("chat_template"))]
    settings_for_lm_eval = dict(
        bootstrap_iters=0, log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
    )
    output = lm_eval.simple_evaluate(
        model=model,
        tasks=[task, *([few_shot] if few_shot else []), *(rungs or []), *(c["task"] if c.get("registry") else c for c in plain)],
        # Indexing lm-eval's 14k built-in task files takes ~12 s: only when a registry task is asked for.
        task_manager=TaskManager(include_defaults=registry),
        limit=plan.limit,
        **settings_for_lm_eval,
    )
    if chat:
        # Generation runs ~1.7x faster in batches of 64 than of 16 on a CPU (each step's cost is mostly
        # fixed); scoring log-likelihoods does not gain from it. Base and candidate batch alike.
        generating = HFLM(pretrained=loaded, tokenizer=tokenizer, device=device, batch_size=max(plan.batch_size, GENERATION_BATCH))
        more = lm_eval.simple_evaluate(
            model=generating, tasks=chat, task_manager=TaskManager(include_defaults=False), limit=plan.limit, apply_chat_template=True,
            **settings_for_lm_eval,
        )
        for key in ("results", "samples", "versions"):
            output.setdefault(key, {}).update(more.get(key, {}))
    return stage_scores(output, task, general, out_dir, started, few_shot=few_shot, precision=eval_dtype(settings.eval_precision),
                        rungs=rungs)


def _gold_loglik(sample: dict[str, Any]) -> float | None:
    """log p(gold answer) among a multiple-choice item's choices (their log-likelihoods renormalised)."""
    try:
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        gold = int(sample["target"])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    if not 0 <= gold < len(lls):
        return None
    top = max(lls)
    return lls[gold] - (top + math.log(sum(math.exp(x - top) for x in lls)))


def _bits_per_byte(sample: dict[str, Any]) -> float:
    loglik, size = sample["bits_per_byte"]
    return -float(loglik) / (max(int(size), 1) * math.log(2))


def stage_scores(
    output: dict[str, Any], task: dict[str, Any], general: dict[str, dict[str, Any]], out_dir: Path, started: float,
    few_shot: dict[str, Any] | None = None, precision: str = "float32", rungs: list[dict[str, Any]] | None = None,
) -> StageScores:
    """Turn lm-eval's output into the stage's scores; per-sample outputs and ``scores.json`` go to ``out_dir``.
    ``few_shot`` and ``rungs``: the baseline's variants of the task benchmark that were scored with it."""
    results = output["results"]
    samples_dir = out_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    meta = task["metadata"]
    lm_eval_names = {"answer": lambda m: f"task_{m}", "preference": lambda m: "acc", "reward": lambda m: m}[meta["kind"]]
    measures = {name: measure_of(cfg) for name, cfg in general.items()}
    counts, per_sample, per_bpb, per_loglik, per_task = {}, {}, {}, {}, []
    for name, samples in output.get("samples", {}).items():
        counts[name] = len(samples)
        ordered = sorted(samples, key=lambda s: s["doc_id"])
        if name in general and measures[name] == "bits_per_byte":
            per_bpb[name] = [_bits_per_byte(s) for s in ordered]
        elif name in general:
            per_sample[name] = [float(s["acc"]) for s in ordered]
            logliks = [_gold_loglik(s) for s in ordered] if general[name].get("output_type") == "multiple_choice" else []
            if logliks and all(v is not None for v in logliks):
                per_loglik[name] = logliks
        elif name == TASK_BENCHMARK:
            per_task = [float(s[lm_eval_names(meta["task_metric"])]) for s in ordered]
        with open(samples_dir / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for sample in samples:
                fh.write(json.dumps(sample, ensure_ascii=False, default=str) + "\n")

    def general_score(name: str) -> float:
        if measures[name] == "bits_per_byte":  # bits over bytes of the whole benchmark, as lm-eval aggregates it
            if name in per_bpb and output["samples"].get(name):
                pairs = [s["bits_per_byte"] for s in output["samples"][name]]
                return -sum(float(ll) for ll, _ in pairs) / (sum(int(b) for _, b in pairs) * math.log(2))
            return _score(results, name, "bits_per_byte")
        return _score(results, name, "acc")

    scores = StageScores(
        task={name: _score(results, TASK_BENCHMARK, lm_eval_names(name)) for name in meta["metrics"]},
        task_metric=meta["task_metric"],
        few_shot={name: _score(results, FEW_SHOT_BENCHMARK, lm_eval_names(name)) for name in meta["metrics"]} if few_shot else {},
        zero_shot=RungResult(benchmark=TASK_BENCHMARK, per_item=per_task, **meta["rung"]) if "rung" in meta else None,
        rungs=rung_results([*([few_shot] if few_shot else []), *(rungs or [])], output.get("samples", {}), meta["task_metric"]),
        general={name: general_score(name) for name in general},
        measures=measures,
        skills={name: str(cfg.get("metadata", {}).get("skill", "")) for name, cfg in general.items()},
        versions={TASK_BENCHMARK: TASK_BENCHMARK_VERSION}
        | {name: str(output.get("versions", {}).get(name) or cfg.get("metadata", {}).get("version", "")) for name, cfg in general.items()},
        counts=counts,
        per_sample=per_sample,
        per_sample_bpb=per_bpb,
        per_sample_loglik=per_loglik,
        per_sample_task=per_task,
        precision=precision,
        samples_dir=str(samples_dir),
        seconds=time.monotonic() - started,
    )
    (out_dir / "scores.json").write_text(scores.model_dump_json(indent=2), encoding="utf-8")
    return scores
