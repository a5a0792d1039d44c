"""Job status (``api.status``): a run's final state completes the job record once, for either kind
of job; a job's run bookkeeping is read through ``JobRun`` and never reaches the wire; Prefect's
errors reach the client as ``OrchestratorUnavailable``.

In-process, with Prefect and MLflow replaced by stand-ins."""

from __future__ import annotations

import datetime as dt

import pytest

from api import customization, evaluation, orchestrator, status
from api.customization import public
from api.db import JobRun, Store, open_database
from api.refresh import SharedRefresh
from core.settings import Settings

RUN = "00000000-0000-0000-0000-0000000000a1"
AT = dt.datetime(2026, 1, 1, 0, 5)


@pytest.fixture
def store(tmp_path):
    return Store(open_database(f"sqlite:///{tmp_path / 'api.db'}"))


def _finished(monkeypatch, status_name: str, state_name: str, message: str | None = None) -> list:
    asked = []

    def states(ids, history=False):
        asked.append((ids, history))
        return {i: orchestrator.RunState(flow_run_id=i, status=status_name, state_name=state_name, message=message, timestamp=AT,
                                         started=AT - dt.timedelta(minutes=5), history=[]) for i in ids}

    monkeypatch.setattr(orchestrator, "states", states)
    return asked


def _fresh(monkeypatch, jobs: status.JobStatus) -> None:
    monkeypatch.setattr(jobs, "shared", SharedRefresh(jobs._refresh, orchestrator.FINAL))


def test_a_job_run_record_reads_and_writes_the_stored_keys():
    stored = {"id": "cust-1", "status": "running", "_flow_run_id": RUN, "_dataset_dir": "/snap", "_dataset_sha256": "ab",
              "_spec_output_model": "ns/m", "_secrets": {"wandb-api-key": "sealed"}, "_dataset_files_url": "hf://datasets/ns/d"}
    run = JobRun.of(stored)
    assert (run.flow_run_id, run.dataset_dir, run.secrets) == (RUN, "/snap", {"wandb-api-key": "sealed"})
    assert run.stored() == {k: v for k, v in stored.items() if k.startswith("_")}  # the shape the database holds
    assert JobRun(flow_run_id=RUN).stored() == {"_flow_run_id": RUN}
    assert public(stored | run.stored()) == {"id": "cust-1", "status": "running"}


def test_a_job_without_a_run_is_named():
    with pytest.raises(ValueError, match=r"job 'cust-9' .*`_flow_run_id`"):
        JobRun.of({"id": "cust-9", "status": "running"})


def test_a_finished_customization_completes_its_output_model(store, monkeypatch):
    job = store.add(customization.JOB, "cust-1", "ns", "job", {
        "namespace": "ns", "status": "running", "output_model": "ns/out@cust-1", **JobRun(flow_run_id=RUN).stored(),
        "status_details": {"status": "running", "status_logs": [{"updated_at": "2026-01-01T00:00:00", "message": "created"}]},
    })
    store.add(customization.MODEL, "model-1", "ns", "out@cust-1", {"artifact": {"status": "created", "files_url": ""}})
    asked = _finished(monkeypatch, "completed", "Completed")
    tags = {"customizer.published_uri": "s3://models/ns/out/1/", "customizer.decision": "promote"}
    monkeypatch.setattr(status, "training_metrics", lambda settings, job_id: ({"steps_completed": 8, "elapsed_time": 1.0}, tags))
    _fresh(monkeypatch, status.customization_jobs)

    done = status.customization_jobs.refresh(store, Settings(), [job])[0]

    assert done["status"] == "completed" and done["status_details"]["steps_completed"] == 8
    assert done["status_details"]["elapsed_time"] == 300.0  # from the run, not MLflow
    assert [log["message"] for log in done["status_details"]["status_logs"]] == ["created", "Completed"]
    assert asked == [([RUN], False), ([RUN], True)]  # a final state is recorded with its history
    model = store.get(customization.MODEL, "model-1")
    # The version as a Data Store model repo; the store folder beside it.
    assert model["artifact"] == {"status": "upload_completed", "files_url": "hf://models/ns/out@1"}
    assert model["custom_fields"] == {"decision": "promote", "published_uri": "s3://models/ns/out/1/"}
    assert store.get(customization.JOB, "cust-1")["status"] == "completed"
    assert status.customization_jobs.refresh(store, Settings(), [done]) == [done] and len(asked) == 2  # not asked again


def test_a_failed_customization_marks_its_upload_failed(store, monkeypatch):
    job = store.add(customization.JOB, "cust-2", "ns", "job-2", {
        "namespace": "ns", "status": "running", "output_model": "ns/out2", **JobRun(flow_run_id=RUN).stored(),
        "status_details": {"status": "running", "status_logs": [{"updated_at": "2026-01-01T00:00:00", "message": "created"}]},
    })
    store.add(customization.MODEL, "model-2", "ns", "out2", {"artifact": {"status": "created"}})
    _finished(monkeypatch, "failed", "Failed", "Flow run encountered an exception: ValueError: no rows")
    monkeypatch.setattr(status, "training_metrics", lambda settings, job_id: ({}, {}))
    _fresh(monkeypatch, status.customization_jobs)

    done = status.customization_jobs.refresh(store, Settings(), [job], detailed=True)[0]

    assert done["status_details"]["status_logs"][-1] == {"updated_at": AT.isoformat(), "message": "Failed", "detail": "ValueError: no rows"}
    assert store.get(customization.MODEL, "model-2")["artifact"]["status"] == "upload_failed"
    monkeypatch.setattr(orchestrator, "logs", lambda flow_run_id: [{"timestamp": "t", "logger": "flow", "message": f"ran {flow_run_id}"}])
    logs = status.job_logs(done, Settings())
    assert logs["error"]["exception_type"] == "ValueError"
    assert logs["entries"]["cust-2"]["object"] == f"flow-run/{RUN}" and logs["entries"]["cust-2"]["logs"]["customize"] == [f"t flow: ran {RUN}"]


def test_a_completed_evaluation_points_at_its_results(store, monkeypatch):
    job = store.add(evaluation.JOB, "eval-1", "ns", "eval-1", {
        "namespace": "ns", "status": "running", "status_details": {"message": "created", "progress": 0.0}, **JobRun(flow_run_id=RUN).stored(),
    })
    _finished(monkeypatch, "completed", "Completed")
    monkeypatch.setattr(status, "tracked_run", lambda settings, job_id: (None, None))
    monkeypatch.setattr(status, "read_results", lambda settings, job_id: {"tasks": {"qa": {}}, "groups": {}})
    _fresh(monkeypatch, status.evaluation_jobs)

    done = status.evaluation_jobs.refresh(store, Settings(), [job], detailed=True)[0]

    assert done["status_details"] == {"message": "Job completed successfully", "progress": 100.0}
    assert done["result"] == status.stable_result_id("eval-1")
    result = status.result_of(Settings(), done)
    assert (result["id"], result["job"], result["tasks"]) == (done["result"], "eval-1", {"qa": {}})


def test_an_unfinished_evaluation_has_no_results_yet(store):
    with pytest.raises(status.Conflict, match="eval-2 is running"):
        status.result_of(Settings(), {"id": "eval-2", "status": "running"})


def test_an_unreachable_orchestrator_leaves_the_last_known_state(store, monkeypatch):
    job = store.add(evaluation.JOB, "eval-3", "ns", "eval-3", {
        "namespace": "ns", "status": "running", "status_details": {"message": "Running"}, **JobRun(flow_run_id=RUN).stored(),
    })

    def down(ids, history=False):
        raise orchestrator.OrchestratorUnavailable("the orchestrator (Prefect) is not reachable: ConnectError: refused")

    monkeypatch.setattr(orchestrator, "states", down)
    _fresh(monkeypatch, status.evaluation_jobs)
    assert status.evaluation_jobs.refresh(store, Settings(), [job], detailed=True) == [job]


class _Down:
    def __getattr__(self, name):
        raise ConnectionError("connection refused")


@pytest.mark.parametrize("call", [
    lambda: orchestrator.states([RUN]),
    lambda: orchestrator.cancel(RUN),
    lambda: orchestrator.logs(RUN),
    lambda: orchestrator.answer(RUN, {"approved": True}),
])
def test_prefect_errors_become_orchestrator_unavailable(monkeypatch, call):
    monkeypatch.setattr(orchestrator, "_client", lambda: _Down())
    with pytest.raises(orchestrator.OrchestratorUnavailable, match=r"^the orchestrator \(Prefect\) is not reachable: ConnectionError: connection refused$"):
        call()


def test_a_run_not_paused_is_not_waiting(monkeypatch):
    class Client:
        def read_flow_run(self, run_id):
            return type("Run", (), {"state": type("State", (), {"name": "Running", "is_paused": lambda self: False})()})()

    monkeypatch.setattr(orchestrator, "_client", lambda: Client())
    with pytest.raises(orchestrator.NotWaiting, match="Running"):
        orchestrator.answer(RUN, {"approved": True})


def test_a_missing_deployment_is_named(monkeypatch):
    import prefect.deployments
    from prefect.exceptions import ObjectNotFound

    def missing(*args, **kwargs):
        raise ObjectNotFound(http_exc=Exception("404"))

    monkeypatch.setattr(prefect.deployments, "run_deployment", missing)
    with pytest.raises(orchestrator.OrchestratorUnavailable, match="the Prefect deployment 'customize/api' does not exist"):
        orchestrator.start("customize/api", {})


def test_the_run_record_examples_hold():
    import doctest

    from api import db

    assert doctest.testmod(db).failed == 0
