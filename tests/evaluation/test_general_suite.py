"""The shipped general benchmarks: loadable, versioned, sized, disjoint from the replay prompts."""

import json
from pathlib import Path

import pytest

from evaluation.instructions import INSTRUCTIONS, describe, process_results
from evaluation.runner import GENERAL_DIR, general_benchmark

ROOT = Path(__file__).resolve().parents[2]
NEW = {"bb_knowledge": "knowledge", "bb_reasoning": "reasoning", "ifeval_lite": "instruction_following",
       "pydoc_prose": "language_modelling"}
SHIPPED = sorted(p.stem for p in GENERAL_DIR.glob("*.yaml"))


def _rows(config):
    path = Path(config["dataset_kwargs"]["data_files"]["test"])
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_benchmark_loads(name):
    config = general_benchmark(name)
    assert config["task"] == name
    assert "customizer_general" in config["tag"]
    assert config["metadata"]["version"]
    assert _rows(config)


@pytest.mark.parametrize("name", sorted(NEW))
def test_new_benchmarks_declare_skill_source_and_size(name):
    config = general_benchmark(name)
    meta = config["metadata"]
    assert meta["skill"] == NEW[name]
    assert meta["source"]
    assert meta["items"] == len(_rows(config))


def test_suite_size_and_skills():
    configs = [general_benchmark(n) for n in ["mmlu_dev", *NEW]]
    assert sum(len(_rows(c)) for c in configs) >= 1500
    assert {c["metadata"].get("skill", "knowledge") for c in configs} >= set(NEW.values())


def test_replay_prompts_share_no_text_with_the_suite():
    replay = [json.loads(line) for line in (ROOT / "training" / "replay_prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(replay) >= 250 and all(r["prompt"] and r["source"] for r in replay)
    texts = set()
    for name in SHIPPED:
        for row in _rows(general_benchmark(name)):
            texts.update(str(row[k]).strip() for k in ("input", "question", "prompt", "text") if k in row)
    for row in replay:
        prompt = row["prompt"].strip()
        assert prompt not in texts
        assert not any(line.strip() in texts for line in prompt.splitlines() if len(line) > 20)


def test_ifeval_items_use_known_instructions():
    rows = _rows(general_benchmark("ifeval_lite"))
    for row in rows:
        for iid, kwargs in zip(row["instruction_id_list"], row["kwargs"], strict=True):
            assert iid in INSTRUCTIONS
            assert describe(iid, kwargs) in row["prompt"]


@pytest.mark.parametrize(("ids", "kwargs", "response", "expected"), [
    (["change_case:english_lowercase"], [{}], "paris is the capital of france.", 1.0),
    (["change_case:english_lowercase"], [{}], "Paris is the capital of France.", 0.0),
    (["change_case:english_capital"], [{}], "PARIS.", 1.0),
    (["punctuation:no_comma"], [{}], "Yes, it is.", 0.0),
    (["startend:end_checker"], [{"end_phrase": "Any other questions?"}], "Helium. Any other questions?", 1.0),
    (["startend:end_checker"], [{"end_phrase": "Any other questions?"}], "Any other questions? Helium.", 0.0),
    (["startend:quotation"], [{}], '"Helium"', 1.0),
    (["startend:quotation"], [{}], "Helium", 0.0),
    (["keywords:existence"], [{"keywords": ["proton"]}], "It has one more Proton.", 1.0),
    (["keywords:forbidden_words"], [{"forbidden_words": ["yes"]}], "Yes.", 0.0),
    (["length_constraints:number_words"], [{"num_words": 5, "relation": "less than"}], "one two three four five", 0.0),
    (["detectable_format:json_format"], [{}], '```json\n{"answer": "helium"}\n```', 1.0),
    (["detectable_format:json_format"], [{}], "answer: helium", 0.0),
    (["detectable_format:title"], [{}], "<<Helium>>\nIt is helium.", 1.0),
    (["detectable_format:constrained_response"], [{}], "My answer is no.", 1.0),
    (["detectable_content:postscript"], [{"postscript_marker": "P.S."}], "Helium.\nP.S. It is light.", 1.0),
    (["detectable_format:number_bullet_lists"], [{"num_bullets": 2}], "* one\n* two\n* three", 0.0),
    (["punctuation:no_comma", "change_case:english_lowercase"], [{}, {}], "no commas here but One capital", 0.0),
    (["punctuation:no_comma"], [{}], "   ", 0.0),
])
def test_instruction_scorer(ids, kwargs, response, expected):
    assert process_results({"instruction_id_list": ids, "kwargs": kwargs}, [response]) == {"acc": expected}
