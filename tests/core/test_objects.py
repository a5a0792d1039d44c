"""The object store under every layer: one path rule, one client factory, one prefix download, and one
files API over a ``file://`` folder and over S3 (moto's server over HTTP)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from core import objects
from core.settings import Settings
from tests.s3server import counting_s3_server


@pytest.fixture(scope="module")
def s3_endpoint():
    with counting_s3_server() as server:
        yield server.endpoint


# --- the path rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../x", "/abs", "/abs/x", "a/../../b", "a//b", "a\\b", "./a", "a/.", ""])
def test_a_key_that_could_leave_its_folder_is_refused_by_name(key):
    with pytest.raises(objects.PathRefused, match="is refused"):
        objects.contained_path(key)
    with pytest.raises(objects.PathRefused, match="is refused"):
        objects.safe_path(key)
    if key:
        with pytest.raises(objects.PathRefused, match=f"object key {key!r}".replace("\\", "\\\\")):
            objects.relative_key(key, "")


@pytest.mark.parametrize("key", ["sets/a/../x", "sets/a//abs", "sets/a/b/../../../c"])
def test_a_key_under_a_prefix_is_refused_with_the_key_named(key):
    with pytest.raises(objects.PathRefused, match=f"object key {key!r}"):
        objects.relative_key(key, "sets/a")


def test_safe_paths_are_normalised_and_limited():
    assert objects.safe_path("training/a.jsonl") == "training/a.jsonl"
    assert objects.contained_path("/".join(["d"] * 40)) == "/".join(["d"] * 40)  # a store key may be deep
    with pytest.raises(objects.PathRefused, match="more than 32 folders deep"):
        objects.safe_path("/".join(["d"] * 33))
    with pytest.raises(objects.PathRefused, match="longer than 255 bytes"):
        objects.safe_path("x" * 256)


# --- the client factory ---------------------------------------------------------------------------


def test_the_client_and_transfers_take_their_settings(tmp_path):
    settings = Settings(
        data_dir=tmp_path, s3_endpoint_url="http://127.0.0.1:9", s3_max_attempts=7, s3_checksums="when_required",
        s3_max_concurrency=3, s3_multipart_threshold=6 << 20, s3_multipart_chunksize=7 << 20,
    )
    client = objects.s3_client(settings)
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 7}
    assert client.meta.config.request_checksum_calculation == "when_required"
    assert client.meta.config.response_checksum_validation == "when_required"
    transfer = objects.transfer_config(settings)
    assert (transfer.max_request_concurrency, transfer.multipart_threshold, transfer.multipart_chunksize) == (3, 6 << 20, 7 << 20)
    defaults = objects.s3_client(Settings(data_dir=tmp_path)).meta.config
    assert defaults.retries == {"mode": "standard", "total_max_attempts": 5}
    assert defaults.request_checksum_calculation == "when_supported"


def test_files_use_the_factory(tmp_path):
    files = objects.open_files("s3://bucket/prefix", Settings(data_dir=tmp_path, s3_endpoint_url="http://127.0.0.1:9", s3_max_attempts=2))
    assert isinstance(files, objects.S3Files) and (files.bucket, files.prefix) == ("bucket", "prefix")
    assert files.s3.meta.config.retries == {"mode": "standard", "total_max_attempts": 2}
    assert files.transfer.multipart_threshold == Settings(data_dir=tmp_path).s3_multipart_threshold


def test_store_uris_name_a_folder_or_a_bucket(tmp_path):
    assert isinstance(objects.open_files((tmp_path / "store").as_uri(), Settings(data_dir=tmp_path)), objects.FolderFiles)
    with pytest.raises(ValueError, match="unsupported scheme 'gs'"):
        objects.open_files("gs://bucket/x", Settings(data_dir=tmp_path))
    with pytest.raises(ValueError, match="names no bucket"):
        objects.open_files("s3:///x", Settings(data_dir=tmp_path))


# --- one files API on a folder and on S3 ----------------------------------------------------------


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.platform)])
def files(request, tmp_path):
    if request.param == "file":
        return objects.open_files((tmp_path / "store").as_uri(), Settings(data_dir=tmp_path))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"files-{tmp_path.name.lower()[-20:].strip('-_')}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return objects.open_files(f"s3://{bucket}/repo/", Settings(data_dir=tmp_path, s3_endpoint_url=endpoint))


def test_files_list_get_put_and_delete_by_relative_key(files, tmp_path):
    files.check()
    files.put("datasets/x/a.jsonl", b"abc")
    source = tmp_path / "weights.bin"
    source.write_bytes(b"w" * 100)
    files.put_file("datasets/x/sub/w.bin", source, objects.sha256_file(source))
    files.put("datasets/y/b.jsonl", b"b")

    assert files.get("datasets/x/a.jsonl") == b"abc" and files.get("missing") is None
    assert files.exists("datasets/x/a.jsonl") and not files.exists("datasets/x/nope")
    assert files.stat("datasets/x/sub/w.bin") == (objects.sha256_file(source), 100) and files.stat("nope") is None
    assert files.list("datasets/x") == {"a.jsonl": 3, "sub/w.bin": 100}
    assert files.list("") == {"datasets/x/a.jsonl": 3, "datasets/x/sub/w.bin": 100, "datasets/y/b.jsonl": 1}
    assert files.list("datasets/nothing") == {}
    assert files.get_file("datasets/x/sub/w.bin", tmp_path / "copy.bin") and (tmp_path / "copy.bin").read_bytes() == b"w" * 100
    assert not files.get_file("datasets/x/gone.bin", tmp_path / "gone.bin")
    assert files.uri("datasets/x/a.jsonl").endswith("/repo/datasets/x/a.jsonl" if isinstance(files, objects.S3Files) else "/store/datasets/x/a.jsonl")

    files.delete("datasets/y/b.jsonl")
    assert files.get("datasets/y/b.jsonl") is None
    files.delete_prefix("datasets/x")
    assert files.list("") == {}

    for key in ("../x", "/abs", "a/../../b"):
        with pytest.raises(objects.PathRefused, match="is refused"):
            files.put(key, b"x")
        with pytest.raises(objects.PathRefused, match="is refused"):
            files.get(key)
    with pytest.raises(objects.PathRefused, match="empty"):
        files.delete_prefix("")  # never the whole store


def test_a_folder_never_follows_a_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    files = objects.FolderFiles(tmp_path / "root")
    files.put("datasets/ns/ds/training/a.jsonl", b"{}\n")
    (tmp_path / "root" / "datasets" / "ns" / "ds" / "evil").symlink_to(outside, target_is_directory=True)
    (tmp_path / "root" / "datasets" / "ns" / "ds" / "leak").symlink_to(outside / "secret")
    with pytest.raises(objects.PathRefused, match="symbolic link"):
        files.get("datasets/ns/ds/evil/secret")
    with pytest.raises(objects.PathRefused, match="symbolic link"):
        files.put("datasets/ns/ds/evil/new", b"x")
    with pytest.raises(objects.PathRefused, match="symbolic link"):
        files.get("datasets/ns/ds/leak")
    assert files.list("datasets/ns/ds") == {"training/a.jsonl": 3}
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


# --- the prefix download --------------------------------------------------------------------------


def test_a_prefix_downloads_and_a_climbing_key_stops_it(tmp_path: Path, s3_endpoint):
    settings = Settings(data_dir=tmp_path, s3_endpoint_url=s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
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


@pytest.mark.parametrize("key", ["sets/bad/../../escape.txt", "sets/bad//abs.txt", "sets/bad/a/../../../b.txt"])
def test_a_bad_key_refuses_the_whole_download_by_name(tmp_path: Path, s3_endpoint, key):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = f"bad-{abs(hash(key)) % 10**8}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="sets/bad/training/t.jsonl", Body=b"{}\n")
    s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    client = objects.s3_client(Settings(data_dir=tmp_path, s3_endpoint_url=s3_endpoint))
    with pytest.raises(objects.PathRefused, match=f"object key {key!r}"):
        objects.download_prefix(client, bucket, "sets/bad", tmp_path / "dest" / "inner")
    assert not (tmp_path / "dest").exists()  # refused before anything was copied
    assert not list(tmp_path.rglob("*.txt"))
