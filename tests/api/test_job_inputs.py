"""What a job's creation takes and answers, in-process with the orchestrator replaced by a recorder
(these are the API's own translations; tests/flows/test_rest_jobs.py runs such a job through Prefect):
customizer's extension fields reach the flow run's spec, bad values are 422s naming the field, the
answer carries the cost estimate and the warnings, the default output model follows NeMo's pattern,
the lineage is the Data Store URL, the submitter is the caller's principal with auth on, and
creation and cancellation are on the audit trail."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api import orchestrator
from api.app import create_app
from api.deps import Caller, CallerDep
from core import audit
from core.ids import prefixed_id
from core.settings import Settings
from tests.api.conftest import add_dataset
from tests.conftest import ok_rows

pytestmark = pytest.mark.unit
CONFIG = "customizer/tiny-llama@v1.0.0+cpu"  # shipped; its tiny model is built on the server, so the cost is estimated
SOURCE = "hf://datasets/team-a/triage"
BODY = {"config": CONFIG, "dataset": "team-a/triage", "namespace": "team-a",
        "hyperparameters": {"training_type": "sft", "finetuning_type": "lora", "epochs": 2, "batch_size": 4}}


class Runs:
    """The orchestrator as the API sees it: the runs it was asked to start and to cancel."""

    def __init__(self):
        self.started: dict[str, dict] = {}
        self.cancelled: list[str] = []

    def start(self, deployment: str, parameters: dict, name=None, tags=None) -> str:
        run_id = str(uuid.uuid4())
        self.started[run_id] = parameters
        return run_id


@pytest.fixture(scope="module")
def in_process_api(tmp_path_factory):
    """One API (so one tiny model built) per module, a Data Store dataset registered in the Entity Store."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"))
    runs = Runs()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(orchestrator, "start", runs.start)
        patch.setattr(orchestrator, "cancel", runs.cancelled.append)
        patch.setattr(orchestrator, "states", lambda ids, history=False: {})
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            add_dataset(client, "team-a", "triage", ok_rows(12))
            yield client, runs, settings


@pytest.fixture
def api(in_process_api):
    client, runs, settings = in_process_api
    client.app.dependency_overrides.clear()
    client.app.state.settings = settings
    runs.started.clear()
    runs.cancelled.clear()
    return client, runs, settings


def spec_of(runs: Runs, job: dict) -> dict:
    """The spec of the flow run the job is (its id derives from the run's)."""
    (spec,) = [p["spec"] for run_id, p in runs.started.items() if job["id"] == prefixed_id("cust", run_id)]
    return spec


def as_principal(client: TestClient, principal: str) -> None:
    """Authenticate every request as ``principal`` (however the keys map to principals)."""
    client.app.dependency_overrides[CallerDep.__metadata__[0].dependency] = lambda: Caller(namespaces=None, principal=principal)


def test_extension_fields_reach_the_spec_and_the_answer_carries_the_estimate_and_warnings(api):
    client, runs, settings = api
    body = BODY | {
        "hyperparameters": BODY["hyperparameters"] | {"learning_rate": 2e-3},  # high for LoRA: a guidance warning
        "evaluation": {"target_score": 80.0, "general_benchmarks": ["capitals"], "few_shot": 0},
        "budget": {"max_device_hours": 1e-12},  # below any estimate: a warning now, a refusal before training
        "policy": {"min_task_gain": 1.0},
    }
    response = client.post("/v1/customization/jobs", json=body)
    assert response.status_code == 200, response.text
    job = response.json()

    spec = spec_of(runs, job)
    assert spec["evaluation"]["target_score"] == 80.0 and spec["evaluation"]["general_benchmarks"] == ["capitals"]
    assert spec["evaluation"]["few_shot"] == 0 and spec["budget"]["max_device_hours"] == 1e-12
    assert spec["policy"]["min_task_gain"] == 1.0 and spec["policy"]["max_general_drop"] == 2.0  # the rest: defaults
    # Trained from the server's snapshot; the lineage is where the data came from.
    assert spec["dataset_source"] == SOURCE
    assert Path(spec["dataset"]).parent == settings.root / "api" / "dataset-snapshots"
    assert spec["output_model"] == "team-a/tiny-llama-triage-lora"
    assert job["output_model"] == f"team-a/tiny-llama-triage-lora@{job['id']}"

    estimate = job["estimate"]
    assert estimate["tokens_per_epoch"] > 0 and estimate["epochs"] == 2 and estimate["train_examples"] > 0
    assert estimate["training_flops"] > 0 and estimate["device_hours"] > 1e-12 and "FLOPs: about" in estimate["describe"]
    messages = [w["message"] for w in job["warnings"]]
    assert "learning_rate 0.002 is high for LoRA" in messages
    assert any("over `budget.max_device_hours` (1e-12)" in m for m in messages), messages
    assert (job["evaluation"]["target_score"], job["budget"]["max_device_hours"], job["policy"]["min_task_gain"]) == (80.0, 1e-12, 1.0)

    again = client.get(f"/v1/customization/jobs/{job['id']}")
    assert again.status_code == 200, again.text
    assert again.json()["estimate"] == estimate and again.json()["warnings"] == job["warnings"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    for field in ("evaluation", "budget", "policy"):
        assert "customizer extension" in schema["JobCreate"]["properties"][field]["description"]
    assert "customizer extension" in schema["JobPublic"]["properties"]["estimate"]["description"]


@pytest.mark.parametrize(("extension", "loc"), [
    ({"evaluation": {"target_score": 150}}, ["body", "evaluation", "target_score"]),
    ({"evaluation": {"few_shot": "many"}}, ["body", "evaluation", "few_shot"]),
    ({"evaluation": {"target": 80}}, ["body", "evaluation", "target"]),
    ({"budget": {"max_device_hours": 0}}, ["body", "budget", "max_device_hours"]),
    ({"budget": 5}, ["body", "budget"]),
    ({"policy": {"max_general_drop": -1}}, ["body", "policy", "max_general_drop"]),
    ({"policy": {"diverging_curves": "shrug"}}, ["body", "policy", "diverging_curves"]),
])
def test_bad_extension_values_are_422_naming_the_field(api, extension, loc):
    client, runs, _ = api
    response = client.post("/v1/customization/jobs", json=BODY | extension)
    assert response.status_code == 422, response.text
    assert loc in [e["loc"] for e in response.json()["detail"]], response.json()
    assert runs.started == {}  # nothing started


def test_the_default_output_model_is_named_after_config_dataset_and_method(api):
    client, runs, _ = api
    merged = client.post("/v1/customization/jobs", json=BODY | {"hyperparameters": BODY["hyperparameters"] | {"finetuning_type": "lora_merged"}})
    assert merged.status_code == 200, merged.text
    assert merged.json()["output_model"] == f"team-a/tiny-llama-triage-lora_merged@{merged.json()['id']}"
    named = client.post("/v1/customization/jobs", json=BODY | {"output_model": "team-a/support-bot"})
    assert named.json()["output_model"] == f"team-a/support-bot@{named.json()['id']}"
    assert spec_of(runs, named.json())["output_model"] == "team-a/support-bot"


def test_with_auth_on_the_submitter_is_the_callers_principal_not_the_body(api):
    client, runs, settings = api
    as_principal(client, "alice")
    job = client.post("/v1/customization/jobs", json=BODY | {"ownership": {"created_by": "mallory"}}).json()
    assert job["ownership"]["created_by"] == "alice"
    assert spec_of(runs, job)["submitted_by"] == "alice"
    (created,) = audit.records(settings, job=job["id"], action="job.created")
    assert created["principal"] == "alice"
    assert client.get(f"/v1/customization/jobs/{job['id']}").json()["ownership"]["created_by"] == "alice"


def test_with_auth_off_the_submitter_is_the_bodys(api):
    client, runs, settings = api
    job = client.post("/v1/customization/jobs", json=BODY | {"ownership": {"created_by": "bob"}}).json()
    assert job["ownership"]["created_by"] == "bob" and spec_of(runs, job)["submitted_by"] == "bob"
    assert audit.records(settings, job=job["id"], action="job.created")[0]["principal"] == "bob"


def test_creation_and_cancellation_are_on_the_audit_trail(api):
    client, runs, settings = api
    as_principal(client, "alice")
    job = client.post("/v1/customization/jobs", json=BODY).json()
    (run_id,) = runs.started
    (created,) = audit.records(settings, job=job["id"], action="job.created")
    assert (created["job"], created["flow_run"], created["namespace"], created["model"]) == (
        job["id"], run_id, "team-a", "team-a/tiny-llama-triage-lora")
    summary = created["after"]
    assert (summary["config"], summary["dataset"], summary["method"]) == (CONFIG, SOURCE, {"training_type": "sft", "finetuning_type": "lora"})
    assert len(summary["dataset_sha256"]) == 64 and "FLOPs: about" in summary["estimate"]

    cancelled = client.post(f"/v1/customization/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert runs.cancelled == [run_id]
    (record,) = audit.records(settings, job=job["id"], action="job.cancelled")
    assert (record["principal"], record["flow_run"], record["model"]) == ("alice", run_id, "team-a/tiny-llama-triage-lora")
    assert record["before"] == {"status": "created"}


def test_a_creation_the_audit_trail_cannot_record_does_not_go_ahead(api, tmp_path):
    client, runs, settings = api
    blocker = tmp_path / "blocker"
    blocker.write_text("")  # a file where the audit database's folder would be
    client.app.state.settings = settings.model_copy(update={"api_database_url": f"sqlite:///{blocker / 'audit.db'}"})
    before = client.get("/v1/customization/jobs").json()["pagination"]["total_results"]
    snapshots = set((settings.root / "api" / "dataset-snapshots").iterdir())

    response = client.post("/v1/customization/jobs", json=BODY)
    assert response.status_code == 503, response.text
    assert "audit trail" in response.json()["detail"] and "sqlite" not in response.json()["detail"]
    (run_id,) = runs.started
    assert runs.cancelled == [run_id]  # the run it had started is stopped
    assert client.get("/v1/customization/jobs").json()["pagination"]["total_results"] == before
    assert set((settings.root / "api" / "dataset-snapshots").iterdir()) == snapshots  # no copy left behind
