"""Score a model served behind an OpenAI-compatible URL (vLLM, NIM, ``customizer serve-models``) on
the same benchmarks a job used, so a deployed adapter can be re-checked where it runs.

Two ways in, both lm-eval API models:
- ``completions`` (default): lm-eval's ``local-completions``. Prompts go as token ids of the base
  model's tokenizer, so the endpoint sees exactly the text the job scored. Generative benchmarks
  (the task benchmark) generate; log-likelihood benchmarks (the general ones) are scored from
  ``echo`` + ``logprobs``, which the endpoint must support (vLLM and serve-models do).
- ``chat-completions``: lm-eval's ``local-chat-completions``, for endpoints that only chat. The
  endpoint renders its own chat template, so each item goes as the user turn its prompt was
  rendered from; this needs single-turn items under a ``chat`` config, and cannot score
  log-likelihood benchmarks.

The scores come back in the same shape as a local evaluation (``StageScores``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from core.settings import Settings
from evaluation.metrics import register_with_lm_eval
from evaluation.runner import EvaluationError, StageScores, attach_scorers, general_benchmark, stage_scores
from core.specs import EvaluationPlan

log = logging.getLogger("customizer.evaluation")

Api = Literal["completions", "chat-completions"]


def _user_turn(doc: dict[str, Any]) -> str:
    messages = json.loads(doc["messages"])
    if len(messages) != 1 or messages[0].get("role") != "user":
        raise EvaluationError(
            f"item {doc.get('loc', '?')} is a {len(messages)}-message conversation; scoring through chat-completions "
            "sends single user turns only: use api='completions'"
        )
    return messages[0]["content"]


def _context_length(base_url: str, model: str, timeout_s: float) -> int | None:
    """The endpoint's ``max_model_len`` for ``model`` (vLLM and serve-models list it), if it says."""
    import httpx

    try:
        listed = httpx.get(f"{base_url}/v1/models", timeout=timeout_s).json().get("data", [])
    except (httpx.HTTPError, json.JSONDecodeError, AttributeError) as exc:
        raise EvaluationError(f"cannot list the models of {base_url}: {exc}") from exc
    for entry in listed:
        if entry.get("id") == model and entry.get("max_model_len"):
            return int(entry["max_model_len"])
    return None


def evaluate_endpoint(
    base_url: str,
    model: str,
    task: dict[str, Any],
    plan: EvaluationPlan,
    out_dir: Path,
    settings: Settings,
    tokenizer_dir: str,
    api: Api = "completions",
    timeout_s: float = 300.0,
) -> StageScores:
    """Score ``model`` at ``base_url`` on the task benchmark and the plan's general benchmarks.

    Args:
        base_url: the server's root, e.g. ``http://vllm:8000`` (``/v1/...`` is added).
        model: the served name, e.g. ``team/bot@3`` or ``team/bot``.
        task: the task benchmark config (``evaluation.runner.task_benchmark``), as the job built it.
        plan: general benchmarks, limit, batch size.
        out_dir: where per-sample outputs and ``scores.json`` go.
        settings: runtime settings.
        tokenizer_dir: the base model's folder, whose tokenizer turns prompts into token ids.
        api: ``completions`` or ``chat-completions`` (see the module docstring).
        timeout_s: per-request timeout.

    Returns:
        The scores, comparable with the job's local evaluation.

    Raises:
        EvaluationError: the endpoint cannot be listed, or the benchmarks cannot go through ``api``.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    base_url = base_url.rstrip("/")
    register_with_lm_eval()
    general = {name: attach_scorers(general_benchmark(name)) for name in plan.general_benchmarks}
    max_length = _context_length(base_url, model, timeout_s) or 2048
    common = {"model": model, "max_length": max_length, "timeout": int(timeout_s), "max_retries": 1, "max_gen_toks": plan.max_new_tokens}
    if api == "completions":
        model_args = common | {
            "base_url": f"{base_url}/v1/completions",
            "tokenizer_backend": "huggingface",
            "tokenizer": tokenizer_dir,
            "tokenized_requests": True,
            "batch_size": plan.batch_size,
        }
        tasks = [task, *general.values()]
        chat = False
    else:
        if general:
            raise EvaluationError(
                f"general benchmarks {sorted(general)} are scored by log-likelihood, which chat-completions cannot "
                "give: use api='completions' or an empty general_benchmarks"
            )
        if task.get("metadata", {}).get("prompt_format", "chat") != "chat":
            raise EvaluationError("the task benchmark was rendered with a prompt template, not a chat template: use api='completions'")
        model_args = common | {"base_url": f"{base_url}/v1/chat/completions", "tokenizer_backend": None, "batch_size": 1}
        tasks = [task | {"doc_to_text": _user_turn}]
        chat = True
    started = time.monotonic()
    log.info("Scoring %s at %s through %s on %d benchmarks", model, base_url, api, len(tasks))
    output = lm_eval.simple_evaluate(
        model="local-completions" if api == "completions" else "local-chat-completions",
        model_args=model_args,
        tasks=tasks,
        task_manager=TaskManager(include_defaults=False),
        limit=plan.limit,
        bootstrap_iters=0,
        log_samples=True,
        apply_chat_template=chat,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    return stage_scores(output, task, general, out_dir, started)
