"""Datasets registered by an s3:// or file:// URL are copied for a job like Data Store ones (in-process,
against an S3 endpoint served over HTTP by moto's server)."""

from __future__ import annotations

import pytest

from api.datasets import snapshot_dataset
from api.errors import BadRequest
from core.settings import Settings

ROW = b'{"prompt": "p", "completion": "c"}\n'


@pytest.fixture
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_s3_datasets_are_copied_under_a_prefix_or_from_the_bucket_root(tmp_path, s3_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in ("team", "whole"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="team", Key="sets/email/training/a.jsonl", Body=ROW)
    s3.put_object(Bucket="team", Key="sets/email/validation/b.jsonl", Body=ROW)
    s3.put_object(Bucket="team", Key="sets/other/training/x.jsonl", Body=b"not this one")
    s3.put_object(Bucket="whole", Key="training/a.jsonl", Body=ROW)
    settings = Settings(data_dir=tmp_path, s3_endpoint_url=s3_endpoint)

    copied = snapshot_dataset("s3://team/sets/email", settings)
    assert sorted(str(p.relative_to(copied)) for p in copied.rglob("*.jsonl")) == ["training/a.jsonl", "validation/b.jsonl"]
    assert (copied / "training" / "a.jsonl").read_bytes() == ROW
    root = snapshot_dataset("s3://whole", settings)
    assert (root / "training" / "a.jsonl").read_bytes() == ROW
    with pytest.raises(BadRequest, match="no objects under that prefix"):
        snapshot_dataset("s3://team/sets/missing", settings)

    s3.put_object(Bucket="team", Key="sets/evil/training/a.jsonl", Body=ROW)
    s3.put_object(Bucket="team", Key="sets/evil/training/../../../../escape.jsonl", Body=ROW)
    with pytest.raises(BadRequest, match=r"object key 'sets/evil/training/\.\./\.\./\.\./\.\./escape\.jsonl'.* is refused"):
        snapshot_dataset("s3://team/sets/evil", settings)
    assert not list(tmp_path.rglob("escape.jsonl"))


def test_file_urls_and_unsupported_schemes(tmp_path):
    settings = Settings(data_dir=tmp_path)
    (tmp_path / "ds" / "training").mkdir(parents=True)
    assert snapshot_dataset(f"file://{tmp_path / 'ds'}", settings) == tmp_path / "ds"
    with pytest.raises(BadRequest, match="no such folder"):
        snapshot_dataset(f"file://{tmp_path / 'nope'}", settings)
    with pytest.raises(BadRequest, match="unsupported scheme 'ftp'"):
        snapshot_dataset("ftp://host/ds", settings)
