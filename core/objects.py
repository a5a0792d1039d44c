"""The object store under every layer: one S3 client factory, one path rule, one prefix download, and
one files API over a ``file://`` folder or an ``s3://bucket/prefix``.

Publication (``deploy.store``), the Data Store (``data.datastore``), datasets (``data.sources``, the
REST API's snapshots), base models (``training.base_model``) and evaluation jobs' models all reach
S3 through ``s3_client`` (retries, checksums and transfers from ``Settings``). A prefix is copied to a
folder by ``download_prefix``, whose keys pass ``safe_path``: a key that would land outside the
destination is refused, by name, never skipped. ``open_files`` gives ``FolderFiles`` or ``S3Files``,
which keep files by relative key with the same layout, so a ``file://`` store can stand in for S3.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import urlparse

from core.settings import Settings

MAX_PATH_CHARS, MAX_DEPTH, MAX_NAME_BYTES = 1024, 32, 255  # what common file systems and object stores accept
_TMP = ".tmp-"  # files being written; never listed
_MISSING = ("404", "NoSuchKey", "NotFound")


class PathRefused(ValueError):
    """A relative path (a repo path or an object key under a prefix) that could leave its folder."""


def contained_path(path: str) -> str:
    """A relative path that cannot leave the folder it is joined to, or ``PathRefused`` saying why.

    The traversal rule under ``safe_path``; store keys (a repo's prefix and a path in it) pass this.

    >>> contained_path("a/../../b")
    Traceback (most recent call last):
    ...
    core.objects.PathRefused: path 'a/../../b' is refused: '..' climbs out of its folder

    Raises:
        PathRefused: the path is empty, absolute, holds ``..``, empty or ``.`` segments, backslashes
            or control characters.
    """
    if not path:
        raise PathRefused("path '' is refused: it is empty")
    if path.startswith("/") or "\\" in path or any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in path):
        raise PathRefused(f"path {path[:256]!r} is refused: absolute paths, backslashes and control characters are not allowed")
    segments = path.split("/")
    if ".." in segments:
        raise PathRefused(f"path {path[:256]!r} is refused: '..' climbs out of its folder")
    if any(part in ("", ".") for part in segments):
        raise PathRefused(f"path {path[:256]!r} is refused: empty or '.' segments are not allowed")
    return path


def safe_path(path: str) -> str:
    """A relative path, normalised, that stays in its folder and that common file systems and object
    stores accept, or ``PathRefused`` saying why it is refused.

    >>> safe_path("training/data.jsonl")
    'training/data.jsonl'
    >>> safe_path("../etc/passwd")
    Traceback (most recent call last):
    ...
    core.objects.PathRefused: path '../etc/passwd' is refused: '..' climbs out of its folder

    Raises:
        PathRefused: ``contained_path`` refuses it, or it is longer than 1024 characters, not valid
            Unicode, more than 32 folders deep, or has a name over 255 bytes.
    """
    if len(path) > MAX_PATH_CHARS:
        raise PathRefused(f"path {path[:64]!r}... is refused: longer than {MAX_PATH_CHARS} characters")
    contained_path(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PathRefused(f"path {path!r} is refused: it is not valid Unicode ({exc.reason})") from exc
    segments = path.split("/")
    if len(segments) > MAX_DEPTH:
        raise PathRefused(f"path {path[:64]!r}... is refused: more than {MAX_DEPTH} folders deep")
    long = next((part for part in segments if len(part.encode("utf-8")) > MAX_NAME_BYTES), None)
    if long is not None:
        raise PathRefused(f"path {path[:64]!r}... is refused: a name is longer than {MAX_NAME_BYTES} bytes ({long[:32]!r}...)")
    return "/".join(PurePosixPath(path).parts)


def relative_key(key: str, prefix: str) -> PurePosixPath | None:
    """An object key's path under ``prefix``, or None for a folder marker (a key ending in ``/``).

    >>> relative_key("sets/email/training/a.jsonl", "sets/email")
    PurePosixPath('training/a.jsonl')
    >>> relative_key("sets/email/training/", "sets/email") is None
    True
    >>> relative_key("sets/email/../../etc/x", "sets/email")
    Traceback (most recent call last):
    ...
    core.objects.PathRefused: object key 'sets/email/../../etc/x': path '../../etc/x' is refused: '..' climbs out of its folder

    Raises:
        PathRefused: the key is not under the prefix, or its path under it is absolute, climbs with
            ``..`` or otherwise would land outside the folder the prefix is copied to.
    """
    prefix = prefix.strip("/")
    if prefix and not key.startswith(f"{prefix}/"):
        raise PathRefused(f"object key {key!r} is refused: it is not under the prefix {prefix!r}")
    relative = key[len(prefix) + 1:] if prefix else key
    if not relative or relative.endswith("/"):
        return None
    try:
        return PurePosixPath(safe_path(relative))
    except PathRefused as exc:
        raise PathRefused(f"object key {key!r}: {exc}") from exc


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for ``settings.s3_endpoint_url`` (AWS when unset; credentials from the AWS chain).

    "standard" retries retry only throttling, 5xx and connection errors, with backoff, up to
    ``settings.s3_max_attempts`` attempts in all; request checksums are computed and response
    checksums validated as ``settings.s3_checksums`` says.
    """
    # delayed: boto3 is heavy (start-up time)
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url,
        config=Config(
            retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
            request_checksum_calculation=settings.s3_checksums,
            response_checksum_validation=settings.s3_checksums,
        ),
    )


def transfer_config(settings: Settings) -> Any:
    """boto3's transfer settings (multipart threshold and part size, parallel parts) from settings."""
    # delayed: boto3 is heavy (start-up time)
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=settings.s3_multipart_threshold,
        multipart_chunksize=settings.s3_multipart_chunksize,
        max_concurrency=settings.s3_max_concurrency,
    )


def list_keys(client: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    """``(key, size)`` of every object under ``prefix`` (the whole bucket for an empty prefix)."""
    prefix = prefix.strip("/")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
    return [(item["Key"], item["Size"]) for page in pages for item in page.get("Contents", [])]


def download_prefix(
    client: Any, bucket: str, prefix: str, dest: Path, keep: Callable[[PurePosixPath], bool] | None = None,
    settings: Settings | None = None,
) -> int:
    """Copy every object under ``s3://bucket/prefix`` into ``dest`` (keys relative to the prefix).

    Every key is checked before anything is copied, so a refused key leaves ``dest`` untouched.

    Args:
        client: an ``s3_client``.
        keep: which relative paths to copy (default: all).
        settings: its transfer settings are used when given.

    Returns:
        How many objects were listed under the prefix (folder markers included), 0 when none.

    Raises:
        PathRefused: a key would land outside ``dest`` (the message names the key).
        botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError: the store failed.
    """
    listed = list_keys(client, bucket, prefix)
    wanted = [(key, relative) for key, _size in listed if (relative := relative_key(key, prefix)) is not None]
    extra = {"Config": transfer_config(settings)} if settings is not None else {}
    for key, relative in wanted:
        if keep is not None and not keep(relative):
            continue
        target = dest.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target), **extra)
    return len(listed)


class Stored(NamedTuple):
    """What the store holds under a key: the sha256 it was written with (None when S3 metadata lacks
    it) and the size in bytes."""

    sha256: str | None
    size: int


def _checked(key: str) -> str:
    """A non-empty key passes the traversal rule; the empty key is the store's root."""
    return contained_path(key) if key else ""


class FolderFiles:
    """Files under a local folder, by relative key. Symbolic links are never followed, and writes
    land under a temporary name renamed into place, so a reader never sees half a file."""

    def __init__(self, root: Path):
        self.root = root
        self.bytes_sent = 0  # bytes written (what publication reports as uploaded)

    def _path(self, key: str) -> Path:
        path = self.root
        for part in PurePosixPath(_checked(key)).parts:
            path = path / part
            if path.is_symlink():
                raise PathRefused(f"{key!r} is refused: {path.relative_to(self.root)} is a symbolic link")
        inside, resolved = self.root.resolve(), path.resolve()
        if resolved != inside and inside not in resolved.parents:
            raise PathRefused(f"{key!r} is refused: it leads outside {self.root}")
        return path

    def uri(self, key: str) -> str:
        return (self.root / key).as_uri()

    def check(self) -> None:
        """Nothing to check: the folder is created on the first write."""

    def _write(self, key: str, write: Callable[[Path], None]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_TMP}{os.getpid()}-{uuid.uuid4().hex}")  # short: the name itself may be 255 bytes
        write(tmp)
        tmp.replace(path)
        self.bytes_sent += path.stat().st_size

    def put(self, key: str, data: bytes) -> None:
        self._write(key, lambda tmp: tmp.write_bytes(data))

    def put_file(self, key: str, source: Path, sha256: str) -> None:
        """Copy ``source`` to ``key`` (``sha256`` is recomputed from the file when asked for)."""
        self._write(key, lambda tmp: shutil.copyfile(source, tmp))

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def get_file(self, key: str, dest: Path) -> bool:
        """Copy ``key`` to ``dest``; False when there is no such file."""
        path = self._path(key)
        if not path.is_file():
            return False
        shutil.copyfile(path, dest)
        return True

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> Stored | None:
        path = self._path(key)
        return Stored(sha256=sha256_file(path), size=path.stat().st_size) if path.is_file() else None

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            path.unlink()

    def delete_prefix(self, prefix: str) -> None:
        """Delete every file below ``prefix`` (never the whole store: an empty prefix is refused)."""
        path = self._path(contained_path(prefix))
        if path.is_dir():
            shutil.rmtree(path)

    def list(self, prefix: str) -> dict[str, int]:
        """Relative path -> size of every regular file below ``prefix`` (symlinks are skipped)."""
        base = self._path(prefix)
        if not base.is_dir():
            return {}
        out = {}
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
            for filename in filenames:
                path = Path(dirpath) / filename
                if path.is_symlink() or filename.startswith(_TMP):
                    continue
                out[path.relative_to(base).as_posix()] = path.stat().st_size
        return dict(sorted(out.items()))


def store_errors() -> tuple[type[BaseException], ...]:
    """The exceptions by which boto3 says the store failed (refused, missing, unreachable), for
    ``except`` clauses that name the store in their message."""
    # delayed: boto3 is heavy (start-up time)
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, Boto3Error)


def s3_error_code(exc: Any) -> str:
    """The S3 error code of a botocore ``ClientError`` (the HTTP status for HEAD answers, which carry none)."""
    return str(exc.response.get("Error", {}).get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class S3Files:
    """Files under a bucket prefix, by relative key; each object carries its sha256 as metadata."""

    def __init__(self, bucket: str, prefix: str, settings: Settings):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint = settings.s3_endpoint_url or "AWS S3"
        self.max_attempts = settings.s3_max_attempts
        self.s3 = s3_client(settings)
        self.transfer = transfer_config(settings)
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
        key = _checked(key)
        return f"{self.prefix}/{key}" if self.prefix and key else (key or self.prefix)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def check(self) -> None:
        """Fail fast, and clearly, when the bucket is missing or the credentials are refused."""
        self.s3.head_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": hashlib.sha256(data).hexdigest()})

    def put_file(self, key: str, source: Path, sha256: str) -> None:
        """Upload ``source`` (in parts when large) with ``sha256`` as its metadata."""
        self.s3.upload_file(str(source), self.bucket, self._key(key), Config=self.transfer, ExtraArgs={"Metadata": {"sha256": sha256}})

    def _missing(self, call: Callable[[], Any]) -> Any:
        """``call()``, or None when S3 answers that the object does not exist."""
        # delayed: boto3 is heavy (start-up time)
        from botocore.exceptions import ClientError

        try:
            return call()
        except ClientError as exc:
            if s3_error_code(exc) in _MISSING:
                return None
            raise

    def get(self, key: str) -> bytes | None:
        body = self._missing(lambda: self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"])
        return body.read() if body is not None else None

    def get_file(self, key: str, dest: Path) -> bool:
        """Download ``key`` to ``dest`` (in parts when large); False when there is no such object."""
        def download() -> bool:
            self.s3.download_file(self.bucket, self._key(key), str(dest), Config=self.transfer)
            return True

        return self._missing(download) or False

    def exists(self, key: str) -> bool:
        return self._missing(lambda: self.s3.head_object(Bucket=self.bucket, Key=self._key(key))) is not None

    def stat(self, key: str) -> Stored | None:
        head = self._missing(lambda: self.s3.head_object(Bucket=self.bucket, Key=self._key(key)))
        return Stored(sha256=head.get("Metadata", {}).get("sha256"), size=head["ContentLength"]) if head else None

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object below ``prefix`` (never the whole store: an empty prefix is refused)."""
        prefix = contained_path(prefix)
        for key in self.list(prefix):
            self.delete(f"{prefix}/{key}")

    def list(self, prefix: str) -> dict[str, int]:
        """Relative path -> size of every object below ``prefix`` (folder markers are skipped).

        Raises:
            PathRefused: a stored key that is not a safe relative path under ``prefix``.
        """
        full = self._key(prefix)
        listed = [(relative_key(key, full), size) for key, size in list_keys(self.s3, self.bucket, full)]
        return dict(sorted((path.as_posix(), size) for path, size in listed if path is not None))


def open_files(uri: str, settings: Settings) -> FolderFiles | S3Files:
    """The files behind ``file:///folder`` or ``s3://bucket/prefix``.

    Raises:
        ValueError: another scheme, or an S3 URI without a bucket (the message names the URI).
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return FolderFiles(Path(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"{uri!r} names no bucket: use s3://bucket/prefix")
        return S3Files(parsed.netloc, parsed.path, settings)
    raise ValueError(f"{uri!r}: unsupported scheme {parsed.scheme!r}; use file:///folder or s3://bucket/prefix")
