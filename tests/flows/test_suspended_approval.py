"""Approvals that hold no worker, against a real Prefect server and a real `customizer worker`
(authentication on): a reviewed job suspends (its process exits), refuses an unsigned answer and
keeps waiting, survives a worker restart, and after the platform's signed answers completes with its
training run once. A job nobody answers is rejected at its deadline by the worker's watch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from api import orchestrator
from core import audit, tracking
from core.ids import prefixed_id
from core.processes import free_port, stop_processes, wait_until_healthy
from core.settings import get_settings
from core.submission import signed
from tasks.approval import TIMED_OUT
from tests.flows.test_approvals import logged
from tests.flows.test_customize import REVIEW_LORA_TOO, spec_for

ROOT = Path(__file__).resolve().parents[2]
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class Platform:
    """A `prefect server start` and a `customizer worker` that can be stopped and started again."""

    def __init__(self, folder: Path, env: dict[str, str]):
        self.folder, self.env, self.api = folder, env, env["PREFECT_API_URL"]
        self.worker: subprocess.Popen | None = None
        self.log = folder / "worker.log"

    def start_worker(self) -> None:
        with open(self.log, "ab") as out:
            self.worker = subprocess.Popen([sys.executable, "-m", "customizer.cli", "worker"], cwd=ROOT, env=self.env,
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until_healthy(f"{self.api}/deployments/name/customize/customizer", self.worker, 300, self.log, what="the customize deployment")

    def stop_worker(self) -> None:
        stop_processes(self.worker, grace=30)

    def runs_flow(self, flow_run_id: str) -> list[psutil.Process]:
        """The worker's processes (it and its descendants) that run this flow run."""
        worker = psutil.Process(self.worker.pid)
        running = []
        for process in [worker, *worker.children(recursive=True)]:
            try:
                if process.status() != psutil.STATUS_ZOMBIE and process.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                    running.append(process)
            except psutil.NoSuchProcess:
                continue
        return running




@pytest.fixture(scope="module")
def platform(tmp_path_factory, tiny_config_dir):
    """Server and worker share a data folder with this test (the signing key, MLflow, the audit trail)."""
    folder = tmp_path_factory.mktemp("suspended")
    port = free_port()
    env = dict(os.environ) | {
        "PREFECT_HOME": str(folder / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "CUSTOMIZER_DATA_DIR": str(folder / "data"), "PYTHONPATH": str(ROOT),
        "CUSTOMIZER_APPROVAL_POLL_SECONDS": "1", "CUSTOMIZER_API_KEYS": '{"reviewer-key": ["*"]}',
        "CUSTOMIZER_ALLOWED_FILE_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())]),
    }
    log = folder / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    running = Platform(folder, env)
    try:
        wait_until_healthy(f"{running.api}/health", server, 300, log, what="the Prefect server")
        running.start_worker()
        with pytest.MonkeyPatch.context() as patch, temporary_settings({PREFECT_API_URL: running.api}):
            patch.setenv("CUSTOMIZER_DATA_DIR", env["CUSTOMIZER_DATA_DIR"])
            patch.setenv("CUSTOMIZER_API_KEYS", env["CUSTOMIZER_API_KEYS"])
            yield running
    finally:
        stop_processes(*[p for p in (running.worker, server) if p is not None], grace=30)


def _submit(spec) -> str:
    """Start a job as the platform does: signed (authentication is on, so an unsigned one would not run)."""
    spec = signed(spec, get_settings(), spec.submitted_by, ["*"], ["submit"])
    return orchestrator.start(get_settings().customize_deployment, {"spec": spec.model_dump(mode="json")})


def _run(flow_run_id: str):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _wait_for(platform: Platform, flow_run_id: str, done, what: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while not done(run := _run(flow_run_id)):
        assert run.state.type.value not in FINAL, f"{what}: the run ended {run.state.name}: {run.state.message}\n{_tail(platform)}"
        assert time.monotonic() < deadline, f"{what}: still {run.state.name}\n{_tail(platform)}"
        time.sleep(1)
    return run


def _suspended_at(key: str):
    return lambda run: run.state.is_paused() and run.state.name == "Suspended" and run.state.state_details.pause_key == key


def _tail(platform: Platform) -> str:
    return platform.log.read_text(errors="replace")[-4000:]


def _messages(flow_run_id: str) -> list[str]:
    return [line["message"] for line in orchestrator.logs(flow_run_id, limit=5000)]


def _no_process_left(platform: Platform, flow_run_id: str) -> None:
    """The suspended run holds no process: neither the one it recorded nor any of the worker's."""
    deadline = time.monotonic() + 60
    recorded = int(_run(flow_run_id).infrastructure_pid.rpartition(":")[2])
    while platform.runs_flow(flow_run_id) or (psutil.pid_exists(recorded) and psutil.Process(recorded).status() != psutil.STATUS_ZOMBIE):
        assert time.monotonic() < deadline, f"a process still runs the suspended flow run: {platform.runs_flow(flow_run_id)}"
        time.sleep(0.5)


def test_a_suspended_job_survives_a_worker_restart_and_trains_once(platform, ok_dataset):
    spec = spec_for(ok_dataset, review_methods=REVIEW_LORA_TOO).model_copy(update={"submitted_by": "alice"})
    flow_run_id = _submit(spec)
    job_id = prefixed_id("cust", flow_run_id)

    _wait_for(platform, flow_run_id, _suspended_at("training-approval-0"), "waiting for the training approval")
    _no_process_left(platform, flow_run_id)
    assert platform.worker.poll() is None, "the worker itself keeps running"
    assert not any(get_settings().jobs_dir.glob("*/checkpoints")), "training started before its approval"

    # The Prefect UI's form sends no signature: with authentication on it is refused and the job waits on.
    resume_flow_run(flow_run_id, run_input={"approved": True, "reviewer": "mallory", "comment": "from the UI"})
    _wait_for(platform, flow_run_id, _suspended_at("training-approval-1"), "waiting again after the unsigned answer")
    refused = f"refused while authentication is on; approve through the REST API: POST /v1/customization/jobs/{job_id}/approval"
    assert logged(flow_run_id, refused), _tail(platform)
    _no_process_left(platform, flow_run_id)

    platform.stop_worker()
    platform.start_worker()
    orchestrator.answer(flow_run_id, {"approved": True, "reviewer": "bob", "comment": "budget ok"})  # signed by the platform

    _wait_for(platform, flow_run_id, _suspended_at("promotion-approval-0"), "waiting for the promotion approval")
    _no_process_left(platform, flow_run_id)
    orchestrator.answer(flow_run_id, {"approved": True, "reviewer": "carol", "comment": "scores look right"})
    run = _wait_for(platform, flow_run_id, lambda r: r.state.type.value in FINAL, "finishing")
    assert run.state.type.value == "COMPLETED", f"{run.state.message}\n{_tail(platform)}"

    # Trained exactly once, though the flow ran from the top four times: every later start reused the result.
    messages = _messages(flow_run_id)
    assert sum(m.startswith("Trained ") for m in messages) == 1, [m for m in messages if m.startswith("Trained ")]
    assert not any("Error encountered when computing cache key" in m for m in messages)
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    train_states = [t.state.name for t in task_runs if re.fullmatch(r"train-[0-9a-f]+", t.name)]
    assert train_states.count("Completed") == 1 and "Cached" in train_states, train_states
    check_states = [t.state.name for t in task_runs if re.fullmatch(r"check-[0-9a-f]+", t.name)]
    assert check_states.count("Completed") == 1 and check_states.count("Cached") == 3, check_states

    # One MLflow run, finished, with who approved; each decision audited once.
    settings = get_settings()
    runs = tracking.client(settings).search_runs([tracking.client(settings).get_experiment_by_name(settings.mlflow_experiment).experiment_id],
                                                 filter_string=f"tags.`customizer.job_id` = '{job_id}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert '"reviewer":"bob"' in runs[0].data.tags["customizer.approval.training"].replace(" ", "")
    decisions = [(r["action"], r["principal"], r["after"]["stage"]) for r in audit.records(settings, job=job_id) if r["action"].startswith("approval.")]
    assert decisions == [("approval.approved", "bob", "training"), ("approval.approved", "carol", "promotion")]


def test_an_unanswered_suspended_job_is_rejected_at_its_deadline(platform, ok_dataset):
    spec = spec_for(ok_dataset, review_methods=REVIEW_LORA_TOO, approval_timeout_hours=4 / 3600)
    flow_run_id = _submit(spec)
    job_id = prefixed_id("cust", flow_run_id)
    run = _wait_for(platform, flow_run_id, lambda r: r.state.type.value in FINAL, "ending at the deadline")
    assert run.state.type.value == "FAILED"
    assert f"training was not approved (nobody: {TIMED_OUT})" in run.state.message
    assert any(s.name == "Suspended" for s in _states(flow_run_id)), "the job held no process while it waited"

    # The failure hook closes the MLflow run right after the run's state turned Failed: give it a moment.
    settings = get_settings()
    experiment = tracking.client(settings).get_experiment_by_name(settings.mlflow_experiment).experiment_id
    deadline = time.monotonic() + 60
    while True:
        runs = tracking.client(settings).search_runs([experiment], filter_string=f"tags.`customizer.job_id` = '{job_id}'")
        if time.monotonic() > deadline or (runs and runs[0].info.status != "RUNNING"):
            break
        time.sleep(1)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert f'"comment":"{TIMED_OUT}"' in runs[0].data.tags["customizer.approval.training"].replace(", ", ",").replace(": ", ":")
    decisions = [(r["action"], r["principal"], r["after"]["comment"]) for r in audit.records(settings, job=job_id) if r["action"].startswith("approval.")]
    assert decisions == [("approval.rejected", None, TIMED_OUT)]
    assert not any(settings.jobs_dir.glob(f"{job_id}/checkpoints"))


def _states(flow_run_id: str):
    with get_client(sync_client=True) as client:
        return client.read_flow_run_states(flow_run_id)


def test_a_job_cancelled_while_its_worker_submits_it_never_starts(platform, ok_dataset):
    """Cancelled through the API while Pending (the worker starting its process): reported cancelling,
    never Running afterwards, and it ends Cancelled without having read or trained anything."""
    flow_run_id = _submit(spec_for(ok_dataset))
    deadline = time.monotonic() + 120
    while (run := _run(flow_run_id)).state.type.value == "SCHEDULED":
        assert time.monotonic() < deadline, f"the worker did not take the run\n{_tail(platform)}"
        time.sleep(0.05)
    assert run.state.type.value == "PENDING", f"the run was {run.state.name} before it could be cancelled while pending"
    orchestrator.cancel(flow_run_id)
    assert orchestrator.states([flow_run_id])[flow_run_id].status == "cancelling"  # not "cancelled": it could still start

    run = _wait_for(platform, flow_run_id, lambda r: r.state.is_final(), "ending cancelled", 300)
    assert run.state.is_cancelled(), run.state
    history = sorted(_states(flow_run_id), key=lambda s: s.timestamp)
    asked = next(i for i, s in enumerate(history) if s.type.value == "CANCELLING")
    assert not [s.name for s in history[asked:] if s.type.value == "RUNNING"], [s.name for s in history]
    job_id = prefixed_id("cust", flow_run_id)
    assert not (get_settings().jobs_dir / job_id / "data").exists() and not any(get_settings().jobs_dir.glob(f"{job_id}/checkpoints"))
