"""API keys scoped by namespace, the loud warning when they are off, error shapes, and the list
conventions' parsing (in-process: these are the API's own logic, no orchestrator needed)."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.listing import ListError, bracket_params, filtered
from api.principals import FailedKeys
from core.settings import Settings


@pytest.fixture
def secured(tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys={"admin-key": ["*"], "team-key": ["team-a"]})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_are_required_and_scoped_by_namespace(secured):
    assert secured.get("/v1/models").status_code == 401
    assert secured.get("/v1/models", headers=_auth("nope")).status_code == 401
    assert secured.post("/v1/namespaces", json={"id": "team-a"}, headers=_auth("team-key")).status_code == 200
    forbidden = secured.post("/v1/namespaces", json={"id": "team-b"}, headers=_auth("team-key"))
    assert forbidden.status_code == 403 and "team-b" in forbidden.json()["detail"]
    assert secured.post("/v1/models", json={"name": "m", "namespace": "team-b"}, headers=_auth("admin-key")).status_code == 200
    assert secured.post("/v1/models", json={"name": "m", "namespace": "team-a"}, headers=_auth("team-key")).status_code == 200
    seen = secured.get("/v1/models", headers=_auth("team-key")).json()["data"]
    assert [m["namespace"] for m in seen] == ["team-a"]
    assert len(secured.get("/v1/models", headers=_auth("admin-key")).json()["data"]) == 2
    assert secured.get("/v1/models/team-b/m", headers=_auth("team-key")).status_code == 403
    assert secured.get("/v1/hf/api/datasets/team-b/x", headers=_auth("team-key")).status_code == 403


def test_auth_off_is_loud(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="customizer.api"):
        create_app(Settings(data_dir=tmp_path))
    assert any("AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)


def test_openapi_docs_and_error_shapes(secured):
    spec = secured.get("/openapi.json").json()
    assert "/v1/customization/jobs" in spec["paths"] and "/v1/hf/api/repos/create" in spec["paths"]
    assert secured.get("/docs").status_code == 200
    missing = secured.get("/v1/nothing-here", headers=_auth("admin-key"))
    assert missing.status_code == 404 and "no such endpoint" in missing.json()["detail"]
    schema_error = secured.post("/v1/models", json={"name": 5}, headers=_auth("admin-key"))
    assert schema_error.status_code == 422 and schema_error.json()["detail"][0]["loc"][-1] == "name"
    not_json = secured.post("/v1/models", content=b"{", headers=_auth("admin-key") | {"content-type": "application/json"})
    assert not_json.status_code == 422


def test_job_creation_without_an_orchestrator_is_a_clear_503_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens there
    settings = Settings(data_dir=tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        root = tmp_path / "ds"
        (root / "training").mkdir(parents=True)
        (root / "training" / "t.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n')
        assert client.post("/v1/datasets", json={"name": "d", "files_url": root.as_uri()}).status_code == 200
        response = client.post("/v1/customization/jobs", json={"config": "customizer/tiny-llama@v1.0.0+cpu", "dataset": "d",
                                                               "hyperparameters": {"finetuning_type": "lora"}})
    assert response.status_code == 503 and "Prefect" in response.json()["detail"]
    assert client.app.state.store.all("customization_job") == []  # nothing half-created


def test_bracket_filters_parse_nested_keys_booleans_and_lists():
    query = {"filter[peft][lora]": "true", "filter[created_at][gte]": "2025-01-01", "filter[status]": "running,pending", "page": "2"}
    parsed = bracket_params(query, "filter")
    assert parsed == {"peft": {"lora": True}, "created_at": {"gte": "2025-01-01"}, "status": "running,pending"}
    items = [{"status": "running", "peft": {"lora": {"alpha": 16}}, "created_at": "2025-02-01"}, {"status": "failed", "created_at": "2025-02-01"}]
    assert filtered(items, parsed, {"peft", "created_at", "status"}) == [items[0]]
    with pytest.raises(ListError):
        bracket_params({"filter[]": "x"}, "filter")


def test_a_job_no_worker_picks_up_says_so(tmp_path, monkeypatch):
    from api import orchestrator

    monkeypatch.setattr(orchestrator, "start", lambda *args, **kwargs: "0b9c6a2e-0000-4000-8000-000000000001")
    settings = Settings(data_dir=tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        root = tmp_path / "ds"
        (root / "training").mkdir(parents=True)
        (root / "training" / "t.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n')
        assert client.post("/v1/datasets", json={"name": "d", "files_url": root.as_uri()}).status_code == 200
        job = client.post("/v1/customization/jobs", json={"config": "customizer/tiny-llama@v1.0.0+cpu", "dataset": "d",
                                                          "hyperparameters": {"finetuning_type": "lora"}}).json()
        late = orchestrator.RunState(flow_run_id="0b9c6a2e-0000-4000-8000-000000000001", status="pending", state_name="Late",
                                     message=None, timestamp=None, started=None, history=[("pending", "Late", None, None)])
        monkeypatch.setattr(orchestrator, "states", lambda ids, history=False: {late.flow_run_id: late})
        status = client.get(f"/v1/customization/jobs/{job['id']}/status").json()
    assert status["status"] == "pending"
    assert "no worker has started this job yet" in status["status_logs"][-1]["detail"]


def test_unknown_keys_from_one_address_are_throttled_and_valid_keys_are_not(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, api_keys={"team-key": ["team-a"]}))
    with TestClient(app, client=("10.0.0.7", 5000)) as guesser, TestClient(app, client=("10.0.0.8", 5000)) as other:
        assert all(guesser.get("/v1/models", headers=_auth("team-key")).status_code == 200 for _ in range(25))  # never counted
        assert [guesser.get("/v1/models").status_code for _ in range(12)] == [401] * 12  # no key at all is not a guess
        assert [guesser.get("/v1/models", headers=_auth(f"guess-{n}")).status_code for n in range(10)] == [401] * 10
        throttled = guesser.get("/v1/models", headers=_auth("guess-10"))
        assert throttled.status_code == 429 and 0 < int(throttled.headers["Retry-After"]) <= 60, throttled.headers
        assert "try again in" in throttled.json()["detail"]
        assert guesser.get("/v1/models", headers=_auth("team-key")).status_code == 429  # while it waits no key is checked
        assert other.get("/v1/models", headers=_auth("team-key")).status_code == 200  # another address is not slowed


def test_the_throttle_forgets_the_oldest_addresses_first():
    keys = FailedKeys(limit=1, window=60.0, clients=2)
    for client in ("a", "b", "c"):
        keys.failed(client)
    assert keys.wait("a") == 0 and keys.wait("b") > 0 and keys.wait("c") > 0 and len(keys._failures) == 2
