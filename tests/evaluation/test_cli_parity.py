"""customizer's evaluation and the ``lm_eval`` command line give the same numbers for the same model
and benchmarks (the exported YAML runs under the CLI as it stands)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from evaluation.export import export_for_lm_eval
from evaluation.runner import evaluate_model, task_benchmark
from tests.conftest import TINY_CONFIG_URN
from core.catalog import get_config
from data.ingest import ingest_dataset
from training.sft import train_sft
from core.specs import EvaluationPlan, Hyperparameters

REPO = Path(__file__).resolve().parents[2]


def test_lm_eval_command_line_agrees_with_customizer(tmp_path, settings, ok_dataset, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    # A model with a non-trivial task score: the tiny model fully fine-tuned to answer "ok".
    hp = Hyperparameters(finetuning_type="all_weights", epochs=3, batch_size=4, learning_rate=2e-3)
    model = train_sft(str(tiny_model_dir), data, config, hp, tmp_path / "job", settings).output_dir
    plan = EvaluationPlan(general_benchmarks=["capitals", "everyday"], limit=24, max_new_tokens=4)
    task = task_benchmark(data, config, AutoTokenizer.from_pretrained(model), plan, tmp_path / "bench")
    ours = evaluate_model(model, None, task, plan, tmp_path / "ours", settings)

    names = export_for_lm_eval(task, plan, tmp_path / "cli")
    env = os.environ | {"PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
         "--tasks", ",".join(names), "--include_path", str(tmp_path / "cli"), "--device", "cpu",
         "--batch_size", str(plan.batch_size), "--limit", str(plan.limit), "--seed", "0", "--output_path", str(tmp_path / "cli-out")],
        check=True, cwd=tmp_path, env=env, capture_output=True, timeout=600,
    )
    (results_file,) = list((tmp_path / "cli-out").rglob("results_*.json"))
    theirs = json.loads(results_file.read_text())["results"]
    assert ours.task["exact_match"] > 0, "the trained model should score on its task"
    assert theirs["task"]["exact_match,none"] == pytest.approx(ours.task["exact_match"])
    for metric in ("json_field_match", "f1", "rouge_l", "bleu", "contains"):
        assert theirs["task"][f"{metric},none"] == pytest.approx(ours.task[metric]), metric
    for name in ("capitals", "everyday"):
        assert theirs[name]["acc,none"] == pytest.approx(ours.general[name])
