"""Bad input at the API's edge: bodies over the configured limits (413, refused before or while they
stream in), Data Store paths that would leave a repo or cannot be stored everywhere, symbolic links in
the stores, and URLs the server must not read or call (422 naming the field and the allowed set).
In-process: these are the API's own checks; nothing reaches an orchestrator."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from fastapi.testclient import TestClient

from api import orchestrator
from api.app import create_app
from api.datasets import snapshot_dataset
from api.errors import BadRequest
from core.settings import Settings
from data import datastore

ROW = b'{"prompt": "p", "completion": "c"}\n'


def _settings(tmp_path, **changes) -> Settings:
    return Settings(data_dir=tmp_path / "data", max_json_body_bytes=4096, max_upload_bytes=64 << 10,
                    allowed_http_hosts=["eval.example:8080"], **changes)


@pytest.fixture
def client(tmp_path, monkeypatch):
    def no_orchestrator(*args, **kwargs):
        raise AssertionError("a refused request must not start a run")

    monkeypatch.setattr(orchestrator, "start", no_orchestrator)
    with TestClient(create_app(_settings(tmp_path)), raise_server_exceptions=False) as test_client:
        assert test_client.post("/v1/hf/api/repos/create", json={"name": "qa", "organization": "ns", "type": "dataset"}).status_code == 200
        yield test_client


def _commit_body(*operations: tuple[str, dict]) -> bytes:
    lines = [{"key": "header", "value": {"summary": "test"}}] + [{"key": key, "value": value} for key, value in operations]
    return "\n".join(json.dumps(line) for line in lines).encode()


def _add(path: str, data: bytes = ROW) -> tuple[str, dict]:
    return "file", {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}


def commit(client, *operations, repo: str = "ns/qa"):
    return client.post(f"/v1/hf/api/datasets/{repo}/commit/main", content=_commit_body(*operations))


def _files(client) -> list[str]:
    return sorted(s["rfilename"] for s in client.get("/v1/hf/api/datasets/ns/qa").json()["siblings"])


def _stored(tmp_path) -> list[str]:
    root = tmp_path / "data" / "datastore"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- sizes


def test_a_json_body_over_the_limit_is_413_naming_the_limit(client):
    response = client.post("/v1/models", json={"name": "m", "description": "x" * 5000})
    assert response.status_code == 413
    assert response.json()["detail"] == "request body too large: the limit is 4 KiB (4096 bytes; setting CUSTOMIZER_MAX_JSON_BODY_BYTES)"
    assert response.headers["x-should-retry"] == "false"
    assert client.post("/v1/models", json={"name": "m", "description": "x" * 3000}).status_code == 200


def test_a_streamed_body_is_cut_off_at_the_limit(client):
    sent = []

    def chunks():  # no Content-Length: the limit applies as the body arrives
        for _ in range(100):
            sent.append(1)
            yield b" " * 1024

    response = client.post("/v1/models", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "4 KiB" in response.json()["detail"]
    assert client.get("/v1/models").json()["data"] == []


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(tmp_path):
    app = create_app(_settings(tmp_path))
    messages = []

    async def receive():
        raise AssertionError("the body was read")

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/models", "raw_path": b"/v1/models", "query_string": b"", "root_path": "",
             "headers": [(b"content-length", str(10 << 30).encode()), (b"content-type", b"application/json")],
             "scheme": "http", "server": ("test", 80), "client": ("test", 1), "http_version": "1.1", "asgi": {"version": "3.0"}}
    asyncio.run(app(scope, receive, send))
    assert messages[0]["status"] == 413
    assert "4 KiB" in json.loads(messages[1]["body"])["detail"]


def test_commits_get_the_upload_limit_and_a_refused_one_writes_nothing(client, tmp_path):
    assert commit(client, _add("training/a.jsonl", b"x" * 20_000)).status_code == 200  # over the JSON limit, under the upload limit
    response = commit(client, _add("training/b.jsonl", b"y" * (70 << 10)))
    assert response.status_code == 413
    assert "64 KiB" in response.json()["detail"] and "MAX_UPLOAD_BYTES" in response.json()["detail"]
    assert _files(client) == ["training/a.jsonl"] and _stored(tmp_path) == ["datasets/ns/qa/training/a.jsonl"]

    body = _commit_body(_add("training/c.jsonl", b"z" * (70 << 10)))
    streamed = client.post("/v1/hf/api/datasets/ns/qa/commit/main", content=(body[i:i + 4096] for i in range(0, len(body), 4096)))
    assert streamed.status_code == 413 and "64 KiB" in streamed.json()["detail"]  # no Content-Length: cut off as it streams
    assert _files(client) == ["training/a.jsonl"] and _stored(tmp_path) == ["datasets/ns/qa/training/a.jsonl"]


# ---------------------------------------------------------------- paths

BAD_PATHS = [
    "../escape.jsonl", "a/../../b.jsonl", "/etc/passwd", "a\\b.jsonl", "a//b.jsonl", "./a.jsonl", "a/./b.jsonl", ".", "..", "a/..",
    "nul\x00.jsonl", "new\nline.jsonl", "tab\t.jsonl", "del\x7f.jsonl", "c1\x85.jsonl", "x" * 256 + ".jsonl", "é" * 128,
    "/".join(["d"] * 33) + "/f.jsonl", "", "x" * 1025, "\ud800.jsonl",
]


@pytest.mark.parametrize("path", BAD_PATHS, ids=range(len(BAD_PATHS)))
def test_bad_paths_are_refused_and_nothing_is_written(client, tmp_path, path):
    assert commit(client, _add("ok.jsonl")).status_code == 200
    response = commit(client, _add("training/good.jsonl"), _add(path))
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("commit line 3:") and "refused" in response.json()["detail"]
    preupload = client.post("/v1/hf/api/datasets/ns/qa/preupload/main", content=json.dumps({"files": [{"path": path, "sample": "", "size": 1}]}))
    assert preupload.status_code == 400
    deletion = commit(client, ("deletedFile", {"path": path}))
    assert deletion.status_code == 400
    assert _files(client) == ["ok.jsonl"] and _stored(tmp_path) == ["datasets/ns/qa/ok.jsonl"]


def test_names_at_the_limits_are_accepted(client):
    deep = "/".join(["d"] * 31) + "/f.jsonl"
    long = "x" * 249 + ".jsonl"
    assert commit(client, _add(deep), _add(long), _add("é" * 127 + "x")).status_code == 200
    assert set(_files(client)) == {deep, long, "é" * 127 + "x"}
    assert client.get(f"/v1/hf/datasets/ns/qa/resolve/main/{long}").content == ROW


@pytest.mark.parametrize("path", ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "a%00b", "..", "a/../../../etc/passwd"])
def test_downloads_outside_the_repo_are_refused(client, path):
    response = client.get(f"/v1/hf/datasets/ns/qa/resolve/main/{path}")
    assert response.status_code in (400, 404), response.text
    assert "root:" not in response.text


def test_repo_and_namespace_names_must_be_single_safe_segments(client):
    for body, field in (({"name": "..", "organization": "ns", "type": "dataset"}, "name"),
                        ({"name": "a", "organization": "../x", "type": "dataset"}, "organization"),
                        ({"name": "x" * 300, "organization": "ns", "type": "dataset"}, "name"),
                        ({"name": "a\x00", "organization": "ns", "type": "dataset"}, "name")):
        response = client.post("/v1/hf/api/repos/create", json=body)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", field], (body, response.text)
    response = client.post("/v1/datastore/namespaces", data={"namespace": "a/b"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "namespace"]


def test_paths_differing_only_in_case_or_clashing_with_folders_are_refused(client):
    assert commit(client, _add("training/data.jsonl")).status_code == 200
    clash = commit(client, _add("training/Data.jsonl"))
    assert clash.status_code == 400 and "only in case" in clash.json()["detail"]
    assert commit(client, _add("a.jsonl"), _add("A.JSONL")).status_code == 400
    assert commit(client, _add("TRAINING/x.jsonl")).status_code == 400
    folder = commit(client, _add("training/data.jsonl/inner.jsonl"))
    assert folder.status_code == 400 and "both a file and a folder" in folder.json()["detail"]
    assert commit(client, _add("training")).status_code == 400
    assert commit(client, _add("Sub/x.jsonl")).status_code == 200
    assert commit(client, _add("Sub")).status_code == 400 and commit(client, _add("sub")).status_code == 400
    # Renaming by case in one commit is fine: the old path is gone when the new one lands.
    assert commit(client, ("deletedFile", {"path": "training/data.jsonl"}), _add("training/Data.jsonl")).status_code == 200
    assert _files(client) == ["Sub/x.jsonl", "training/Data.jsonl"]


def test_symlinks_in_the_data_store_are_never_followed(client, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text("secret")
    assert commit(client, _add("training/a.jsonl")).status_code == 200
    repo = tmp_path / "data" / "datastore" / "datasets" / "ns" / "qa"
    (repo / "linked").symlink_to(outside, target_is_directory=True)
    (repo / "training" / "leak.jsonl").symlink_to(outside / "secret.jsonl")

    written = commit(client, _add("linked/new.jsonl"))
    assert written.status_code == 400 and "symbolic link" in written.json()["detail"]
    assert sorted(p.name for p in outside.iterdir()) == ["secret.jsonl"]
    assert client.get("/v1/hf/datasets/ns/qa/resolve/main/linked/secret.jsonl").status_code in (400, 404)
    assert client.get("/v1/hf/datasets/ns/qa/resolve/main/training/leak.jsonl").status_code == 404
    copied = datastore.download_dataset("hf://datasets/ns/qa", tmp_path / "copy", client.app.state.settings)
    assert sorted(str(p.relative_to(copied)) for p in copied.rglob("*")) == ["training", "training/a.jsonl"]
    # A whole repo folder that is a link is refused too.
    (tmp_path / "data" / "datastore" / "datasets" / "elsewhere").symlink_to(outside, target_is_directory=True)
    assert client.post("/v1/hf/api/repos/create", json={"name": "qa", "organization": "elsewhere", "type": "dataset"}).status_code == 200
    assert commit(client, _add("x.jsonl"), repo="elsewhere/qa").status_code == 400
    assert sorted(p.name for p in outside.iterdir()) == ["secret.jsonl"]


def test_a_dataset_folder_with_a_link_out_of_it_is_refused(client, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    folder = tmp_path / "data" / "sets" / "ds"
    (folder / "training").mkdir(parents=True)
    (folder / "training" / "a.jsonl").write_bytes(ROW * 4)
    (folder / "training" / "b.jsonl").symlink_to(outside / "passwd")
    assert client.post("/v1/datasets", json={"name": "ds", "files_url": folder.as_uri()}).status_code == 200
    response = client.post("/v1/customization/jobs", json={"config": "customizer/tiny-llama@v1.0.0+cpu", "dataset": "ds",
                                                           "hyperparameters": {"finetuning_type": "lora"}})
    assert response.status_code == 400, response.text
    assert "training/b.jsonl is a symbolic link that leads out of the dataset folder" in response.json()["detail"]
    assert "root:x" not in response.text
    (folder / "training" / "b.jsonl").unlink()
    (folder / "training" / "b.jsonl").symlink_to(folder / "training" / "a.jsonl")  # a link inside the folder is fine
    assert snapshot_dataset(folder.as_uri(), client.app.state.settings) == folder


def _job_on(client, tmp_path, rows: list[bytes], **hyperparameters):
    """Create a job on the shipped tiny config over a dataset folder holding ``rows``."""
    folder = tmp_path / "data" / "sets" / "fit"
    (folder / "training").mkdir(parents=True)
    (folder / "training" / "a.jsonl").write_bytes(b"".join(rows))
    assert client.post("/v1/datasets", json={"name": "fit", "files_url": folder.as_uri()}).status_code == 200
    return client.post("/v1/customization/jobs", json={"config": "customizer/tiny-llama@v1.0.0+cpu", "dataset": "fit",
                                                       "hyperparameters": {"finetuning_type": "lora"} | hyperparameters})


def test_a_dpo_job_on_sft_records_is_unprocessable_at_creation(client, tmp_path):
    response = _job_on(client, tmp_path, [ROW] * 6, training_type="dpo")
    assert response.status_code == 422, response.text
    assert response.headers["x-should-retry"] == "false"
    detail = response.json()["detail"]
    assert "`dataset` default/fit" in detail and "does not fit this job" in detail
    assert "training/a.jsonl:1: training/ holds completion records; training_type dpo reads preference records" in detail


def test_examples_over_max_seq_length_are_unprocessable_at_creation_naming_file_and_line(client, tmp_path):
    long = json.dumps({"prompt": "word " * 600, "completion": "c"}).encode() + b"\n"
    response = _job_on(client, tmp_path, [ROW] * 4 + [long])
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "training/a.jsonl:5: " in detail and "longer than the config's max_seq_length 256" in detail


# ---------------------------------------------------------------- URLs the server reads or calls


def _refused(response, field: str) -> str:
    assert response.status_code == 422, response.text
    assert response.headers["x-should-retry"] == "false"
    error = response.json()["detail"][0]
    assert error["type"] == "url_not_allowed" and error["loc"][-1] == field.split(".")[-1]
    assert error["msg"].startswith(f"`{field}`:") and "allowed:" in error["msg"]
    return error["msg"]


BAD_DATASET_URLS = [
    "file:///etc", "/etc", "file:///etc/../etc/passwd", "ftp://host/ds", "http://169.254.169.254/latest/meta-data",
    "https://example.com/ds", "file://other-host/data", "relative/folder", "hf://models/ns/qa", "s3:///no-bucket", "gopher://x",
]


@pytest.mark.parametrize("url", BAD_DATASET_URLS)
def test_dataset_files_urls_outside_the_allowed_set_are_refused(client, url):
    msg = _refused(client.post("/v1/datasets", json={"name": "d", "files_url": url}), "files_url")
    assert "hf://datasets/<namespace>/<name>" in msg and "s3://<bucket>" in msg
    assert client.post("/v1/datasets", json={"name": "d", "files_url": "hf://datasets/ns/qa"}).status_code == 200
    _refused(client.patch("/v1/datasets/default/d", json={"files_url": url}), "files_url")
    assert client.get("/v1/datasets/default/d").json()["files_url"] == "hf://datasets/ns/qa"


def test_file_urls_resolve_links_before_the_root_check(client, tmp_path):
    outside = tmp_path / "outside"
    (outside / "training").mkdir(parents=True)
    link = tmp_path / "data" / "innocent"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    msg = _refused(client.post("/v1/datasets", json={"name": "d", "files_url": link.as_uri()}), "files_url")
    assert "outside the folders the server may read" in msg and "under <data>" in msg  # the data folder named, not where it lies
    inside = tmp_path / "data" / "ds"
    (inside / "training").mkdir(parents=True)
    assert client.post("/v1/datasets", json={"name": "d", "files_url": inside.as_uri()}).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/models", {"name": "m", "artifact": {"files_url": "file:///etc"}}, "artifact.files_url"),
        ("/v1/models", {"name": "m", "api_endpoint": {"url": "http://169.254.169.254/v1", "model_id": "x"}}, "api_endpoint.url"),
        ("/v1/models", {"name": "m", "api_endpoint": {"url": "file:///etc/passwd", "model_id": "x"}}, "api_endpoint.url"),
        ("/v1/customization/targets", {"name": "t@1", "num_parameters": 1, "precision": "fp32", "model_uri": "/root/.ssh"}, "model_uri"),
        ("/v1/customization/targets", {"name": "t@1", "num_parameters": 1, "precision": "fp32", "model_uri": "builtin://tiny-llama",
                                       "model_path": "../../../etc"}, "model_path"),
        ("/v1/customization/configs", {"name": "c@v1", "target": {"name": "t@1", "num_parameters": 1, "precision": "fp32", "model_uri": "file:///etc"},
                                       "max_seq_length": 128, "training_options": [{"training_type": "sft", "finetuning_type": "lora", "num_gpus": 0}]},
         "target.model_uri"),
        ("/v1/evaluation/configs", {"type": "custom", "name": "ec", "tasks": {"t": {
            "type": "completion", "dataset": {"files_url": "file:///etc/passwd"}, "params": {"template": "{{item.q}}"},
            "metrics": {"em": {"type": "em", "params": {"ground_truth": "{{item.a}}"}}}}}}, "tasks.t.dataset.files_url"),
        ("/v1/evaluation/targets", {"type": "model", "name": "et", "model": {"api_endpoint": {"url": "http://10.0.0.1:8000/v1", "model_id": "m"}}},
         "model.api_endpoint.url"),
        ("/v1/evaluation/jobs", {"config": {"type": "capitals"}, "target": {"type": "model", "model": {"api_endpoint": {
            "url": "http://127.0.0.1:9/v1", "model_id": "m"}}}}, "target.model.api_endpoint.url"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_every_url_the_server_would_read_or_call_is_checked(client, path, body, field):
    _refused(client.post(path, json=body), field)


def test_configured_hosts_roots_and_schemes(tmp_path):
    allowed = tmp_path / "shared"
    (allowed / "training").mkdir(parents=True)
    settings = _settings(tmp_path, allowed_file_roots=[allowed], url_schemes=["file", "http"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.post("/v1/models", json={"name": "m", "api_endpoint": {"url": "http://eval.example:8080/v1", "model_id": "x"}}).status_code == 200
        _refused(client.post("/v1/models", json={"name": "m2", "api_endpoint": {"url": "https://eval.example:8080/v1", "model_id": "x"}}),
                 "api_endpoint.url")  # https is not among the configured schemes
        _refused(client.post("/v1/models", json={"name": "m3", "api_endpoint": {"url": "http://eval.example:9090/v1", "model_id": "x"}}),
                 "api_endpoint.url")
        assert client.post("/v1/datasets", json={"name": "d", "files_url": allowed.as_uri()}).status_code == 200
        msg = _refused(client.post("/v1/datasets", json={"name": "d2", "files_url": (tmp_path / "data").as_uri()}), "files_url")
        assert str(allowed) in msg
        msg = _refused(client.post("/v1/datasets", json={"name": "d3", "files_url": "s3://bucket/ds"}), "files_url")
        assert "s3://" not in msg.split("allowed:")[1]


def test_a_stored_url_is_checked_again_when_it_is_read(tmp_path):
    folder = tmp_path / "data" / "ds"
    (folder / "training").mkdir(parents=True)
    assert snapshot_dataset(folder.as_uri(), _settings(tmp_path)) == folder
    with pytest.raises(BadRequest, match="is refused: unsupported scheme 'file'"):
        snapshot_dataset(folder.as_uri(), _settings(tmp_path, url_schemes=["hf", "s3"]))
    with pytest.raises(BadRequest, match="outside the folders the server may read"):
        snapshot_dataset("file:///etc", _settings(tmp_path))


@pytest.mark.parametrize("folder", ["api", "mlflow", "prefect", "jobs", "cache"])
def test_the_services_own_state_is_never_readable_through_a_url(client, tmp_path, folder):
    state = tmp_path / "data" / folder
    (state / "training").mkdir(parents=True, exist_ok=True)
    msg = _refused(client.post("/v1/datasets", json={"name": "d", "files_url": state.as_uri()}), "files_url")
    assert "the service's own state" in msg
    _refused(client.post("/v1/models", json={"name": "m", "artifact": {"files_url": (state / "training").as_uri()}}), "artifact.files_url")


def test_a_full_disk_is_507_not_a_server_error(client, monkeypatch):
    import errno
    import os

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(datastore.FolderFiles, "put", full)
    response = commit(client, _add("training/a.jsonl"))
    assert response.status_code == 507
    assert response.json()["detail"] == "the server's storage is full (No space left on device): the request did not complete; free space, then try again"
    assert _files(client) == []


# ---------------------------------------------------------------- bounds on every input

JOB = '{"config": "customizer/tiny-llama@v1.0.0+cpu", "dataset": "ds", "hyperparameters": {%s}%s}'


def _unprocessable(response, field: str) -> str:
    """The 422 in FastAPI's shape; ``field`` is named by its loc, or (for a value no field may hold) by the message."""
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    named = [e for e in errors if ".".join(str(p) for p in e["loc"][1:]) == field or f"`{field}`" in e["msg"]]
    assert named, errors
    return named[0]["msg"]


@pytest.mark.parametrize(
    ("hyperparameters", "extra", "field"),
    [
        ('"seed": %d' % 2**80, "", "hyperparameters.seed"),
        ('"seed": -1', "", "hyperparameters.seed"),
        ('"seed": 2147483648', "", "hyperparameters.seed"),
        ('"lora": {"alpha": 1e30}', "", "hyperparameters.lora.alpha"),
        ('"lora": {"alpha": 100000}', "", "hyperparameters.lora.alpha"),
        ('"learning_rate": NaN', "", "hyperparameters.learning_rate"),
        ('"dpo": {"max_grad_norm": Infinity}', "", "hyperparameters.dpo.max_grad_norm"),
        ('"max_steps": -5', "", "hyperparameters.max_steps"),
        ("", ', "description": "\\ud800"', "description"),
        ("", ', "description": "a\\u0000b"', "description"),
        ("", ', "evaluation": {"limit": 1e999}', "evaluation.limit"),
        ("", ', "evaluation": {"limit": 4294967296}', "evaluation.limit"),
        ("", ', "budget": {"max_device_hours": -Infinity}', "budget.max_device_hours"),
        ("", ', "custom_fields": {"deep": [{"x": NaN}]}', "custom_fields.deep.0.x"),
        ("", ', "custom_fields": {"\\udfff": 1}', "custom_fields"),
        ("", ', "custom_fields": {"n": %d}' % 2**64, "custom_fields.n"),
        ("", ', "custom_fields": ' + "[" * 40 + "]" * 40, "custom_fields.0.0..."),
        ("", ', "name": "job\\u202egpj"', "name"),
        ("", ', "namespace": ".tmp-1-x"', "namespace"),
    ],
)
def test_out_of_bounds_job_inputs_are_422_naming_the_field(client, hyperparameters, extra, field):
    response = client.post("/v1/customization/jobs", content=(JOB % (hyperparameters, extra)).encode(),
                           headers={"content-type": "application/json"})
    _unprocessable(response, field)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/datasets", '{"name": "d", "files_url": "hf://datasets/ns/qa", "limit": 1e999}', "limit"),
        ("/v1/datasets", '{"name": "d", "files_url": "hf://datasets/ns/qa", "limit": 0}', "limit"),
        ("/v1/models", '{"name": "m", "artifact": {"files_url": "hf://x", "tensor_parallelism": 99999999999}}', "artifact.tensor_parallelism"),
        ("/v1/models", '{"name": "m", "ownership": {"created_by": "a", "extra": NaN}}', "ownership.extra"),
        ("/v1/models", '{"name": "m\\u200b"}', "name"),
        ("/v1/namespaces", '{"id": "team\\u202eb"}', "id"),
        ("/v1/projects", '{"name": "p", "namespace": "ns\\u0000"}', "namespace"),
        ("/v1/customization/targets", '{"name": "t@1", "num_parameters": 1e999, "precision": "fp32", "model_uri": "builtin://tiny-llama"}',
         "num_parameters"),
    ],
)
def test_out_of_bounds_entity_inputs_are_422_naming_the_field(client, path, body, field):
    _unprocessable(client.post(path, content=body.encode(), headers={"content-type": "application/json"}), field)


def test_bounds_are_in_the_openapi_schema(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    seed = schemas["Hyperparameters"]["properties"]["seed"]
    assert (seed["minimum"], seed["maximum"]) == (0, 2**31 - 1)
    assert schemas["LoraParams"]["properties"]["alpha"]["maximum"] <= 2**16


@pytest.mark.parametrize(
    ("query", "field"),
    [("page=1e999", "page"), ("page_size=1e999", "page_size"), ("page=0", "page"), ("page_size=100000", "page_size"),
     ("sort=name%00", "sort"), ("filter[name]=a%00b", "filter[name]"), ("filter[a][b][c][d][e]=1", "filter[a][b][c][d][e]"),
     ("filter[name]=" + "x" * 2000, "filter[name]"), ("&".join(f"filter[f{i}]=1" for i in range(33)), "filter[f32]")],
)
def test_list_parameters_are_bounded(client, query, field):
    for path in ("/v1/models", "/v1/customization/jobs", "/v1/datastore/namespaces"):
        response = client.get(f"{path}?{query}")
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", field], (path, response.text)
    assert client.get("/v1/models?limit=1e999&page_size=1000&page=1000000").status_code == 200  # unknown parameters are ignored


@pytest.mark.parametrize(("path", "why"), [("training/evil\u202elsonj.jsonl", "U+202E"), ("zero\u200bwidth.jsonl", "U+200B"),
                                           (".tmp-123-abc", "the store's own"), ("training/.tmp-x.jsonl", "the store's own")])
def test_data_store_paths_with_hidden_characters_or_the_reserved_prefix_are_refused(client, tmp_path, path, why):
    response = commit(client, _add("training/good.jsonl"), _add(path))
    assert response.status_code == 400 and response.json()["detail"].startswith("commit line 3:") and why in response.json()["detail"]
    assert _files(client) == [] and _stored(tmp_path) == []
    for body, field in (({"name": "qa\u202e", "organization": "ns", "type": "dataset"}, "name"),
                        ({"name": "qa", "organization": ".tmp-ns", "type": "dataset"}, "organization")):
        response = client.post("/v1/hf/api/repos/create", json=body)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", field]


def _asgi_commit(app, lines, chunk: int = 64 << 10) -> tuple[int, dict]:
    """POST a commit whose lines are generated as they are sent, straight through the ASGI app (no client
    buffers the body), and return the status and the JSON answer."""
    def chunks():
        for line in lines:
            for start in range(0, len(line), chunk):
                yield line[start:start + chunk]

    source, messages = chunks(), []

    async def receive():
        piece = next(source, None)
        return {"type": "http.request", "body": piece or b"", "more_body": piece is not None}

    async def send(message):
        messages.append(message)

    path = "/v1/hf/api/datasets/ns/qa/commit/main"
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/x-ndjson")], "scheme": "http", "server": ("test", 80),
             "client": ("test", 1), "http_version": "1.1", "asgi": {"version": "3.0"}}
    asyncio.run(app(scope, receive, send))
    return messages[0]["status"], json.loads(b"".join(m.get("body", b"") for m in messages[1:]))


def _file_lines(count: int, size: int):
    yield json.dumps({"key": "header", "value": {"summary": "big"}}).encode() + b"\n"
    for index in range(count):
        data = bytes([index]) * size
        yield json.dumps({"key": "file", "value": {"path": f"training/{index}.jsonl", "content": base64.b64encode(data).decode(),
                                                    "encoding": "base64"}}).encode() + b"\n"


def test_a_large_commit_streams_with_flat_memory_and_a_line_over_the_cap_is_refused(tmp_path):
    import tracemalloc

    from api.limits import MAX_COMMIT_LINE_BYTES

    app = create_app(Settings(data_dir=tmp_path / "data", max_upload_bytes=256 << 20))
    with TestClient(app) as client:
        assert client.post("/v1/hf/api/repos/create", json={"name": "qa", "organization": "ns", "type": "dataset"}).status_code == 200
    upload = 48 << 20  # 48 files of 1 MiB: a 64 MiB body once base64-encoded
    tracemalloc.start()
    try:
        status, answer = _asgi_commit(app, _file_lines(48, 1 << 20))
        _, peak = tracemalloc.get_traced_memory()
        assert status == 200, answer
        assert peak < upload // 2, f"peak {peak >> 20} MiB for a {upload >> 20} MiB upload"

        giant = b'{"key": "file", "value": {"path": "big.jsonl", "content": "' + b"A" * (MAX_COMMIT_LINE_BYTES + (8 << 20)) + b'"}}\n'
        tracemalloc.reset_peak()
        status, answer = _asgi_commit(app, [b'{"key": "header", "value": {}}\n', giant])
        _, peak = tracemalloc.get_traced_memory()
        assert status == 413 and answer["detail"].startswith("commit line 2 is over the 32 MiB line limit")
        assert "23 MiB" in answer["detail"] and "split" in answer["detail"]
        assert peak - len(giant) < 24 << 20, f"peak {peak >> 20} MiB beside the {len(giant) >> 20} MiB line the test holds"
    finally:
        tracemalloc.stop()
    with TestClient(app) as client:
        assert len(_files(client)) == 48 and "big.jsonl" not in _files(client)


def test_a_dataset_name_taken_from_its_url_obeys_the_name_rule(client):
    response = client.post("/v1/datasets", json={"files_url": "hf://datasets/ns/qa\u202egpj"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "name"], response.text
    assert client.post("/v1/datasets", json={"files_url": "hf://datasets/ns/qa"}).json()["name"] == "qa"


@pytest.mark.parametrize("body", ['{"min_task_gain": NaN}', '{"min_task_gain": 1e400}', '{"benchmarks": ["\\ud800"]}',
                                  '{"approval_timeout_hours": 1e300}'])
def test_a_promotion_policy_out_of_bounds_is_422(client, body):
    response = client.put("/v1/policies", content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert any(field in json.dumps(response.json()["detail"]) for field in ("min_task_gain", "benchmarks", "approval_timeout_hours"))


def test_the_documented_file_limit_fits_in_one_commit_line():
    from api.limits import MAX_COMMIT_FILE_BYTES, MAX_COMMIT_LINE_BYTES

    around = len(json.dumps({"key": "file", "value": {"content": "", "path": "p" * 1024, "encoding": "base64"}}))
    assert 4 * -(-MAX_COMMIT_FILE_BYTES // 3) + around <= MAX_COMMIT_LINE_BYTES


def test_a_refusal_of_text_json_cannot_carry_is_still_a_422(client):
    """A lone surrogate echoed back in a validation error must not turn the 422 into a 500."""
    response = client.post("/v1/principals", content=b'{"name": "\\ud800x", "namespaces": ["a"], "roles": ["submit"]}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "name"]
