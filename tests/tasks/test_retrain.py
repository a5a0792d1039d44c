"""Retraining as tasks through ``.fn()``: the spec a champion is retrained with, which models have a
champion (a real MLflow SQLite registry), a dataset's identity now (a folder, or a fresh snapshot of
a Data Store dataset), and what each model's retrain did."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from core import tracking
from core.specs import CustomizationSpec
from data.ingest import ingest_dataset
from deploy import registry
from deploy.registry import RegisteredVersion
from evaluation.gate import Decision
from tasks.job import CustomizationResult
from data.datastore import open_files
from tasks.retrain import Champion, champion_spec, dataset_now, discard, find_champions, outcome, retrain_spec
from tests.deploy import sign_decision
from tests.conftest import ok_rows, write_jsonl
from tests.tasks.conftest import CONFIG, stage

SPEC = CustomizationSpec(config=CONFIG, dataset="/data/ok", output_model="team/bot", hyperparameters={"epochs": 2})


def champion(dataset: str = "/data/ok", sha256: str = "a" * 64) -> Champion:
    return Champion(output_model="team/bot", version="2", dataset_uri=dataset, dataset_sha256=sha256,
                    spec=SPEC.model_copy(update={"dataset": dataset}))


def test_the_spec_tag_is_the_spec_a_champion_is_retrained_with():
    tags = {"customizer.spec": SPEC.model_dump_json(), "customizer.config": "other/config@v9"}
    assert champion_spec("team/bot", tags) == SPEC


def test_without_a_spec_tag_the_spec_is_rebuilt_from_the_lineage_tags():
    tags = {"customizer.config": CONFIG, "customizer.dataset.uri": "/data/ok",
            "customizer.hyperparameters": SPEC.hyperparameters.model_dump_json()}
    rebuilt = champion_spec("team/bot", tags)
    assert (rebuilt.config, rebuilt.dataset, rebuilt.output_model) == (CONFIG, "/data/ok", "team/bot")
    assert rebuilt.hyperparameters.epochs == 2


def test_a_champion_without_the_tags_to_rebuild_it_is_an_error_naming_them():
    with pytest.raises(ValueError, match=r"team/bot: the champion has no `customizer.spec` tag and lacks "
                                         r"customizer.dataset.uri, customizer.hyperparameters to rebuild it"):
        champion_spec("team/bot", {"customizer.config": CONFIG})


def test_find_champions_skips_models_without_one(job_settings, tmp_path):
    crowned, uncrowned = (f"team/{name}-{uuid.uuid4().hex[:8]}" for name in ("crowned", "uncrowned"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    for model in (crowned, uncrowned):
        run_id = tracking.start_run(job_settings, f"cust-{uuid.uuid4().hex[:8]}", tags={}, params={})
        source = tracking.log_artifacts(job_settings, run_id, adapter, "adapter")
        tags = {"customizer.spec": SPEC.model_copy(update={"output_model": model}).model_dump_json(),
                "customizer.dataset.uri": "/data/ok", "customizer.dataset.sha256": "f" * 64}
        registry.register_version(job_settings, model, source, run_id, tags)
        sign_decision(job_settings, model, "1")
    registry.promote(job_settings, crowned, "1")

    champions, skipped = find_champions.fn([crowned, uncrowned])

    assert [(c.output_model, c.version, c.dataset_uri, c.dataset_sha256) for c in champions] == [(crowned, "1", "/data/ok", "f" * 64)]
    assert champions[0].spec.output_model == crowned
    assert [(s.output_model, s.action, s.reason) for s in skipped] == [(uncrowned, "skipped", "no champion to retrain")]


def test_find_champions_skips_a_champion_the_gate_did_not_promote(job_settings, tmp_path):
    forged = f"team/forged-{uuid.uuid4().hex[:8]}"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    run_id = tracking.start_run(job_settings, f"cust-{uuid.uuid4().hex[:8]}", tags={}, params={})
    tags = {"customizer.spec": SPEC.model_copy(update={"output_model": forged}).model_dump_json(),
            "customizer.dataset.uri": "/data/ok", "customizer.dataset.sha256": "f" * 64}
    registry.register_version(job_settings, forged, tracking.log_artifacts(job_settings, run_id, adapter, "adapter"), run_id, tags)
    sign_decision(job_settings, forged, "1", "reject")
    tracking.client(job_settings).set_registered_model_alias(registry.registered_name(forged), "champion", "1")  # around the platform

    champions, skipped = find_champions.fn([forged])

    assert champions == []
    ((model, action, reason, version),) = [(s.output_model, s.action, s.reason, s.champion_version) for s in skipped]
    assert (model, action, version) == (forged, "skipped", "1")
    assert f"{forged}: the champion alias points at version 1, which is not trusted: the gate decided 'reject'" in reason


def test_the_dataset_identity_is_what_ingest_computes_and_changes_with_the_data(job_settings, tmp_path):
    folder = tmp_path / "dataset"
    write_jsonl(folder / "training" / "train.jsonl", ok_rows(12))
    now = dataset_now.fn(champion(str(folder)))
    assert now.sha256 == ingest_dataset(str(folder), tmp_path / "canonical", seed=0).sha256
    assert (now.folder, now.copied) == (str(folder), False)  # a local folder is read in place
    assert retrain_spec(champion(str(folder)), now) == SPEC.model_copy(update={"dataset": str(folder)})

    write_jsonl(folder / "training" / "more.jsonl", ok_rows(3, start=50))
    assert dataset_now.fn(champion(str(folder))).sha256 != now.sha256
    assert list(Path(job_settings.root).glob("retrain-*")) == []  # its work folder is gone
    discard(now)
    assert folder.is_dir()  # never removed: it is the user's


def test_a_data_store_dataset_is_snapshotted_and_retrained_from_the_snapshot_with_its_lineage(job_settings, tmp_path):
    files = open_files(job_settings)
    repo = f"datasets/team/{uuid.uuid4().hex[:8]}"
    source = f"hf://{repo}"
    files.put(f"{repo}/training/train.jsonl", "".join(json.dumps(r) + "\n" for r in ok_rows(12)).encode())
    trained = champion(source).model_copy(update={"spec": SPEC.model_copy(update={"dataset": "/api/snapshot", "dataset_source": source})})

    now = dataset_now.fn(trained)
    assert now.copied and now.source == source and Path(now.folder).is_relative_to(job_settings.root)
    assert (Path(now.folder) / "training" / "train.jsonl").read_text().count("\n") == 12
    spec = retrain_spec(trained, now)
    assert (spec.dataset, spec.dataset_source, spec.dataset_uri, spec.output_model) == (now.folder, source, source, "team/bot")

    files.put(f"{repo}/training/more.jsonl", "".join(json.dumps(r) + "\n" for r in ok_rows(3, start=50)).encode())
    changed = dataset_now.fn(trained)
    assert changed.sha256 != now.sha256 and changed.folder != now.folder
    assert (Path(now.folder) / "training" / "train.jsonl").is_file() and not (Path(now.folder) / "training" / "more.jsonl").exists()
    discard(now)
    assert not Path(now.folder).exists() and Path(changed.folder).is_dir()


def test_a_data_store_dataset_that_is_gone_is_an_error_naming_it(job_settings):
    from data.sources import SourceError

    with pytest.raises(SourceError, match=r"dataset hf://datasets/team/gone of team/bot: .*no files"):
        dataset_now.fn(champion("hf://datasets/team/gone"))


def result(promoted: bool) -> CustomizationResult:
    aliases = ["candidate", "champion"] if promoted else ["candidate"]
    return CustomizationResult(
        job_id="cust-1", output_model="team/bot", outcome="trained", dataset_sha256="b" * 64, task_metric="em",
        baseline=stage(0.2, [1.0, 0.0]), decision=Decision(action="promote" if promoted else "reject", reasons=[]),
        registered=RegisteredVersion(registered_model="team.bot", version="3", source="s", aliases=aliases),
        mlflow_run_id="r", tracking_uri="t",
    )


def test_an_unchanged_dataset_keeps_the_champion():
    done = outcome.fn(champion(), "a" * 64)
    assert (done.action, done.champion_version, done.promoted, done.result) == ("unchanged", "2", False, None)
    assert done.reason == f"dataset /data/ok unchanged (sha256 {'a' * 16}): champion version 2 stays"


def test_a_retrain_reports_whether_its_version_became_the_champion():
    won = outcome.fn(champion(), "b" * 64, result(promoted=True))
    assert (won.action, won.champion_version, won.promoted) == ("retrained", "3", True)
    assert won.reason == f"dataset changed ({'a' * 16} -> {'b' * 16}): promote; version 3 is the champion"

    lost = outcome.fn(champion(), "b" * 64, result(promoted=False))
    assert (lost.action, lost.champion_version, lost.promoted) == ("retrained", "2", False)
    assert lost.reason.endswith("reject; champion version 2 stays")
    assert json.loads(lost.model_dump_json())["result"]["registered"]["version"] == "3"
