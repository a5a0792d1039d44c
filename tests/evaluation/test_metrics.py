import doctest

import core.ids
import evaluation.gate
import evaluation.metrics
import core.catalog
from evaluation.metrics import exact_match, json_field_match


def test_module_doctests_pass():
    for module in (evaluation.metrics, evaluation.gate, core.ids, core.catalog):
        failures, tried = doctest.testmod(module)
        assert tried > 0 and failures == 0, module.__name__


def test_json_field_match_partial_credit_and_garbage():
    answer = ['{"category": "billing", "priority": "high"}']
    assert json_field_match(['{"category": "Billing", "priority": "low"}'], answer=answer) == [0.5]
    assert json_field_match(['{"priority": "high", "category": "billing"}'], answer=answer) == [1.0]
    assert json_field_match(['["billing"]'], answer=answer) == [0.0]
    assert json_field_match(["plain"], answer=["plain"]) == [1.0]  # non-JSON answers: exact match


def test_exact_match_strips_whitespace_only():
    assert exact_match([" ok\n", "OK"], answer=["ok", "ok"]) == [1.0, 0.0]
