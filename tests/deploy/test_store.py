"""Publication to the file store and to S3 over HTTP (moto's server), with manifests that verify."""

import hashlib
import http.server
import json
import os
import threading
import time
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from core.settings import Settings
from deploy.store import (
    StoreError,
    VersionExists,
    fetch,
    list_published,
    parse_published_uri,
    publish,
    publishable_files,
    read_published_file,
)
from tests.s3server import counting_s3_server


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
    for name in ("../adapter_model.safetensors", "/abs.safetensors", ".hidden.safetensors"):
        with pytest.raises(StoreError, match=f"file name {name!r} is not allowed in a published version"):
            publish(adapter, [name], "t/m", "1", "b", {}, Settings(data_dir=tmp_path, store_uri=(tmp_path / "s").as_uri()))
    with pytest.raises(StoreError, match="adapter_model.bin is missing"):
        publish(adapter, ["adapter_model.bin"], "t/m", "1", "b", {}, Settings(data_dir=tmp_path, store_uri=(tmp_path / "s").as_uri()))
    settings = Settings(data_dir=tmp_path, store_uri="s3://nobucket/x", s3_endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StoreError, match="failed"):
        publish(adapter, FILES, "t/m", "1", "b", {}, settings)


# --- publication rules, multipart, content addressing, errors --------------------------------------


@pytest.fixture(scope="module")
def counted_s3():
    with counting_s3_server() as server:
        yield server


def _trained_folder(root: Path, base: Path) -> Path:
    """What a trainer leaves behind: adapter, tokenizer copy, README, trainer state, a checkpoint."""
    folder = root / "trained"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(b"w" * 100)
    (folder / "README.md").write_text("# model card")
    (folder / "training_args.bin").write_bytes(b"x")
    (folder / "trainer_state.json").write_text("{}")
    (folder / "checkpoint-4").mkdir()
    (folder / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"old")
    for name in ("tokenizer.json", "chat_template.jinja"):
        (folder / name).write_bytes((base / name).read_bytes())
    # Loading a tokenizer records where it came from; that alone is not a different tokenizer.
    config = json.loads((base / "tokenizer_config.json").read_text()) | {"is_local": True, "local_files_only": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=4))
    return folder


def test_publishable_files_are_weights_configs_and_a_changed_tokenizer(tmp_path, tiny_model_dir):
    folder = _trained_folder(tmp_path, tiny_model_dir)
    assert publishable_files(folder, tiny_model_dir) == ["adapter_config.json", "adapter_model.safetensors"]
    assert publishable_files(folder) == [
        "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json"
    ]
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert "chat_template.jinja" in publishable_files(folder, tiny_model_dir)
    assert "tokenizer.json" in publishable_files(folder, tiny_model_dir)  # a tokenizer is published whole

    full = tmp_path / "full"
    full.mkdir()
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        (full / name).write_bytes(b"shard")
    for name in ("model.safetensors.index.json", "config.json", "generation_config.json"):
        (full / name).write_text("{}")
    (full / "optimizer.pt").write_bytes(b"state")
    assert publishable_files(full, tiny_model_dir) == [
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("")
    with pytest.raises(StoreError, match=r"no \*\.safetensors weights"):
        publishable_files(empty)


def test_large_files_go_up_in_parts_and_republishing_sends_zero_bytes(tmp_path, counted_s3):
    bucket = counted_s3.new_bucket("shards")
    folder = tmp_path / "full"
    folder.mkdir()
    shard = folder / "model.safetensors"
    shard.write_bytes(os.urandom(12 << 20))
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    files = ["config.json", "model.safetensors"]
    settings = Settings(
        data_dir=tmp_path, store_uri=f"s3://{bucket}/p", s3_endpoint_url=counted_s3.endpoint,
        s3_multipart_threshold=5 << 20, s3_multipart_chunksize=5 << 20,
    )
    counted_s3.reset()
    first = publish(folder, files, "team/full", "1", "test/tiny", {}, settings)
    received = counted_s3.bytes_received()
    assert received >= shard.stat().st_size and first.bytes_uploaded >= shard.stat().st_size
    parts = [r for r in counted_s3.requests if r[0] == "PUT" and r[1].endswith("model.safetensors")]
    assert len(parts) == 3  # 12 MiB in 5 MiB parts
    head = boto3.client("s3", endpoint_url=counted_s3.endpoint).head_object(Bucket=bucket, Key="p/team/full/1/model.safetensors")
    assert head["ETag"].strip('"').endswith("-3") and head["Metadata"]["sha256"] == first.manifest.files["model.safetensors"].sha256

    counted_s3.reset()
    again = publish(folder, files, "team/full", "1", "test/tiny", {}, settings)
    assert again.uploaded == [] and again.bytes_uploaded == 0
    assert counted_s3.bytes_received() == 0 and counted_s3.writes() == []  # measured by the server

    fetched = fetch("team/full", "1", tmp_path / "dl", settings)
    assert (tmp_path / "dl" / "model.safetensors").read_bytes() == shard.read_bytes()
    assert fetched.files["model.safetensors"].size == 12 << 20
    # A second fetch into the same folder finds every file verified and downloads nothing.
    counted_s3.reset()
    fetch("team/full", "1", tmp_path / "dl", settings)
    assert [r for r in counted_s3.requests if r[0] == "GET" and r[1].endswith("model.safetensors")] == []


def test_a_corrupted_s3_object_is_refused_on_download(tmp_path, adapter, counted_s3):
    bucket = counted_s3.new_bucket("corrupt")
    settings = Settings(data_dir=tmp_path, store_uri=f"s3://{bucket}/x", s3_endpoint_url=counted_s3.endpoint)
    publish(adapter, FILES, "team/model", "1", "test/tiny", {}, settings)
    assert list_published(settings) == ["team/model@1"]
    s3 = boto3.client("s3", endpoint_url=counted_s3.endpoint)
    key = "x/team/model/1/adapter_model.safetensors"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[100] ^= 0xFF  # one flipped byte, same size
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    with pytest.raises(StoreError, match="adapter_model.safetensors does not match its manifest"):
        fetch("team/model", "1", tmp_path / "dl", settings)
    assert not (tmp_path / "dl" / "adapter_model.safetensors").exists()  # nothing unverified is left behind
    assert not (tmp_path / "dl" / "manifest.json").exists()
    with pytest.raises(StoreError, match="does not match its manifest"):
        read_published_file("team/model", "1", "adapter_model.safetensors", settings)
    assert json.loads(read_published_file("team/model", "1", "adapter_config.json", settings))["r"] == 8
    # The corrupting write dropped the object's sha256 metadata, so publishing again re-uploads it.
    publish(adapter, FILES, "team/model", "1", "test/tiny", {}, settings)
    fetch("team/model", "1", tmp_path / "dl", settings)


def test_a_missing_bucket_fails_at_once_with_a_clear_error(tmp_path, adapter, counted_s3):
    settings = Settings(data_dir=tmp_path, store_uri="s3://no-such-bucket/x", s3_endpoint_url=counted_s3.endpoint)
    counted_s3.reset()
    with pytest.raises(StoreError, match=r"bucket 'no-such-bucket' does not exist .*NoSuchBucket"):
        publish(adapter, FILES, "team/model", "1", "test/tiny", {}, settings)
    assert len(counted_s3.requests) == 1  # one HEAD, no retries, no uploads


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every request with a fixed S3 error and counts the attempts."""

    status, code, count = 403, "AccessDenied", 0

    def _reply(self):
        type(self).count += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = f"<Error><Code>{self.code}</Code><Message>no</Message></Error>".encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET = do_PUT = do_POST = _reply

    def log_message(self, *args):
        pass


@pytest.fixture
def answering_server():
    def start(status: int, code: str) -> str:
        handler = type("Handler", (_Answer,), {"status": status, "code": code, "count": 0})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, handler))
        return f"http://127.0.0.1:{server.server_address[1]}"

    servers = []
    yield start, servers
    for server, _ in servers:
        server.shutdown()


def test_denied_access_is_not_retried_and_transient_errors_are(tmp_path, adapter, answering_server):
    start, servers = answering_server
    denied = start(403, "AccessDenied")
    settings = Settings(data_dir=tmp_path, store_uri="s3://locked/x", s3_endpoint_url=denied, s3_max_attempts=3)
    with pytest.raises(StoreError, match=r"access to s3://locked was denied .*check the credentials"):
        publish(adapter, FILES, "team/model", "1", "test/tiny", {}, settings)
    assert servers[-1][1].count == 1

    busy = start(503, "SlowDown")
    settings = Settings(data_dir=tmp_path, store_uri="s3://busy/x", s3_endpoint_url=busy, s3_max_attempts=3)
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"kept answering .*transient; tried 3 times"):
        publish(adapter, FILES, "team/model", "1", "test/tiny", {}, settings)
    assert servers[-1][1].count == 3 and time.monotonic() - started < 30


def test_published_uris_split_into_store_model_and_version():
    assert parse_published_uri("s3://models/adapters/team/bot/3/") == ("s3://models/adapters", "team/bot", "3")
    assert parse_published_uri("s3://models/team/bot/3") == ("s3://models", "team/bot", "3")
    assert parse_published_uri("file:///srv/store/team/bot/12/") == ("file:///srv/store", "team/bot", "12")
    with pytest.raises(StoreError, match="not a published version"):
        parse_published_uri("https://x/team/bot/1")


# --- published versions are immutable ---------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_published_version_never_takes_other_bytes_and_identical_ones_are_a_no_op(tmp_path, adapter):
    settings = Settings(data_dir=tmp_path, store_uri=(tmp_path / "store").as_uri())
    first = publish(adapter, FILES, "team/model", "1", "test/tiny", {"job_id": "cust-1"}, settings)
    folder = tmp_path / "store" / "team" / "model" / "1"
    stored = {p.name: p.read_bytes() for p in folder.iterdir()}

    # The same bytes again, even from another job: nothing is written, the first publication comes back.
    again = publish(adapter, FILES, "team/model", "1", "test/tiny", {"job_id": "cust-2"}, settings)
    assert again.manifest == first.manifest and again.manifest.lineage == {"job_id": "cust-1"}
    assert again.uploaded == [] and again.bytes_uploaded == 0 and again.uri == first.uri

    weights = adapter / "adapter_model.safetensors"
    old = weights.read_bytes()
    weights.write_bytes(old[:-1] + b"\x00")
    with pytest.raises(VersionExists) as refused:
        publish(adapter, FILES, "team/model", "1", "test/tiny", {}, settings)
    message = str(refused.value)
    assert "team/model v1 is already published" in message and "adapter_model.safetensors" in message
    assert _sha(old) in message and _sha(weights.read_bytes()) in message
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == stored  # nothing was touched

    # A file more or less, or another base model, is other content too.
    weights.write_bytes(old)
    (adapter / "tokenizer.json").write_text("{}")
    with pytest.raises(VersionExists, match=r"tokenizer.json has sha256 none \(not in the published version\) there and "
                                            + _sha(b"{}")):
        publish(adapter, [*FILES, "tokenizer.json"], "team/model", "1", "test/tiny", {}, settings)
    with pytest.raises(VersionExists, match=r"adapter_model.safetensors has sha256 [0-9a-f]{64} there and none \(not in this publication\)"):
        publish(adapter, ["adapter_config.json"], "team/model", "1", "test/tiny", {}, settings)
    with pytest.raises(VersionExists, match="published for base model 'test/tiny', not 'test/other'"):
        publish(adapter, FILES, "team/model", "1", "test/other", {}, settings)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == stored

    # Other content goes out as a new version; the published one still fetches as it was.
    weights.write_bytes(b"new weights")
    assert publish(adapter, FILES, "team/model", "2", "test/tiny", {}, settings).uploaded == FILES
    fetch("team/model", "1", tmp_path / "dl", settings)
    assert (tmp_path / "dl" / "adapter_model.safetensors").read_bytes() == old


def test_a_half_written_version_is_completed_and_an_unreadable_manifest_is_not_overwritten(tmp_path, adapter):
    settings = Settings(data_dir=tmp_path, store_uri=(tmp_path / "store").as_uri())
    folder = tmp_path / "store" / "team" / "model" / "1"
    # An upload that stopped before its manifest, with other bytes and a file this publication lacks.
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"from the crashed upload")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "adapter_config.json").write_bytes((adapter / "adapter_config.json").read_bytes())
    assert list_published(settings) == []  # never published

    result = publish(adapter, FILES, "team/model", "1", "test/tiny", {}, settings)
    assert result.uploaded == ["adapter_model.safetensors"] and result.unchanged == ["adapter_config.json"]
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "manifest.json"]
    assert list_published(settings) == ["team/model@1"]
    assert fetch("team/model", "1", tmp_path / "dl", settings).files == result.manifest.files

    # A manifest that cannot be read may belong to a published version: it is refused, not rewritten.
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"manifest.json cannot be read .*the version is not overwritten"):
        publish(adapter, FILES, "team/model", "1", "test/tiny", {}, settings)
    assert (folder / "manifest.json").read_text() == "{not json"


def test_s3_versions_are_immutable_and_half_written_ones_complete(tmp_path, adapter, s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="immutable")
    settings = Settings(data_dir=tmp_path, store_uri="s3://immutable/p", s3_endpoint_url=s3_endpoint)
    # Half-written: one object uploaded, then the crash; another object that the new content drops.
    s3.put_object(Bucket="immutable", Key="p/team/model/4/adapter_model.safetensors", Body=b"partial")
    s3.put_object(Bucket="immutable", Key="p/team/model/4/old.safetensors", Body=b"stray")
    first = publish(adapter, FILES, "team/model", "4", "test/tiny", {}, settings)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="immutable", Prefix="p/team/model/4/")["Contents"])
    assert keys == [f"p/team/model/4/{n}" for n in ("adapter_config.json", "adapter_model.safetensors", "manifest.json")]

    again = publish(adapter, FILES, "team/model", "4", "test/tiny", {}, settings)
    assert again.manifest == first.manifest and again.uploaded == [] and again.bytes_uploaded == 0

    published = (adapter / "adapter_model.safetensors").read_bytes()
    (adapter / "adapter_model.safetensors").write_bytes(b"retrained")
    with pytest.raises(VersionExists, match=f"adapter_model.safetensors has sha256 {_sha(published)} there and {_sha(b'retrained')} here"):
        publish(adapter, FILES, "team/model", "4", "test/tiny", {}, settings)
    body = s3.get_object(Bucket="immutable", Key="p/team/model/4/adapter_model.safetensors")["Body"].read()
    assert body == published
