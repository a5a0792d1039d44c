"""lm-eval runner on the tiny model: the task benchmark uses the training prompt; the shipped general
benchmarks load and score; per-item results are kept for paired comparisons."""

import doctest
import json
from pathlib import Path

import pytest
import yaml
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import evaluation.runner as runner_module
from core.catalog import get_config
from core.specs import EvaluationPlan
from data.ingest import ingest_dataset
from data.prompts import render
from evaluation.general import GENERAL_DIR, EvaluationError, general_benchmark
from evaluation.runner import (
    cache_key,
    evaluate_model,
    few_shot_benchmark,
    task_benchmark,
)
from tests.conftest import TINY_CONFIG_URN, write_jsonl

SHIPPED = sorted(p.stem for p in GENERAL_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_general_benchmark_loads_with_its_data_and_version(name):
    config = general_benchmark(name)
    data = Path(config["dataset_kwargs"]["data_files"]["test"])
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(rows) >= 50 and config["metadata"]["version"]
    if config["output_type"] == "multiple_choice":
        assert all(0 <= row["label"] < len(row["choices"]) for row in rows)


def test_unknown_general_benchmark_lists_the_shipped_ones():
    with pytest.raises(EvaluationError, match="does not exist; benchmarks: .*capitals"):
        general_benchmark("hellaswag-offline")


def test_task_benchmark_renders_the_training_prompt(tmp_path, settings, ok_dataset, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    benchmark = task_benchmark(data, config, tokenizer, EvaluationPlan(), tmp_path / "bench")
    items = [json.loads(line) for line in (tmp_path / "bench" / "task.jsonl").read_text().splitlines()]
    expected = render({"prompt": "Reply with the word ok. Item 100", "completion": "ok"}, config, tokenizer)
    assert (items[0]["prompt"], items[0]["answer"]) == (expected.prompt, "ok")
    assert benchmark["generation_kwargs"]["until"] == ["<|im_end|>"]
    assert yaml.safe_load((tmp_path / "bench" / "task.yaml").read_text())["metadata"]["dataset_sha256"] == data.sha256


def test_base_and_adapter_are_scored_on_every_benchmark_in_one_call(tmp_path, settings, ok_dataset, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    plan = EvaluationPlan(general_benchmarks=["capitals", "everyday"], limit=12, max_new_tokens=4)
    benchmark = task_benchmark(data, config, tokenizer, plan, tmp_path / "bench")

    base = evaluate_model(str(tiny_model_dir), None, benchmark, plan, tmp_path / "base", settings)
    assert set(base.task) == {"exact_match", "json_field_match", "f1", "rouge_l", "bleu", "contains"} and set(base.general) == {"capitals", "everyday"}
    assert all(0.0 <= v <= 1.0 for v in [*base.task.values(), *base.general.values()])
    assert base.counts == {"task": 8, "capitals": 12, "everyday": 12}
    assert len(base.per_sample["capitals"]) == 12 and base.general["capitals"] == pytest.approx(sum(base.per_sample["capitals"]) / 12)
    assert (tmp_path / "base" / "samples" / "task.jsonl").exists() and (tmp_path / "base" / "scores.json").exists()

    # A LoRA adapter with non-zero B changes the model: its scores come from the merged weights.
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    tuned = evaluate_model(str(tiny_model_dir), str(tmp_path / "adapter"), benchmark, plan, tmp_path / "tuned", settings)
    base_out = [json.loads(l)["filtered_resps"] for l in (tmp_path / "base" / "samples" / "capitals.jsonl").read_text().splitlines()]
    tuned_out = [json.loads(l)["filtered_resps"] for l in (tmp_path / "tuned" / "samples" / "capitals.jsonl").read_text().splitlines()]
    assert base_out != tuned_out


def test_the_baseline_cache_key_is_the_content_not_the_job_folder(tmp_path, settings, ok_dataset, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    plan = EvaluationPlan(general_benchmarks=["capitals"])
    keys = []
    for job in ("job-1", "job-2"):  # two jobs on the same data write their benchmarks into their own folders
        task = task_benchmark(data, config, tokenizer, plan, tmp_path / job)
        keys.append(cache_key("base", None, task, plan, "float32", few_shot_benchmark(data, config, tokenizer, plan, task, tmp_path / job)))
    assert keys[0] == keys[1]
    fewer = plan.model_copy(update={"few_shot": 1})
    task = task_benchmark(data, config, tokenizer, fewer, tmp_path / "job-3")
    assert cache_key("base", None, task, fewer, "float32", few_shot_benchmark(data, config, tokenizer, fewer, task, tmp_path / "job-3")) != keys[0]
    assert cache_key("base", None, task, plan, "bfloat16") != cache_key("base", None, task, plan, "float32")


def test_module_doctests_pass():
    failures, tried = doctest.testmod(runner_module)
    assert tried > 0 and failures == 0
    assert runner_module.GENERAL_DIR == GENERAL_DIR and runner_module.general_benchmark is general_benchmark  # callers import them from the runner too


def test_a_reward_task_benchmark_reads_the_format_ingest_found_and_every_answer_column(tmp_path, settings, tiny_model_dir):
    root = tmp_path / "ds"
    records = [
        {"prompt": "Capital of Italy?", "choices": ["Paris", "Rome"], "label": "Rome"},
        {"prompt": "Solve x+1=2", "solution": "x = 1"},
        {"prompt": "2+2?", "ground_truth": 4},
        {"prompt": "Capital of France?", "answer": "Paris"},
    ]
    write_jsonl(root / "training" / "t.jsonl", records)
    write_jsonl(root / "validation" / "v.jsonl", records)
    data = ingest_dataset(str(root), tmp_path / "data", seed=0, method="grpo")
    assert data.formats == {"training": "reward", "validation": "reward", "testing": "reward"}
    config = get_config(TINY_CONFIG_URN, settings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    benchmark = task_benchmark(data, config, tokenizer, EvaluationPlan(), tmp_path / "bench", ["exact_answer", "multiple_choice"])
    assert benchmark["metadata"]["kind"] == "reward" and benchmark["metadata"]["metrics"] == ["exact_answer", "multiple_choice"]
    rows = [json.loads(line) for line in (tmp_path / "bench" / "task.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in rows] == ["Rome", "x = 1", "4", "Paris"]
    score = benchmark["process_results"]
    assert score(rows[0], ["B"]) == {"exact_answer": 0.0, "multiple_choice": 1.0}
    assert score(rows[1], ["X = 1."]) == {"exact_answer": 1.0, "multiple_choice": 0.0}
    assert score(rows[2], ["4"])["exact_answer"] == 1.0
