"""Verifiable rewards for GRPO, as pure functions ``(completions, **columns) -> list[float]``.

Dataset columns arrive as keyword arguments (TRL passes every column of the batch), so a reward
names the columns it needs. The same functions score the task benchmark after training, so what a
model was rewarded for is what it is judged on. A job can also name its own reward as
``"package.module:function"`` with the same signature.

The built-in rewards read every answer column a reward record may carry (``data.formats``):
``answer``, ``solution`` or ``ground_truth`` (text or a number), or ``choices`` with ``label`` (the
index or the text of the right choice). A column a row lacks arrives as None for that row (a batch
holds the union of its records' columns).
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from data.formats import ANSWER_FIELDS

Reward = Callable[..., list[float]]
Column = Sequence[Any] | None

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_CHOICE = re.compile(r"\b([A-J])\b")
LETTERS = "ABCDEFGHIJ"


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".")


def _as_text(value: Any) -> str:
    """An answer as text: a number as its JSON text (``4``, ``0.5``)."""
    return value if isinstance(value, str) else json.dumps(value)


def _columns(count: int, /, **columns: Column) -> dict[str, Sequence[Any]]:
    """The answer columns given, each checked to hold one value per completion."""
    given = {name: column for name, column in columns.items() if column is not None}
    for name, column in given.items():
        if len(column) != count:
            raise ValueError(f"column `{name}` has {len(column)} values for {count} completions")
    return given


def _labelled(choices: Any, label: Any) -> int | None:
    """The index of the right choice a row's ``choices`` and ``label`` give (None: they give none)."""
    if not isinstance(choices, list) or label is None or isinstance(label, bool):
        return None
    if isinstance(label, int):
        return label if 0 <= label < len(choices) else None
    return choices.index(label) if label in choices else None


def references(
    count: int, /, *, answer: Column = None, solution: Column = None, ground_truth: Column = None,
    choices: Column = None, label: Column = None, **_: object,
) -> list[str]:
    """Per row, the answer text a completion is compared against: the row's ``answer``, else its
    ``solution``, else its ``ground_truth``, else its labelled choice (``choices[label]``).

    >>> references(3, answer=["4", None, None], solution=[None, 1, None], choices=[None, None, ["Paris", "Rome"]], label=[None, None, 1])
    ['4', '1', 'Rome']

    Args:
        count: the number of completions (every column given has one value per completion).
        answer, solution, ground_truth, choices, label: the record columns (None: not in the batch).

    Returns:
        One reference text per row.

    Raises:
        ValueError: a column of another length, or a row with none of the answer columns.
    """
    columns = _columns(count, answer=answer, solution=solution, ground_truth=ground_truth, choices=choices, label=label)
    out = []
    for row in range(count):
        found = next((columns[name][row] for name in ANSWER_FIELDS if name in columns and columns[name][row] is not None), None)
        if found is None and "choices" in columns and "label" in columns:
            index = _labelled(columns["choices"][row], columns["label"][row])
            found = columns["choices"][row][index] if index is not None else None
        if found is None:
            raise ValueError(f"row {row} has no answer to compare with: give {', '.join(ANSWER_FIELDS)}, or choices with label")
        out.append(_as_text(found))
    return out


def choice_indices(
    count: int, /, *, answer: Column = None, solution: Column = None, ground_truth: Column = None,
    choices: Column = None, label: Column = None, **_: object,
) -> list[int | None]:
    """Per row, the 0-based index of the right choice: from ``choices`` and ``label`` where the row
    has them, else from its answer (``answer``, ``solution`` or ``ground_truth``): a letter A-J, an
    index (a number, or its digits as text), or the text of one of the row's choices. None where
    the answer names no choice.

    >>> choice_indices(4, answer=["b", 2, "3", None], choices=[None, None, None, ["Paris", "Rome"]], label=[None, None, None, "Rome"])
    [1, 2, 3, 1]

    Raises:
        ValueError: as ``references``.
    """
    columns = _columns(count, answer=answer, solution=solution, ground_truth=ground_truth, choices=choices, label=label)
    given = references(count, **columns)
    out: list[int | None] = []
    for row, text in enumerate(given):
        row_choices = columns["choices"][row] if "choices" in columns else None
        index = _labelled(row_choices, columns["label"][row]) if "label" in columns else None
        if index is None:
            raw = next((columns[name][row] for name in ANSWER_FIELDS if name in columns and columns[name][row] is not None), None)
            stripped = text.strip()
            if isinstance(raw, int) and not isinstance(raw, bool) or stripped.isdigit():
                index = int(stripped)
            elif len(stripped) == 1 and stripped.upper() in LETTERS:
                index = LETTERS.index(stripped.upper())
            elif isinstance(row_choices, list) and stripped in row_choices:
                index = row_choices.index(stripped)
        out.append(index)
    return out


def exact_answer(completions: Sequence[str], **columns: Any) -> list[float]:
    """1.0 where the completion is the row's answer (``references``), ignoring case, surrounding
    space and a final period.

    >>> exact_answer(["Paris.", " paris ", "Lyon"], answer=["Paris", "Paris", "Paris"])
    [1.0, 1.0, 0.0]
    >>> exact_answer(["x = 1", "Rome"], solution=["x = 1", None], choices=[None, ["Paris", "Rome"]], label=[None, 1])
    [1.0, 1.0]
    """
    expected = references(len(completions), **columns)
    return [1.0 if _normalise(c) == _normalise(a) else 0.0 for c, a in zip(completions, expected, strict=True)]


def multiple_choice(completions: Sequence[str], **columns: Any) -> list[float]:
    """1.0 where the first choice letter (A-J) in the completion is the right choice's letter
    (``choice_indices``: the labelled choice, or the answer as a letter, an index or a choice's text).

    >>> multiple_choice(["The answer is B.", "(C)", "I think A or B", "none"], answer=["B", 2, "B", "A"])
    [1.0, 1.0, 0.0, 0.0]
    >>> multiple_choice(["B", "A"], choices=[["Paris", "Rome"], ["Paris", "Rome"]], label=["Rome", 1])
    [1.0, 0.0]
    """
    scores = []
    for completion, index in zip(completions, choice_indices(len(completions), **columns), strict=True):
        letter = LETTERS[index] if index is not None and index < len(LETTERS) else None
        found = _CHOICE.search(completion.replace("The answer is", "").replace("the answer is", ""))
        scores.append(1.0 if letter and found and found.group(1) == letter else 0.0)
    return scores


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_answer(completions: Sequence[str], **columns: Any) -> list[float]:
    """1.0 where the last number in the completion equals the last number of the row's answer
    (``references``), relative tolerance 1e-6.

    >>> numeric_answer(["so it is 1,234", "x = 0.5", "42 apples, then 41", "no idea"], answer=["1234", 0.5, "42", "7"])
    [1.0, 1.0, 0.0, 0.0]
    >>> numeric_answer(["x = 1", "it is 12"], ground_truth=["x = 1", 12])
    [1.0, 1.0]
    """
    scores = []
    for completion, expected in zip(completions, references(len(completions), **columns), strict=True):
        got = _last_number(completion)
        want = _last_number(expected)
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
