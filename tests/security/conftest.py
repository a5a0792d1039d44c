"""One real platform for the security suite: ``customizer up`` with three API keys (``ka`` for team-a,
``kb`` for team-b, ``admin`` for every namespace), attacked the way an outsider or a tenant would, over
HTTP, through the REST API, the Prefect API and the MLflow server.

Helpers here seed what the attacks need (a tiny dataset and a model per team) and check refusals: a
refused request answers 4xx and its body shows neither a stack trace nor where the server keeps its data.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from tests.api.conftest import TINY_CONFIG, Platform, add_dataset, start_platform
from tests.conftest import SESSION_DIR, ok_rows

KEYS = {"ka": ["team-a"], "kb": ["team-b"], "admin": ["*"]}
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
# A tiny LoRA job on the packaged tiny model: every field valid, so a refusal is the attack's doing.
TINY_HYPERPARAMETERS = {"training_type": "sft", "finetuning_type": "lora", "epochs": 1, "batch_size": 4, "learning_rate": 0.001}


@dataclass
class World:
    """What the suite seeds: team-a's dataset and model, team-b's private dataset file."""

    platform: Platform
    a_dataset: str  # "team-a/d", an Entity Store dataset over hf://datasets/team-a/d
    a_model: str  # "team-a/m", a model entry naming the tiny config
    a_repo_dir: Path  # team-a/d's folder in the Data Store
    b_file: Path  # team-b/secret's training file in the Data Store

    def job_body(self, **changes) -> dict:
        """A valid customization job for team-a; ``changes`` replace top-level fields."""
        return {"config": TINY_CONFIG, "dataset": self.a_dataset, "namespace": "team-a",
                "hyperparameters": dict(TINY_HYPERPARAMETERS)} | changes


@pytest.fixture(scope="package")
def platform():
    started = start_platform(SESSION_DIR / "security", env={"CUSTOMIZER_API_KEYS": json.dumps(KEYS)})
    yield started
    started.stop()


def _client(platform: Platform, key: str) -> httpx.Client:
    return httpx.Client(base_url=platform.api, headers={"Authorization": f"Bearer {key}"}, timeout=120)


@pytest.fixture(scope="package")
def team_a(platform):
    with _client(platform, "ka") as client:
        yield client


@pytest.fixture(scope="package")
def team_b(platform):
    with _client(platform, "kb") as client:
        yield client


@pytest.fixture(scope="package")
def admin(platform):
    with _client(platform, "admin") as client:
        yield client


class PrefectClient(httpx.Client):
    """Prefect's API over plain HTTP. Prefect answers 503 while its SQLite database is busy, and its own
    client retries those answers; so does this one, or a busy moment would read as a refusal."""

    def request(self, *args, **kwargs) -> httpx.Response:
        for delay in (1, 2, 4, 8, 16):
            response = super().request(*args, **kwargs)
            if response.status_code != 503:
                return response
            time.sleep(delay)
        return response


@pytest.fixture(scope="package")
def prefect(platform):
    """The platform's Prefect API as an insider: with the service account."""
    with PrefectClient(base_url=platform.prefect_api, auth=platform.services_auth, timeout=60) as client:
        yield client


@pytest.fixture(scope="package")
def platform_settings(platform) -> Settings:
    """The platform's settings as its processes see them (deployment names, where the stores lie)."""
    return Settings(data_dir=platform.data_dir)


def _namespace(client: httpx.Client, namespace: str) -> None:
    answer = client.post("/v1/datastore/namespaces", data={"namespace": namespace})
    assert answer.status_code in (200, 201, 409), answer.text


@pytest.fixture(scope="package")
def world(platform, team_a, team_b) -> World:
    _namespace(team_a, "team-a")
    _namespace(team_b, "team-b")
    add_dataset(team_a, "team-a", "d", ok_rows(24))
    add_dataset(team_b, "team-b", "secret", [{"prompt": "team-b secret question", "completion": "team-b secret answer"}] * 12)
    model = team_a.post("/v1/models", json={"name": "m", "namespace": "team-a", "custom_fields": {"config": TINY_CONFIG}})
    assert model.status_code == 200, model.text
    datasets = platform.data_dir / "datastore" / "datasets"
    seeded = World(platform, "team-a/d", "team-a/m", datasets / "team-a" / "d", datasets / "team-b" / "secret" / "training" / "train.jsonl")
    # Where the Data Store keeps files (data.datastore: <data>/datastore/datasets/<namespace>/<name>/<path>).
    assert (seeded.a_repo_dir / "training" / "train.jsonl").is_file() and seeded.b_file.is_file()
    return seeded


def refused(platform: Platform, response: httpx.Response, *statuses: int) -> httpx.Response:
    """Check that ``response`` is a refusal (4xx; one of ``statuses`` when given) whose body shows no stack
    trace and no server path under the data folder other than one the request itself sent (an echo of the
    caller's own input tells it nothing)."""
    text = response.text
    assert 400 <= response.status_code < 500, f"{response.request.method} {response.request.url}: {response.status_code} {text[:2000]}"
    if statuses:
        assert response.status_code in statuses, f"{response.status_code} {text[:2000]}"
    assert "Traceback" not in text, text[:4000]
    try:
        sent = response.request.content.decode(errors="replace") + str(response.request.url)
    except httpx.RequestNotRead:  # a streamed upload: nothing of it names a path
        sent = str(response.request.url)
    for folder in {str(platform.data_dir), str(platform.data_dir.resolve())}:
        for shown in re.findall(re.escape(folder) + r"[^\s'\",;)\]]*", text):
            assert shown in sent, f"the answer shows the server path {shown}: {text[:2000]}"
    return response


def names_field(response: httpx.Response, field: str) -> None:
    """A 422 whose text names ``field``."""
    assert response.status_code == 422, f"{response.status_code} {response.text[:2000]}"
    assert field in response.text, f"the answer does not name `{field}`: {response.text[:2000]}"


def commit(client: httpx.Client, repo: str, files: dict[str, bytes]) -> httpx.Response:
    """A Data Store commit of ``files`` to the dataset repo ``repo`` (namespace/name)."""
    lines = [{"key": "header", "value": {"summary": "upload"}}]
    lines += [{"key": "file", "value": {"path": p, "content": base64.b64encode(d).decode(), "encoding": "base64"}} for p, d in files.items()]
    return client.post(f"/v1/hf/api/datasets/{repo}/commit/main", content="\n".join(json.dumps(line) for line in lines).encode(),
                       headers={"content-type": "application/x-ndjson"})


def deployment_id(prefect: httpx.Client, name: str) -> str:
    answer = prefect.get(f"/deployments/name/{name}")
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def count_runs(prefect: httpx.Client, deployment: str) -> int:
    """How many flow runs ``deployment`` has (read as an insider)."""
    answer = prefect.post("/flow_runs/count", json={"deployments": {"id": {"any_": [deployment]}}})
    assert answer.status_code == 200, answer.text
    return int(answer.json())


def wait_final(prefect: httpx.Client, flow_run_id: str, timeout: float = 300) -> dict:
    """Poll a flow run until its state is final; returns the run."""
    deadline = time.monotonic() + timeout
    while True:
        run = prefect.get(f"/flow_runs/{flow_run_id}")
        assert run.status_code == 200, run.text
        if run.json()["state"]["type"] in FINAL_STATES:
            return run.json()
        assert time.monotonic() < deadline, f"flow run {flow_run_id} still {run.json()['state']['type']} after {timeout:.0f} s"
        time.sleep(2)


def task_run_names(prefect: httpx.Client, flow_run_id: str) -> list[str]:
    answer = prefect.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert answer.status_code == 200, answer.text
    return [run["name"] for run in answer.json()]


def trained(names: list[str]) -> bool:
    """Whether the ``train`` task ran (its task runs are named ``train-<n>``; ``plan-training`` is not training)."""
    return any(name == "train" or name.startswith("train-") for name in names)
