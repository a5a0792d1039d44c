"""The built-in GRPO rewards read every answer column a reward record may carry (data.formats):
``answer``, ``solution``, ``ground_truth``, and ``choices`` with ``label``, as GRPO hands them over
(``data.preference.reward_columns``: one shape per column, None where a row lacks the column)."""

import doctest

import pytest

import data.preference as preference_module
import training.rewards as rewards_module
from data.preference import reward_columns
from training.rewards import (
    BUILTIN,
    exact_answer,
    multiple_choice,
    numeric_answer,
    references,
)

ANSWER_REWARDS = [exact_answer, multiple_choice, numeric_answer]


def batch(records: list[dict]) -> dict[str, list]:
    """Columns as TRL passes them: the union of the records' columns, None where a record lacks one."""
    rows = [reward_columns({"prompt": "q"} | record) for record in records]
    names = dict.fromkeys(name for row in rows for name in row)
    return {name: [row.get(name) for row in rows] for name in names}


def test_module_doctests_pass():
    for module in (rewards_module, preference_module):
        failures, tried = doctest.testmod(module)
        assert tried > 0 and failures == 0, module.__name__


def test_answer_column():
    columns = batch([{"answer": "Paris"}, {"answer": 42}])
    assert exact_answer(["paris.", "42"], **columns) == [1.0, 1.0]
    assert numeric_answer(["x", "it is 42"], **columns) == [0.0, 1.0]


def test_solution_column():
    columns = batch([{"solution": "x = 1"}, {"solution": 3.5}])
    assert exact_answer(["X = 1", "3.5"], **columns) == [1.0, 1.0]
    assert numeric_answer(["so x = 1", "3.50"], **columns) == [1.0, 1.0]
    assert multiple_choice(["B", "B"], **columns) == [0.0, 0.0]  # names no choice: never right


def test_ground_truth_column():
    columns = batch([{"ground_truth": "B"}, {"ground_truth": 7}])
    assert exact_answer(["b", "7"], **columns) == [1.0, 1.0]
    assert multiple_choice(["The answer is B", "(H)"], **columns) == [1.0, 1.0]  # a letter, and an index (7: H)
    assert numeric_answer(["7", "seven: 7"], **columns) == [0.0, 1.0]


def test_choices_with_an_index_label():
    columns = batch([{"choices": ["Paris", "Rome"], "label": 1}, {"choices": ["4", "5", "6"], "label": 0}])
    assert exact_answer(["Rome", "5"], **columns) == [1.0, 0.0]
    assert multiple_choice(["B", "A"], **columns) == [1.0, 1.0]
    assert numeric_answer(["nothing", "it is 4"], **columns) == [0.0, 1.0]


def test_choices_with_a_text_label():
    columns = batch([{"choices": ["Paris", "Rome"], "label": "Rome"}, {"choices": ["4", "5"], "label": "5"}])
    assert columns["label"] == [1, 1]  # one type in the column: the index of the right choice
    assert exact_answer(["rome", "5"], **columns) == [1.0, 1.0]
    assert multiple_choice(["(B)", "A"], **columns) == [1.0, 0.0]
    # As a user's test would call it, with the label as written in the record:
    assert multiple_choice(["B"], choices=[["Paris", "Rome"]], label=["Rome"]) == [1.0]


def test_every_shape_in_one_batch():
    records = [{"answer": "ok"}, {"solution": "ok"}, {"ground_truth": "ok"}, {"choices": ["no", "ok"], "label": "ok"}, {"choices": ["ok", "no"], "label": 0}]
    columns = batch(records)
    assert references(5, **columns) == ["ok"] * 5
    assert exact_answer(["ok"] * 5, **columns) == [1.0] * 5
    assert multiple_choice(["B", "B", "B", "B", "A"], **columns) == [0.0, 0.0, 0.0, 1.0, 1.0]
    # an answer column wins over the labelled choice for the text rewards; the label for multiple_choice
    both = batch([{"choices": ["Paris", "Rome"], "label": "Rome", "ground_truth": "Rome"}])
    assert exact_answer(["Rome"], **both) == [1.0] and multiple_choice(["B"], **both) == [1.0]


def test_trl_keyword_arguments_are_ignored():
    columns = batch([{"answer": "ok"}]) | {"prompts": ["q"], "completion_ids": [[1]], "trainer_state": object()}
    for reward in BUILTIN.values():
        assert reward(["ok"], **columns) in ([1.0], [0.0])


@pytest.mark.parametrize("reward", ANSWER_REWARDS)
def test_a_row_without_an_answer_is_an_error_not_a_zero(reward):
    with pytest.raises(ValueError, match="row 1 has no answer to compare with"):
        reward(["a", "b"], answer=["a", None])
    with pytest.raises(ValueError, match="column `solution` has 1 values for 2 completions"):
        reward(["a", "b"], solution=["a"])
