"""A job whose training option asks for more GPUs than a training worker has is refused at creation
(422 naming `training_option` and `num_gpus`), before any run starts: against this machine's GPUs by
default, against the ``worker_gpus`` setting when it is set. In-process, the orchestrator a recorder."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from api import orchestrator
from api.app import create_app
from core.settings import Settings
from tests.api.conftest import add_dataset
from tests.conftest import ok_rows
from training.resources import available_gpus

pytestmark = pytest.mark.unit
CONFIG = "test/eight-gpus@v1"
# The shipped tiny model (built on the server), with options sized for 8 GPUs, 1 GPU and the CPU.
CONFIG_YAML = (
    "namespace: test\nname: eight-gpus@v1\ntarget: {name: test/eight-gpus, model_uri: 'builtin://tiny-llama', num_parameters: 140000}\n"
    "max_seq_length: 128\ntraining_options:\n"
    "  - {training_type: sft, finetuning_type: lora, num_gpus: 8, micro_batch_size: 4}\n"
    "  - {training_type: sft, finetuning_type: all_weights, num_gpus: 1, micro_batch_size: 4}\n"
    "  - {training_type: sft, finetuning_type: lora_merged, num_gpus: 0, micro_batch_size: 4}\n"
)


@pytest.fixture(scope="module")
def in_process_api(tmp_path_factory):
    """One API per module with the 8-GPU config in its catalog and a Data Store dataset in team-a."""
    configs = tmp_path_factory.mktemp("configs")
    (configs / "eight-gpus.yaml").write_text(CONFIG_YAML)
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), config_dirs=[configs])
    started: list[dict] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(orchestrator, "start", lambda deployment, parameters, **kwargs: started.append(parameters) or str(uuid.uuid4()))
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            add_dataset(client, "team-a", "triage", ok_rows(12))
            yield client, settings, started


@pytest.fixture
def api(in_process_api):
    client, settings, started = in_process_api
    client.app.state.settings = settings
    started.clear()
    return client, settings, started


def create(client: TestClient, finetuning_type: str):
    return client.post("/v1/customization/jobs", json={
        "config": CONFIG, "dataset": "team-a/triage", "namespace": "team-a",
        "hyperparameters": {"training_type": "sft", "finetuning_type": finetuning_type, "epochs": 1, "batch_size": 4},
    })


def test_an_option_asking_for_8_gpus_is_refused_at_creation_on_this_cpu_machine(api):
    client, _, started = api
    if available_gpus() >= 8:
        pytest.skip("this machine has 8 GPUs: the option fits")
    jobs_before = client.get("/v1/customization/jobs").json()["data"]
    response = create(client, "lora")
    assert response.status_code == 422, response.text
    assert response.headers["x-should-retry"] == "false"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.startswith("`training_option`: config test/eight-gpus@v1 option sft/lora")
    assert f"asks for 8 GPUs per node (`num_gpus` 8); this machine, where jobs train, has {available_gpus()} GPU" in detail
    assert started == [] and client.get("/v1/customization/jobs").json()["data"] == jobs_before  # no run, no job

    # The same config's options that fit are accepted: on the CPU, and one GPU's single process (which
    # trains on the CPU of a machine without GPUs, as NeMo's example on a 1-GPU config does here).
    for finetuning_type in ("lora_merged", "all_weights"):
        response = create(client, finetuning_type)
        assert response.status_code == 200, response.text
    assert len(started) == 2


def test_the_worker_gpus_setting_is_the_capacity_when_set(api):
    client, settings, started = api
    client.app.state.settings = settings.model_copy(update={"worker_gpus": 8})
    accepted = create(client, "lora")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["config_snapshot"]["training_option"]["num_gpus"] == 8 and len(started) == 1

    client.app.state.settings = settings.model_copy(update={"worker_gpus": 4})
    refused = create(client, "lora")
    assert refused.status_code == 422, refused.text
    assert "asks for 8 GPUs per node (`num_gpus` 8); a training worker has 4 GPUs (set num_gpus to 4 or fewer" in refused.json()["detail"]
    assert len(started) == 1
