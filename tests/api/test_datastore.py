"""The Data Store through huggingface_hub.HfApi: create a dataset repo, upload (preupload + commit),
list and download; the raw namespace endpoints; paths that climb out of a repo are refused."""

from __future__ import annotations

import base64
import json

import pytest


def test_hfapi_upload_list_download(hf_api, tmp_path, platform):
    from huggingface_hub import hf_hub_download

    url = hf_api.create_repo("ds-tests/qa", repo_type="dataset")
    assert url.repo_id == "ds-tests/qa"
    again = hf_api.create_repo("ds-tests/qa", repo_type="dataset", exist_ok=True)
    assert again.repo_id == "ds-tests/qa"
    big = bytes(range(256)) * 4096  # 1 MiB of binary data
    hf_api.upload_file(path_or_fileobj=b'{"q": "1+1", "answer": "2"}\n', path_in_repo="training/a.jsonl", repo_id="ds-tests/qa", repo_type="dataset")
    hf_api.upload_file(path_or_fileobj=big, path_in_repo="blobs/big.bin", repo_id="ds-tests/qa", repo_type="dataset")
    assert sorted(hf_api.list_repo_files("ds-tests/qa", repo_type="dataset")) == ["blobs/big.bin", "training/a.jsonl"]
    tree = {f.path: f for f in hf_api.list_repo_tree("ds-tests/qa", repo_type="dataset", recursive=True)}
    assert tree["blobs/big.bin"].size == len(big)
    path = hf_hub_download("ds-tests/qa", "blobs/big.bin", repo_type="dataset", endpoint=f"{platform.api}/v1/hf", cache_dir=tmp_path)
    assert open(path, "rb").read() == big
    info = hf_api.dataset_info("ds-tests/qa")
    assert {s.rfilename for s in info.siblings} == {"blobs/big.bin", "training/a.jsonl"}
    hf_api.delete_file("blobs/big.bin", repo_id="ds-tests/qa", repo_type="dataset")
    assert hf_api.list_repo_files("ds-tests/qa", repo_type="dataset") == ["training/a.jsonl"]
    # Files live in the artifact store (the file store by default).
    stored = platform.data_dir / "datastore" / "datasets" / "ds-tests" / "qa" / "training" / "a.jsonl"
    assert stored.read_text() == '{"q": "1+1", "answer": "2"}\n'


@pytest.mark.parametrize("bad_path", ["../escape.txt", "/etc/passwd", "a/../../b", "a//b", "a\\b"])
def test_paths_that_leave_the_repo_are_refused(http, hf_api, bad_path, platform):
    hf_api.create_repo("ds-tests/paths", repo_type="dataset", exist_ok=True)
    preupload = http.post("/v1/hf/api/datasets/ds-tests/paths/preupload/main", json={"files": [{"path": bad_path, "sample": "", "size": 1}]})
    assert preupload.status_code == 400, preupload.text
    line = json.dumps({"key": "file", "value": {"path": bad_path, "content": base64.b64encode(b"x").decode(), "encoding": "base64"}})
    commit = http.post("/v1/hf/api/datasets/ds-tests/paths/commit/main", content=json.dumps({"key": "header", "value": {"summary": "s"}}) + "\n" + line,
                       headers={"content-type": "application/x-ndjson"})
    assert commit.status_code == 400 and "refused" in commit.json()["detail"]
    assert not (platform.data_dir / "escape.txt").exists() and not (platform.data_dir / "datastore" / "escape.txt").exists()
    download = http.get(f"/v1/hf/datasets/ds-tests/paths/resolve/main/{bad_path}")
    assert download.status_code != 200  # refused, or normalised by the client into a path that does not exist


def test_symlinks_in_the_store_are_not_followed(http, hf_api, platform, tmp_path):
    hf_api.create_repo("ds-tests/links", repo_type="dataset", exist_ok=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    folder = platform.data_dir / "datastore" / "datasets" / "ds-tests" / "links"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "link").symlink_to(tmp_path, target_is_directory=True)
    line = json.dumps({"key": "file", "value": {"path": "link/secret.txt", "content": base64.b64encode(b"overwrite").decode()}})
    commit = http.post("/v1/hf/api/datasets/ds-tests/links/commit/main", content=line, headers={"content-type": "application/x-ndjson"})
    assert commit.status_code == 400 and "symbolic link" in commit.json()["detail"]
    assert secret.read_text() == "do not serve me"


def test_datastore_namespaces(http):
    created = http.post("/v1/datastore/namespaces", data={"namespace": "ds-ns"})
    assert created.status_code == 201 and created.json()["namespace"] == "ds-ns"
    again = http.post("/v1/datastore/namespaces", data={"namespace": "ds-ns"})
    assert again.status_code == 409 and again.headers["x-should-retry"] == "false"
    assert http.get("/v1/datastore/namespaces/ds-ns").json()["namespace"] == "ds-ns"
    assert "ds-ns" in [n["namespace"] for n in http.get("/v1/datastore/namespaces").json()["data"]]
    assert http.delete("/v1/datastore/namespaces/ds-ns").status_code == 200
    assert http.get("/v1/datastore/namespaces/ds-ns").status_code == 404
