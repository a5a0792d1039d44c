"""A registered version is an MLflow Model: MLflow loads it (``mlflow.pyfunc.load_model``) and serves
it (``mlflow models serve``) by its registry alias, customizer's loaders take its weights from it, the
platform's signed decision still holds for it, and the job's run records its training dataset and
the machine's use while it trained."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from core import tags as tag
from core import tracking
from core.catalog import get_config
from core.settings import Settings
from core.specs import Hyperparameters
from data.ingest import ingest_dataset
from deploy import registry, trust
from deploy.mlflow_model import config_for, log_chat_model
from tests.conftest import TINY_CONFIG_URN, ok_rows, write_jsonl
from training.launch import TrainingRequest, launch

ADAPTER_MODEL = "test/chat"
CHAT = {"messages": [{"role": "user", "content": "Reply with the word ok. Item 3"}]}
OTHER_CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config_dir, tiny_model_dir):
    """The tiny model's adapter, trained through ``launch`` on a job's run, logged and registered as
    the register task does: ``(settings, run id, dataset, version, train result)``."""
    root = tmp_path_factory.mktemp("mlflow-model")
    settings = Settings(data_dir=root / "data")
    dataset = root / "dataset"
    write_jsonl(dataset / "training" / "train.jsonl", ok_rows(20))
    write_jsonl(dataset / "testing" / "test.jsonl", ok_rows(4, start=100))
    data = ingest_dataset(str(dataset), root / "ingested", seed=0)
    config = get_config(TINY_CONFIG_URN, settings)
    run_id = tracking.start_run(settings, "cust-mlflow-model", tags={}, params={})
    hp = Hyperparameters.model_validate({"epochs": 1, "batch_size": 4, "learning_rate": 5e-3, "lora": {"adapter_dim": 4, "alpha": 8}})
    request = TrainingRequest(base_model_dir=str(tiny_model_dir), dataset=data, config=config, hyperparameters=hp,
                              work_dir=str(root / "job"), mlflow_run_id=run_id)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # samples within a seconds-long training
        result = launch(request, settings)
    assert result.artifact == "adapter"
    source = log_chat_model(settings, run_id, result.output_dir, config_for(result.artifact, config, str(tiny_model_dir)),
                            ADAPTER_MODEL)
    tags = {tag.CONFIG: TINY_CONFIG_URN, tag.ARTIFACT: result.artifact, tag.DECISION: "promote", tag.ARTIFACT_SHA256: "d" * 64}
    version = registry.register_version(settings, ADAPTER_MODEL, source, run_id, tags)
    return settings, run_id, data, version, result


def uri(output_model: str, ref: str = "candidate") -> str:
    return f"models:/{registry.registered_name(output_model)}@{ref}"


def test_the_version_is_a_logged_model_of_the_run_that_pyfunc_loads(trained, tiny_model_dir, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.entities import LoggedModelStatus

    settings, run_id, _, version, _ = trained
    client = tracking.client(settings)
    assert version.source.startswith("models:/m-") and version.aliases == ["candidate"]
    model_id = version.source.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == run_id and logged.status == LoggedModelStatus.READY
    assert model_id in [output.model_id for output in client.get_run(run_id).outputs.model_outputs]
    assert client.get_model_version("test.chat", version.version).run_id == run_id  # what the signed decision names

    # Nothing of the model is readable by others in the data folder (MLflow copies its code file with its mode).
    stored = [p for p in settings.root.rglob("*") if model_id in str(p) and p.is_file()]
    assert any(p.name == "chat_model.py" for p in stored) and all(p.stat().st_mode & 0o077 == 0 for p in stored)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    model = mlflow.pyfunc.load_model(uri(ADAPTER_MODEL))
    assert model.model_config == {"artifact": "adapter", "base_model": str(tiny_model_dir), "prompt_format": "chat", "max_new_tokens": 128}
    signature = model.metadata.get_input_schema()
    assert signature.input_names() == ["messages"]
    assert {p.name for p in model.metadata.get_params_schema().params} == {"max_new_tokens", "temperature"}
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri(ADAPTER_MODEL))).read_text()
    assert all(f"{name}==" in requirements for name in ("transformers", "peft", "torch", "mlflow"))
    assert "customizer" not in requirements

    answers = model.predict(CHAT, params={"max_new_tokens": 8})
    assert isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str) and answers[0].strip()
    assert model.predict(CHAT, params={"max_new_tokens": 8}) == answers  # greedy by default
    both = model.predict(pd.DataFrame([CHAT, OTHER_CHAT]), params={"max_new_tokens": 8})
    assert len(both) == 2 and both[0] == answers[0] and all(isinstance(a, str) for a in both)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflow_models_serve_answers_invocations(trained, tmp_path):
    settings = trained[0]
    port = _free_port()
    env = os.environ | {"MLFLOW_TRACKING_URI": settings.tracking_uri, "HF_HUB_OFFLINE": "1",
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # uvicorn
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri(ADAPTER_MODEL), "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"mlflow models serve exited ({server.returncode}):\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no /ping answer in 120 s:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        body = json.dumps({"dataframe_records": [CHAT], "params": {"max_new_tokens": 8}}).encode()
        request = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
        assert len(predictions) == 1 and isinstance(predictions[0], str) and predictions[0].strip()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_the_run_records_the_training_dataset_and_system_metrics(trained):
    settings, run_id, data, _, _ = trained
    run = tracking.client(settings).get_run(run_id)
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1, "training logs its dataset once"
    dataset, input_tags = inputs[0].dataset, {t.key: t.value for t in inputs[0].tags}
    assert dataset.digest == data.sha256[:32] and dataset.name == "dataset"  # MLflow caps a digest at 36 characters
    assert json.loads(dataset.source)["uri"] == data.source and dataset.source_type == "local"
    assert input_tags == {"mlflow.data.context": "training", tag.DATASET_SHA256: data.sha256, tag.DATASET_URI: data.source}
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics), sorted(run.data.metrics)


def test_customizer_loaders_take_the_weights_from_the_logged_model(trained, tmp_path):
    from peft import PeftModel

    settings, run_id, _, version, result = trained
    local = Path(registry.download_version(settings, ADAPTER_MODEL, version.version, tmp_path / "download"))
    assert (local.parent.parent / "MLmodel").is_file(), "the weights are an artifact of the MLflow Model"
    trained_file = Path(result.output_dir) / "adapter_model.safetensors"
    assert (local / "adapter_model.safetensors").read_bytes() == trained_file.read_bytes()

    model, tokenizer, described = registry.load_version(settings, ADAPTER_MODEL, "candidate", dest=tmp_path / "load")
    assert isinstance(model, PeftModel) and described.source == version.source and tokenizer.chat_template

    # The job run again: the same model and version, nothing logged twice.
    config = get_config(TINY_CONFIG_URN, settings)
    again = log_chat_model(settings, run_id, result.output_dir, config_for("adapter", config, "/unused"), ADAPTER_MODEL)
    assert again == version.source
    assert registry.register_version(settings, ADAPTER_MODEL, again, run_id, {}).version == version.version
    assert len(tracking.client(settings).get_run(run_id).outputs.model_outputs) == 1

    # The signed decision names the run, not the files' location: it verifies for a logged model.
    registry.set_version_tags(settings, ADAPTER_MODEL, version.version, trust.decision_tags(
        settings, ADAPTER_MODEL, version.version, run_id, {tag.DECISION: "promote", tag.ARTIFACT_SHA256: "d" * 64,
                                                           tag.CONFIG: TINY_CONFIG_URN}))
    registry.promote(settings, ADAPTER_MODEL, version.version)
    assert trust.trusted_champion(settings, ADAPTER_MODEL).version == version.version


def test_a_version_registered_from_a_plain_folder_still_downloads(trained, tmp_path):
    """Versions registered before they were MLflow Models hold the trained folder itself."""
    settings, _, _, _, result = trained
    run_id = tracking.start_run(settings, "cust-plain-folder", tags={}, params={})
    source = tracking.log_artifacts(settings, run_id, result.output_dir, "adapter")
    version = registry.register_version(settings, "test/plain", source, run_id, {}).version
    local = Path(registry.download_version(settings, "test/plain", version, tmp_path / "download"))
    assert (local / "adapter_model.safetensors").read_bytes() == (Path(result.output_dir) / "adapter_model.safetensors").read_bytes()


def test_a_full_weight_version_loads(trained, tiny_model_dir, tmp_path, monkeypatch):
    import mlflow.pyfunc

    settings = trained[0]
    run_id = tracking.start_run(settings, "cust-full-weights", tags={}, params={})
    config = get_config(TINY_CONFIG_URN, settings)
    source = log_chat_model(settings, run_id, tiny_model_dir, config_for("model", config, str(tiny_model_dir)), "test/chat-full")
    version = registry.register_version(settings, "test/chat-full", source, run_id, {tag.CONFIG: TINY_CONFIG_URN, tag.ARTIFACT: "model"})

    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    model = mlflow.pyfunc.load_model(uri("test/chat-full"))
    assert model.model_config["artifact"] == "model" and "base_model" not in model.model_config
    answers = model.predict(CHAT, params={"max_new_tokens": 8})
    assert len(answers) == 1 and answers[0].strip()

    loaded, _, described = registry.load_version(settings, "test/chat-full", version.version, dest=tmp_path / "load")
    assert type(loaded).__name__ == "LlamaForCausalLM" and described.version == version.version


def test_an_adapter_on_a_hub_base_loads_from_the_folder_it_was_trained_on_where_that_exists(trained, tiny_model_dir, monkeypatch):
    """The base's Hub id is what the model names; on a machine that has the folder the base was
    resolved into (offline here), that folder is loaded instead of the Hub."""
    import mlflow.pyfunc

    from deploy.mlflow_model import chat_model_config

    settings, run_id, _, _, result = trained
    config = chat_model_config("adapter", "org/not-on-this-machine", "chat", base_folder=str(tiny_model_dir))
    source = log_chat_model(settings, run_id, result.output_dir, config, "test/hub-base")
    registry.register_version(settings, "test/hub-base", source, run_id, {tag.ARTIFACT: "adapter"})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    model = mlflow.pyfunc.load_model(uri("test/hub-base"))
    assert model.model_config["base_model"] == "org/not-on-this-machine"
    assert model.predict(CHAT, params={"max_new_tokens": 4})[0].strip()
