"""A job created through the REST API on a Data Store dataset, run through the real components
(Prefect test server, MLflow on SQLite, S3 over HTTP): its flow run carries the customizer extension
fields, the model version's lineage is the Data Store URL with the sha256 of what was trained, and
the retrain flow reads the Data Store again: it leaves the model alone while the dataset is
unchanged and retrains it from a fresh snapshot once the dataset's files change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import audit, tracking
from core.ids import uuid_from_id
from core.settings import get_settings
from data.datastore import open_files
from deploy.registry import registered_name
from tests.conftest import TINY_CONFIG_URN, ok_rows

SOURCE = "hf://datasets/team-a/triage"
OUTPUT = "team-a/tiny-llama-triage-lora"  # NeMo's default name: <config name>-<dataset>-<method>
BODY = {
    "config": TINY_CONFIG_URN, "dataset": "team-a/triage", "namespace": "team-a",
    "hyperparameters": {"epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "log_every_n_steps": 1, "lora": {"adapter_dim": 8, "alpha": 16}},
    # customizer extensions
    "evaluation": {"general_benchmarks": ["capitals", "everyday"], "limit": 16, "max_new_tokens": 4, "target_score": 90.0},
    "budget": {"max_device_hours": 10.0},
    "policy": {"min_task_gain": 1.0},
    "ownership": {"created_by": "alice"},
}


def put_rows(path: str, rows: list[dict]) -> None:
    """Write a file of the Data Store dataset, as an upload through the Hub API leaves it."""
    open_files(get_settings()).put(f"datasets/team-a/triage/{path}", "".join(json.dumps(r) + "\n" for r in rows).encode())


@pytest.fixture
def api(services):
    """The REST API in-process on the test's data folder, and the customize deployment it starts runs of."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from flows.customize import customize

    settings = get_settings()
    flow_name, _, name = settings.customize_deployment.partition("/")
    assert flow_name == customize.name
    customize.to_deployment(name=name).apply()
    # The tiny model is random: its general scores are noise, so the namespace's policy opens the
    # forgetting limit (as tests/flows/test_customize.py does); the gate's rules are tested on their own.
    settings.policies_dir.mkdir(parents=True, exist_ok=True)
    (settings.policies_dir / "team-a.yaml").write_text("max_general_drop: 100.0\n")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def run_job(job_id: str):
    """Run the job's flow run in this process, as a worker would: the parameters Prefect holds, the run's id."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from flows.customize import customize

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(uuid_from_id(job_id))
    return flow_run.parameters, run_flow(customize, flow_run=flow_run, parameters=flow_run.parameters)


def version_tags(version: str) -> dict[str, str]:
    return tracking.client(get_settings()).get_model_version(registered_name(OUTPUT), version).tags


def test_a_rest_job_on_a_data_store_dataset_is_retrained_when_the_data_store_dataset_changes(api):
    from flows.retrain import retrain

    settings = get_settings()
    put_rows("training/train.jsonl", ok_rows(20))
    put_rows("testing/test.jsonl", ok_rows(8, start=100))
    assert api.post("/v1/datasets", json={"name": "triage", "namespace": "team-a", "files_url": SOURCE}).status_code == 200
    created = api.post("/v1/customization/jobs", json=BODY)
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["output_model"] == f"{OUTPUT}@{job['id']}" and 0 < job["estimate"]["device_hours"] < 10

    # The flow run Prefect holds carries the extensions, the submitter and the lineage.
    parameters, first = run_job(job["id"])
    spec = parameters["spec"]
    assert (spec["evaluation"]["target_score"], spec["budget"]["max_device_hours"], spec["policy"]["min_task_gain"]) == (90.0, 10.0, 1.0)
    assert (spec["submitted_by"], spec["dataset_source"], spec["output_model"]) == ("alice", SOURCE, OUTPUT)
    assert Path(spec["dataset"]).parent == settings.root / "api" / "dataset-snapshots"  # trained from the server's snapshot
    assert first.job_id == job["id"] and first.decision.action == "promote", first.decision.reasons

    # The lineage: where the data came from, with the sha256 of exactly what was checked and trained.
    checked_sha256 = api.app.state.store.get("customization_job", job["id"])["_dataset_sha256"]
    tags = version_tags("1")
    assert (tags["customizer.dataset.uri"], tags["customizer.dataset.sha256"]) == (SOURCE, first.dataset_sha256)
    assert first.dataset_sha256 == checked_sha256
    run = tracking.client(settings).get_run(first.mlflow_run_id).data.tags
    assert run["customizer.dataset.uri"] == SOURCE
    (created_record,) = audit.records(settings, job=job["id"], action="job.created")
    assert (created_record["principal"], created_record["after"]["dataset"], created_record["after"]["dataset_sha256"]) == (
        "alice", SOURCE, checked_sha256)

    # Unchanged in the Data Store: nothing is trained, and the snapshot taken to compare is gone.
    (unchanged,) = retrain([OUTPUT])
    assert unchanged.action == "unchanged" and unchanged.dataset_sha256 == first.dataset_sha256, unchanged.reason
    assert SOURCE in unchanged.reason
    assert list((settings.root / "retrain" / "dataset-snapshots").iterdir()) == []

    # More rows uploaded: the champion's job runs again, from a fresh snapshot, with the same lineage.
    put_rows("training/more.jsonl", ok_rows(8, start=300))
    (changed,) = retrain([OUTPUT])
    assert changed.action == "retrained" and changed.dataset_sha256 != first.dataset_sha256, changed.reason
    second = changed.result
    assert second.registered.version == "2" and second.dataset_sha256 == changed.dataset_sha256
    tags = version_tags("2")
    assert (tags["customizer.dataset.uri"], tags["customizer.dataset.sha256"]) == (SOURCE, changed.dataset_sha256)
    retrained = json.loads(tags["customizer.spec"])
    assert Path(retrained["dataset"]).parent == settings.root / "retrain" / "dataset-snapshots"
    assert (Path(retrained["dataset"]) / "training" / "more.jsonl").is_file()
    assert (retrained["dataset_source"], retrained["evaluation"]["target_score"], retrained["submitted_by"]) == (SOURCE, 90.0, "alice")
