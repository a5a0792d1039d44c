"""The object store under every layer: one S3 client factory, one path rule, one prefix download.

Publication (``deploy.store``), the Data Store (``data.datastore``), datasets (``data.sources``, the
REST API's snapshots), base models (``training.base_model``) and evaluation jobs' models all reach
S3 through ``s3_client`` (retries, transfer and checksum settings from ``Settings``) and copy a
prefix to a folder through ``download_prefix``, whose keys pass ``safe_path``: a key that would land
outside the destination is refused, by name, never skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from core.settings import Settings

MAX_PATH_CHARS, MAX_DEPTH, MAX_NAME_BYTES = 1024, 32, 255  # what common file systems and object stores accept


class PathRefused(ValueError):
    """A relative path (a repo path or an object key under a prefix) that could leave its folder."""


def safe_path(path: str) -> str:
    """A relative path, normalised, or ``PathRefused`` saying why it is refused.

    >>> safe_path("training/data.jsonl")
    'training/data.jsonl'
    >>> safe_path("../etc/passwd")
    Traceback (most recent call last):
    ...
    core.objects.PathRefused: path '../etc/passwd' is refused: '..' climbs out of the repo
    """
    if not path or len(path) > MAX_PATH_CHARS:
        raise PathRefused(f"path {path[:64]!r} is refused: empty or longer than {MAX_PATH_CHARS} characters")
    if path.startswith("/") or "\\" in path or any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in path):
        raise PathRefused(f"path {path!r} is refused: absolute paths, backslashes and control characters are not allowed")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PathRefused(f"path {path!r} is refused: it is not valid Unicode ({exc.reason})") from exc
    segments = path.split("/")
    if ".." in segments:
        raise PathRefused(f"path {path!r} is refused: '..' climbs out of the repo")
    if any(part in ("", ".") for part in segments):
        raise PathRefused(f"path {path!r} is refused: empty or '.' segments are not allowed")
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
    core.objects.PathRefused: object key 'sets/email/../../etc/x': path '../../etc/x' is refused: '..' climbs out of the repo

    Raises:
        PathRefused: the key would land outside the folder the prefix is copied to.
    """
    prefix = prefix.strip("/")
    relative = key[len(prefix):].lstrip("/") if prefix else key
    if not relative or relative.endswith("/"):
        return None
    try:
        return PurePosixPath(safe_path(relative))
    except PathRefused as exc:
        raise PathRefused(f"object key {key!r}: {exc}") from exc


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for ``settings.s3_endpoint_url`` (AWS when unset; credentials from the AWS chain).

    "standard" retries retry only throttling, 5xx and connection errors, with backoff, up to
    ``settings.s3_max_attempts`` attempts in all.
    """
    # delayed: boto3 is heavy (start-up time)
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url,
        config=Config(retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts}),
    )


def transfer_config(settings: Settings) -> Any:
    """boto3's transfer settings (multipart threshold and part size, parallel parts) from settings."""
    from boto3.s3.transfer import TransferConfig  # delayed: boto3 is heavy (start-up time)

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

    Args:
        keep: which relative paths to copy (default: all).
        settings: its transfer settings are used when given.

    Returns:
        How many objects were listed under the prefix (folder markers included), 0 when none.

    Raises:
        PathRefused: a key would land outside ``dest``; nothing after it is copied.
        botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError: the store failed.
    """
    listed = list_keys(client, bucket, prefix)
    extra = {"Config": transfer_config(settings)} if settings is not None else {}
    for key, _size in listed:
        relative = relative_key(key, prefix)
        if relative is None or (keep is not None and not keep(relative)):
            continue
        target = dest.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target), **extra)
    return len(listed)


class S3Files:
    """Small files under a bucket prefix, by relative key: what the Data Store keeps in S3."""

    def __init__(self, bucket: str, prefix: str, settings: Settings):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.s3 = s3_client(settings)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        import hashlib

        self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": hashlib.sha256(data).hexdigest()})

    def get(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(f"{prefix}/{key}")

    def list(self, prefix: str) -> dict[str, int]:
        full = self._key(prefix).strip("/")
        return {key[len(full):].lstrip("/"): size for key, size in list_keys(self.s3, self.bucket, full)}
