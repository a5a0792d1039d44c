"""How publication sends files to S3 (moto over HTTP): one client, no needless requests, the manifest's
sha256 as the S3 checksum of single-request uploads, and a refused upload that publishes nothing."""

import base64
import json
import os
from pathlib import Path

import pytest
from botocore.awsrequest import AWSResponse

from core import objects
from core.settings import Settings
from deploy.store import NotPublished, StoreError, fetch, list_published, publish
from tests.s3server import counting_s3_server

FILES = ["adapter_config.json", "adapter_model.safetensors"]


@pytest.fixture(scope="module")
def counted_s3():
    with counting_s3_server() as server:
        yield server


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(64 << 10))
    return folder


class _Sent:
    """Every S3 client publication builds, and the headers of every request they send."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answer=None):
        self.clients, self.requests, self.answer = [], [], answer
        real = objects.s3_client

        def spy(settings: Settings):
            client = real(settings)
            client.meta.events.register("before-send.s3", self._seen)
            self.clients.append(client)
            return client

        monkeypatch.setattr(objects, "s3_client", spy)

    def _seen(self, request, **_):
        headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        self.requests.append((request.method, request.url, headers))
        return self.answer(request) if self.answer else None

    def puts(self, name: str) -> list[dict]:
        return [headers for method, url, headers in self.requests if method == "PUT" and url.split("?")[0].endswith(f"/{name}")]


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def test_a_new_version_uses_one_client_and_one_request_before_its_files(tmp_path, adapter, counted_s3, monkeypatch):
    bucket = counted_s3.new_bucket("one-client")
    settings = Settings(data_dir=tmp_path, store_uri=f"s3://{bucket}/p", s3_endpoint_url=counted_s3.endpoint)
    sent = _Sent(monkeypatch)
    counted_s3.reset()
    result = publish(adapter, FILES, "team/model", "1", "test/tiny", {}, settings)
    assert result.uploaded == FILES and len(sent.clients) == 1
    # One listing says nothing is stored yet: no manifest to read, no file's sha256 to ask for.
    assert [(method, path) for method, path, _ in counted_s3.requests if method in ("GET", "HEAD")] == [("GET", f"/{bucket}")]
    assert fetch("team/model", "1", tmp_path / "dl", settings).files == result.manifest.files


@pytest.mark.parametrize("checksums", ["when_supported", "when_required"])
def test_single_request_uploads_carry_the_manifest_sha256_as_their_checksum(tmp_path, adapter, counted_s3, monkeypatch, checksums):
    bucket = counted_s3.new_bucket("checksums")
    (adapter / "model.safetensors").write_bytes(os.urandom(6 << 20))  # over the threshold: in parts
    settings = Settings(
        data_dir=tmp_path, store_uri=f"s3://{bucket}/p", s3_endpoint_url=counted_s3.endpoint, s3_checksums=checksums,
        s3_multipart_threshold=5 << 20, s3_multipart_chunksize=5 << 20,
    )
    sent = _Sent(monkeypatch)
    result = publish(adapter, [*FILES, "model.safetensors"], "team/model", "1", "test/tiny", {}, settings)
    for name in FILES:
        [headers] = sent.puts(name)
        if checksums == "when_supported":
            assert headers["x-amz-checksum-sha256"] == _b64(result.manifest.files[name].sha256)
            assert not any(h.startswith("x-amz-checksum-crc") for h in headers)  # botocore computed none of its own
        else:
            assert not any(h.startswith("x-amz-checksum") for h in headers)
    parts = [headers for method, url, headers in sent.requests if method == "PUT" and "partNumber=" in url]
    assert len(parts) == 2 and not any("x-amz-checksum-sha256" in headers for headers in parts)


def test_a_refused_upload_names_the_file_and_publishes_nothing(tmp_path, adapter, counted_s3, monkeypatch):
    bucket = counted_s3.new_bucket("refused")
    settings = Settings(data_dir=tmp_path, store_uri=f"s3://{bucket}/p", s3_endpoint_url=counted_s3.endpoint)
    denied = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>refused</Message></Error>"

    class Body:
        def stream(self, **_):
            yield denied

    def refuse_weights(request):
        if request.method == "PUT" and request.url.split("?")[0].endswith("/adapter_model.safetensors"):
            return AWSResponse(request.url, 403, {}, Body())
        return None

    _Sent(monkeypatch, answer=refuse_weights)
    with pytest.raises(StoreError, match=r"uploading adapter_model.safetensors failed: access to s3://refused-\w+ was denied"):
        publish(adapter, FILES, "team/model", "1", "test/tiny", {}, settings)
    monkeypatch.undo()
    assert list_published(settings) == []  # no manifest: the version was never published
    with pytest.raises(NotPublished):
        fetch("team/model", "1", tmp_path / "dl", settings)
