"""Many clients polling the same jobs cost one refresh from Prefect per interval, not one per
request; an action on a job (cancel, approval) is seen at once."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from api import customization as logic
from api import orchestrator
from api.db import Store, open_database
from customizer.settings import Settings


@pytest.fixture
def polled(tmp_path, monkeypatch):
    """A store with one running job, and a Prefect stand-in that counts how often it is asked."""
    store = Store(open_database(f"sqlite:///{tmp_path / 'api.db'}"))
    job = store.add(logic.JOB, "cust-1", "ns", "job", {
        "status": "running", "_flow_run_id": "00000000-0000-0000-0000-000000000001",
        "status_details": {"status": "running", "status_logs": [{"updated_at": "2026-01-01T00:00:00", "message": "created"}]},
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
    monkeypatch.setattr(logic, "training_metrics", lambda settings, job_id: ({"steps_completed": len(asked)}, {}))
    monkeypatch.setattr(logic, "_refreshed", {})
    monkeypatch.setattr(logic, "_refreshing", set())
    return store, job, asked, gate


def poll(store, job_id):
    return logic.refresh_jobs(store, Settings(), [store.get(logic.JOB, job_id)], detailed=True)[0]


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

    monkeypatch.setattr(logic, "REFRESH_SECONDS", 0.0)  # the interval passed
    assert poll(store, job["id"])["status_details"]["steps_completed"] == 2
    assert len(asked) == 2


def test_an_action_on_a_job_is_seen_at_once(polled):
    store, job, asked, gate = polled
    gate.set()
    poll(store, job["id"])
    logic.forget_refresh(job["id"])  # what cancel and approval do after acting
    assert poll(store, job["id"])["status_details"]["steps_completed"] == 2
    assert len(asked) == 2
