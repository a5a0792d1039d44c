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


def register_with_lm_eval() -> None:
    # (TASK_METRICS is defined at the end of the module, once every metric it names exists.)
    """Make every task metric available to lm-eval YAML as ``task_<name>`` (idempotent)."""
    from lm_eval.api.registry import metric_registry, register_metric

    for name, fn in TASK_METRICS.items():
        registered = f"task_{name}"
        if registered in metric_registry:
            continue

        def one_item(references: list[str], predictions: list[str], _fn=fn) -> float:
            return _fn(predictions, answer=references)[0]

        register_metric(metric=registered, higher_is_better=True, aggregation="mean")(one_item)


# Similarity metrics (also NeMo Evaluator's em, f1, bleu, rouge, string-check for custom evaluations).


def _words(text: str) -> list[str]:
    """SQuAD normalisation: lower case, no punctuation or articles, single spaces."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def em(completions: list[str], answer: list[str], **_: object) -> list[float]:
    """Exact match after SQuAD normalisation (case, punctuation and articles ignored).

    >>> em(["The Paris.", "Lyon"], answer=["paris", "Paris"])
    [1.0, 0.0]
    """
    return [1.0 if _words(c) == _words(a) else 0.0 for c, a in zip(completions, answer, strict=True)]


def f1(completions: list[str], answer: list[str], **_: object) -> list[float]:
    """Token-overlap F1 after SQuAD normalisation.

    >>> f1(["the cat sat", "dog"], answer=["a cat sat down", "cat"])
    [0.8, 0.0]
    """
    from collections import Counter

    scores = []
    for completion, reference in zip(completions, answer, strict=True):
        got, want = _words(completion), _words(reference)
        if not got or not want:
            scores.append(1.0 if got == want else 0.0)
            continue
        common = sum((Counter(got) & Counter(want)).values())
        if common == 0:
            scores.append(0.0)
            continue
        precision, recall = common / len(got), common / len(want)
        scores.append(round(2 * precision * recall / (precision + recall), 6))
    return scores


def bleu(completions: list[str], answer: list[str], **_: object) -> list[float]:
    """Sentence BLEU (sacrebleu, 0-100) of each completion against its reference.

    >>> bleu(["the cat sat on the mat"], answer=["the cat sat on the mat"])
    [100.0]
    """
    import sacrebleu

    return [round(float(sacrebleu.sentence_bleu(c, [a]).score), 6) for c, a in zip(completions, answer, strict=True)]


ROUGE_TYPES = {"rouge_1_score": "rouge1", "rouge_2_score": "rouge2", "rouge_3_score": "rouge3", "rouge_L_score": "rougeL"}


def rouge(completions: list[str], answer: list[str], **_: object) -> dict[str, list[float]]:
    """ROUGE-1/2/3/L F-measures (0-1) per completion, keyed by NeMo's score names.

    >>> rouge(["the cat sat"], answer=["the cat sat"])["rouge_L_score"]
    [1.0]
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES.values()), use_stemmer=False)
    results = [scorer.score(a, c) for c, a in zip(completions, answer, strict=True)]
    return {name: [float(r[kind].fmeasure) for r in results] for name, kind in ROUGE_TYPES.items()}


STRING_CHECKS = {
    "equals": lambda left, right: left == right,
    "not equals": lambda left, right: left != right,
    "!=": lambda left, right: left != right,
    "==": lambda left, right: left == right,
    "contains": lambda left, right: right in left,
    "not contains": lambda left, right: right not in left,
    "startswith": lambda left, right: left.startswith(right),
    "endswith": lambda left, right: left.endswith(right),
}


def string_check(left: list[str], operation: str, right: list[str]) -> list[float]:
    """NeMo's string-check: ``left <operation> right`` per item, after trimming both sides.

    >>> string_check(["The answer is 4", "5"], "contains", ["4", "4"])
    [1.0, 0.0]
    """
    if operation not in STRING_CHECKS:
        raise ValueError(f"string-check operation {operation!r} is not one of {', '.join(STRING_CHECKS)}")
    check = STRING_CHECKS[operation]
    return [1.0 if check(l.strip(), r.strip()) else 0.0 for l, r in zip(left, right, strict=True)]


def contains(completions: list[str], answer: list[str], **_: object) -> list[float]:
    """1.0 where the completion contains the answer (trimmed), e.g. an answer inside an explanation.

    >>> contains(["The answer is 4.", "5"], answer=["4", "4"])
    [1.0, 0.0]
    """
    return string_check(completions, "contains", answer)


def bleu_unit(completions: list[str], answer: list[str], **_: object) -> list[float]:
    """Sentence BLEU on the 0-1 scale of the other task metrics.

    >>> bleu_unit(["the cat sat on the mat"], answer=["the cat sat on the mat"])
    [1.0]
    """
    return [round(b / 100, 6) for b in bleu(completions, answer)]


def rouge_l(completions: list[str], answer: list[str], **_: object) -> list[float]:
    """ROUGE-L F-measure (0-1) per completion."""
    return rouge(completions, answer)["rouge_L_score"]


# Scored on every generative task benchmark; the gate uses the job's `evaluation.task_metric`.
TASK_METRICS: dict[str, Callable[..., list[float]]] = {
    "exact_match": exact_match,
    "json_field_match": json_field_match,
    "f1": f1,
    "rouge_l": rouge_l,
    "bleu": bleu_unit,
    "contains": contains,
}
