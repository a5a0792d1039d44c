"""A cancelled job stays cancelled: cancelled right after it is created, its run never starts training,
whatever the worker was doing at that moment."""

from __future__ import annotations

import time

import pytest

from core.ids import uuid_from_id
from tests.security.conftest import FINAL_STATES, task_run_names, trained

pytestmark = pytest.mark.platform
WATCH_SECONDS = 25


def _states(prefect, flow_run_id: str) -> list[dict]:
    answer = prefect.get("/flow_run_states/", params={"flow_run_id": flow_run_id})
    assert answer.status_code == 200, answer.text
    return sorted(answer.json(), key=lambda state: state["timestamp"])


def test_cancel_at_once_never_trains(world, team_a, prefect):
    """Guards cancellation: a job cancelled as soon as it is created is reported cancelling/cancelled for
    25 s and then cancelled; its Prefect run shows no Running state after the cancellation, or, if it
    started anyway, it ended Cancelled without the train task and without training metrics."""
    created = team_a.post("/v1/customization/jobs", json=world.job_body())
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    cancelled = team_a.post(f"/v1/customization/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text

    seen = []
    deadline = time.monotonic() + WATCH_SECONDS
    while time.monotonic() < deadline:
        status = team_a.get(f"/v1/customization/jobs/{job_id}/status")
        assert status.status_code == 200, status.text
        seen.append(status.json()["status"])
        assert seen[-1] in ("cancelling", "cancelled"), seen
        time.sleep(1)
    assert seen[-1] == "cancelled", seen

    flow_run_id = str(uuid_from_id(job_id))
    states = _states(prefect, flow_run_id)
    types = [state["type"] for state in states]
    stop = next((i for i, kind in enumerate(types) if kind in ("CANCELLING", "CANCELLED")), None)
    assert stop is not None, types
    if "RUNNING" in types[stop:]:  # it started after all: then it must have stopped before training
        assert types[-1] == "CANCELLED" and types[-1] in FINAL_STATES, types
        assert not trained(task_run_names(prefect, flow_run_id)), "the train task ran after the job was cancelled"
        metrics = team_a.get(f"/v1/customization/jobs/{job_id}/status").json().get("metrics") or {}
        assert not metrics.get("train_loss"), metrics
