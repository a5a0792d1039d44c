"""Dataset sources: an s3:// prefix served over HTTP by moto's server ingests like the same folder."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from core.settings import Settings
from data.ingest import DatasetError, ingest_dataset, read_examples
from tests.conftest import ok_rows, write_jsonl


@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="datasets")
    yield endpoint
    server.stop()


def upload(s3, folder: Path, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "datasets", f"{prefix}/{path.relative_to(folder).as_posix()}")


def test_an_s3_dataset_ingests_with_the_same_identity_as_its_folder(tmp_path: Path, s3_endpoint: str):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    folder = tmp_path / "local"
    write_jsonl(folder / "training" / "a.jsonl", ok_rows(12))
    write_jsonl(folder / "training" / "more" / "b.jsonl", ok_rows(8, start=12))
    write_jsonl(folder / "testing" / "t.jsonl", ok_rows(3, start=100))
    (folder / "README.md").write_text("not data")
    upload(s3, folder, "teams/support/v1")
    s3.put_object(Bucket="datasets", Key="teams/support/v1/training/", Body=b"")  # a folder marker
    settings = Settings(data_dir=tmp_path / "data", s3_endpoint_url=s3_endpoint)

    remote = ingest_dataset("s3://datasets/teams/support/v1", tmp_path / "job" / "data", seed=0, settings=settings)
    local = ingest_dataset(str(folder), tmp_path / "local-out", seed=0)
    assert remote.sha256 == local.sha256 and remote.counts == local.counts == {"training": 18, "validation": 2, "testing": 3}
    assert remote.source == "s3://datasets/teams/support/v1"
    assert [e.loc for e in read_examples(remote.files["training"])] == [e.loc for e in read_examples(local.files["training"])]
    downloaded = sorted(p.relative_to(tmp_path / "job" / "data" / "source").as_posix() for p in (tmp_path / "job" / "data" / "source").rglob("*.jsonl"))
    assert downloaded == ["testing/t.jsonl", "training/a.jsonl", "training/more/b.jsonl"]


def test_s3_errors_are_one_clear_line(tmp_path: Path, s3_endpoint: str):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    settings = Settings(data_dir=tmp_path / "data", s3_endpoint_url=s3_endpoint)
    with pytest.raises(DatasetError) as info:
        ingest_dataset("s3://datasets/nothing-here", tmp_path / "a", seed=0, settings=settings)
    assert [str(e) for e in info.value.errors] == ["s3://datasets/nothing-here: no objects under this prefix"]

    with pytest.raises(DatasetError) as info:
        ingest_dataset("s3://no-such-bucket/x", tmp_path / "b", seed=0, settings=settings)
    assert str(info.value.errors[0]).startswith("s3://no-such-bucket/x: cannot read the dataset from the S3 store: ")
    assert "NoSuchBucket" in str(info.value.errors[0])

    s3.put_object(Bucket="datasets", Key="bad/training/t.jsonl", Body=json.dumps({"prompt": 1, "completion": "x"}).encode() + b"\n")
    with pytest.raises(DatasetError) as info:
        ingest_dataset("s3://datasets/bad", tmp_path / "c", seed=0, settings=settings)
    assert [str(e) for e in info.value.errors] == ["training/t.jsonl:1: `prompt` must be a string, got number"]

    s3.put_object(Bucket="datasets", Key="escape/training/../../x.jsonl", Body=b"{}\n")
    with pytest.raises(DatasetError, match=r"object key 'escape/training/\.\./\.\./x\.jsonl'.*does not name a file inside the dataset"):
        ingest_dataset("s3://datasets/escape", tmp_path / "d", seed=0, settings=settings)
    assert not (tmp_path / "x.jsonl").exists()

    unreachable = Settings(data_dir=tmp_path / "data", s3_endpoint_url="http://127.0.0.1:9")
    with pytest.raises(DatasetError, match="cannot read the dataset from the S3 store"):
        ingest_dataset("s3://datasets/teams", tmp_path / "e", seed=0, settings=unreachable)
