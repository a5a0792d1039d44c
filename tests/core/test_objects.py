"""The object store under every layer: one path rule, one client factory, one prefix download
(against moto's S3 server over HTTP)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from core import objects
from core.settings import Settings
from tests.s3server import counting_s3_server

pytestmark = pytest.mark.platform


@pytest.fixture(scope="module")
def endpoint():
    with counting_s3_server() as server:
        yield server.endpoint


@pytest.mark.parametrize("key", ["../x", "/abs/x", "a/../../b", "a//b", "a\\b", "./a"])
def test_a_key_that_could_leave_its_folder_is_refused_by_name(key):
    with pytest.raises(objects.PathRefused, match="is refused"):
        objects.safe_path(key)
    with pytest.raises(objects.PathRefused, match=f"object key {key!r}".replace("\\", "\\\\")):
        objects.relative_key(key, "")


def test_the_client_and_transfers_take_their_settings(tmp_path, endpoint):
    settings = Settings(root=tmp_path, s3_endpoint_url=endpoint, s3_max_attempts=7, s3_max_concurrency=3)
    client = objects.s3_client(settings)
    assert client.meta.endpoint_url == endpoint
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 7}
    assert objects.transfer_config(settings).max_request_concurrency == 3


def test_a_prefix_downloads_and_a_climbing_key_stops_it(tmp_path: Path, endpoint):
    settings = Settings(root=tmp_path, s3_endpoint_url=endpoint)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="objects")
    for key in ("sets/a/training/t.jsonl", "sets/a/training/", "sets/a/notes/n.txt", "sets/ab/other.jsonl"):
        s3.put_object(Bucket="objects", Key=key, Body=key.encode())
    client = objects.s3_client(settings)
    listed = objects.download_prefix(client, "objects", "sets/a", tmp_path / "all", settings=settings)
    assert listed == 3  # the marker is listed, the neighbouring prefix "sets/ab" is not
    assert sorted(p.relative_to(tmp_path / "all").as_posix() for p in (tmp_path / "all").rglob("*") if p.is_file()) == [
        "notes/n.txt", "training/t.jsonl"]
    assert (tmp_path / "all" / "training" / "t.jsonl").read_bytes() == b"sets/a/training/t.jsonl"
    objects.download_prefix(client, "objects", "sets/a", tmp_path / "some", keep=lambda rel: rel.parts[0] == "training")
    assert [p.name for p in (tmp_path / "some").rglob("*") if p.is_file()] == ["t.jsonl"]
    assert objects.download_prefix(client, "objects", "nothing/here", tmp_path / "none") == 0

    s3.put_object(Bucket="objects", Key="sets/a/../../escape.txt", Body=b"x")
    with pytest.raises(objects.PathRefused, match="object key 'sets/a/../../escape.txt'"):
        objects.download_prefix(client, "objects", "sets/a", tmp_path / "bad")
    assert not (tmp_path / "escape.txt").exists()


def test_s3_files_read_and_write_by_relative_key(tmp_path, endpoint):
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="files")
    files = objects.S3Files("files", "/repo/", Settings(root=tmp_path, s3_endpoint_url=endpoint))
    files.put("datasets/x/a.jsonl", b"abc")
    assert files.get("datasets/x/a.jsonl") == b"abc" and files.get("missing") is None
    assert files.list("datasets") == {"x/a.jsonl": 3}
    files.delete_prefix("datasets/x")
    assert files.list("") == {}
