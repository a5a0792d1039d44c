"""Registration, promotion and the hand-off to serving through ``.fn()``, on a real MLflow SQLite
registry and a ``file://`` store; the serving endpoint is a fake that records what it was asked."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from core import tracking
from data.ingest import IngestedDataset
from deploy import registry
from deploy.store import StoreError, publish
from deploy.trust import UntrustedChampion, files_digest, trusted_champion
from evaluation.gate import ApprovalRecord, Decision
from serving import handoff
from tasks.deploy import go_live, promote, register, transient_io_error
from tasks.evaluation import champion_scores
from tests.tasks.conftest import make_job, stage
from training.base_model import ResolvedModel
from training.common import TrainResult

FILES = ["adapter_config.json", "adapter_model.safetensors"]
BASE = ResolvedModel(path="/models/tiny", digest="b" * 64, source="builtin://tiny-llama")
DATA = IngestedDataset(source="/data/ok", sha256="ab" * 32, files={}, counts={"training": 20}, formats={},
                       validation_source="holdout", testing_source="testing")
PROMOTE = Decision(action="promote", reasons=["task em: passed"])


def failed_with(exc: BaseException) -> SimpleNamespace:
    """A task run's final state whose result raises ``exc``."""

    def result():
        raise exc

    return SimpleNamespace(result=result)


@pytest.mark.parametrize(("exc", "retried"), [
    (ConnectionError("connection reset by peer"), True),
    (RuntimeError("upload failed: ReadTimeoutError on PUT"), True),
    (StoreError("s3://models: SlowDown, please reduce your request rate"), True),
    (StoreError("s3://models/team/bot/1/manifest.json lists other files than this job published"), False),
    (PermissionError("access denied"), False),
])
def test_only_transient_store_and_registry_errors_are_retried(exc, retried):
    assert transient_io_error(None, None, failed_with(exc)) is retried


def test_a_transient_cause_behind_another_error_is_retried():
    try:
        try:
            raise ConnectionError("endpoint went away")
        except ConnectionError as cause:
            raise StoreError("publishing failed") from cause
    except StoreError as exc:
        assert transient_io_error(None, None, failed_with(exc)) is True
    assert transient_io_error(None, None, SimpleNamespace(result=lambda: None)) is False  # a completed run


def trained_adapter(folder: Path) -> TrainResult:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "base_model_name_or_path": "customizer/tiny-llama"}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return TrainResult(artifact="adapter", output_dir=str(folder), steps=2, epochs_completed=1.0, train_loss=[(1, 2.0)],
                       val_loss=[], best_val_loss=None, best_step=None, stop_reason="completed", train_seconds=1.0,
                       tokens_per_second=None, trainable_parameters=1, total_parameters=2)


@pytest.fixture
def registered(job_settings, tmp_path):
    """A job whose adapter is registered (as the register task leaves it), on a model of the test's own."""
    job = make_job(job_settings, output_model=f"team/bot-{uuid.uuid4().hex[:8]}", secrets={"wandb-api-key": "sealed"})
    trained = trained_adapter(tmp_path / "adapter")
    approval = ApprovalRecord(stage="promotion", approved=True, reviewer="bo", comment="", decided_at="t")
    version = register.fn(job, BASE, DATA, trained, stage(0.2, [1.0, 0.0]), stage(0.6, [1.0, 0.0]), PROMOTE, [None, approval])
    return job, trained, version


def test_register_creates_a_candidate_with_its_lineage(job_settings, registered):
    job, _, version = registered
    assert (version.version, version.aliases) == ("1", ["candidate"])
    tags = tracking.client(job_settings).get_model_version(version.registered_model, "1").tags
    assert (tags["customizer.job_id"], tags["customizer.dataset.sha256"]) == (job.job_id, DATA.sha256)
    assert tags["customizer.base_model.digest"] == BASE.digest and tags["customizer.decision"] == "promote"
    assert json.loads(tags["customizer.scores.candidate"])["task"] == {"em": 0.6}
    assert json.loads(tags["customizer.approval.promotion"])["reviewer"] == "bo"
    assert "secrets" not in json.loads(tags["customizer.spec"])  # sealed secrets stay with the job
    assert registry.champion_version(job_settings, job.spec.output_model) is None


def test_promotion_needs_the_gate_and_every_published_file(job_settings, registered):
    job, trained, version = registered
    published = publish(Path(trained.output_dir), FILES, job.spec.output_model, version.version, "customizer/tiny-llama", {}, job_settings)

    held = promote.fn(job, version, published, Decision(action="hold", reasons=[]))
    assert held.aliases == ["candidate"]

    stored = job_settings.root / "store" / job.spec.output_model / "1" / "adapter_model.safetensors"
    stored.write_bytes(b"truncated")
    with pytest.raises(StoreError, match="does not match its manifest"):
        promote.fn(job, version, published, PROMOTE)
    assert registry.champion_version(job_settings, job.spec.output_model) is None

    stored.write_bytes(b"weights")
    assert promote.fn(job, version, published, PROMOTE).aliases == ["candidate", "champion"]
    assert registry.champion_version(job_settings, job.spec.output_model) == "1"


def test_the_registered_decision_is_signed_and_the_gate_refuses_a_forged_champion(job_settings, registered):
    job, trained, version = registered
    published = publish(Path(trained.output_dir), FILES, job.spec.output_model, version.version, "customizer/tiny-llama", {}, job_settings)
    promote.fn(job, version, published, PROMOTE)
    champion = trusted_champion(job_settings, job.spec.output_model)
    # What is signed names the very files the store holds for the version.
    assert champion.tags["customizer.artifact.sha256"] == files_digest({n: e.sha256 for n, e in published.manifest.files.items()})
    assert champion_scores.fn(job, BASE, {}, DATA) == {"task": {"em": 0.6}, "general": {"g": 0.5}}

    # A lower bar slipped in through the registry is refused, not compared against.
    client = tracking.client(job_settings)
    client.set_model_version_tag(version.registered_model, "1", "customizer.scores.candidate",
                                 json.dumps({"task": {"em": 0.0}, "general": {}, "versions": {}}))
    with pytest.raises(UntrustedChampion, match=rf"{job.spec.output_model}: the champion alias points at version 1, which is not trusted"):
        champion_scores.fn(job, BASE, {}, DATA)


def test_go_live_loads_only_a_promoted_adapter_and_records_where(job_settings, registered, monkeypatch):
    job, trained, version = registered
    published = publish(Path(trained.output_dir), FILES, job.spec.output_model, version.version, "customizer/tiny-llama", {}, job_settings)
    asked = []

    def fake_go_live(output_model, number, uri, settings):
        asked.append((output_model, number, uri))
        return handoff.HandOff(endpoint=settings.serving_endpoint, loaded=[f"{output_model}@{number}", output_model])

    monkeypatch.setattr(handoff, "go_live", fake_go_live)
    assert go_live.fn(job, version, published) is None  # no endpoint configured
    monkeypatch.setenv("CUSTOMIZER_SERVING_ENDPOINT", "http://127.0.0.1:9")
    assert go_live.fn(job, version, published) is None  # a candidate is not loaded
    champion = registry.promote(job_settings, job.spec.output_model, version.version)
    assert go_live.fn(job, champion, published, artifact="model") is None  # full weights are deployed, not hot-loaded
    assert asked == []

    result = go_live.fn(job, champion, published)

    assert asked == [(job.spec.output_model, "1", published.uri)]
    live_as = f"{job.spec.output_model}@1, {job.spec.output_model}"
    assert result.loaded == live_as.split(", ")
    tags = tracking.client(job_settings).get_model_version(champion.registered_model, "1").tags
    assert (tags["customizer.serving.endpoint"], tags["customizer.serving.live_as"]) == ("http://127.0.0.1:9", live_as)
    assert tracking.client(job_settings).get_run(job.run_id).data.tags["customizer.serving.live_as"] == live_as
