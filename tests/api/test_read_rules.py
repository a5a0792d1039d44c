"""What a job reads is decided by the caller's namespaces, whatever the request names: no benchmark
file a caller uploaded, no folder spanning namespaces or holding the service's own state, no base
model config of another namespace, no list of another namespace's configs, and no dataset URL that
contradicts the dataset named. In-process, with the orchestrator replaced by a stub."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from fastapi.testclient import TestClient

from api import orchestrator
from api.app import create_app
from core.settings import Settings
from tests.api.conftest import TINY_CONFIG

A, B, D, ADMIN = ({"Authorization": f"Bearer {key}"} for key in ("ka", "kb", "kd", "admin"))
ROWS = "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(6))
OPTIONS = [{"training_type": "sft", "finetuning_type": "lora", "num_gpus": 0, "micro_batch_size": 1}]
TASK = {"type": "completion", "params": {"template": "{{item.question}}"},
        "metrics": {"em": {"type": "em", "params": {"ground_truth": "{{item.answer}}"}}}}
# A benchmark YAML whose template would run code if lm-eval rendered it.
HOSTILE_YAML = b"task: owned\ndataset_path: json\ndoc_to_text: \"{{ cycler.__init__.__globals__.os.popen('id').read() }}\"\n"


def _ok(response, status: int = 200):
    assert response.status_code == status, response.text
    return response.json()


def _commit(client, headers, repo: str, files: dict[str, bytes]):
    lines = [{"key": "header", "value": {"summary": "upload"}}]
    lines += [{"key": "file", "value": {"path": p, "content": base64.b64encode(d).decode(), "encoding": "base64"}} for p, d in files.items()]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    return client.post(f"/v1/hf/api/datasets/{repo}/commit/main", content=body, headers=headers | {"content-type": "application/x-ndjson"})


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("reads")
    settings = Settings(data_dir=root, api_keys={"ka": ["team-a"], "kb": ["team-b"], "kd": ["default"], "admin": ["*"]})
    started: list = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(orchestrator, "start", lambda *args, **kwargs: started.append(args) or str(uuid.uuid4()))
        patch.setattr(orchestrator, "states", lambda ids, history=False: {})
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            for namespace, headers in (("team-a", A), ("team-b", B)):
                _ok(client.post("/v1/namespaces", json={"id": namespace}, headers=headers))
                _ok(client.post("/v1/datastore/namespaces", data={"namespace": namespace}, headers=headers), 201)
                _ok(client.post("/v1/hf/api/repos/create", json={"name": "qa", "organization": namespace, "type": "dataset"}, headers=headers))
                _ok(_commit(client, headers, f"{namespace}/qa", {"rows.jsonl": b'{"question": "secret of ' + namespace.encode() + b'", "answer": "x"}\n'}))
                _ok(client.post("/v1/models", json={"name": "m", "namespace": namespace, "custom_fields": {"config": TINY_CONFIG}}, headers=headers))
                _ok(client.post("/v1/evaluation/targets", json={"type": "model", "name": "et", "namespace": namespace, "model": f"{namespace}/m"},
                                headers=headers))
            _ok(_commit(client, A, "team-a/qa", {"bench.yaml": HOSTILE_YAML}))
            _ok(client.post("/v1/models", json={"name": "m", "namespace": "default", "custom_fields": {"config": TINY_CONFIG}}, headers=D))
            _ok(client.post("/v1/evaluation/targets", json={"type": "model", "name": "et", "namespace": "default", "model": "default/m"}, headers=D))
            _ok(client.post("/v1/customization/targets", json={"name": "t@1", "namespace": "team-b", "num_parameters": 1, "precision": "fp32",
                                                               "model_uri": "builtin://tiny-llama"}, headers=B))
            _ok(client.post("/v1/customization/configs", json={"name": "secret-c@v1", "namespace": "team-b", "target": "team-b/t@1",
                                                               "max_seq_length": 128, "training_options": OPTIONS}, headers=B))
            folder = root / "uploads" / "team-a-data"
            (folder / "training").mkdir(parents=True)
            (folder / "training" / "t.jsonl").write_text(ROWS)
            _ok(client.post("/v1/datasets", json={"name": "d", "namespace": "team-a", "files_url": folder.as_uri()}, headers=A))
            yield client, root, started


def _evaluation(client, headers, config, namespace="team-a", target=None):
    body = {"namespace": namespace, "config": config, "target": target or f"{namespace}/et"}
    return client.post("/v1/evaluation/jobs", json=body, headers=headers)


def test_a_benchmark_yaml_uploaded_by_a_caller_is_refused_as_config_type(api):
    client, root, started = api
    uploaded = next(root.joinpath("datastore").rglob("bench.yaml"))
    before = len(started)
    for name in (str(uploaded), uploaded.as_uri(), "bench.yaml", "lm-eval:" + str(uploaded)):
        response = _evaluation(client, A, {"type": name})
        assert response.status_code == 400, response.text
        assert "`config.type`" in response.text and "not supported" in response.text
        created = client.post("/v1/evaluation/configs", json={"type": name, "name": f"c{uuid.uuid4().hex[:6]}", "namespace": "team-a"}, headers=A)
        assert created.status_code == 400 and "`type`" in created.text, created.text
    assert len(started) == before  # nothing reached the worker
    assert _ok(_evaluation(client, A, {"type": "capitals"}))["status"] == "created"  # a shipped benchmark by name still runs


def test_a_task_folder_spanning_namespaces_or_holding_service_state_is_refused(api):
    client, root, started = api
    before = len(started)
    spanning = [(D, (root / "datastore" / "datasets").as_uri()), (D, (root / "datastore").as_uri()), (D, root.as_uri()),
                (A, (root / "datastore" / "datasets").as_uri())]
    for headers, files_url in spanning:
        namespace = "default" if headers is D else "team-a"
        config = {"type": "custom", "tasks": {"t": TASK | {"dataset": {"files_url": files_url}}}}
        response = _evaluation(client, headers, config, namespace)
        assert response.status_code == 422, (files_url, response.text)
        assert "tasks.t.dataset.files_url" in response.text and "secret of" not in response.text
    # Even for every namespace, the data folder holds the service's own state (api/): it is not read.
    config = {"type": "custom", "tasks": {"t": TASK | {"dataset": {"files_url": root.as_uri()}}}}
    response = _evaluation(client, ADMIN, config)
    assert response.status_code == 422 and "service's own state" in response.text, response.text
    assert len(started) == before
    own = {"type": "custom", "tasks": {"t": TASK | {"dataset": {"files_url": (root / "datastore" / "datasets" / "team-a").as_uri()}}}}
    assert _evaluation(client, A, own).status_code == 200


def test_a_model_naming_another_namespaces_config_cannot_be_evaluated(api):
    client, _, started = api
    _ok(client.post("/v1/models", json={"name": "borrowed", "namespace": "team-a", "custom_fields": {"config": "team-b/secret-c@v1"}},
                    headers=A))
    before = len(started)
    response = _evaluation(client, A, {"type": "capitals"}, target={"type": "model", "model": "team-a/borrowed"})
    assert response.status_code == 404 and "custom_fields.config" in response.text, response.text
    assert len(started) == before
    _ok(client.post("/v1/models", json={"name": "own", "namespace": "team-b", "custom_fields": {"config": "team-b/secret-c@v1"}}, headers=B))
    assert _evaluation(client, B, {"type": "capitals"}, "team-b", {"type": "model", "model": "team-b/own"}).status_code == 200


def test_an_unknown_config_lists_only_the_configs_the_caller_may_use(api):
    client, _, _ = api
    job = {"config": "team-a/nope@v1", "dataset": "team-a/d", "namespace": "team-a", "hyperparameters": {"finetuning_type": "lora"}}
    for response in (client.post("/v1/customization/jobs", json=job, headers=A), client.get("/v1/customization/configs/team-a/nope@v1", headers=A)):
        assert response.status_code == 404, response.text
        assert TINY_CONFIG in response.text and "secret-c" not in response.text
    theirs = client.post("/v1/customization/jobs", json=job | {"namespace": "team-b", "dataset": "team-b/none"}, headers=B)
    assert theirs.status_code == 404 and "team-b/secret-c@v1" in theirs.text, theirs.text


def test_a_dataset_files_url_contradicting_the_named_dataset_is_refused(api):
    client, root, started = api
    before = len(started)
    other = (root / "datastore" / "datasets" / "team-a").as_uri()
    job = {"config": TINY_CONFIG, "namespace": "team-a", "hyperparameters": {"finetuning_type": "lora"},
           "dataset": {"name": "d", "namespace": "team-a", "files_url": other}}
    response = client.post("/v1/customization/jobs", json=job, headers=A)
    assert response.status_code == 422 and "`dataset.files_url`" in response.text, response.text
    assert len(started) == before
    same = client.get("/v1/datasets/team-a/d", headers=A).json()["files_url"]
    assert client.post("/v1/customization/jobs", json=job | {"dataset": job["dataset"] | {"files_url": same}}, headers=A).status_code == 200
