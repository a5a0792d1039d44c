"""Tenant isolation: a key scoped to namespace team-a can neither see nor change team-b's jobs,
datasets (entities and Data Store repos and files), models, customization and evaluation configs,
targets and jobs, nor use them by reference in what it creates.

The convention the API follows: a route whose path names the namespace answers 403 before looking
anything up (so it says nothing about whether the item exists); a route that names an item by id
answers 404 for another namespace's item, exactly as for one that does not exist. In-process, with
the orchestrator replaced by a stub: these are the API's own checks.
"""

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

A, B = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
ROWS = "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(6))
OPTIONS = [{"training_type": "sft", "finetuning_type": "lora", "num_gpus": 0, "micro_batch_size": 1}]


def _ok(response, status: int = 200):
    assert response.status_code == status, response.text
    return response.json()


def _commit(client, headers, repo: str, files: dict[str, bytes]):
    lines = [{"key": "header", "value": {"summary": "upload"}}]
    lines += [{"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}} for path, data in files.items()]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    return client.post(f"/v1/hf/api/datasets/{repo}/commit/main", content=body, headers=headers | {"content-type": "application/x-ndjson"})


def _seed(client, root, namespace: str, headers) -> dict[str, str]:
    """One of every resource in ``namespace``, created with that namespace's key."""
    folder = root / f"{namespace}-data"
    (folder / "training").mkdir(parents=True)
    (folder / "training" / "t.jsonl").write_text(ROWS)
    _ok(client.post("/v1/namespaces", json={"id": namespace}, headers=headers))
    _ok(client.post("/v1/projects", json={"name": "p", "namespace": namespace}, headers=headers))
    _ok(client.post("/v1/datasets", json={"name": "d", "namespace": namespace, "files_url": folder.as_uri()}, headers=headers))
    _ok(client.post("/v1/datastore/namespaces", data={"namespace": namespace}, headers=headers), 201)
    _ok(client.post("/v1/hf/api/repos/create", json={"name": "qa", "organization": namespace, "type": "dataset"}, headers=headers))
    _ok(_commit(client, headers, f"{namespace}/qa", {"ok.jsonl": b'{"question": "q", "answer": "ok"}\n'}))
    _ok(client.post("/v1/models", json={"name": "m", "namespace": namespace, "custom_fields": {"config": TINY_CONFIG}}, headers=headers))
    _ok(client.post("/v1/customization/targets", json={"name": "t@1", "namespace": namespace, "num_parameters": 1, "precision": "fp32",
                                                       "model_uri": "builtin://tiny-llama"}, headers=headers))
    _ok(client.post("/v1/customization/configs", json={"name": "c@v1", "namespace": namespace, "target": f"{namespace}/t@1",
                                                       "max_seq_length": 128, "training_options": OPTIONS}, headers=headers))
    job = _ok(client.post("/v1/customization/jobs", json={"config": TINY_CONFIG, "dataset": f"{namespace}/d", "namespace": namespace,
                                                          "hyperparameters": {"finetuning_type": "lora"}}, headers=headers))
    task = {"type": "completion", "dataset": {"files_url": f"hf://datasets/{namespace}/qa/ok.jsonl"}, "params": {"template": "{{item.question}}"},
            "metrics": {"em": {"type": "em", "params": {"ground_truth": "{{item.answer}}"}}}}
    _ok(client.post("/v1/evaluation/configs", json={"type": "custom", "name": "ec", "namespace": namespace, "tasks": {"t": task}}, headers=headers))
    _ok(client.post("/v1/evaluation/targets", json={"type": "model", "name": "et", "namespace": namespace, "model": f"{namespace}/m"}, headers=headers))
    evaluation = _ok(client.post("/v1/evaluation/jobs", json={"namespace": namespace, "config": f"{namespace}/ec", "target": f"{namespace}/et"},
                                 headers=headers))
    return {"job": job["id"], "output_model": job["output_model"], "evaluation": evaluation["id"]}


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    root = tmp_path_factory.mktemp("tenants")
    settings = Settings(data_dir=root, api_keys={"key-a": ["team-a"], "key-b": ["team-b"]})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(orchestrator, "start", lambda *args, **kwargs: str(uuid.uuid4()))
        patch.setattr(orchestrator, "states", lambda ids, history=False: {})
        patch.setattr(orchestrator, "cancel", lambda flow_run_id: None)
        patch.setattr(orchestrator, "answer", lambda flow_run_id, answer: None)
        patch.setattr(orchestrator, "logs", lambda flow_run_id: [{"timestamp": "t", "logger": "l", "message": "secret of team-b"}])
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            ids = {"team-a": _seed(client, root, "team-a", A), "team-b": _seed(client, root, "team-b", B)}
            yield client, ids


LISTS = [
    "/v1/namespaces", "/v1/projects", "/v1/datasets", "/v1/models", "/v1/customization/jobs", "/v1/customization/configs",
    "/v1/customization/targets", "/v1/evaluation/configs", "/v1/evaluation/targets", "/v1/evaluation/jobs", "/v1/datastore/namespaces",
]


@pytest.mark.parametrize("path", LISTS)
def test_lists_show_only_the_keys_namespaces(tenants, path):
    client, _ = tenants
    namespace = lambda item: item.get("namespace") or item.get("id")  # noqa: E731 - namespaces list themselves by id
    seen_by_a = {namespace(item) for item in _ok(client.get(path, params={"page_size": 1000}, headers=A))["data"]}
    seen_by_b = {namespace(item) for item in _ok(client.get(path, params={"page_size": 1000}, headers=B))["data"]}
    assert seen_by_a == {"team-a"} and seen_by_b == {"team-b"}
    filtered = _ok(client.get(path, params={"filter[namespace]": "team-b"}, headers=A))["data"]
    assert filtered == []


# Routes that name team-b in their path: 403 before any lookup, whether or not the item exists.
BY_NAMESPACE = [
    ("GET", "/v1/namespaces/team-b", None), ("PATCH", "/v1/namespaces/team-b", {"description": "mine"}),
    ("DELETE", "/v1/namespaces/team-b", None),
    ("GET", "/v1/projects/team-b/p", None), ("PATCH", "/v1/projects/team-b/p", {"description": "mine"}), ("DELETE", "/v1/projects/team-b/p", None),
    ("GET", "/v1/datasets/team-b/d", None), ("PATCH", "/v1/datasets/team-b/d", {"description": "mine"}), ("DELETE", "/v1/datasets/team-b/d", None),
    ("GET", "/v1/models/team-b/m", None), ("PATCH", "/v1/models/team-b/m", {"description": "mine"}), ("DELETE", "/v1/models/team-b/m", None),
    ("GET", "/v1/customization/configs/team-b/c@v1", None), ("PATCH", "/v1/customization/configs/team-b/c@v1", {"max_seq_length": 64}),
    ("DELETE", "/v1/customization/configs/team-b/c@v1", None),
    ("GET", "/v1/customization/targets/team-b/t@1", None), ("PATCH", "/v1/customization/targets/team-b/t@1", {"enabled": False}),
    ("DELETE", "/v1/customization/targets/team-b/t@1", None),
    ("GET", "/v1/evaluation/configs/team-b/ec", None), ("PATCH", "/v1/evaluation/configs/team-b/ec", {"description": "mine"}),
    ("DELETE", "/v1/evaluation/configs/team-b/ec", None),
    ("GET", "/v1/evaluation/targets/team-b/et", None), ("PATCH", "/v1/evaluation/targets/team-b/et", {"description": "mine"}),
    ("DELETE", "/v1/evaluation/targets/team-b/et", None),
    ("GET", "/v1/datastore/namespaces/team-b", None), ("DELETE", "/v1/datastore/namespaces/team-b", None),
    ("GET", "/v1/hf/api/datasets/team-b/qa", None), ("GET", "/v1/hf/api/datasets/team-b/qa/revision/main", None),
    ("GET", "/v1/hf/api/datasets/team-b/qa/tree/main", None), ("GET", "/v1/hf/datasets/team-b/qa/resolve/main/ok.jsonl", None),
    ("HEAD", "/v1/hf/datasets/team-b/qa/resolve/main/ok.jsonl", None),
    ("POST", "/v1/hf/api/datasets/team-b/qa/preupload/main", {"files": [{"path": "x.jsonl", "sample": "", "size": 1}]}),
    ("DELETE", "/v1/hf/api/repos/delete", {"name": "qa", "organization": "team-b", "type": "dataset"}),
]


def _state(client) -> list:
    """Everything team-b has, as team-b sees it (to prove a refused request changed nothing)."""
    paths = [p for _, p, _ in BY_NAMESPACE if "/hf/" not in p and "/datastore/" not in p] + ["/v1/hf/api/datasets/team-b/qa"]
    return [client.get(path, headers=B).json() for path in sorted(set(paths))] + [client.get("/v1/hf/datasets/team-b/qa/resolve/main/ok.jsonl", headers=B).content]


@pytest.mark.parametrize(("method", "path", "body"), BY_NAMESPACE, ids=[f"{m} {p}" for m, p, _ in BY_NAMESPACE])
def test_another_namespaces_items_are_refused_by_path(tenants, method, path, body):
    client, _ = tenants
    before = _state(client)
    if method in ("GET", "HEAD"):
        assert client.request(method, path, json=body, headers=B).status_code == 200  # it is there, for its own key
    response = client.request(method, path, json=body, headers=A)
    assert response.status_code == 403, response.text
    if method != "HEAD":
        assert "team-b" in response.json()["detail"] and "secret" not in response.text
    missing = client.request(method, path.replace("/team-b", "/team-b-nothing"), json=body, headers=A)
    assert missing.status_code == 403  # the same answer for an item that does not exist: nothing leaks
    assert _state(client) == before


def test_another_namespaces_files_cannot_be_committed_or_deleted(tenants):
    client, _ = tenants
    assert _commit(client, A, "team-b/qa", {"ok.jsonl": b"overwritten"}).status_code == 403
    deletion = json.dumps({"key": "deletedFile", "value": {"path": "ok.jsonl"}}).encode()
    assert client.post("/v1/hf/api/datasets/team-b/qa/commit/main", content=deletion, headers=A).status_code == 403
    assert client.get("/v1/hf/datasets/team-b/qa/resolve/main/ok.jsonl", headers=B).content == b'{"question": "q", "answer": "ok"}\n'


JOB_ROUTES = [
    ("GET", "/v1/customization/jobs/{job}", None), ("GET", "/v1/customization/jobs/{job}/status", None),
    ("GET", "/v1/customization/jobs/{job}/container-logs", None), ("POST", "/v1/customization/jobs/{job}/cancel", None),
    ("POST", "/v1/customization/jobs/{job}/approval", {"approved": True, "reviewer": "mallory"}),
    ("GET", "/v1/evaluation/jobs/{evaluation}", None), ("GET", "/v1/evaluation/jobs/{evaluation}/status", None),
    ("GET", "/v1/evaluation/jobs/{evaluation}/results", None), ("GET", "/v1/evaluation/jobs/{evaluation}/download-results", None),
    ("GET", "/v1/evaluation/jobs/{evaluation}/logs", None), ("POST", "/v1/evaluation/jobs/{evaluation}/cancel", None),
    ("DELETE", "/v1/evaluation/jobs/{evaluation}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), JOB_ROUTES, ids=[f"{m} {p}" for m, p, _ in JOB_ROUTES])
def test_another_namespaces_jobs_are_not_found_by_id(tenants, method, path, body):
    client, ids = tenants
    theirs = path.format(**ids["team-b"])
    response = client.request(method, theirs, json=body, headers=A)
    assert response.status_code == 404, response.text
    assert "secret" not in response.text
    unknown = client.request(method, path.format(job="cust-nothing", evaluation="eval-nothing"), json=body, headers=A)
    assert unknown.status_code == 404  # the same as for a job that does not exist
    job = "/v1/customization/jobs/{job}" if "customization" in path else "/v1/evaluation/jobs/{evaluation}"
    assert client.get(job.format(**ids["team-b"]), headers=B).status_code == 200  # still there, for its own key


CREATE_IN_B = [
    ("/v1/namespaces", {"id": "team-b"}),
    ("/v1/projects", {"name": "p2", "namespace": "team-b"}),
    ("/v1/datasets", {"name": "d2", "namespace": "team-b", "files_url": "hf://datasets/team-a/qa"}),
    ("/v1/models", {"name": "m2", "namespace": "team-b"}),
    ("/v1/customization/targets", {"name": "t2@1", "namespace": "team-b", "num_parameters": 1, "precision": "fp32", "model_uri": "builtin://tiny-llama"}),
    ("/v1/customization/configs", {"name": "c2@v1", "namespace": "team-b", "target": "team-a/t@1", "max_seq_length": 128, "training_options": OPTIONS}),
    ("/v1/customization/jobs", {"config": TINY_CONFIG, "dataset": "team-a/d", "namespace": "team-b", "hyperparameters": {"finetuning_type": "lora"}}),
    ("/v1/evaluation/configs", {"type": "capitals", "name": "ec2", "namespace": "team-b"}),
    ("/v1/evaluation/targets", {"type": "model", "name": "et2", "namespace": "team-b", "model": "team-a/m"}),
    ("/v1/evaluation/jobs", {"namespace": "team-b", "config": {"type": "capitals"}, "target": {"type": "model", "model": "team-a/m"}}),
    ("/v1/hf/api/repos/create", {"name": "qa2", "organization": "team-b", "type": "dataset"}),
]


@pytest.mark.parametrize(("path", "body"), CREATE_IN_B, ids=[p for p, _ in CREATE_IN_B])
def test_creating_in_another_namespace_is_refused(tenants, path, body):
    client, _ = tenants
    response = client.post(path, json=body, headers=A)
    assert response.status_code == 403, response.text
    assert "team-b" in response.json()["detail"]


def test_creating_a_datastore_namespace_for_another_key_is_refused(tenants):
    client, _ = tenants
    assert client.post("/v1/datastore/namespaces", data={"namespace": "team-b-too"}, headers=A).status_code == 403


JOB = {"config": TINY_CONFIG, "dataset": "team-a/d", "namespace": "team-a", "hyperparameters": {"finetuning_type": "lora"}}
EVALUATION = {"namespace": "team-a", "config": "team-a/ec", "target": "team-a/et"}
# What team-a creates in its own namespace while naming something of team-b's.
BY_REFERENCE = [
    ("/v1/customization/jobs", JOB | {"dataset": "team-b/d"}, 404, "team-b/d"),
    ("/v1/customization/jobs", JOB | {"dataset": {"name": "d", "namespace": "team-b"}}, 404, "team-b/d"),
    ("/v1/customization/jobs", JOB | {"config": "team-b/c@v1"}, 404, "team-b/c@v1"),
    ("/v1/customization/jobs", JOB | {"output_model": "team-b/stolen"}, 403, "team-b"),
    ("/v1/customization/configs", {"name": "c3@v1", "namespace": "team-a", "target": "team-b/t@1", "max_seq_length": 128,
                                   "training_options": OPTIONS}, 404, "team-b/t@1"),
    ("/v1/customization/targets", {"name": "t3@1", "namespace": "team-a", "num_parameters": 1, "precision": "fp32",
                                   "model_uri": "builtin://tiny-llama", "base_model": "team-b/listed-as-theirs"}, 403, "team-b"),
    ("/v1/customization/configs", {"name": "c4@v1", "namespace": "team-a", "max_seq_length": 128, "training_options": OPTIONS, "target": {
        "name": "t5@1", "namespace": "team-a", "num_parameters": 1, "precision": "fp32", "model_uri": "builtin://tiny-llama",
        "base_model": "team-b/listed-as-theirs"}}, 403, "team-b"),
    ("/v1/datasets", {"name": "d3", "namespace": "team-a", "files_url": "hf://datasets/team-b/qa"}, 422, "team-b"),
    ("/v1/evaluation/jobs", EVALUATION | {"config": "team-b/ec"}, 404, "team-b/ec"),
    ("/v1/evaluation/jobs", EVALUATION | {"target": "team-b/et"}, 404, "team-b/et"),
    ("/v1/evaluation/jobs", EVALUATION | {"target": {"type": "model", "model": "team-b/m"}}, 404, "team-b/m"),
    ("/v1/evaluation/jobs", EVALUATION | {"config": {"type": "custom", "tasks": {"t": {
        "type": "completion", "dataset": "team-b/d", "params": {"template": "{{item.prompt}}"},
        "metrics": {"em": {"type": "em", "params": {"ground_truth": "{{item.completion}}"}}}}}}}, 404, "team-b/d"),
    ("/v1/evaluation/jobs", EVALUATION | {"config": {"type": "custom", "tasks": {"t": {
        "type": "completion", "dataset": {"files_url": "hf://datasets/team-b/qa/ok.jsonl"}, "params": {"template": "{{item.question}}"},
        "metrics": {"em": {"type": "em", "params": {"ground_truth": "{{item.answer}}"}}}}}}}, 422, "team-b"),
    ("/v1/evaluation/configs", {"type": "custom", "name": "ec3", "namespace": "team-a", "tasks": {"t": {
        "type": "completion", "dataset": {"files_url": "hf://datasets/team-b/qa/ok.jsonl"}, "params": {"template": "{{item.question}}"},
        "metrics": {"em": {"type": "em", "params": {"ground_truth": "{{item.answer}}"}}}}}}, 422, "team-b"),
]


@pytest.mark.parametrize(("path", "body", "status", "named"), BY_REFERENCE, ids=[f"{p} {n}" for p, _, _, n in BY_REFERENCE])
def test_another_namespaces_items_cannot_be_used_by_reference(tenants, path, body, status, named):
    client, _ = tenants
    jobs_before = len(client.get("/v1/customization/jobs", headers=A).json()["data"])
    response = client.post(path, json=body, headers=A)
    assert response.status_code == status, response.text
    assert named in response.text
    assert len(client.get("/v1/customization/jobs", headers=A).json()["data"]) == jobs_before
    own = json.loads(json.dumps(body).replace("team-b", "team-a"))
    if path.endswith("/jobs") and status == 404:  # the same request naming team-a's own item goes through
        assert client.post(path, json=own, headers=A).status_code == 200


@pytest.mark.parametrize(("path", "change"), [
    ("/v1/customization/configs/team-a/c@v1", {"namespace": "team-b"}), ("/v1/evaluation/configs/team-a/ec", {"namespace": "team-b"}),
    ("/v1/customization/targets/team-a/t@1", {"base_model": "team-b/listed-as-theirs"}),
])
def test_moving_an_item_into_another_namespace_is_refused(tenants, path, change):
    client, _ = tenants
    before = client.get(path, headers=A).json()
    response = client.patch(path, json=change, headers=A)
    assert response.status_code == 403, response.text
    assert client.get(path, headers=A).json() == before
    listed = client.get("/v1/customization/targets", params={"page_size": 1000}, headers=B).json()["data"]
    assert "listed-as-theirs" not in {t["name"] for t in listed}  # nothing of team-a's shows up in team-b's list


def test_the_output_model_of_a_job_is_listed_only_for_its_namespace(tenants):
    client, ids = tenants
    name = ids["team-b"]["output_model"]
    assert name.startswith("team-b/")
    assert client.get(f"/v1/models/{name}", headers=B).status_code == 200
    assert all(m["namespace"] == "team-a" for m in client.get("/v1/models", headers=A).json()["data"])
    assert client.get(f"/v1/models/{name}", headers=A).status_code == 403


def test_the_platforms_stores_cannot_be_read_by_path_or_bucket_across_namespaces(tenants):
    client, _ = tenants
    root = client.app.state.settings.root
    theirs = [
        ("/v1/datasets", {"name": "d4", "namespace": "team-a", "files_url": (root / "datastore" / "datasets" / "team-b" / "qa").as_uri()}, "files_url"),
        ("/v1/datasets", {"name": "d4", "namespace": "team-a", "files_url": str(root / "datastore")}, "files_url"),
        ("/v1/models", {"name": "m4", "namespace": "team-a", "artifact": {"files_url": (root / "store" / "team-b" / "m" / "1").as_uri()}},
         "files_url"),
        ("/v1/customization/targets", {"name": "t4@1", "namespace": "team-a", "num_parameters": 1, "precision": "fp32",
                                       "model_uri": str(root / "store" / "team-b" / "m" / "1")}, "model_uri"),
    ]
    for path, body, field in theirs:
        response = client.post(path, json=body, headers=A)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][-1] == field and "platform's store" in response.json()["detail"][0]["msg"]
    ours = json.loads(json.dumps(theirs).replace("team-b", "team-a"))
    for path, body, _ in ours[:1] + ours[2:]:
        assert client.post(path, json=body, headers=A).status_code == 200, body
