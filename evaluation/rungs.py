"""The free rungs of the customization ladder: ways to reach the task's target without training.

Below fine-tuning, each rung costs nothing but a longer prompt, so each is scored at the baseline
with the task metric, in the same model load as the task benchmark (``evaluation.runner``):

- zero-shot: the task benchmark itself, with the training prompt;
- the user's candidate prompts (``evaluation.prompts``): a system prompt, or a template of the user
  turn with one ``{prompt}`` where the item's input goes;
- few-shot (``evaluation.few_shot``): the first ``few_shot`` training examples before each item;
- retrieval-augmented few-shot (``evaluation.retrieval_few_shot``): before each task item, the
  ``few_shot`` training examples nearest to its input by BM25 (``bm25s``) over the training split.

A rung reaches the target only when its *lower* bound does (a one-sided bound at the policy's
``forgetting_alpha``): a few lucky items must not spare a job the training it needs. Each rung is
also reported with its paired gain over zero-shot, item by item. Every variant of the task
benchmark is written by one function, ``derived_benchmark``, with the rung it stands for and the mean
length of its prompts in tokens in its metadata.
"""

from __future__ import annotations

import json
from math import sqrt
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from core.catalog import CustomizationConfig
from core.specs import EvaluationPlan
from data.ingest import IngestedDataset, read_examples
from data.prompts import conversation, render
from evaluation.gate import task_gain
from evaluation.stats import mean_bounds, z

PROMPT_BENCHMARK = "task_prompt_{index}"
RETRIEVAL_BENCHMARK = "task_retrieval"
RETRIEVAL_LIBRARY = "bm25s==0.3.16"
RETRIEVAL_STOPWORDS = "en"

# Tags of a registered prompt version, beside core.tags' lineage names.
PROMPT_RUN_ID = "customizer.run_id"
PROMPT_RUNG = "customizer.rung"
PROMPT_SCORE = "customizer.score"
PROMPT_RETRIEVAL = "customizer.retrieval"
PROMPT_SHOTS = "customizer.shots"

RungKind = Literal["zero-shot", "prompt", "few-shot", "retrieval"]
LADDER_ORDER: tuple[RungKind, ...] = ("zero-shot", "prompt", "few-shot", "retrieval")  # cheapest prompt first

Verdict = Literal["passed", "undecided", "FAILED"]


class RungResult(BaseModel):
    """One free rung's result at the baseline: what it is, and its task metric per item (doc order)."""

    benchmark: str  # the lm-eval benchmark it was scored as
    kind: RungKind
    label: str  # how a person reads it: "zero-shot", "prompt 2", "few-shot (k=3)", "retrieval few-shot (BM25, k=3)"
    template: str  # the candidate prompt, or the training prompt (alone, or after the examples)
    retrieval: dict[str, Any] = {}  # k, library, and the dataset version the index was built over
    shots: dict[str, Any] = {}  # few-shot: k, which examples, and the dataset version they come from
    prompt_tokens: float | None = None  # mean prompt length of its requests, in the base model's tokens
    per_item: list[float]

    @property
    def score(self) -> float:
        return sum(self.per_item) / len(self.per_item) if self.per_item else 0.0


class RungScore(BaseModel):
    """A rung judged against the target: its score and bounds in points, and its gain over zero-shot."""

    label: str
    metric: str
    items: int
    score: float
    ci_low: float
    ci_high: float
    target: float
    verdict: Verdict  # passed: the lower bound reaches the target; FAILED: the estimate does not either
    gain: float | None  # over zero-shot, paired item by item, with its bounds
    gain_ci: tuple[float, float] | None

    def describe(self, coverage: str) -> str:
        over = (f"; {self.gain:+.1f} over zero-shot ({coverage} {self.gain_ci[0]:+.1f} to {self.gain_ci[1]:+.1f})"
                if self.gain is not None and self.gain_ci is not None else "")
        return (f"{self.label} scores {self.metric} {self.score:.1f} ({coverage} {self.ci_low:.1f}-{self.ci_high:.1f}, "
                f"{self.items} items), target {self.target:.1f}: {self.verdict}{over}")


def score_bounds(per_item: list[float], alpha: float) -> tuple[float, float]:
    """One-sided ``(lower, upper)`` bounds, each at level ``alpha``, on a rung's mean score (a proportion).

    0/1 results get Wilson's score bounds (the one-sample counterpart of the gate's paired score
    test, well sized for a few dozen items); continuous ones (F1, ROUGE) a Student t bound.

    >>> [round(x, 3) for x in score_bounds([1.0] * 18 + [0.0] * 2, 0.05)]
    [0.738, 0.966]
    >>> [round(x, 3) for x in score_bounds([0.5, 0.7, 0.6, 0.6], 0.05)]
    [0.504, 0.696]
    """
    n = len(per_item)
    if n == 0:
        raise ValueError("no items to bound")
    if any(v not in (0.0, 1.0) for v in per_item):
        _, low, high = mean_bounds(per_item, alpha)
        return max(low, 0.0), min(high, 1.0)
    p, q = sum(per_item) / n, z(alpha)
    centre, half = p + q * q / (2 * n), q * sqrt(p * (1 - p) / n + q * q / (4 * n * n))
    return max((centre - half) / (1 + q * q / n), 0.0), min((centre + half) / (1 + q * q / n), 1.0)


def judge(rung: RungResult, zero_shot: list[float], metric: str, target: float, alpha: float) -> RungScore:
    """Judge one rung on the lower bound of its score against ``target`` points.

    >>> r = RungResult(benchmark="b", kind="prompt", label="prompt 1", template="t", per_item=[1.0] * 38 + [0.0] * 2)
    >>> judge(r, [0.0] * 40, "em", 80.0, 0.05).verdict
    'passed'
    >>> judge(r.model_copy(update={"per_item": [1.0] * 9 + [0.0]}), [0.0] * 10, "em", 80.0, 0.05).verdict
    'undecided'
    """
    low, high = score_bounds(rung.per_item, alpha)
    score = 100 * rung.score
    verdict: Verdict = "passed" if 100 * low >= target else "FAILED" if score < target else "undecided"
    paired = rung.kind != "zero-shot" and len(zero_shot) == len(rung.per_item)
    gain = task_gain(metric, zero_shot, rung.per_item, 0.0, alpha) if paired else None
    return RungScore(
        label=rung.label, metric=metric, items=len(rung.per_item), score=score, ci_low=100 * low, ci_high=100 * high,
        target=target, verdict=verdict, gain=gain.gain if gain else None,
        gain_ci=(gain.ci_low, gain.ci_high) if gain and gain.ci_low is not None and gain.ci_high is not None else None,
    )


def winner(rungs: list[RungResult], judged: list[RungScore]) -> tuple[RungResult, RungScore] | None:
    """The rung to keep: of those whose lower bound reaches the target, the one with the highest
    lower bound (the first in ladder order on a tie), or None."""
    passed = [(r, j) for r, j in zip(rungs, judged, strict=True) if j.verdict == "passed"]
    return max(passed, key=lambda pair: pair[1].ci_low) if passed else None


def rung_results(rungs: list[dict[str, Any]], samples: dict[str, list[dict[str, Any]]], metric: str) -> list[RungResult]:
    """Each rung benchmark's per-item task metric from lm-eval's samples, with what the rung is."""
    out = []
    for config in rungs:
        ordered = sorted(samples.get(config["task"], []), key=lambda s: s["doc_id"])
        out.append(RungResult(benchmark=config["task"], per_item=[float(s[f"task_{metric}"]) for s in ordered],
                              **config["metadata"]["rung"]))
    return sorted(out, key=lambda r: LADDER_ORDER.index(r.kind))


def input_text(record: dict[str, Any]) -> str:
    """The item's own input: the prompt, or the last user turn before the answer."""
    turns = conversation(record)
    users = [m for m in turns[:-1] if m["role"] == "user"]
    content = users[-1]["content"] if users else ""
    return content if isinstance(content, str) else " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))


def apply_prompt(record: dict[str, Any], candidate: str) -> dict[str, Any]:
    """The record with a candidate prompt: ``{prompt}`` templates wrap the input (plain replacement,
    no formatting of user text); anything else becomes the system prompt.

    >>> apply_prompt({"prompt": "2+2?", "completion": "4"}, "Q: {prompt}\\nA:")["prompt"]
    'Q: 2+2?\\nA:'
    >>> apply_prompt({"prompt": "2+2?", "completion": "4"}, "Be brief.")["messages"][0]
    {'role': 'system', 'content': 'Be brief.'}
    """
    turns = [dict(m) for m in conversation(record)]
    if "{prompt}" in candidate:
        if "prompt" in record and isinstance(record["prompt"], str):
            return record | {"prompt": candidate.replace("{prompt}", record["prompt"])}
        last = max(i for i, m in enumerate(turns[:-1]) if m["role"] == "user")
        turns[last]["content"] = candidate.replace("{prompt}", input_text(record))
        return {k: v for k, v in record.items() if k not in ("prompt", "completion")} | {"messages": turns}
    rest = [m for m in turns if m["role"] != "system"]
    return {k: v for k, v in record.items() if k not in ("prompt", "completion")} | {"messages": [{"role": "system", "content": candidate}, *rest]}


def _render_prompted(record: dict[str, Any], candidate: str, config: CustomizationConfig, tokenizer: Any) -> dict[str, str]:
    prompted = apply_prompt(record, candidate)
    if config.prompt_format == "template" and "messages" in prompted and "prompt" in record:
        # A template config renders prompt/completion text: the system prompt goes before it.
        sample = render(record, config, tokenizer)
        return {"prompt": f"{candidate}\n\n{sample.prompt}", "answer": sample.target}
    sample = render(prompted, config, tokenizer)
    return {"prompt": sample.prompt, "answer": sample.target}


def nearest_examples(corpus: list[str], queries: list[str], k: int) -> list[list[int]]:
    """For each query, the indexes of the ``k`` corpus texts nearest to it by BM25, best first; ties
    go to the earlier text, and a text equal to the query (the item itself) is never returned.

    >>> corpus = ["red apple pie", "blue sky", "green apple", "clear blue sky"]
    >>> nearest_examples(corpus, ["blue sky", "apple pie"], 2)  # "blue sky" itself is left out
    [[3, 0], [0, 2]]
    """
    # delayed: bm25s loads numpy and its tokenizer (start-up time)
    import bm25s

    def tokens(texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(texts, stopwords=RETRIEVAL_STOPWORDS, return_ids=False, show_progress=False)

    index = bm25s.BM25()
    index.index(tokens(corpus), show_progress=False)
    out = []
    for query, words in zip(queries, tokens(queries), strict=True):
        known = [w for w in words if w in index.vocab_dict]
        scores = index.get_scores(known) if known else [0.0] * len(corpus)
        ranked = sorted(range(len(corpus)), key=lambda i: (-float(scores[i]), i))
        out.append([i for i in ranked if corpus[i].strip() != query.strip()][:k])
    return out


def training_prompt(config: CustomizationConfig) -> str:
    """The prompt the training renders examples with: the config's template, or its chat template."""
    return config.prompt_template if config.prompt_format == "template" else "chat template"


def shot_row(record: dict[str, Any], shots: list[dict[str, Any]], dataset: IngestedDataset, config: CustomizationConfig,
             tokenizer: Any) -> dict[str, str]:
    """The item preceded by ``shots`` (few-shot and retrieval few-shot alike): rendered templates
    before a template prompt, earlier turns of the conversation otherwise.

    Returns:
        ``{"prompt", "answer"}`` of the benchmark row.
    """
    if config.prompt_format == "template" and dataset.formats["testing"] == "completion":
        shown = shots if dataset.formats["training"] == "completion" else []
        prefix = "".join(config.prompt_template.format(prompt=s["prompt"], completion=s["completion"]) + "\n\n" for s in shown)
        sample = render(record, config, tokenizer)
        return {"prompt": prefix + sample.prompt, "answer": sample.target}
    turns = [m for s in shots for m in conversation(s) if m["role"] != "system"]
    own = conversation(record)
    system = [m for m in own if m["role"] == "system"][:1]
    sample = render({"messages": system + turns + [m for m in own if m["role"] != "system"]}, config, tokenizer)
    return {"prompt": sample.prompt, "answer": sample.target}


def mean_prompt_tokens(prompts: list[str], tokenizer: Any) -> float | None:
    """The mean length of ``prompts`` in ``tokenizer``'s tokens (as the model reads them), or None for none."""
    if not prompts:
        return None
    return sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts) / len(prompts)


def derived_benchmark(task: dict[str, Any], name: str, rows: list[dict[str, Any]], rung: dict[str, Any], out_dir: Path,
                      tokenizer: Any, **metadata: Any) -> dict[str, Any]:
    """A variant of the task benchmark over ``rows``, written as ``<name>.jsonl`` and ``<name>.yaml``.

    Args:
        task: the task benchmark (``evaluation.runner.task_benchmark``) it derives from.
        name: the variant's benchmark name.
        rows: its items, ``{"loc", "prompt", "answer"}`` in the task's order.
        rung: what the variant stands for (``RungResult``'s fields but the scores); the mean prompt
            tokens are added.
        out_dir: the benchmarks' folder.
        tokenizer: the base model's, to count prompt tokens with.
        metadata: more of the variant's metadata.

    Returns:
        The variant's lm-eval config.
    """
    rung = rung | {"prompt_tokens": mean_prompt_tokens([r["prompt"] for r in rows], tokenizer)}
    data_file = out_dir / f"{name}.jsonl"
    data_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    benchmark = {k: v for k, v in task.items() if k not in ("task", "dataset_kwargs", "metadata")}
    benchmark |= {
        "task": name,
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "metadata": task["metadata"] | metadata | {"rung": rung, "example_prompt": rows[0]["prompt"] if rows else ""},
    }
    (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(benchmark, sort_keys=False), encoding="utf-8")
    return benchmark


def prompt_benchmarks(
    dataset: IngestedDataset, config: CustomizationConfig, tokenizer: Any, plan: EvaluationPlan, task: dict[str, Any], out_dir: Path
) -> list[dict[str, Any]]:
    """One benchmark per candidate prompt in ``plan.prompts`` (completion/chat data only)."""
    if task["metadata"]["kind"] != "answer":
        return []
    examples = list(read_examples(dataset.files["testing"]))
    out = []
    for i, candidate in enumerate(plan.prompts, start=1):
        rows = [{"loc": e.loc, **_render_prompted(e.record, candidate, config, tokenizer)} for e in examples]
        rung = {"kind": "prompt", "label": f"prompt {i}", "template": candidate}
        out.append(derived_benchmark(task, PROMPT_BENCHMARK.format(index=i), rows, rung, out_dir, tokenizer))
    return out


def retrieval_benchmark(
    dataset: IngestedDataset, config: CustomizationConfig, tokenizer: Any, plan: EvaluationPlan, task: dict[str, Any], out_dir: Path
) -> dict[str, Any] | None:
    """Retrieval-augmented few-shot: each task item preceded by the ``plan.few_shot`` training
    examples nearest to its input (completion/chat data only), or None when it does not apply."""
    if not plan.retrieval_few_shot or plan.few_shot == 0 or task["metadata"]["kind"] != "answer":
        return None
    training = [e.record for e in read_examples(dataset.files["training"])]
    if not training:
        return None
    testing = list(read_examples(dataset.files["testing"]))
    nearest = nearest_examples([input_text(r) for r in training], [input_text(e.record) for e in testing], plan.few_shot)
    rows = [{"loc": e.loc, **shot_row(e.record, [training[i] for i in near], dataset, config, tokenizer)}
            for e, near in zip(testing, nearest, strict=True)]
    settings = {"k": plan.few_shot, "library": RETRIEVAL_LIBRARY, "method": "bm25", "stopwords": RETRIEVAL_STOPWORDS,
                "index": "training split", "dataset_sha256": dataset.sha256, "dataset": dataset.source}
    rung = {"kind": "retrieval", "label": f"retrieval few-shot (BM25, k={plan.few_shot})", "template": training_prompt(config),
            "retrieval": settings}
    return derived_benchmark(task, RETRIEVAL_BENCHMARK, rows, rung, out_dir, tokenizer)


def registered_template(rung: RungResult) -> str:
    """The rung's prompt in the prompt registry's syntax (``{{prompt}}`` for the item's input).

    >>> registered_template(RungResult(benchmark="b", kind="prompt", label="p", template="Q: {prompt}", per_item=[]))
    'Q: {{prompt}}'
    """
    return rung.template.replace("{prompt}", "{{prompt}}")
