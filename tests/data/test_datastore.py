"""The Data Store's files: safe paths, no symlinks followed, datasets copied out by their hf:// URL."""

from __future__ import annotations

import doctest

import pytest

import data.datastore
from core.objects import PathRefused
from core.settings import Settings
from data.datastore import (
    DatastoreError,
    FolderFiles,
    download_dataset,
    open_files,
    parse_hf_url,
    safe_name,
    safe_path,
)


def test_doctests():
    failures, tried = doctest.testmod(data.datastore)
    assert tried and not failures


@pytest.mark.parametrize("path", ["", "/abs", "../x", "a/../b", "a//b", "./a", "a/.", "a\\b", "a\x00b", "x" * 2000])
def test_unsafe_paths_are_refused(path):
    with pytest.raises(DatastoreError):
        safe_path(path)


@pytest.mark.parametrize("path", ["evil\u202elsonj.jsonl", "a/zero\u200bwidth.jsonl", "bom\ufeff.jsonl", "line\u2028sep", ".tmp-1-abc",
                                  "training/.tmp-x.jsonl"])
def test_hidden_characters_and_the_stores_own_prefix_are_refused(path):
    with pytest.raises(DatastoreError, match="U\\+|store's own"):
        safe_path(path)


def test_names_are_single_segments_and_say_which_field():
    assert safe_name("team-a", "organization") == "team-a" and safe_path("tmp-.jsonl") == "tmp-.jsonl"
    with pytest.raises(DatastoreError, match="^`organization`"):
        safe_name("a/b", "organization")
    with pytest.raises(DatastoreError, match="^`name`: .*U\\+202E"):
        safe_name("x\u202e", "name")


def test_symlinks_are_never_followed(tmp_path):
    """The Data Store's folder is ``core.objects.FolderFiles``: a link is refused by the one path rule."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    files = FolderFiles(tmp_path / "root")
    files.put("datasets/ns/ds/training/a.jsonl", b"{}\n")
    (tmp_path / "root" / "datasets" / "ns" / "ds" / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathRefused, match="symbolic link"):
        files.get("datasets/ns/ds/evil/secret")
    with pytest.raises(PathRefused, match="symbolic link"):
        files.put("datasets/ns/ds/evil/new", b"x")
    assert files.list("datasets/ns/ds") == {"training/a.jsonl": 3}


def test_download_dataset_by_url(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    files = open_files(settings)
    files.put("datasets/ns/ds/training/a.jsonl", b'{"prompt": "p", "completion": "c"}\n')
    files.put("datasets/ns/ds/testing/t.jsonl", b"{}\n")
    copied = download_dataset("hf://datasets/ns/ds", tmp_path / "copy", settings)
    assert sorted(p.relative_to(copied).as_posix() for p in copied.rglob("*.jsonl")) == ["testing/t.jsonl", "training/a.jsonl"]
    one = download_dataset("hf://datasets/ns/ds/testing/t.jsonl", tmp_path / "one", settings)
    assert [p.name for p in one.rglob("*.jsonl")] == ["t.jsonl"]
    assert parse_hf_url("hf://datasets/ns/ds/a/b.jsonl") == ("datasets", "ns", "ds", "a/b.jsonl")
    with pytest.raises(DatastoreError, match="no files"):
        download_dataset("hf://datasets/ns/missing", tmp_path / "none", settings)
    with pytest.raises(DatastoreError, match="not a Data Store URL"):
        parse_hf_url("s3://bucket/x")


def test_the_data_store_uri_names_a_folder_or_a_bucket(tmp_path):
    with pytest.raises(DatastoreError, match="data store URI 'gs://x': unsupported scheme 'gs'"):
        open_files(Settings(data_dir=tmp_path, datastore_uri="gs://x"))
    assert isinstance(open_files(Settings(data_dir=tmp_path)), FolderFiles)
    assert (tmp_path / "datastore").is_dir()


@pytest.mark.platform  # starts a service in the test itself
def test_the_data_store_on_s3(tmp_path, monkeypatch):
    """The same files API on an S3 endpoint served over HTTP (moto's server)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="data")
        settings = Settings(data_dir=tmp_path / "data", datastore_uri="s3://data/store", s3_endpoint_url=endpoint)
        files = open_files(settings)
        files.put("datasets/ns/ds/training/a.jsonl", b'{"prompt": "p", "completion": "c"}\n')
        files.put("datasets/ns/ds/validation/b.jsonl", b'{"prompt": "q", "completion": "d"}\n')
        assert files.list("datasets/ns/ds") == {"training/a.jsonl": 35, "validation/b.jsonl": 35}
        copied = download_dataset("hf://datasets/ns/ds", tmp_path / "copy", settings)
        assert (copied / "validation" / "b.jsonl").read_bytes() == b'{"prompt": "q", "completion": "d"}\n'
        files.delete_prefix("datasets/ns/ds")
        assert files.list("datasets/ns/ds") == {} and files.get("datasets/ns/ds/training/a.jsonl") is None

        # A key written to the bucket behind the Data Store's back that climbs out is refused by name.
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.put_object(Bucket="data", Key="store/datasets/ns/bad/training/a.jsonl", Body=b"{}\n")
        s3.put_object(Bucket="data", Key="store/datasets/ns/bad/training/../../../x.jsonl", Body=b"{}\n")
        with pytest.raises(DatastoreError, match=r"hf://datasets/ns/bad: object key '.*training/\.\./\.\./\.\./x\.jsonl'"):
            download_dataset("hf://datasets/ns/bad", tmp_path / "bad", settings)
        assert not (tmp_path / "x.jsonl").exists()
    finally:
        server.stop()
