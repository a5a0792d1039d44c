"""The customize flow end to end through the real components: Prefect (test harness server),
MLflow on SQLite, and the store on S3 served over HTTP by moto's server."""

import hashlib
import json
from pathlib import Path

import pytest

from core.settings import get_settings
from core import tracking
from deploy.registry import registered_name
from tests.conftest import TINY_CONFIG_URN, write_jsonl
from core.specs import CustomizationSpec

OUTPUT = "team/ok-bot"


def spec_for(dataset: Path, hyperparameters: dict | None = None, **policy) -> CustomizationSpec:
    hp = {"epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "log_every_n_steps": 1, "lora": {"adapter_dim": 8, "alpha": 16}}
    return CustomizationSpec.model_validate(
        {
            "config": TINY_CONFIG_URN,
            "dataset": str(dataset),
            "output_model": OUTPUT,
            "hyperparameters": hp | (hyperparameters or {}),
            "evaluation": {"general_benchmarks": ["capitals", "everyday"], "limit": 16, "max_new_tokens": 4},
            # The tiny model is random: its general scores are noise, so the forgetting limit is opened here
            # and the gate's forgetting rules are tested on their own in tests/evaluation/test_gate.py.
            "policy": {"max_general_drop": 100.0} | policy,
        }
    )


def test_customize_registers_publishes_and_promotes(services, ok_dataset, tmp_path):
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

    # The dataset report, measured with the base model's tokenizer, is on the run as JSON and HTML.
    assert {a.path for a in client.list_artifacts(run.info.run_id, "ingest")} == {"ingest/report.json", "ingest/report.html"}
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "ingest/report.json", str(tmp_path))).read_text())
    assert report["sha256"] == result.dataset_sha256 and report["lengths"]["max_seq_length"] == 128
    assert report["lengths"]["splits"]["training"]["examples"] == 18 and report["lengths"]["preview"]

    # Every object in the bucket matches the manifest.
    objects = store.objects(f"{OUTPUT}/1/")
    assert sorted(objects) == ["adapter_config.json", "adapter_model.safetensors", "manifest.json"]
    manifest = json.loads(objects.pop("manifest.json"))
    assert manifest["files"].keys() == objects.keys()
    for name, body in objects.items():
        assert hashlib.sha256(body).hexdigest() == manifest["files"][name]["sha256"]
        assert len(body) == manifest["files"][name]["size"]
    assert manifest["lineage"]["mlflow"]["version"] == "1" and manifest["lineage"]["dataset_sha256"] == result.dataset_sha256

    # A second candidate that does not clear the bar is registered and published, but the champion stays.
    second = customize(spec_for(ok_dataset, min_task_gain=100.0))
    assert second.decision.action == "reject"
    assert second.registered.version == "2" and second.registered.aliases == ["candidate"]
    assert str(client.get_model_version_by_alias(registered_name(OUTPUT), "champion").version) == "1"
    assert "vs champion" in " ".join(second.decision.reasons)
    assert "manifest.json" in store.objects(f"{OUTPUT}/2/")


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
