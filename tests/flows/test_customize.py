"""The customize flow end to end through the real components: Prefect (test harness server),
MLflow on SQLite, and the store on S3 served over HTTP by moto's server."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from core import audit, tracking
from core.settings import get_settings
from deploy.registry import registered_name
from deploy.store import VersionExists
from tests.conftest import TINY_CONFIG_URN, write_jsonl
from core.specs import CustomizationSpec, PromotionPolicy
from evaluation.policy import write_policy

OUTPUT = "team/ok-bot"
REVIEW_LORA_TOO = ["all_weights", "dpo", "grpo", "lora"]  # LoRA reviewed too: a job may only add to the reviewed methods


def spec_for(dataset: Path, hyperparameters: dict | None = None, operator: dict | None = None, **policy) -> CustomizationSpec:
    """A job on the tiny model with its own ``policy`` (which may only tighten the operator's).

    The tiny model is random: its general scores are noise, so the operator opens the forgetting limit
    (the global policy file in the test's data folder, with ``operator``'s fields) and the gate's
    forgetting rules are tested on their own in tests/evaluation/test_gate.py."""
    write_policy(get_settings(), None, PromotionPolicy(max_general_drop=100.0, **(operator or {})))
    hp = {"epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "log_every_n_steps": 1, "lora": {"adapter_dim": 8, "alpha": 16}}
    return CustomizationSpec.model_validate(
        {
            "config": TINY_CONFIG_URN,
            "dataset": str(dataset),
            "output_model": OUTPUT,
            "hyperparameters": hp | (hyperparameters or {}),
            "evaluation": {"general_benchmarks": ["capitals", "everyday"], "limit": 16, "max_new_tokens": 4},
            "policy": policy,
        }
    )


def prefect_artifact(kind: str, job_id: str):
    """The latest Prefect artifact of ``kind`` for the job (``tasks.artifacts`` keys)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.artifacts import artifact_key

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key(kind, job_id)])))
    assert len(found) == 1, (kind, job_id, found)  # one per job: a progress artifact is moved on in place
    return found[0]


def test_customize_registers_publishes_and_promotes(services, ok_dataset, tiny_model_dir, tmp_path):
    from flows.customize import customize

    store = services
    result = customize(spec_for(ok_dataset))

    # The task improved over the base model with the same prompt, so the gate promoted.
    assert result.baseline.task["exact_match"] < result.candidate.task["exact_match"]
    assert result.decision.action == "promote", result.decision.reasons
    assert result.registered.aliases == ["candidate", "champion"]

    # The registered version carries the lineage.
    client = tracking.client(get_settings())
    version = client.get_model_version(registered_name(OUTPUT), result.registered.version)
    tags = version.tags
    assert tags["customizer.dataset.sha256"] == result.dataset_sha256
    assert tags["customizer.dataset.uri"] == str(ok_dataset)
    assert tags["customizer.base_model"] == "test/tiny-llama"
    assert tags["customizer.config"] == TINY_CONFIG_URN
    assert json.loads(tags["customizer.hyperparameters"])["epochs"] == 4
    assert json.loads(tags["customizer.scores.candidate"])["task"] == result.candidate.task
    assert tags["customizer.decision"] == "promote" and json.loads(tags["customizer.decision.reasons"]) == result.decision.reasons
    assert tags["customizer.published_uri"] == result.published_uri == f"{store.uri}/{OUTPUT}/1/"
    assert str(client.get_model_version_by_alias(registered_name(OUTPUT), "champion").version) == str(version.version)

    # Losses were streamed to the job's MLflow run: train loss every step, val loss every epoch.
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == result.train_loss[-1][0]
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 4
    assert run.data.metrics["candidate.task.exact_match"] == result.candidate.task["exact_match"]

    # The Prefect UI shows the training's progress bar (at its end) and the scores with the decision.
    progress, table = prefect_artifact("progress", result.job_id), prefect_artifact("scores", result.job_id)
    assert progress.type == "progress" and progress.data == 100.0
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    task_row = next(r for r in rows if r["score"] == "task exact_match")
    assert task_row["candidate"] == pytest.approx(100 * result.candidate.task["exact_match"], abs=1e-3)
    assert rows[-1]["score"] == "decision" and rows[-1]["verdict"].startswith("promote")

    # The dataset report, measured with the base model's tokenizer, is on the run as JSON and HTML.
    assert {a.path for a in client.list_artifacts(run.info.run_id, "ingest")} == {"ingest/report.json", "ingest/report.html"}
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "ingest/report.json", str(tmp_path))).read_text())
    assert report["sha256"] == result.dataset_sha256 and report["lengths"]["max_seq_length"] == 128
    assert report["lengths"]["splits"]["training"]["examples"] == 18 and report["lengths"]["preview"]

    # Every object in the bucket matches the manifest.
    objects = store.objects(f"{OUTPUT}/1/")
    assert sorted(objects) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "manifest.json"]
    assert objects["README.md"].startswith(b'---\nbase_model: "test/tiny-llama"\nlibrary_name: peft\n')  # the model card
    manifest = json.loads(objects.pop("manifest.json"))
    assert manifest["files"].keys() == objects.keys()
    for name, body in objects.items():
        assert hashlib.sha256(body).hexdigest() == manifest["files"][name]["sha256"]
        assert len(body) == manifest["files"][name]["size"]
    assert manifest["lineage"]["mlflow"]["version"] == "1" and manifest["lineage"]["dataset_sha256"] == result.dataset_sha256

    # The audit trail tells the job's story in order, by the platform, within its flow run; the version carries it.
    settings = get_settings()
    trail = [r for r in audit.records(settings, job=result.job_id) if r["action"] in STORY]
    assert [r["action"] for r in trail] == ["gate.decided", "alias.moved", "model.registered", "alias.moved", "model.promoted"]
    assert {r["principal"] for r in trail} == {"customizer"} and {r["job"] for r in trail} == {result.job_id}
    assert {r["flow_run"] for r in trail} == {run.data.tags["customizer.flow_run_id"]}
    assert [r["at"] for r in trail] == sorted(r["at"] for r in trail)
    assert trail[0]["model"] == OUTPUT and trail[0]["after"]["action"] == "promote"
    assert trail[0]["after"]["reasons"] == result.decision.reasons
    assert (trail[1]["after"], trail[3]["before"], trail[3]["after"]) == (
        {"alias": "candidate", "version": "1"}, {"alias": "champion", "version": None}, {"alias": "champion", "version": "1"})
    assert trail[4]["model"] == f"{OUTPUT}@1" and (trail[4]["before"], trail[4]["after"]) == ({"champion": None}, {"champion": "1"})
    assert version.tags["customizer.audit"] == audit.summary(audit.records(settings, job=result.job_id))
    assert "model.promoted by customizer: team/ok-bot@1 is the champion" in version.tags["customizer.audit"]

    # Version 1 is published for good: other bytes for it fail the task at once, never retried, and change nothing.
    published_objects = store.objects(f"{OUTPUT}/1/")
    with pytest.raises(VersionExists, match=r"team/ok-bot v1 is already published .*adapter_config.json has sha256 [0-9a-f]{64} there"):
        republish_other_bytes(result, ok_dataset, tiny_model_dir, tmp_path)
    assert store.objects(f"{OUTPUT}/1/") == published_objects

    # A second candidate that does not clear the bar is registered and published, but the champion stays.
    second = customize(spec_for(ok_dataset, min_task_gain=100.0))
    assert second.decision.action == "reject"
    assert second.registered.version == "2" and second.registered.aliases == ["candidate"]
    assert str(client.get_model_version_by_alias(registered_name(OUTPUT), "champion").version) == "1"
    assert "vs champion" in " ".join(second.decision.reasons)
    assert "manifest.json" in store.objects(f"{OUTPUT}/2/")
    second_trail = [(r["action"], r["after"]) for r in audit.records(settings, job=second.job_id) if r["action"] in STORY]
    assert [action for action, _ in second_trail] == ["gate.decided", "alias.moved", "model.registered"]  # never promoted
    assert second_trail[0][1]["action"] == "reject" and second_trail[1][1] == {"alias": "candidate", "version": "2"}
    held = client.get_model_version(registered_name(OUTPUT), "2").tags["customizer.audit"]
    assert "gate.decided by customizer: reject" in held and "model.promoted" not in held


STORY = {"gate.decided", "model.registered", "model.promoted", "alias.moved"}


def republish_other_bytes(result, dataset: Path, base_dir: Path, tmp_path: Path) -> None:
    """Run the publish task, in a flow, for the job's version with its adapter's config rewritten
    (same settings, other bytes); fails with VersionExists and asserts it was tried only once."""
    from prefect import flow

    import tasks.deploy
    from core.catalog import get_config
    from data.ingest import IngestedDataset
    from deploy.registry import RegisteredVersion
    from tasks.job import Job
    from training.base_model import ResolvedModel
    from training.common import TrainResult

    settings = get_settings()
    spec = spec_for(dataset)
    adapter = tmp_path / "rewritten-adapter"
    shutil.copytree(settings.jobs_dir / result.job_id / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    job = Job(job_id=result.job_id, work_dir=str(tmp_path), run_id=result.mlflow_run_id, spec=spec,
              config=get_config(TINY_CONFIG_URN, settings), policy=spec.policy, policy_source="job")
    base = ResolvedModel(path=str(base_dir), digest="0" * 64, source="test")
    data = IngestedDataset(source=str(dataset), sha256=result.dataset_sha256, files={}, counts={}, formats={},
                           validation_source="holdout", testing_source="testing")
    trained = TrainResult(artifact="adapter", output_dir=str(adapter), steps=1, epochs_completed=1.0, train_loss=[], val_loss=[],
                          best_val_loss=None, best_step=None, stop_reason="completed", train_seconds=1.0,
                          tokens_per_second=None, trainable_parameters=1, total_parameters=2)
    version = RegisteredVersion(registered_model=registered_name(OUTPUT), version="1", source="", aliases=["candidate", "champion"])
    calls = []
    real_publish = tasks.deploy.publish

    def counted(*args, **kwargs):
        calls.append(args[3])
        return real_publish(*args, **kwargs)

    @flow
    def republish():
        return tasks.deploy.publish_adapter(job, base, data, trained, version)

    tasks.deploy.publish = counted
    try:
        republish()
    finally:
        tasks.deploy.publish = real_publish
        assert calls == ["1"]  # a refused version is not a transient error: no retry


def test_a_bad_dataset_fails_the_flow_and_closes_its_run(services, tmp_path):
    from flows.customize import customize

    root = tmp_path / "bad"
    write_jsonl(root / "training" / "t.jsonl", [{"prompt": "x", "completion": "ok"}, "{broken"])
    published_before = services.objects()
    with pytest.raises(Exception, match=r"training/t.jsonl:2: not valid JSON"):
        customize(spec_for(root))
    client = tracking.client(get_settings())
    experiment = client.get_experiment_by_name(get_settings().mlflow_experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "not valid JSON" in runs[0].data.tags["customizer.failure"]
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "ingest")} == {"ingest/report.json", "ingest/report.html"}
    assert services.objects() == published_before == {}  # nothing was published
