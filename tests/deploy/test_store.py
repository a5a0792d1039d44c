"""Publication to the file store and to S3 over HTTP (moto's server), with manifests that verify."""

import hashlib
import json
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from customizer.settings import Settings
from deploy.store import StoreError, fetch, publish


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "base_model_name_or_path": "test/tiny"}))
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    return folder


FILES = ["adapter_config.json", "adapter_model.safetensors"]


@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_file_store_publishes_a_manifest_that_matches_and_skips_identical_content(tmp_path, adapter):
    settings = Settings(data_dir=tmp_path, store_uri=(tmp_path / "store").as_uri())
    first = publish(adapter, FILES, "team/model", "1", "test/tiny", {"job_id": "cust-1"}, settings)
    folder = tmp_path / "store" / "team" / "model" / "1"
    assert first.uri == folder.as_uri() + "/"
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in FILES:
        data = (folder / name).read_bytes()
        assert manifest["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert manifest["base_model"] == "test/tiny" and manifest["lineage"] == {"job_id": "cust-1"}

    again = publish(adapter, FILES, "team/model", "1", "test/tiny", {"job_id": "cust-1"}, settings)
    assert again.uploaded == [] and sorted(again.unchanged) == FILES
    assert json.loads((folder / "manifest.json").read_text())["created_at"] == manifest["created_at"]

    fetched = fetch("team/model", "1", tmp_path / "download", settings)
    assert (tmp_path / "download" / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
    assert fetched.files.keys() == set(FILES)

    (folder / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(StoreError, match="does not match its manifest"):
        fetch("team/model", "1", tmp_path / "download2", settings)


def test_s3_publication_over_http(tmp_path, adapter, s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="adapters")
    settings = Settings(data_dir=tmp_path, store_uri="s3://adapters/published", s3_endpoint_url=s3_endpoint)
    result = publish(adapter, FILES, "team/model", "3", "test/tiny", {}, settings)
    assert result.uri == "s3://adapters/published/team/model/3/" and sorted(result.uploaded) == FILES
    manifest = json.loads(s3.get_object(Bucket="adapters", Key="published/team/model/3/manifest.json")["Body"].read())
    for name in FILES:
        body = s3.get_object(Bucket="adapters", Key=f"published/team/model/3/{name}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == manifest["files"][name]["sha256"]
    assert publish(adapter, FILES, "team/model", "3", "test/tiny", {}, settings).uploaded == []
    fetch("team/model", "3", tmp_path / "dl", settings)


def test_unreachable_or_misnamed_stores_fail_clearly(tmp_path, adapter):
    with pytest.raises(StoreError, match="unsupported scheme 'gs'"):
        publish(adapter, FILES, "t/m", "1", "b", {}, Settings(data_dir=tmp_path, store_uri="gs://bucket"))
    with pytest.raises(StoreError, match="adapter_model.bin is missing"):
        publish(adapter, ["adapter_model.bin"], "t/m", "1", "b", {}, Settings(data_dir=tmp_path, store_uri=(tmp_path / "s").as_uri()))
    settings = Settings(data_dir=tmp_path, store_uri="s3://nobucket/x", s3_endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StoreError, match="failed"):
        publish(adapter, FILES, "t/m", "1", "b", {}, settings)
