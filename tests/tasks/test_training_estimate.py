"""Estimate against actual on a job's MLflow run (SQLite): the plan records the estimate, training its
actual time and achieved throughput, and the next job of the same config and method is estimated at
the utilisation the last one achieved."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from core import tracking
from core.settings import get_settings
from core.specs import CustomizationSpec
from evaluation.report import training_time
from tasks.check import check
from tasks.job import open_job
from tasks.training import plan_training, record_throughput
from tests.conftest import TINY_CONFIG_URN, ok_rows, write_jsonl
from training.common import TrainResult
from training.guidance import PRIOR_UTILISATION

log = logging.getLogger("test")


@pytest.fixture
def settings(job_settings, tiny_config_dir, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CUSTOMIZER_ALLOWED_FILE_ROOTS", json.dumps([str(tmp_path_factory.getbasetemp())]))
    return get_settings()


def checked_job(tmp_path: Path, name: str):
    write_jsonl(tmp_path / name / "training" / "t.jsonl", ok_rows(10))
    spec = CustomizationSpec.model_validate({"config": TINY_CONFIG_URN, "dataset": str(tmp_path / name), "output_model": "team/bot",
                                             "budget": {"max_device_hours": 100.0}})
    return check(spec, get_settings(), tmp_path / f"{name}-out")


def trained(seconds: float, epochs: float) -> TrainResult:
    return TrainResult(artifact="adapter", output_dir="/x", steps=6, epochs_completed=epochs, train_loss=[(1, 1.0)], val_loss=[],
                       best_val_loss=None, best_step=None, stop_reason="completed", train_seconds=seconds,
                       tokens_per_second=100.0, trainable_parameters=10, total_parameters=100)


def test_a_finished_job_records_estimate_against_actual_and_calibrates_the_next(settings, tmp_path):
    first = checked_job(tmp_path, "a")
    assert "achieved" not in first.estimate.utilisation_source  # no finished job yet: the spec's or the typical share
    job = open_job.fn(first)
    plan = plan_training.fn(job, first)
    run = tracking.client(settings).get_run(job.run_id).data
    assert run.metrics[tracking.ESTIMATE_SECONDS] == pytest.approx(plan.estimate.seconds)
    assert training_time(run.metrics) is None  # not trained yet

    # Training took half the estimate: the job achieved twice the assumed share of the peak.
    record_throughput(job, trained(plan.estimate.seconds / 2, epochs=plan.estimate.epochs), log)
    metrics = tracking.client(settings).get_run(job.run_id).data.metrics
    assert metrics[tracking.ESTIMATE_RATIO] == pytest.approx(2.0)
    assert metrics[tracking.ACTUAL_SECONDS] == pytest.approx(plan.estimate.seconds / 2)
    share = 2 * plan.estimate.utilisation
    assert metrics[tracking.ACHIEVED_UTILISATION] == pytest.approx(share)
    assert metrics[tracking.TOKENS] == pytest.approx(100.0 * plan.estimate.seconds / 2)
    assert metrics[tracking.ACHIEVED_TFLOPS] == pytest.approx(share * plan.estimate.peak_tflops)
    assert "estimate / actual 2.00" in training_time(metrics)

    # A later rung of the ladder trains on the same run: it neither overwrites the comparison nor calibrates.
    rung = job.model_copy(update={"spec": job.spec.model_copy(update={"hyperparameters": job.spec.hyperparameters.model_copy(
        update={"finetuning_type": "all_weights"})})})
    record_throughput(rung, trained(1.0, epochs=plan.estimate.epochs), log)
    assert tracking.client(settings).get_run(job.run_id).data.metrics == metrics

    later = checked_job(tmp_path, "b")
    assert later.estimate.utilisation == pytest.approx(share)
    assert later.estimate.seconds == pytest.approx(plan.estimate.seconds / 2, rel=0.05)  # same data: half the time
    assert "achieved by the last 1 finished job(s)" in later.estimate.describe()


def test_a_run_without_a_plan_records_the_actual_alone(settings, tmp_path):
    job = open_job.fn(checked_job(tmp_path, "c"))
    record_throughput(job, trained(30.0, epochs=1.0), log)
    metrics = tracking.client(settings).get_run(job.run_id).data.metrics
    assert metrics[tracking.ACTUAL_SECONDS] == 30.0 and tracking.ACHIEVED_UTILISATION not in metrics
    assert training_time(metrics) == "30 s (no estimate)"
    assert PRIOR_UTILISATION["cpu", "float32"] > 0
