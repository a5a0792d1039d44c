"""The free rungs of the ladder: candidate prompts and retrieval-augmented few-shot are built as
task benchmark variants, scored in the baseline's model load, and judged on their lower bound."""

import doctest
import json

import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer

import evaluation.rungs as rungs_module
from core.catalog import get_config
from core.specs import EvaluationPlan
from data.ingest import ingest_dataset
from data.prompts import render
from evaluation.rungs import (
    RETRIEVAL_BENCHMARK,
    RungResult,
    judge,
    nearest_examples,
    prompt_benchmarks,
    retrieval_benchmark,
    score_bounds,
    winner,
)
from evaluation.runner import evaluate_model, task_benchmark
from tests.conftest import TINY_CONFIG_URN, write_jsonl

# Each testing item shares two rare words with exactly one training example, whose answer is its own.
WORDS = ["quokka", "zephyr", "marzipan", "obsidian", "kumquat", "tundra", "gazebo", "walrus", "saffron", "nebula"]
TRAIN = [{"prompt": f"Tell me the code for {w} {w}s and nothing else.", "completion": f"code-{i}"} for i, w in enumerate(WORDS)]
TEST = [{"prompt": f"What code goes with {w} {w}s?", "completion": f"code-{i}"} for i, w in enumerate(WORDS[:6])]


@pytest.fixture
def coded(tmp_path):
    root = tmp_path / "coded"
    write_jsonl(root / "training" / "train.jsonl", TRAIN)
    write_jsonl(root / "validation" / "val.jsonl", TRAIN[:2])
    write_jsonl(root / "testing" / "test.jsonl", TEST)
    return ingest_dataset(str(root), tmp_path / "data", seed=0)


def test_retrieval_finds_the_example_that_shares_the_rare_words_and_is_deterministic():
    corpus = [r["prompt"] for r in TRAIN]
    queries = [r["prompt"] for r in TEST]
    first = nearest_examples(corpus, queries, 2)
    assert [near[0] for near in first] == list(range(6))  # the example with the item's rare word comes first
    assert all(len(near) == 2 and near[0] != near[1] for near in first)
    assert nearest_examples(corpus, queries, 2) == first  # the same every run, ties to the earlier example


def test_the_item_itself_is_never_retrieved_even_when_it_is_in_the_training_split():
    corpus = ["walrus on the ice", "blue walrus tusk", "walrus on the ice"]
    assert nearest_examples(corpus, ["walrus on the ice"], 3) == [[1]]
    assert nearest_examples(corpus, ["nothing matches"], 2) == [[0, 1]]  # no overlap: the earliest examples


def test_a_rung_is_judged_on_its_lower_bound_not_its_estimate():
    zero = [0.0] * 20
    lucky = RungResult(benchmark="b", kind="prompt", label="prompt 1", template="t", per_item=[1.0] * 17 + [0.0] * 3)
    judged = judge(lucky, zero, "em", 80.0, 0.05)  # 85 points, but 20 items cannot show 80
    assert judged.score == pytest.approx(85.0) and judged.ci_low < 80.0 and judged.verdict == "undecided"
    sure = lucky.model_copy(update={"per_item": [1.0] * 40, "label": "prompt 2"})
    assert judge(sure, [0.0] * 40, "em", 80.0, 0.05).verdict == "passed"
    poor = lucky.model_copy(update={"per_item": [1.0] * 10 + [0.0] * 10})
    assert judge(poor, zero, "em", 80.0, 0.05).verdict == "FAILED"
    # its paired gain over zero-shot is reported with its bounds
    assert judged.gain == pytest.approx(85.0) and judged.gain_ci[0] > 0.0


def test_the_winner_is_the_passing_rung_with_the_highest_lower_bound():
    make = lambda label, items: RungResult(benchmark=label, kind="prompt", label=label, template=label, per_item=items)  # noqa: E731
    rungs = [make("a", [1.0] * 30 + [0.0] * 10), make("b", [1.0] * 40), make("c", [1.0] * 39 + [0.0])]
    judged = [judge(r, [0.0] * 40, "em", 70.0, 0.05) for r in rungs]
    assert [j.verdict for j in judged] == ["undecided", "passed", "passed"]
    assert winner(rungs, judged)[0].label == "b"
    assert winner(rungs[:1], judged[:1]) is None


def test_score_bounds_of_continuous_scores_use_the_mean():
    low, high = score_bounds([0.4, 0.6, 0.5, 0.5], 0.05)
    assert low < 0.5 < high


@pytest.mark.parametrize(("prompts", "message"), [
    ([" "], r"`evaluation.prompts\[0\]` must be non-blank, unique and hold at most one `\{prompt\}`: ' '"),
    (["ok", "{prompt} and {prompt}"], r"`evaluation.prompts\[1\]` must be .*: '\{prompt\} and \{prompt\}'"),
    (["Be brief.", "Be brief."], r"`evaluation.prompts\[1\]` must be non-blank, unique"),
    (["x" * 4001], r"prompts\.0\n  String should have at most 4000 characters"),
    ([f"p{i}" for i in range(9)], r"prompts\n  List should have at most 8 items"),
])
def test_candidate_prompts_are_validated_naming_the_field(prompts, message):
    with pytest.raises(ValidationError, match=message):
        EvaluationPlan(prompts=prompts)
    assert EvaluationPlan(prompts=["Be brief.", "Q: {prompt}"]).prompts == ["Be brief.", "Q: {prompt}"]


def test_rung_benchmarks_carry_the_candidate_prompt_and_the_nearest_examples(tmp_path, settings, coded, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plan = EvaluationPlan(prompts=["Answer with the code only.", "Q: {prompt}"], retrieval_few_shot=True, few_shot=1)
    task = task_benchmark(coded, config, tokenizer, plan, tmp_path / "bench")
    prompts = prompt_benchmarks(coded, config, tokenizer, plan, task, tmp_path / "bench")
    assert [p["task"] for p in prompts] == ["task_prompt_1", "task_prompt_2"]
    rows = [json.loads(line) for line in (tmp_path / "bench" / "task_prompt_2.jsonl").read_text().splitlines()]
    wrapped = render({"prompt": "Q: " + TEST[0]["prompt"], "completion": TEST[0]["completion"]}, config, tokenizer)
    assert (rows[0]["prompt"], rows[0]["answer"]) == (wrapped.prompt, "code-0")
    system = [json.loads(line) for line in (tmp_path / "bench" / "task_prompt_1.jsonl").read_text().splitlines()]
    assert all("Answer with the code only." in r["prompt"] for r in system)

    retrieval = retrieval_benchmark(coded, config, tokenizer, plan, task, tmp_path / "bench")
    assert retrieval["task"] == RETRIEVAL_BENCHMARK
    settings_of = retrieval["metadata"]["rung"]["retrieval"]
    assert (settings_of["k"], settings_of["library"], settings_of["dataset_sha256"]) == (1, "bm25s==0.3.16", coded.sha256)
    for row in (json.loads(line) for line in (tmp_path / "bench" / f"{RETRIEVAL_BENCHMARK}.jsonl").read_text().splitlines()):
        word = next(w for w in WORDS if f"with {w} " in row["prompt"])
        assert f"code for {word} {word}s" in row["prompt"]  # the one example that shares its rare word is shown
        assert row["prompt"].count("Tell me the code") == 1
    assert retrieval_benchmark(coded, config, tokenizer, plan.model_copy(update={"retrieval_few_shot": False}), task, tmp_path / "b2") is None


def test_rungs_are_scored_in_the_baseline_load_item_by_item(tmp_path, settings, coded, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plan = EvaluationPlan(general_benchmarks=[], prompts=["Q: {prompt}"], retrieval_few_shot=True, few_shot=1, max_new_tokens=3)
    task = task_benchmark(coded, config, tokenizer, plan, tmp_path / "bench")
    rungs = [*prompt_benchmarks(coded, config, tokenizer, plan, task, tmp_path / "bench"),
             retrieval_benchmark(coded, config, tokenizer, plan, task, tmp_path / "bench")]
    scores = evaluate_model(str(tiny_model_dir), None, task, plan, tmp_path / "base", settings, rungs=rungs)
    assert [(r.benchmark, r.kind, len(r.per_item)) for r in scores.rungs] == [("task_prompt_1", "prompt", 6), (RETRIEVAL_BENCHMARK, "retrieval", 6)]
    samples = [json.loads(line) for line in (tmp_path / "base" / "samples" / f"{RETRIEVAL_BENCHMARK}.jsonl").read_text().splitlines()]
    by_doc = sorted(samples, key=lambda s: s["doc_id"])
    assert scores.rungs[1].per_item == [float(s["task_exact_match"]) for s in by_doc]


def test_module_doctests_pass():
    failures, tried = doctest.testmod(rungs_module)
    assert tried > 0 and failures == 0
