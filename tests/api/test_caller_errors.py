"""What a caller sees of the server: no traceback and no server folder in error details, job status
messages or run logs (``api.errors.for_caller`` at every way out), and an unexpected error is a 500 with
a reference id whose traceback stays in the server log.

In-process, with Prefect replaced by stand-ins."""

from __future__ import annotations

import datetime as dt
import logging
import site
import sys

import pytest
from fastapi.testclient import TestClient

from api import customization, evaluation, orchestrator, status
from api.app import create_app
from api.db import JobRun
from api.errors import NotFound, for_caller
from api.refresh import SharedRefresh
from core.settings import Settings

pytestmark = pytest.mark.unit
RUN = "00000000-0000-0000-0000-0000000000b2"


def _trace(settings: Settings) -> str:
    """A failure as the worker logs it: a traceback through site-packages and the data folder."""
    return ("Encountered exception during execution:\n"
            "Traceback (most recent call last):\n"
            f'  File "{site.getsitepackages()[0]}/prefect/flow_engine.py", line 712, in run_context\n'
            "    yield self\n"
            f'  File "{settings.root}/jobs/cust-1/train.py", line 3, in train\n'
            "    raise ValueError(...)\n"
            f"ValueError: no rows in {settings.root}/datastore/datasets/team-a/d/training/train.jsonl")


def _shows_nothing_of_the_server(text: str, settings: Settings) -> None:
    assert "Traceback" not in text and 'File "' not in text, text
    for folder in (str(settings.root), sys.prefix, site.getsitepackages()[0]):
        assert folder not in text, text


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def client(settings):
    app = create_app(settings)

    @app.get("/v1/test/unexpected")
    def unexpected() -> None:
        raise RuntimeError(f"cannot open {settings.root}/api/api.db")

    @app.get("/v1/test/refused")
    def refused() -> None:
        raise NotFound(f"no file {settings.root}/policies/team-a.yaml to remove")

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_a_traceback_becomes_its_last_line_and_server_folders_placeholders(settings, caplog):
    with caplog.at_level(logging.WARNING, logger="customizer.api"):
        shown = for_caller(_trace(settings), settings)
    _shows_nothing_of_the_server(shown, settings)
    assert shown.startswith("Encountered exception during execution:\nValueError: no rows in <data>/datastore/datasets/team-a/d/")
    reference = shown.rsplit("reference ", 1)[1].rstrip(")")
    logged = [r.getMessage() for r in caplog.records if reference in r.getMessage()]
    assert logged and "Traceback (most recent call last)" in logged[0]  # the full text stays in the server log


def test_an_unexpected_error_is_a_500_with_a_reference_and_no_trace(client, settings, caplog):
    with caplog.at_level(logging.ERROR, logger="customizer.api"):
        answer = client.get("/v1/test/unexpected")
    assert answer.status_code == 500 and "reference" in answer.json()["detail"]
    _shows_nothing_of_the_server(answer.text, settings)
    reference = answer.json()["detail"].rsplit(" ", 1)[1]
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)


def test_an_error_detail_shows_no_server_folder(client, settings):
    answer = client.get("/v1/test/refused")
    assert answer.status_code == 404 and answer.json()["detail"] == "no file <data>/policies/team-a.yaml to remove"


def test_a_failed_jobs_status_and_logs_show_neither_traceback_nor_server_folder(client, settings, monkeypatch):
    store = client.app.state.store
    store.add(customization.JOB, "cust-1", "team-a", "job-1", {
        "namespace": "team-a", "status": "running", "output_model": "team-a/out", **JobRun(flow_run_id=RUN).stored(),
        "status_details": {"created_at": "2026-01-01T00:00:00", "updated_at": "2026-01-01T00:00:00", "status": "running",
                           "status_logs": [{"updated_at": "2026-01-01T00:00:00", "message": "created"}]},
    })
    store.add(evaluation.JOB, "eval-1", "team-a", "eval-1", {
        "namespace": "team-a", "status": "running", "status_details": {"message": "created", "progress": 0.0}, **JobRun(flow_run_id=RUN).stored(),
    })
    message = "Flow run encountered an exception: " + _trace(settings).split("\n", 1)[1]
    at = dt.datetime(2026, 1, 1, 0, 5)
    monkeypatch.setattr(orchestrator, "states", lambda ids, history=False: {i: orchestrator.RunState(
        flow_run_id=i, status="failed", state_name="Failed", message=message, timestamp=at, started=at, history=[]) for i in ids})
    monkeypatch.setattr(orchestrator, "logs", lambda flow_run_id: [{"timestamp": "t", "level": 40, "logger": "flow", "message": _trace(settings)}])
    monkeypatch.setattr(status, "training_metrics", lambda settings, job_id: ({}, {}))
    monkeypatch.setattr(status, "tracked_run", lambda settings, job_id: (None, None))
    for jobs in (status.customization_jobs, status.evaluation_jobs):
        monkeypatch.setattr(jobs, "shared", SharedRefresh(jobs._refresh, orchestrator.FINAL))

    answers = [client.get("/v1/customization/jobs/cust-1/status"), client.get("/v1/customization/jobs/cust-1/container-logs"),
               client.get("/v1/evaluation/jobs/eval-1"), client.get("/v1/evaluation/jobs/eval-1/logs")]

    for answer in answers:
        assert answer.status_code == 200, answer.text
        _shows_nothing_of_the_server(answer.text, settings)
        assert "ValueError: no rows in <data>/datastore/datasets/team-a/d/training/train.jsonl" in answer.text  # the message stays
    assert f"flow run {RUN}" in answers[1].json()["error"]["message"]  # where the full text is
