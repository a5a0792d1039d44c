"""Task metrics as pure functions ``(completions, **columns) -> list[float]``.

The same signature as a GRPO reward function, so a task metric can be a reward and vice versa.
``answer`` is the reference column. Each function is registered with lm-eval under
``task_<name>`` so benchmark YAML can name it.
"""

from __future__ import annotations

import json
from collections.abc import Callable


def exact_match(completions: list[str], answer: list[str], **_: object) -> list[float]:
    """1.0 where the completion equals the answer, ignoring surrounding whitespace.

    >>> exact_match([" yes ", "no"], answer=["yes", "yes"])
    [1.0, 0.0]
    """
    return [1.0 if c.strip() == a.strip() else 0.0 for c, a in zip(completions, answer, strict=True)]


def _normalise(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def json_field_match(completions: list[str], answer: list[str], **_: object) -> list[float]:
    """Fraction of the answer's top-level JSON fields that the completion's JSON object matches.

    Strings compare case-insensitively after trimming; a completion that is not a JSON object
    scores 0. An answer that is not a JSON object falls back to exact match.

    >>> json_field_match(['{"a": "X", "b": 1}', '{"a": "y"}', 'not json'], answer=['{"a": "x", "b": 2}'] * 3)
    [0.5, 0.0, 0.0]
    """
    scores = []
    for completion, reference in zip(completions, answer, strict=True):
        try:
            expected = json.loads(reference)
        except json.JSONDecodeError:
            expected = None
        if not isinstance(expected, dict) or not expected:
            scores.append(exact_match([completion], answer=[reference])[0])
            continue
        try:
            got = json.loads(completion.strip())
        except json.JSONDecodeError:
            got = None
        if not isinstance(got, dict):
            scores.append(0.0)
            continue
        hits = sum(_normalise(got.get(k)) == _normalise(v) for k, v in expected.items())
        scores.append(hits / len(expected))
    return scores


TASK_METRICS: dict[str, Callable[..., list[float]]] = {
    "exact_match": exact_match,
    "json_field_match": json_field_match,
}


def register_with_lm_eval() -> None:
    """Make every task metric available to lm-eval YAML as ``task_<name>`` (idempotent)."""
    from lm_eval.api.registry import metric_registry, register_metric

    for name, fn in TASK_METRICS.items():
        registered = f"task_{name}"
        if registered in metric_registry:
            continue

        def one_item(references: list[str], predictions: list[str], _fn=fn) -> float:
            return _fn(predictions, answer=references)[0]

        register_metric(metric=registered, higher_is_better=True, aggregation="mean")(one_item)
