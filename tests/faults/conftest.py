"""A platform to break, started once for the fault tests: a real Prefect server (``prefect server
start``, SQLite), a real worker (``customizer worker``) that each test may SIGKILL and start again,
MLflow on SQLite and an S3 endpoint over HTTP (moto) that can hold a chosen upload in flight.

Every process is started in its own process group, so a kill takes the worker with the flow-run
process and the training it runs, as a machine or a pod going away would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.processes import free_port, stop_processes
from core.settings import Settings
from core.specs import PromotionPolicy
from evaluation.policy import write_policy
from tests.conftest import SESSION_DIR, TINY_CONFIG_URN, ok_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
HOLD = Path(__file__).parent / "hold"
DEPLOYMENT = "customize/customizer"
BUCKET = "models"


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    """Poll ``condition`` until it returns something true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if value := condition():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process group (no clean-up runs: nothing gets to say it is stopping)."""
    left = stop_processes(process, grace=0, kill_wait=30)
    assert not left, f"process {process.pid} survived SIGKILL"


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@dataclass
class HeldS3:
    """moto's S3 over HTTP; ``hold(suffix)`` makes the next PUT of a key ending in ``suffix`` wait
    (the request is in flight, nothing stored) until ``release()``."""

    endpoint: str = ""
    suffix: str | None = None
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def hold(self, suffix: str) -> None:
        self.arrived.clear()
        self.released.clear()
        self.suffix = suffix

    def release(self) -> None:
        self.suffix = None
        self.released.set()

    def keys(self, prefix: str) -> list[str]:
        import boto3

        listed = boto3.client("s3", endpoint_url=self.endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"].removeprefix(prefix) for o in listed.get("Contents", []))


@pytest.fixture(scope="session")
def held_s3():
    import boto3
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    state = HeldS3()

    def holding(environ, start_response):
        if state.suffix and environ["REQUEST_METHOD"] == "PUT" and environ.get("PATH_INFO", "").endswith(state.suffix):
            state.arrived.set()
            state.released.wait(timeout=300)
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"held by the test"]
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, holding, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    boto3.client("s3", endpoint_url=state.endpoint).create_bucket(Bucket=BUCKET)
    yield state
    state.release()
    server.shutdown()


@dataclass
class Faulty:
    """The platform under test: a Prefect server and a worker, each started and stopped at will."""

    root: Path
    env: dict[str, str]
    prefect_url: str
    prefect_port: int
    s3: HeldS3
    prefect: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return Path(self.env["CUSTOMIZER_DATA_DIR"])

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.starts += 1
        log = open(self.root / f"{name}-{self.starts}.log", "wb")
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def start_prefect(self) -> None:
        self.prefect = self._spawn("prefect", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                               "--port", str(self.prefect_port), "--analytics-off"], self.env)
        wait_until(lambda: healthy(f"{self.prefect_url}/health"), 180, "the Prefect server")

    def start_worker(self, hold: str | None = None) -> Path | None:
        """Start ``customizer worker``; with ``hold`` (``task[:stage]``) flow runs wait in that task.

        Returns:
            The file the held task writes when it has started, or None.
        """
        if self.worker is not None and self.worker.poll() is None:
            kill_group(self.worker)
        env = dict(self.env)
        marker = None
        if hold:
            marker = self.root / f"held-{hold.replace(':', '-')}-{self.starts}"
            env |= {"FAULTS_HOLD_AT": hold, "FAULTS_HOLD_MARKER": str(marker), "PYTHONPATH": f"{HOLD}{os.pathsep}{ROOT}"}
        self.worker = self._spawn("worker", [sys.executable, "-m", "customizer.cli", "worker"], env)
        wait_until(lambda: healthy(f"{self.prefect_url}/deployments/name/{DEPLOYMENT}") or self.worker.poll() is not None,
                   180, "the worker's deployments")
        assert self.worker.poll() is None, f"the worker exited: {self.worker_log()}"
        return marker

    def kill_worker(self) -> None:
        kill_group(self.worker)

    def worker_log(self) -> str:
        return (self.root / f"worker-{self.starts}.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for process in (self.worker, self.prefect):
            if process is not None and process.poll() is None:
                kill_group(process)


@pytest.fixture(scope="session")
def faulty(tiny_config_dir, held_s3, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = SESSION_DIR / "faults"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ) | {
        "CUSTOMIZER_DATA_DIR": str(root / "data"),
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_API_URL": url,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "CUSTOMIZER_STORE_URI": f"s3://{BUCKET}/faults",
        "CUSTOMIZER_S3_ENDPOINT_URL": held_s3.endpoint,
        "CUSTOMIZER_S3_MAX_ATTEMPTS": "1",
        "PYTHONPATH": str(ROOT),
        # The jobs read datasets the tests write under pytest's temporary folder.
        "CUSTOMIZER_ALLOWED_FILE_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp()), str(root / "data")]),
    }
    platform = Faulty(root=root, env=env, prefect_url=url, prefect_port=port, s3=held_s3)
    # The tiny model's general scores are noise: the operator opens the forgetting limit (a job may only tighten it).
    write_policy(Settings(data_dir=root / "data"), None, PromotionPolicy(max_general_drop=100.0))
    platform.start_prefect()
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield platform
    finally:
        platform.stop()


@pytest.fixture
def faulty_settings(faulty, monkeypatch):
    """This process's settings pointed at the platform's data folder, MLflow and store."""
    from core.settings import get_settings

    for name in ("CUSTOMIZER_DATA_DIR", "CUSTOMIZER_STORE_URI", "CUSTOMIZER_S3_ENDPOINT_URL"):
        monkeypatch.setenv(name, faulty.env[name])
    return get_settings()


def job_spec(dataset: Path, output_model: str, **hyperparameters) -> dict:
    """A job on the tiny model, in the flow parameter's JSON form."""
    from core.specs import CustomizationSpec

    hp = {"epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "log_every_n_steps": 1, "lora": {"adapter_dim": 8, "alpha": 16}}
    spec = CustomizationSpec.model_validate({
        "config": TINY_CONFIG_URN, "dataset": str(dataset), "output_model": output_model, "hyperparameters": hp | hyperparameters,
        "evaluation": {"general_benchmarks": ["capitals"], "limit": 8, "max_new_tokens": 4},
    })
    return json.loads(spec.model_dump_json())


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "dataset"
    write_jsonl(root / "training" / "train.jsonl", ok_rows(20))
    write_jsonl(root / "testing" / "test.jsonl", ok_rows(8, start=100))
    return root


def start_job(spec: dict) -> str:
    """Create a flow run of the customize deployment (as the REST API does); returns its id."""
    from prefect.deployments import run_deployment

    return str(run_deployment(DEPLOYMENT, parameters={"spec": spec}, timeout=0, as_subflow=False).id)


def flow_run(flow_run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def state_history(flow_run_id: str) -> list:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return sorted(client.read_flow_run_states(flow_run_id), key=lambda s: s.timestamp)


def running_tasks(flow_run_id: str) -> set[str]:
    """Names of the flow run's task runs that the Prefect server has as Running (a run's name is
    its task's, or its task's with a ``-<key>`` suffix: both are given)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    names = {r.name for r in runs if r.state is not None and r.state.is_running()}
    return names | {name.rpartition("-")[0] for name in names}


def flow_logs(flow_run_id: str) -> list[str]:
    from api.orchestrator import logs

    return [line["message"] for line in logs(flow_run_id)]


def wait_final(flow_run_id: str, timeout: float):
    def final():
        state = flow_run(flow_run_id).state
        return state if state is not None and state.is_final() else None

    return wait_until(final, timeout, f"flow run {flow_run_id} to end", interval=1)
