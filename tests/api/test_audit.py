"""``GET /v1/audit`` in-process: the list envelope, the filters, and what each API key may see."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core import audit
from core.settings import Settings

pytestmark = pytest.mark.unit
ADMIN, TEAM = {"Authorization": "Bearer admin-key"}, {"Authorization": "Bearer team-key"}


@pytest.fixture
def trail(tmp_path):
    """An API with two keys and a trail across two namespaces and the platform itself."""
    settings = Settings(data_dir=tmp_path, api_keys={"admin-key": ["*"], "team-key": ["team-a"]})
    audit.record(settings, "job.created", "alice", job="cust-a", flow_run="run-a", namespace="team-a")
    audit.record(settings, "gate.decided", "customizer", job="cust-run-a", flow_run="run-a", model="team-a/bot",
                 after={"action": "promote", "reasons": ["task: passed"]}, detail="promote: task: passed")
    audit.record(settings, "model.registered", "customizer", job="cust-run-a", flow_run="run-a", model="team-a/bot@1")
    audit.record(settings, "model.promoted", "customizer", job="cust-run-a", flow_run="run-a", model="team-a/bot@1",
                 before={"champion": None}, after={"champion": "1"})
    audit.record(settings, "job.created", "bo", job="cust-b", flow_run="run-b", namespace="team-b")
    audit.record(settings, "policy.changed", "root", after={"max_general_drop": 1.0})  # platform-wide: no namespace
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _actions(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["action"] for r in response.json()["data"]]


def test_the_trail_is_listed_oldest_first_in_the_list_envelope(trail):
    body = trail.get("/v1/audit", headers=ADMIN).json()
    assert body["object"] == "list" and body["pagination"]["total_results"] == 6
    assert [r["action"] for r in body["data"]] == [
        "job.created", "gate.decided", "model.registered", "model.promoted", "job.created", "policy.changed",
    ]
    first = body["data"][1]
    assert (first["principal"], first["job"], first["flow_run"], first["model"]) == ("customizer", "cust-run-a", "run-a", "team-a/bot")
    assert first["after"]["action"] == "promote" and first["at"] <= body["data"][2]["at"]

    paged = trail.get("/v1/audit", params={"page": 2, "page_size": 4, "sort": "-at"}, headers=ADMIN).json()
    assert [r["action"] for r in paged["data"]] == ["gate.decided", "job.created"]
    assert paged["pagination"]["total_pages"] == 2


def test_filters_by_job_model_namespace_and_action(trail):
    # A REST job id finds its flow run's records too.
    by_job = trail.get("/v1/audit", params={"filter[job]": "cust-a"}, headers=ADMIN)
    assert _actions(by_job) == ["job.created", "gate.decided", "model.registered", "model.promoted"]
    assert by_job.json()["filter"] == {"job": "cust-a"}
    assert _actions(trail.get("/v1/audit", params={"filter[model]": "team-a/bot"}, headers=ADMIN)) == [
        "gate.decided", "model.registered", "model.promoted"]
    assert _actions(trail.get("/v1/audit", params={"filter[model]": "team-a/bot@1", "filter[action]": "model.promoted"},
                              headers=ADMIN)) == ["model.promoted"]
    assert _actions(trail.get("/v1/audit", params={"filter[namespace]": "team-b"}, headers=ADMIN)) == ["job.created"]

    unknown = trail.get("/v1/audit", params={"filter[status]": "x"}, headers=ADMIN)
    assert unknown.status_code == 400 and "filter[status]" in unknown.json()["detail"]
    action = trail.get("/v1/audit", params={"filter[action]": "model.deleted"}, headers=ADMIN)
    assert action.status_code == 400 and "'model.deleted'" in action.json()["detail"]
    nested = trail.get("/v1/audit", params={"filter[job][eq]": "cust-a"}, headers=ADMIN)
    assert nested.status_code == 400 and "filter[job]" in nested.json()["detail"]


def test_a_key_sees_only_its_namespaces_and_platform_records_need_every_namespace(trail):
    seen = trail.get("/v1/audit", headers=TEAM).json()["data"]
    assert {r["namespace"] for r in seen} == {"team-a"} and len(seen) == 4
    assert _actions(trail.get("/v1/audit", params={"filter[action]": "policy.changed"}, headers=TEAM)) == []
    assert _actions(trail.get("/v1/audit", params={"filter[action]": "policy.changed"}, headers=ADMIN)) == ["policy.changed"]
    assert _actions(trail.get("/v1/audit", params={"filter[job]": "cust-b"}, headers=TEAM)) == []
    other = trail.get("/v1/audit", params={"filter[namespace]": "team-b"}, headers=TEAM)
    assert other.status_code == 403 and "team-b" in other.json()["detail"]
    assert trail.get("/v1/audit").status_code == 401


def test_a_trail_that_cannot_be_read_is_a_503_without_the_database_url(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    settings = Settings(data_dir=tmp_path / "data", api_database_url="sqlite:///" + str(tmp_path / "api.db"))
    app = create_app(settings)
    app.state.settings = settings.model_copy(update={"api_database_url": f"sqlite:///{blocker / 'audit.db'}"})
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/audit")
    assert response.status_code == 503 and "could not be read" in response.json()["detail"]
    assert "sqlite" not in response.json()["detail"]
