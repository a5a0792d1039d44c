"""Many clients polling the same jobs cost one refresh from Prefect per interval, not one per
request; an action on a job (cancel, approval) is seen at once."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from api import customization as logic
from api import orchestrator, status
from api.db import Store, open_database
from api.refresh import SharedRefresh
from core.settings import Settings


@pytest.fixture
def polled(tmp_path, monkeypatch):
    """A store with one running job, and a Prefect stand-in that counts how often it is asked."""
    store = Store(open_database(f"sqlite:///{tmp_path / 'api.db'}"))
    job = store.add(logic.JOB, "cust-1", "ns", "job", {
        "namespace": "ns", "status": "running", "_flow_run_id": "00000000-0000-0000-0000-000000000001",
        "status_details": {"status": "running", "created_at": "2026-01-01T00:00:00", "updated_at": "2026-01-01T00:00:00",
                           "status_logs": [{"updated_at": "2026-01-01T00:00:00", "message": "created"}]},
    })
    asked = []
    gate = threading.Event()

    def states(ids, history=False):
        asked.append(ids)
        gate.wait(5)  # slow, like a real round trip: concurrent requests arrive meanwhile
        at = dt.datetime(2026, 1, 1, 0, 0, len(asked))
        return {i: orchestrator.RunState(flow_run_id=i, status="running", state_name="Running", message=None,
                                         timestamp=at, started=at, history=[("running", "Running", at, None)]) for i in ids}

    monkeypatch.setattr(orchestrator, "states", states)
    monkeypatch.setattr(status, "training_metrics", lambda settings, job_id: ({"steps_completed": len(asked)}, {}))
    jobs = status.customization_jobs
    monkeypatch.setattr(jobs, "shared", SharedRefresh(jobs._refresh, orchestrator.FINAL))
    return store, job, asked, gate


def poll(store, job_id):
    return status.customization_jobs.refresh(store, Settings(), [store.get(logic.JOB, job_id)], detailed=True)[0]


def test_concurrent_polls_share_one_refresh(polled, monkeypatch):
    store, job, asked, gate = polled
    with ThreadPoolExecutor(50) as pool:
        answers = [pool.submit(poll, store, job["id"]) for _ in range(50)]
        gate.set()
        results = [a.result() for a in answers]
    assert len(asked) == 1
    assert {r["status_details"]["steps_completed"] for r in results} == {1}
    assert poll(store, job["id"])["status_details"]["steps_completed"] == 1  # still fresh: not asked again
    assert len(asked) == 1

    monkeypatch.setattr(status.customization_jobs.shared, "seconds", 0.0)  # the interval passed
    assert poll(store, job["id"])["status_details"]["steps_completed"] == 2
    assert len(asked) == 2


def test_an_action_on_a_job_is_seen_at_once(polled):
    store, job, asked, gate = polled
    gate.set()
    poll(store, job["id"])
    status.customization_jobs.forget(job["id"])  # what cancel and approval do after acting
    assert poll(store, job["id"])["status_details"]["steps_completed"] == 2
    assert len(asked) == 2


def test_a_polled_status_is_answered_from_memory(polled, tmp_path, monkeypatch):
    """Within the refresh interval, status polls read neither Prefect nor the database, and a key
    of another namespace still finds no such job."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    store, job, asked, gate = polled
    gate.set()
    settings = Settings(data_dir=tmp_path / "data", api_keys={"key-ns": ["ns"], "key-other": ["other"]})
    app = create_app(settings)
    app.state.store = store
    with TestClient(app, raise_server_exceptions=False) as client:
        first = client.get("/v1/customization/jobs/cust-1/status", headers={"Authorization": "Bearer key-ns"})
        assert first.status_code == 200 and first.json()["steps_completed"] == 1

        reads = []
        monkeypatch.setattr(store, "get", lambda *args: reads.append(args))
        for _ in range(20):
            again = client.get("/v1/customization/jobs/cust-1/status", headers={"Authorization": "Bearer key-ns"})
            assert again.json() == first.json()
        assert reads == [] and len(asked) == 1
        other = client.get("/v1/customization/jobs/cust-1/status", headers={"Authorization": "Bearer key-other"})
        assert other.status_code == 404 and len(reads) == 1  # looked up as any unknown job is


def test_evaluation_polls_share_one_refresh(tmp_path, monkeypatch):
    from api import evaluation

    store = Store(open_database(f"sqlite:///{tmp_path / 'api.db'}"))
    job = store.add(evaluation.JOB, "eval-1", "ns", "eval-1", {
        "status": "running", "_flow_run_id": "00000000-0000-0000-0000-000000000002", "status_details": {"message": "created"},
    })
    asked = []

    def states(ids, history=False):
        asked.append(ids)
        at = dt.datetime(2026, 1, 1)
        return {i: orchestrator.RunState(flow_run_id=i, status="running", state_name="Running", message=None,
                                         timestamp=at, started=at, history=[]) for i in ids}

    monkeypatch.setattr(orchestrator, "states", states)
    monkeypatch.setattr(status, "tracked_run", lambda settings, job_id: (None, None))
    jobs = status.evaluation_jobs
    monkeypatch.setattr(jobs, "shared", SharedRefresh(jobs._refresh, orchestrator.FINAL))
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: jobs.refresh(store, Settings(), [store.get(evaluation.JOB, job["id"])], detailed=True)[0], range(20)))
    assert len(asked) == 1
    assert {a["status_details"]["message"] for a in answers} == {"Running"}


def test_one_prefect_client_per_server(monkeypatch):
    """Refreshes reuse one started Prefect client per server (a new one costs ~20 ms of CPU)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setattr(orchestrator, "_clients", {})
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        first = orchestrator._client()
        assert orchestrator._client() is first
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:10/api"}):
        assert orchestrator._client() is not first


def test_job_lists_are_read_once_per_interval_and_after_every_write(polled, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app

    store, job, asked, gate = polled
    gate.set()
    app = create_app(Settings(data_dir=tmp_path / "data", api_keys={"key-ns": ["ns"], "key-other": ["other"]}))
    app.state.store = store
    reads = []
    read_all = store.all
    monkeypatch.setattr(store, "all", lambda kind: reads.append(kind) or read_all(kind))
    ns, other = {"Authorization": "Bearer key-ns"}, {"Authorization": "Bearer key-other"}
    with TestClient(app, raise_server_exceptions=False) as client:
        first = client.get("/v1/customization/jobs", headers=ns)
        assert [j["id"] for j in first.json()["data"]] == ["cust-1"]
        for _ in range(10):
            assert client.get("/v1/customization/jobs", headers=ns).json() == first.json()
        assert len(reads) <= 2  # the first answer, and once more if its refresh saved the job

        seen = len(reads)
        assert client.get("/v1/customization/jobs", headers=other).json()["data"] == []  # per key
        assert client.get("/v1/customization/jobs?page_size=1", headers=ns).status_code == 200  # per query
        assert len(reads) == seen + 2

        store.add(logic.JOB, "cust-2", "ns", "job-2", {"namespace": "ns", "status": "completed", "status_details": {}})
        assert {j["id"] for j in client.get("/v1/customization/jobs", headers=ns).json()["data"]} == {"cust-1", "cust-2"}
