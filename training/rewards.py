"""Verifiable rewards for GRPO, as pure functions ``(completions, **columns) -> list[float]``.

Dataset columns arrive as keyword arguments (TRL passes every column of the batch), so a reward
names the columns it needs. The same functions score the task benchmark after training, so what a
model was rewarded for is what it is judged on. A job can also name its own reward as
``"package.module:function"`` with the same signature.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable, Sequence

Reward = Callable[..., list[float]]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_CHOICE = re.compile(r"\b([A-J])\b")


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".")


def exact_answer(completions: Sequence[str], answer: Sequence[str], **_: object) -> list[float]:
    """1.0 where the completion is the answer, ignoring case, surrounding space and a final period.

    >>> exact_answer(["Paris.", " paris ", "Lyon"], answer=["Paris", "Paris", "Paris"])
    [1.0, 1.0, 0.0]
    """
    return [1.0 if _normalise(c) == _normalise(str(a)) else 0.0 for c, a in zip(completions, answer, strict=True)]


def multiple_choice(completions: Sequence[str], answer: Sequence[str | int], **_: object) -> list[float]:
    """1.0 where the first choice letter (A-J) in the completion is the answer letter.

    ``answer`` may be a letter or a 0-based index into the choices.

    >>> multiple_choice(["The answer is B.", "(C)", "I think A or B", "none"], answer=["B", 2, "B", "A"])
    [1.0, 1.0, 0.0, 0.0]
    """
    scores = []
    for completion, expected in zip(completions, answer, strict=True):
        letter = "ABCDEFGHIJ"[expected] if isinstance(expected, int) else str(expected).strip().upper()
        found = _CHOICE.search(completion.replace("The answer is", "").replace("the answer is", ""))
        scores.append(1.0 if found and found.group(1) == letter else 0.0)
    return scores


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_answer(completions: Sequence[str], answer: Sequence[str | float], **_: object) -> list[float]:
    """1.0 where the last number in the completion equals the answer (relative tolerance 1e-6).

    >>> numeric_answer(["so it is 1,234", "x = 0.5", "42 apples, then 41", "no idea"], answer=["1234", 0.5, "42", "7"])
    [1.0, 1.0, 0.0, 0.0]
    """
    scores = []
    for completion, expected in zip(completions, answer, strict=True):
        got = _last_number(completion)
        want = _last_number(str(expected))
        ok = got is not None and want is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
        scores.append(1.0 if ok else 0.0)
    return scores


def json_format(completions: Sequence[str], **_: object) -> list[float]:
    """1.0 where the completion is a JSON object (format validity, whatever the content).

    >>> json_format(['{"a": 1}', '[1, 2]', 'not json', ' {"b": "x"} '])
    [1.0, 0.0, 0.0, 1.0]
    """
    scores = []
    for completion in completions:
        try:
            scores.append(1.0 if isinstance(json.loads(completion.strip()), dict) else 0.0)
        except json.JSONDecodeError:
            scores.append(0.0)
    return scores


BUILTIN: dict[str, Reward] = {
    "exact_answer": exact_answer,
    "multiple_choice": multiple_choice,
    "numeric_answer": numeric_answer,
    "json_format": json_format,
}


class RewardError(ValueError):
    """A reward name that is neither built in nor an importable ``module:function``."""


def resolve_reward(name: str) -> Reward:
    """A built-in reward by name, or a user reward given as ``package.module:function``.

    Raises:
        RewardError: unknown name, module that does not import, or an attribute that is not callable.
    """
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, colon, attribute = name.partition(":")
    if not colon or not module_name or not attribute:
        raise RewardError(
            f"`grpo.rewards` entry {name!r} is not a built-in reward ({', '.join(BUILTIN)}) nor 'module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardError(f"`grpo.rewards` entry {name!r}: cannot import {module_name!r} ({exc})") from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise RewardError(f"`grpo.rewards` entry {name!r}: {module_name} has no callable {attribute!r}")
    return function


def reward_name(name: str) -> str:
    """A metric-safe name for a reward (``pkg.mod:fn`` -> ``fn``)."""
    return name.rpartition(":")[2]
