"""Evaluation jobs in NeMo Evaluator's terms: custom benchmarks (completion and chat-completion
tasks scored with em, f1, bleu, rouge and string-check) and lm-eval benchmarks by name.

A model is either local (a model folder, optionally with a LoRA adapter) or an OpenAI-compatible
endpoint. Prompts and metric arguments are Jinja templates over ``item`` (the dataset row, keys
lower-cased with non-alphanumerics as ``_``) and ``sample.output_text`` (the model's answer).
Results come back in NeMo's shape: ``tasks.<task>.metrics.<metric>.scores.<score>.value``.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.specs import Submission
from evaluation import metrics as m
from evaluation.general import LM_EVAL_PREFIX, EvaluationError, attach_scorers, check_benchmark_name, general_benchmark, shipped_benchmarks
from evaluation.runner import load_model

log = logging.getLogger("customizer.evaluation")

TASK_TYPES = ("completion", "chat-completion")
METRIC_TYPES = ("em", "f1", "bleu", "rouge", "string-check")
DEFAULT_REFERENCE = "{{item.answer}}"

# (prompts: list[str | list[message]], params) -> completions
Generate = Callable[[list[Any], dict[str, Any]], list[str]]
Progress = Callable[[dict[str, Any]], None]


class ModelSpec(BaseModel):
    """What an evaluation scores, as the flow needs it (references only)."""

    model_config = ConfigDict(extra="forbid")

    config: str | None = Field(default=None, description="Config URN whose target is the base model.")
    model_uri: str | None = Field(default=None, description="A model folder (file:// or s3://) holding full weights or a LoRA adapter.")
    api_url: str | None = Field(default=None, description="OpenAI-compatible endpoint (completions or chat/completions).")
    model_id: str | None = None


class EvaluationRequest(BaseModel):
    """The ``evaluate`` flow's one parameter: a validated config, the model, and each task's local data file."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any]
    model: ModelSpec
    data_files: dict[str, str] = Field(default_factory=dict, description="Task name -> local data file.")
    submission: Submission | None = Field(
        default=None, description="Who submitted the evaluation, signed by the platform (core.submission); checked when it starts."
    )


class ConfigProblem(ValueError):
    """An evaluation config that cannot run; the message names the field."""


def check_config(config: dict[str, Any]) -> None:
    """Validate a custom config's tasks and metrics before any work starts.

    Raises:
        ConfigProblem: naming the field, e.g. ``tasks.qa.metrics.acc.type``, or ``type`` when it is not
            ``custom`` nor a benchmark name (a benchmark YAML file or path is not supported).
    """
    if config.get("type") != "custom":
        try:
            check_benchmark_name(config.get("type"), "type")
        except EvaluationError as exc:
            raise ConfigProblem(str(exc)) from exc
        return
    tasks = config.get("tasks") or {}
    if not tasks or not isinstance(tasks, dict):
        raise ConfigProblem("`tasks`: a custom evaluation needs at least one task")
    if not isinstance(config.get("params") or {}, dict):
        raise ConfigProblem("`params` must be an object")
    for name, task in tasks.items():
        where = f"tasks.{name}"
        if not isinstance(task, dict) or not isinstance(task.get("params") or {}, dict) or not isinstance(task.get("metrics") or {}, dict):
            raise ConfigProblem(f"`{where}` must be an object with `type`, `dataset`, `params` and `metrics` objects")
        if task.get("type") not in TASK_TYPES:
            raise ConfigProblem(f"`{where}.type` is {task.get('type')!r}; use one of {', '.join(TASK_TYPES)}")
        if not task.get("dataset"):
            raise ConfigProblem(f"`{where}.dataset` is required: {{\"files_url\": \"hf://datasets/<ns>/<name>/<file>\"}} or \"ns/name\"")
        template = (task.get("params") or {}).get("template")
        if task["type"] == "chat-completion" and not (isinstance(template, dict) and isinstance(template.get("messages"), list)):
            raise ConfigProblem(f"`{where}.params.template.messages` is required for chat-completion tasks")
        if task["type"] == "completion" and not (isinstance(template, str) or (isinstance(template, dict) and isinstance(template.get("prompt"), str))):
            raise ConfigProblem(f"`{where}.params.template` (a prompt string) is required for completion tasks")
        if not task.get("metrics"):
            raise ConfigProblem(f"`{where}.metrics`: give at least one of {', '.join(METRIC_TYPES)}")
        for metric_name, metric in task["metrics"].items():
            if not isinstance(metric, dict) or not isinstance(metric.get("params") or {}, dict):
                raise ConfigProblem(f"`{where}.metrics.{metric_name}` must be an object with `type` (and `params`)")
            kind = metric.get("type")
            if kind not in METRIC_TYPES:
                raise ConfigProblem(f"`{where}.metrics.{metric_name}.type` is {kind!r}; supported: {', '.join(METRIC_TYPES)}")
            check = (metric.get("params") or {}).get("check")
            if kind == "string-check" and not (isinstance(check, list) and len(check) == 3 and check[1] in m.STRING_CHECKS):
                raise ConfigProblem(
                    f"`{where}.metrics.{metric_name}.params.check` must be [left, operation, right] with an operation in "
                    f"{', '.join(m.STRING_CHECKS)}"
                )


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z_]", "_", name.lower())


def load_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL, JSON (array) or CSV file, keys normalised for templates.

    Raises:
        ConfigProblem: the file cannot be parsed (the message names file and line).
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    rows: list[Any]
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    elif path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigProblem(f"{path.name}: not valid JSON: {exc}") from exc
        if not isinstance(rows, list):
            raise ConfigProblem(f"{path.name}: expected a JSON array of objects")
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigProblem(f"{path.name}:{number}: not valid JSON: {exc.msg}") from exc
    if not all(isinstance(r, dict) for r in rows):
        raise ConfigProblem(f"{path.name}: every row must be an object")
    rows = [{_key(k): v for k, v in r.items()} for r in rows]
    return rows[:limit] if limit else rows


def render(template: Any, item: dict[str, Any], sample: dict[str, Any] | None = None) -> Any:
    """Render a Jinja template (a string, or strings nested in lists and dicts) over ``item`` and ``sample``."""
    # delayed: only evaluation jobs render templates (start-up time)
    from jinja2.sandbox import SandboxedEnvironment

    if isinstance(template, str):
        return SandboxedEnvironment().from_string(template).render(item=item, sample=sample or {})
    if isinstance(template, list):
        return [render(t, item, sample) for t in template]
    if isinstance(template, dict):
        return {k: render(v, item, sample) for k, v in template.items()}
    return template


def _stats(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "mean": statistics.fmean(values) if values else 0.0, "min": min(values, default=0.0),
            "max": max(values, default=0.0), "sum": sum(values)}


def _scores(name: str, values: list[float]) -> dict[str, Any]:
    return {name: {"value": _stats(values)["mean"], "stats": _stats(values)}}


def score_metric(metric: dict[str, Any], rows: list[dict[str, Any]], outputs: list[str]) -> dict[str, Any]:
    """One metric over a task's rows and outputs, as NeMo's ``{"scores": {...}}``."""
    params = metric.get("params") or {}
    samples = [{"output_text": o} for o in outputs]
    kind = metric["type"]
    if kind == "string-check":
        left, operation, right = params["check"]
        values = m.string_check([str(render(left, r, s)) for r, s in zip(rows, samples)], operation,
                                [str(render(right, r, s)) for r, s in zip(rows, samples)])
        return {"scores": _scores("string-check", values)}
    references_param = params.get("references")
    if isinstance(references_param, str):
        references_param = [references_param]
    reference = params.get("ground_truth") or (references_param or [DEFAULT_REFERENCE])[0]
    references = [str(render(reference, r, s)) for r, s in zip(rows, samples)]
    if kind == "rouge":
        return {"scores": {name: _scores(name, values)[name] for name, values in m.rouge(outputs, answer=references).items()}}
    function, score_name = {"em": (m.em, "em"), "f1": (m.f1, "f1"), "bleu": (m.bleu, "bleu_score")}[kind]
    return {"scores": _scores(score_name, function(outputs, answer=references))}


def run_custom_task(
    name: str, task: dict[str, Any], data_file: str, generate: Generate, params: dict[str, Any], progress: Progress | None = None,
) -> dict[str, Any]:
    """Generate an answer for every row and score it; returns NeMo's task result with per-row samples kept."""
    limit = params.get("limit_samples")
    rows = load_rows(data_file, int(limit) if limit else None)
    template = (task.get("params") or {}).get("template")
    if task["type"] == "chat-completion":
        prompts = [render(template["messages"], row) for row in rows]
    else:
        prompts = [render(template if isinstance(template, str) else template["prompt"], row) for row in rows]
    outputs: list[str] = []
    batch = max(1, int(params.get("parallelism") or 8))
    for start in range(0, len(prompts), batch):
        outputs += generate(prompts[start:start + batch], params)
        if progress:
            progress({"task": name, "samples_processed": len(outputs), "samples_total": len(prompts)})
    return {
        "metrics": {metric_name: score_metric(metric, rows, outputs) for metric_name, metric in task["metrics"].items()},
        "data": [{"item": r, "output_text": o} for r, o in zip(rows, outputs)],
    }


def local_generator(model_dir: str, adapter_dir: str | None) -> Generate:
    """Greedy (or sampled, with temperature > 0) generation with transformers on a local model."""
    import torch  # delayed: torch is heavy (start-up time)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(model_dir, adapter_dir, device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"

    def generate(prompts: list[Any], params: dict[str, Any]) -> list[str]:
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list) else p
            for p in prompts
        ]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not isinstance(prompts[0], list)).to(device)
        temperature = float(params.get("temperature") or 0.0)
        kwargs: dict[str, Any] = {"max_new_tokens": int(params.get("max_tokens") or 64), "pad_token_id": tokenizer.pad_token_id}
        kwargs |= {"do_sample": True, "temperature": temperature, "top_p": float(params.get("top_p") or 1.0)} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            out = model.generate(**encoded, **kwargs)
        completions = tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        return [_cut(c, params.get("stop")) for c in completions]

    return generate


def _cut(text: str, stop: Any) -> str:
    for marker in [stop] if isinstance(stop, str) else (stop or []):
        if marker and marker in text:
            text = text[: text.index(marker)]
    return text


def endpoint_generator(url: str, model_id: str, api_key: str | None = None, timeout: float = 120.0) -> Generate:
    """Generation through an OpenAI-compatible endpoint (``/v1/completions`` or ``/v1/chat/completions``)."""
    import httpx  # delayed: only endpoint evaluations need it (start-up time)

    base = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        base = base.removesuffix(suffix)
    base = base if base.endswith("/v1") else f"{base}/v1"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def generate(prompts: list[Any], params: dict[str, Any]) -> list[str]:
        out = []
        with httpx.Client(timeout=float(params.get("request_timeout") or timeout), headers=headers) as client:
            for prompt in prompts:
                body: dict[str, Any] = {"model": model_id, "max_tokens": int(params.get("max_tokens") or 64),
                                        "temperature": float(params.get("temperature") or 0.0)}
                if params.get("stop"):
                    body["stop"] = params["stop"]
                if isinstance(prompt, list):
                    response = client.post(f"{base}/chat/completions", json=body | {"messages": prompt})
                    response.raise_for_status()
                    out.append(response.json()["choices"][0]["message"]["content"] or "")
                else:
                    response = client.post(f"{base}/completions", json=body | {"prompt": prompt})
                    response.raise_for_status()
                    out.append(response.json()["choices"][0]["text"] or "")
        return out

    return generate


def run_lm_eval(benchmark: str, model_dir: str, adapter_dir: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """An lm-eval benchmark by name: a shipped one (``evaluation/benchmarks/general``) or any lm-eval task.

    Raises:
        EvaluationError: ``benchmark`` is a file or path rather than a name (``check_benchmark_name``).

    Returns NeMo's task result: every numeric lm-eval metric as ``metrics.<metric>.scores.<metric>.value``.
    """
    check_benchmark_name(benchmark)  # again here: a request that skipped the API must not name a file either
    # delayed: lm_eval and torch are heavy (start-up time)
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if benchmark in shipped_benchmarks():
        task: Any = attach_scorers(general_benchmark(benchmark))
        manager = TaskManager(include_defaults=False)
    else:  # a task of lm-eval's own registry, by name only (no include_path)
        task, manager = benchmark.removeprefix(LM_EVAL_PREFIX), TaskManager()
    extra = params.get("extra") or {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(model_dir, adapter_dir, device)
    started = time.monotonic()
    output = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, device=device, batch_size=int(extra.get("batch_size") or 16)),
        tasks=[task], task_manager=manager, limit=params.get("limit_samples"), num_fewshot=extra.get("num_fewshot"),
        bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
    )
    results: dict[str, Any] = {}
    for name, values in output["results"].items():
        scores = {}
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in metric:
                scores.setdefault(metric, {})[f"{name}-{metric}" + (f"-{filter_name}" if filter_name and filter_name != "none" else "")] = {"value": float(value)}
        results[name] = {"metrics": {metric: {"scores": s} for metric, s in scores.items()}}
    log.info("lm-eval %s: %s (%.0f s)", benchmark, {k: list(v["metrics"]) for k, v in results.items()}, time.monotonic() - started)
    return results


def model_kind(config: dict[str, Any]) -> Literal["custom", "lm-eval"]:
    return "custom" if config.get("type") == "custom" else "lm-eval"
