"""The artifact store: publish a model version's files with a manifest, to ``file://`` or ``s3://``.

Layout: ``<store>/<namespace>/<name>/<version>/`` holding the files and ``manifest.json`` (sha256
and size per file, base model, lineage, MLflow version). Files go first and the manifest last, so
a manifest only exists for a complete upload; a file whose stored sha256 already matches is not
uploaded again. S3 goes through boto3 (any S3-compatible endpoint; credentials from the AWS chain).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel

from customizer.settings import Settings

log = logging.getLogger("customizer.store")
MANIFEST = "manifest.json"


class StoreError(RuntimeError):
    """The store is unreachable, misconfigured, or holds something that does not match its manifest."""


class FileEntry(BaseModel):
    sha256: str
    size: int


class Manifest(BaseModel):
    output_model: str
    version: str
    base_model: str
    files: dict[str, FileEntry]
    lineage: dict[str, Any]
    created_at: float


class Published(BaseModel):
    uri: str
    manifest: Manifest
    uploaded: list[str]
    unchanged: list[str]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class FileStore:
    """A folder with the same layout as the S3 store."""

    def __init__(self, root: Path):
        self.root = root

    def uri(self, key: str) -> str:
        return (self.root / key).as_uri()

    def stored_sha256(self, key: str) -> str | None:
        path = self.root / key
        return sha256_file(path) if path.is_file() else None

    def put_file(self, source: Path, key: str, sha256: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.copyfile(source, tmp)
        tmp.replace(target)

    def put_bytes(self, data: bytes, key: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(target)

    def get_bytes(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None


class S3Store:
    """A bucket and prefix on any S3-compatible endpoint."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        # "standard" retries only throttling and transient errors, with backoff.
        self.s3 = boto3.client("s3", endpoint_url=endpoint_url, config=Config(retries={"mode": "standard", "max_attempts": 5}))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def stored_sha256(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head.get("Metadata", {}).get("sha256")

    def put_file(self, source: Path, key: str, sha256: str) -> None:
        from boto3.s3.transfer import TransferConfig

        self.s3.upload_file(
            str(source), self.bucket, self._key(key),
            Config=TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20),
            ExtraArgs={"Metadata": {"sha256": sha256}},
        )

    def put_bytes(self, data: bytes, key: str) -> None:
        digest = hashlib.sha256(data).hexdigest()
        self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": digest})

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None


def open_store(uri: str, settings: Settings) -> FileStore | S3Store:
    """The store behind ``file:///path`` or ``s3://bucket/prefix``.

    Raises:
        StoreError: any other scheme.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return FileStore(Path(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"store URI {uri!r} names no bucket: use s3://bucket/prefix")
        return S3Store(parsed.netloc, parsed.path, settings.s3_endpoint_url)
    raise StoreError(f"store URI {uri!r}: unsupported scheme {parsed.scheme!r}; use file:// or s3://")


def publish(
    folder: Path,
    files: list[str],
    output_model: str,
    version: str,
    base_model: str,
    lineage: dict[str, Any],
    settings: Settings,
) -> Published:
    """Publish ``files`` from ``folder`` as ``output_model`` version ``version``.

    Returns:
        Where it was published, its manifest, and which files were uploaded or already there.

    Raises:
        StoreError: a listed file is missing, or the store rejects the upload.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    store = open_store(settings.publish_uri, settings)
    prefix = f"{output_model}/{version}"
    entries: dict[str, FileEntry] = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise StoreError(f"cannot publish {output_model} v{version}: {path} is missing")
        entries[name] = FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
    uploaded, unchanged = [], []
    try:
        for name, entry in entries.items():
            key = f"{prefix}/{name}"
            if store.stored_sha256(key) == entry.sha256:
                unchanged.append(name)
                continue
            store.put_file(folder / name, key, entry.sha256)
            uploaded.append(name)
        manifest = Manifest(
            output_model=output_model, version=version, base_model=base_model,
            files=entries, lineage=lineage, created_at=time.time(),
        )
        previous = _stored_manifest(store, f"{prefix}/{MANIFEST}")
        if previous is not None and previous.files == manifest.files:
            manifest = previous  # identical content: the manifest stays as it was
        else:
            store.put_bytes(manifest.model_dump_json(indent=2).encode(), f"{prefix}/{MANIFEST}")
    except (BotoCoreError, ClientError) as exc:
        raise StoreError(f"publishing {output_model} v{version} to {settings.publish_uri} failed: {exc}") from exc
    log.info("Published %s v%s to %s (%d uploaded, %d unchanged)", output_model, version, store.uri(prefix), len(uploaded), len(unchanged))
    return Published(uri=store.uri(prefix) + "/", manifest=manifest, uploaded=uploaded, unchanged=unchanged)


def _stored_manifest(store: FileStore | S3Store, key: str) -> Manifest | None:
    from pydantic import ValidationError

    data = store.get_bytes(key)
    try:
        return Manifest.model_validate_json(data) if data is not None else None
    except ValidationError:  # unreadable: publishing rewrites it
        return None


def fetch(output_model: str, version: str, dest: Path, settings: Settings) -> Manifest:
    """Download a published version into ``dest``, verifying every file against the manifest.

    Raises:
        StoreError: no manifest, or a file whose sha256 or size does not match.
    """
    store = open_store(settings.publish_uri, settings)
    prefix = f"{output_model}/{version}"
    manifest = _stored_manifest(store, f"{prefix}/{MANIFEST}")
    if manifest is None:
        raise StoreError(f"{output_model} v{version} has no readable manifest in {settings.publish_uri}")
    dest.mkdir(parents=True, exist_ok=True)
    for name, entry in manifest.files.items():
        data = store.get_bytes(f"{prefix}/{name}")
        if data is None or len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise StoreError(f"{store.uri(prefix)}/{name} does not match its manifest (sha256 or size differs)")
        (dest / name).write_bytes(data)
    return manifest
