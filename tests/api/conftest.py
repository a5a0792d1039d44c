"""A whole local platform for the API tests, started once per session with `customizer up` (Prefect
server, the served customize/evaluate deployments, MLflow UI, the REST API over HTTP), and helpers
that drive it the way NeMo clients do: the official SDK and huggingface_hub.HfApi."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.processes import stop_processes
from core.services import credentials
from core.settings import Settings
from tests.conftest import SESSION_DIR, ok_rows

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = "customizer/tiny-llama@v1.0.0+cpu"
LLAMA_CONFIG = "meta/llama-3.2-1b-instruct@v1.0.0+A100"
# NeMo's documented example request, as it stands.
NEMO_EXAMPLE = {
    "config": LLAMA_CONFIG,
    "dataset": {"name": "email-assist-dataset"},
    "hyperparameters": {
        "training_type": "sft", "finetuning_type": "lora", "epochs": 10, "batch_size": 16, "learning_rate": 0.0001,
        "lora": {"adapter_dim": 8, "adapter_dropout": 0.1},
    },
}


@dataclass
class Platform:
    api: str
    prefect_api: str
    mlflow: str
    data_dir: Path
    process: subprocess.Popen
    output: Path

    @property
    def services_auth(self) -> tuple[str, str]:
        """The service account the platform's Prefect and MLflow servers ask for (as httpx's ``auth``)."""
        return credentials(Settings(data_dir=self.data_dir))

    def restart(self, mlflow_ui: bool = True) -> None:
        """Stop `customizer up` and start it again on the same data folder."""
        self.stop()
        fresh = start_platform(self.data_dir, mlflow_ui=mlflow_ui)
        self.__dict__.update(fresh.__dict__)

    def stop(self) -> None:
        stop_processes(self.process, grace=60, kill_wait=10)  # `up` stops its own services on SIGTERM


def start_platform(data_dir: Path, mlflow_ui: bool = True, env: dict[str, str] | None = None) -> Platform:
    """Run `customizer up` on free ports and wait until it says it is up; ``env`` is added to its environment
    (e.g. ``CUSTOMIZER_API_KEYS``)."""
    ready = data_dir / f"ready-{time.monotonic_ns()}"
    output = data_dir / f"up-{time.monotonic_ns()}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ) | {
        "CUSTOMIZER_DATA_DIR": str(data_dir),
        "PREFECT_HOME": str(data_dir / "prefect"),
        "PYTHONPATH": str(ROOT),
        "CUSTOMIZER_APPROVAL_POLL_SECONDS": "1",
    } | (env or {})
    for leaked in ("PREFECT_API_URL", "CUSTOMIZER_STORE_URI", "CUSTOMIZER_S3_ENDPOINT_URL", "CUSTOMIZER_MLFLOW_TRACKING_URI"):
        environment.pop(leaked, None)
    command = [sys.executable, "-m", "customizer.cli", "up", "--port", "0", "--prefect-port", "0", "--mlflow-port", "0",
               "--poll-seconds", "1", "--ready-file", str(ready)] + ([] if mlflow_ui else ["--no-mlflow-ui"])
    with open(output, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 420
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_processes(process, grace=60)
            logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in (data_dir / "logs").glob("*.log"))
            raise RuntimeError(f"customizer up did not start:\n{output.read_text(errors='replace')}\n{logs}")
        time.sleep(0.5)
    api, prefect_api, mlflow = (ready.read_text().splitlines() + ["", "", ""])[:3]
    return Platform(api, prefect_api, mlflow, data_dir, process, output)


@pytest.fixture(scope="package")
def platform():
    started = start_platform(SESSION_DIR / "platform")
    yield started
    started.stop()


@pytest.fixture
def nemo(platform):
    from nemo_microservices import NeMoMicroservices

    return NeMoMicroservices(base_url=platform.api, max_retries=0)


@pytest.fixture
def http(platform):
    with httpx.Client(base_url=platform.api, timeout=60) as client:
        yield client


@pytest.fixture
def hf_api(platform, monkeypatch):
    """HfApi against the Data Store. The test session runs with HF_HUB_OFFLINE=1 (no hub); our own
    endpoint on loopback is the one place huggingface_hub may talk to."""
    import huggingface_hub.constants
    from huggingface_hub import HfApi

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return HfApi(endpoint=f"{platform.api}/v1/hf", token="unused")


def upload_dataset(hf_api, nemo, namespace: str, name: str, files: dict[str, list]) -> str:
    """Upload files to the Data Store with HfApi and register the dataset in the Entity Store with the SDK."""
    repo_id = f"{namespace}/{name}"
    hf_api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        for path, rows in files.items():
            target = Path(folder) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
        hf_api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset")
    dataset = nemo.datasets.create(name=name, namespace=namespace, files_url=f"hf://datasets/{repo_id}")
    assert dataset.files_url == f"hf://datasets/{repo_id}"
    return repo_id


@pytest.fixture(scope="package")
def email_dataset(platform):
    """The dataset NeMo's example names, in the default namespace: 24 training rows, 8 validation rows."""
    import huggingface_hub.constants
    from huggingface_hub import HfApi
    from nemo_microservices import NeMoMicroservices

    previous = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = False
    try:
        upload_dataset(
            HfApi(endpoint=f"{platform.api}/v1/hf"), NeMoMicroservices(base_url=platform.api, max_retries=0), "default",
            "email-assist-dataset", {"training/train.jsonl": ok_rows(24), "validation/val.jsonl": ok_rows(8, start=100)},
        )
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = previous
    return "default/email-assist-dataset"


@pytest.fixture(scope="package")
def example_jobs(platform, email_dataset):
    """NeMo's example as it stands (Llama; no weights here) and the same with the tiny config, started together."""
    with httpx.Client(base_url=platform.api, timeout=120) as client:
        llama = client.post("/v1/customization/jobs", json=NEMO_EXAMPLE)
        tiny = client.post("/v1/customization/jobs", json=NEMO_EXAMPLE | {"config": TINY_CONFIG})
    return llama, tiny


def wait_for(nemo, job_id: str, statuses: set[str], timeout: float = 600) -> object:
    """Poll a customization job's status until it reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        status = nemo.customization.jobs.status(job_id)
        if status.status in statuses:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} still {status.status} after {timeout:.0f} s: {status.status_logs}")
        time.sleep(2)


def add_dataset(client, namespace: str, name: str, rows: list[dict]) -> None:
    """Commit ``rows`` as ``training/train.jsonl`` of a new Data Store repo and register the dataset
    (files_url ``hf://datasets/<namespace>/<name>``) through the API ``client`` (a TestClient)."""
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    assert client.post("/v1/hf/api/repos/create", json={"name": name, "organization": namespace, "type": "dataset"}).status_code == 200
    commit = [{"key": "header", "value": {"summary": "data"}},
              {"key": "file", "value": {"path": "training/train.jsonl", "content": base64.b64encode(data).decode(), "encoding": "base64"}}]
    answer = client.post(f"/v1/hf/api/datasets/{namespace}/{name}/commit/main", content="\n".join(json.dumps(c) for c in commit).encode())
    assert answer.status_code == 200, answer.text
    created = client.post("/v1/datasets", json={"name": name, "namespace": namespace, "files_url": f"hf://datasets/{namespace}/{name}"})
    assert created.status_code == 200, created.text


@contextmanager
def over_http(app) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free loopback port, as a real client reaches it;
    yields its base URL and stops the server after."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
