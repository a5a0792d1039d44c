"""Opening and closing a job through ``.fn()``: the work folder, the MLflow run with what the
pre-flight resolved, the job's result, and the failure hook, on a real MLflow SQLite store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from core import tracking
from core.catalog import get_config
from core.ids import prefixed_id
from core.settings import get_settings
from core.specs import CustomizationSpec
from data.ingest import IngestedDataset
from deploy.registry import RegisteredVersion
from evaluation.gate import Decision
from tasks import job as job_tasks
from tasks.check import CheckedJob
from tasks.job import finish_job, mark_failed, open_job
from tests.tasks.conftest import CONFIG, make_job, run_tags, stage
from training.base_model import ResolvedModel
from training.common import TrainResult

DATA = IngestedDataset(source="/data/ok", sha256="ab" * 32, files={}, counts={"training": 20}, formats={},
                       validation_source="holdout", testing_source="testing")


@pytest.fixture
def notices(monkeypatch) -> list[str]:
    """What the job would post to the webhook."""
    sent: list[str] = []
    monkeypatch.setattr(job_tasks, "notify", lambda settings, text, namespace=None: sent.append(text) or True)
    return sent


def checked(base: ResolvedModel | None = None, policy_source: str = "job", **fields) -> CheckedJob:
    """What the pre-flight hands ``open-job`` (its own checks are tested with ``check``)."""
    spec = CustomizationSpec.model_validate({"config": CONFIG, "dataset": "/data/ok", "output_model": "team/bot"} | fields)
    config = get_config(CONFIG, get_settings())
    hp = spec.hyperparameters
    return CheckedJob(spec=spec, config=config, option=config.option_for(hp.training_type, hp.finetuning_type), policy=spec.policy,
                      policy_source=policy_source, base=base, dataset=DATA, data_dir="/data/ok", train_examples=20,
                      tokens_per_epoch=None, warnings=[], estimate=None)


def test_open_job_creates_the_work_folder_and_the_tracked_run(job_settings):
    job = open_job.fn(checked(hyperparameters={"epochs": 3, "lora": {"adapter_dim": 4}}))

    assert job.job_id.startswith("cust-") and Path(job.work_dir) == job_settings.jobs_dir / job.job_id
    assert CustomizationSpec.model_validate_json((Path(job.work_dir) / "spec.json").read_text()) == job.spec
    assert (job.config.urn, job.policy_source) == (CONFIG, "job")
    run = tracking.client(job_settings).get_run(job.run_id)
    assert run.data.tags["customizer.job_id"] == job.job_id
    assert (run.data.tags["customizer.output_model"], run.data.tags["customizer.config"]) == ("team/bot", CONFIG)
    assert (run.data.params["epochs"], run.data.params["lora.adapter_dim"], run.data.params["dataset"]) == ("3", "4", "/data/ok")
    assert json.loads(run.data.tags["customizer.policy"])["source"] == "job"
    assert "customizer.base_model.digest" not in run.data.tags  # no base model was resolved


def test_open_job_records_the_policy_and_base_model_the_pre_flight_resolved(job_settings):
    base = ResolvedModel(path="/models/tiny", digest="d" * 64, source="builtin://tiny-llama")
    job = open_job.fn(checked(base=base, policy_source="/policies/team.yaml", policy={"max_general_drop": 0.5}))

    assert (job.policy.max_general_drop, job.policy_source) == (0.5, "/policies/team.yaml")
    tags = run_tags(job_settings, job)
    assert json.loads(tags["customizer.policy"]) == {"source": "/policies/team.yaml", **job.policy.model_dump()}
    assert (tags["customizer.base_model"], tags["customizer.base_model.digest"]) == ("customizer/tiny-llama", "d" * 64)


def test_a_job_prompting_satisfies_finishes_without_a_candidate(job_settings, notices):
    job = make_job(job_settings)
    result = finish_job.fn(job, DATA, stage(0.9, [1.0, 0.0]), prompt_baseline="zero-shot prompting reaches em 90.0 >= target 80.0")

    assert (result.outcome, result.candidate, result.registered, result.dataset_sha256) == ("prompt_sufficient", None, None, DATA.sha256)
    assert tracking.client(job_settings).get_run(job.run_id).info.status == "FINISHED"
    assert notices == [f"customize job {job.job_id} for team/bot completed: no fine-tuning needed: "
                       "zero-shot prompting reaches em 90.0 >= target 80.0"]


def test_a_trained_job_reports_its_curves_and_the_version_it_made(job_settings, notices):
    job = make_job(job_settings)
    trained = TrainResult(artifact="adapter", output_dir="/nowhere", steps=2, epochs_completed=1.0, train_loss=[(1, 2.0), (2, 1.0)],
                          val_loss=[(2, 1.5)], forgetting_kl=[(2, 0.01)], best_val_loss=1.5, best_step=2, stop_reason="completed",
                          train_seconds=1.0, tokens_per_second=None, trainable_parameters=1, total_parameters=2)
    version = RegisteredVersion(registered_model="team.bot", version="3", source="s", aliases=["candidate", "champion"])

    result = finish_job.fn(job, DATA, stage(0.2, [1.0, 0.0]), trained=trained, candidate=stage(0.6, [1.0, 0.0]),
                           decision=Decision(action="promote", reasons=[]), registered=version, approvals=[None])

    assert result.outcome == "trained" and result.stop_reason == "completed"
    assert (result.train_loss, result.val_loss, result.forgetting_kl) == ([(1, 2.0), (2, 1.0)], [(2, 1.5)], [(2, 0.01)])
    assert result.approvals == [] and result.mlflow_run_id == job.run_id
    assert notices == [f"customize job {job.job_id} for team/bot completed: promote; version 3 is champion"]


def test_a_failed_flow_closes_its_runs_as_failed_and_says_why(job_settings, notices):
    flow_run_id = uuid.uuid4()
    job_id = prefixed_id("cust", flow_run_id)
    run_id = tracking.start_run(job_settings, job_id, tags={}, params={})
    flow_run = SimpleNamespace(id=flow_run_id, parameters={"spec": {"output_model": "team/bot"}})

    mark_failed(None, flow_run, SimpleNamespace(message="training ran out of memory"))

    run = tracking.client(job_settings).get_run(run_id)
    assert (run.info.status, run.data.tags["customizer.failure"]) == ("FAILED", "training ran out of memory")
    assert notices == [f"customize job {job_id} for team/bot failed: training ran out of memory"]
