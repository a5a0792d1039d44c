"""The evaluation tasks that decide, through ``.fn()``: the prompt baseline, the power plan and the
gate, each on literal scores, with what they record on the job's MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

from core import tracking
from evaluation.gate import decide
from tasks.evaluation import check_prompt_baseline, gate, power
from tests.tasks.conftest import make_job, run_tags, stage
from training.common import TrainResult

GENERAL = [1.0] * 600 + [0.0] * 400


def trained(val_loss: list[tuple[int, float]]) -> TrainResult:
    return TrainResult(artifact="adapter", output_dir="/nowhere", steps=30, epochs_completed=3.0,
                       train_loss=[(10, 2.0), (20, 1.0), (30, 0.5)], val_loss=val_loss, best_val_loss=None, best_step=None,
                       stop_reason="completed", train_seconds=1.0, tokens_per_second=None, trainable_parameters=1,
                       total_parameters=2)


def test_a_few_shot_estimate_without_its_items_does_not_end_the_job(job_settings):
    # Few-shot is judged on the lower bound of its score: an estimate alone, without the per-item
    # results a bound needs, never spares the job its training.
    job = make_job(job_settings, evaluation={"target_score": 80.0})
    assert check_prompt_baseline.fn(job, stage(0.5, GENERAL, few_shot=0.85)) is None
    assert "customizer.decision" not in run_tags(job_settings, job)


def test_below_the_target_or_forced_the_job_trains(job_settings):
    below = make_job(job_settings, evaluation={"target_score": 90.0})
    assert check_prompt_baseline.fn(below, stage(0.5, GENERAL, few_shot=0.85)) is None
    forced = make_job(job_settings, evaluation={"target_score": 80.0, "force_training": True})
    assert check_prompt_baseline.fn(forced, stage(0.9, GENERAL)) is None
    no_target = make_job(job_settings)
    assert check_prompt_baseline.fn(no_target, stage(1.0, GENERAL, few_shot=1.0)) is None


def test_power_is_planned_from_the_baseline_and_recorded(job_settings, tmp_path):
    job = make_job(job_settings, evaluation={"general_benchmarks": ["capitals"]})
    rows = power.fn(job, stage(0.2, GENERAL[:80]))
    assert [(r.benchmark, r.items, r.observed) for r in rows] == [("g", 80, False)]
    assert not rows[0].can_decide  # 80 items cannot show a 2-point limit
    recorded = json.loads(run_tags(job_settings, job)["customizer.power"])
    assert recorded == [rows[0].model_dump() | {"can_decide": False, "describe": rows[0].describe()}]
    logged = tracking.client(job_settings).download_artifacts(job.run_id, "power.json", str(tmp_path))
    assert json.loads(Path(logged).read_text()) == recorded


def test_the_gate_is_the_pure_decision_recorded_on_the_run(job_settings):
    job = make_job(job_settings)
    baseline, candidate = stage(0.2, GENERAL), stage(0.6, GENERAL)
    run = trained(val_loss=[(10, 1.5), (20, 1.2), (30, 1.1)])

    decision = gate.fn(job, baseline, candidate, None, run)

    assert decision == decide(baseline.gate_scores(), candidate.gate_scores(), None, job.policy, "em",
                              curves={"train_loss": run.train_loss, "val_loss": run.val_loss}, method=("sft", "lora"))
    assert decision.action == "promote"
    tags = run_tags(job_settings, job)
    assert tags["customizer.decision"] == "promote"
    assert [d["benchmark"] for d in json.loads(tags["customizer.forgetting"])] == [d.benchmark for d in decision.deltas]


def test_the_gate_holds_a_reviewed_method_and_rejects_a_worse_candidate(job_settings):
    dpo = make_job(job_settings, hyperparameters={"training_type": "dpo"})
    held = gate.fn(dpo, stage(0.2, GENERAL), stage(0.6, GENERAL), None, trained(val_loss=[]))
    assert held.action == "hold" and held.reasons[-1] == "review: dpo/lora needs a reviewer's approval before promotion"

    sft = make_job(job_settings)
    beaten = gate.fn(sft, stage(0.2, GENERAL), stage(0.6, GENERAL), {"task": {"em": 0.9}}, trained(val_loss=[]))
    assert beaten.action == "reject"
    assert run_tags(job_settings, sft)["customizer.decision"] == "reject"
