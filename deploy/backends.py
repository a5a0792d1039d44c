"""The artifact store's two backends, a ``file://`` folder and an ``s3://bucket/prefix``, with one
interface (put, get, list, what is stored under a key), and S3 failures explained as ``StoreError``s
that say whether retrying could help. Clients, retries and transfer settings come from
``core.objects``; what is published and how is ``deploy.store``'s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel

from core import objects
from core.settings import Settings

# S3 error codes that no retry can fix.
_MISSING_BUCKET = {"NoSuchBucket"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken", "ExpiredToken"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class StoreError(RuntimeError):
    """The store is unreachable, misconfigured, or holds something that does not match its manifest."""


class FileEntry(BaseModel):
    sha256: str
    size: int


def _check_name(name: str) -> str:
    """A stored file name must stay inside its version folder."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or name.startswith("."):
        raise StoreError(f"file name {name!r} is not allowed in a published version")
    return name


class FileStore:
    """A folder with the same layout as the S3 store."""

    def __init__(self, root: Path):
        self.root = root
        self.bytes_sent = 0

    def uri(self, key: str) -> str:
        return (self.root / key).as_uri()

    def check(self) -> None:
        """Nothing to check: the folder is created on the first write."""

    def stored(self, key: str) -> FileEntry | None:
        path = self.root / key
        return FileEntry(sha256=sha256_file(path), size=path.stat().st_size) if path.is_file() else None

    def put_file(self, source: Path, key: str, sha256: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
        self.bytes_sent += target.stat().st_size

    def put_bytes(self, data: bytes, key: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(target)
        self.bytes_sent += len(data)

    def get_bytes(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def get_file(self, key: str, dest: Path) -> bool:
        path = self.root / key
        if not path.is_file():
            return False
        shutil.copyfile(path, dest)
        return True

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())


class S3Store:
    """A bucket and prefix on any S3-compatible endpoint."""

    def __init__(self, bucket: str, prefix: str, settings: Settings):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint = settings.s3_endpoint_url or "AWS S3"
        # "standard" retries only throttling, 5xx and connection errors, with backoff.
        self.max_attempts = settings.s3_max_attempts
        self.s3 = objects.s3_client(settings)
        self.transfer = objects.transfer_config(settings)
        self.bytes_sent = 0
        self._count_lock = threading.Lock()
        self.s3.meta.events.register("before-send.s3", self._count_body)

    def _count_body(self, request: Any, **_: Any) -> None:
        """Count request bodies as they go on the wire (retries included)."""
        if request.method in ("PUT", "POST"):
            size = int(request.headers.get("Content-Length") or 0)
            with self._count_lock:
                self.bytes_sent += size

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def check(self) -> None:
        """Fail fast, and clearly, when the bucket is missing or the credentials are refused."""
        self.s3.head_bucket(Bucket=self.bucket)

    def stored(self, key: str) -> FileEntry | None:
        from botocore.exceptions import ClientError

        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        sha256 = head.get("Metadata", {}).get("sha256")
        return FileEntry(sha256=sha256, size=head["ContentLength"]) if sha256 else None

    def put_file(self, source: Path, key: str, sha256: str) -> None:
        self.s3.upload_file(
            str(source), self.bucket, self._key(key), Config=self.transfer, ExtraArgs={"Metadata": {"sha256": sha256}}
        )

    def put_bytes(self, data: bytes, key: str) -> None:
        digest = hashlib.sha256(data).hexdigest()
        self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": digest})

    def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def get_file(self, key: str, dest: Path) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.download_file(self.bucket, self._key(key), str(dest), Config=self.transfer)
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list_keys(self, prefix: str) -> list[str]:
        keys = []
        start = self._key(prefix)
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        strip = f"{self.prefix}/" if self.prefix else ""
        return sorted(k.removeprefix(strip) for k in keys)


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _explain(exc: BaseException, store: FileStore | S3Store, doing: str) -> StoreError:
    """Turn a boto3 failure into a StoreError that says whether retrying could help."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    chain, seen = [], exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    client_error = next((e for e in chain if isinstance(e, ClientError)), None)
    endpoint = getattr(store, "endpoint", "")
    bucket = getattr(store, "bucket", "")
    if any(isinstance(e, NoCredentialsError) for e in chain):
        return StoreError(f"{doing} failed: no AWS credentials found (environment, ~/.aws or an instance role)")
    if client_error is not None:
        code = _error_code(client_error)
        # HEAD answers carry no error code, only the status.
        if code in _MISSING_BUCKET or (code in ("404", "NotFound") and client_error.operation_name == "HeadBucket"):
            return StoreError(f"{doing} failed: S3 bucket {bucket!r} does not exist at {endpoint} (NoSuchBucket)")
        if code in _DENIED:
            return StoreError(
                f"{doing} failed: access to s3://{bucket} was denied at {endpoint} ({code}); "
                "check the credentials (AWS chain) and the bucket policy"
            )
        status = client_error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if status >= 500 or code in _TRANSIENT:
            attempts = getattr(store, "max_attempts", 1)
            return StoreError(f"{doing} failed: S3 at {endpoint} kept answering {code} (transient; tried {attempts} times)")
        return StoreError(f"{doing} failed: S3 answered {code}: {client_error}")
    if any(isinstance(e, EndpointConnectionError) for e in chain):
        attempts = getattr(store, "max_attempts", 1)
        return StoreError(f"{doing} failed: cannot reach the S3 endpoint {endpoint} (tried {attempts} times): {exc}")
    return StoreError(f"{doing} failed: {exc}")


def _store_failures() -> tuple[type[BaseException], ...]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, Boto3Error)


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
        return S3Store(parsed.netloc, parsed.path, settings)
    raise StoreError(f"store URI {uri!r}: unsupported scheme {parsed.scheme!r}; use file:// or s3://")
