"""Custom evaluation logic without a model: config checks, data loading, templates and NeMo-shaped scores."""

from __future__ import annotations

import json

import pytest

from evaluation.custom import ConfigProblem, check_config, load_rows, render, run_custom_task, score_metric


def _task(**change):
    return {"type": "chat-completion", "dataset": "ns/ds", "params": {"template": {"messages": [{"role": "user", "content": "{{item.q}}"}]}},
            "metrics": {"acc": {"type": "string-check", "params": {"check": ["{{sample.output_text}}", "equals", "{{item.a}}"]}}}} | change


def test_check_config_names_the_field():
    check_config({"type": "custom", "tasks": {"t": _task()}})
    check_config({"type": "gsm8k"})  # lm-eval benchmarks are checked by lm-eval
    with pytest.raises(ConfigProblem, match=r"tasks\.t\.metrics\.x\.type"):
        check_config({"type": "custom", "tasks": {"t": _task(metrics={"x": {"type": "llm-judge"}})}})
    with pytest.raises(ConfigProblem, match=r"tasks\.t\.params\.template\.messages"):
        check_config({"type": "custom", "tasks": {"t": _task(params={"template": "plain"})}})
    with pytest.raises(ConfigProblem, match=r"tasks\.t\.metrics\.m"):
        check_config({"type": "custom", "tasks": {"t": _task(metrics={"m": [1]})}})
    with pytest.raises(ConfigProblem, match="at least one task"):
        check_config({"type": "custom"})


def test_rows_from_jsonl_json_and_csv_with_normalised_keys(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"Question Text": "q1", "A": "1"}\n\n{"Question Text": "q2", "A": "2"}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"q": "x"}]))
    (tmp_path / "c.csv").write_text("q,a\nx,1\ny,2\n")
    assert load_rows(tmp_path / "a.jsonl") == [{"question_text": "q1", "a": "1"}, {"question_text": "q2", "a": "2"}]
    assert load_rows(tmp_path / "b.json") == [{"q": "x"}]
    assert load_rows(tmp_path / "c.csv", limit=1) == [{"q": "x", "a": "1"}]
    (tmp_path / "bad.jsonl").write_text('{"q": 1}\n{oops\n')
    with pytest.raises(ConfigProblem, match="bad.jsonl:2"):
        load_rows(tmp_path / "bad.jsonl")


def test_templates_are_sandboxed_jinja():
    assert render({"messages": [{"content": "Q: {{item.q}}"}]}, {"q": "2+2"}) == {"messages": [{"content": "Q: 2+2"}]}
    with pytest.raises(Exception):  # the sandbox refuses attribute access to internals
        render("{{ item.__class__.__mro__ }}", {})


def test_scores_in_nemo_shape(tmp_path):
    rows = [{"a": "ok"}, {"a": "no"}]
    outputs = ["ok", "yes"]
    assert score_metric({"type": "em", "params": {"ground_truth": "{{item.a}}"}}, rows, outputs) == {"scores": {"em": {"value": 0.5, "stats": {"count": 2, "mean": 0.5, "min": 0.0, "max": 1.0, "sum": 1.0}}}}
    assert set(score_metric({"type": "rouge", "params": {"ground_truth": "{{item.a}}"}}, rows, outputs)["scores"]) == {
        "rouge_1_score", "rouge_2_score", "rouge_3_score", "rouge_L_score"}
    assert score_metric({"type": "bleu", "params": {"references": "{{item.a}}"}}, rows, outputs)["scores"]["bleu_score"]["value"] >= 0
    check = {"type": "string-check", "params": {"check": ["{{sample.output_text}}", "contains", "{{item.a}}"]}}
    assert score_metric(check, rows, outputs)["scores"]["string-check"]["value"] == 0.5
    data = tmp_path / "d.jsonl"
    data.write_text('{"q": "say ok", "a": "ok"}\n{"q": "say no", "a": "no"}\n')
    result = run_custom_task("t", _task(), str(data), lambda prompts, params: ["ok" for _ in prompts], {})
    assert result["metrics"]["acc"]["scores"]["string-check"]["value"] == 0.5
    assert result["data"][0] == {"item": {"q": "say ok", "a": "ok"}, "output_text": "ok"}
