"""Where a dataset comes from: a local folder, ``file://``, ``s3://bucket/prefix``, or
``hf://datasets/namespace/name`` (the Data Store, whose files HfApi uploads through the REST API).

A remote dataset is downloaded into a folder of the job, then read like a local one, so its identity
(the sha256 over its content) is the same wherever it is stored.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from customizer.settings import Settings

SPLIT_FOLDERS = ("training", "validation", "testing")


class SourceError(ValueError):
    """A dataset reference that cannot be resolved to a folder (the reason; the caller names the reference)."""


def resolve_dataset(source: str, download_dir: Path, settings: Settings | None = None) -> Path:
    """A dataset reference as a local folder.

    Args:
        source: a folder path, ``file:///path``, ``s3://bucket/prefix`` or ``hf://datasets/ns/name``.
        download_dir: where a remote dataset is downloaded (replaced if it exists).
        settings: the S3 endpoint (``s3_endpoint_url``); default: from the environment.

    Returns:
        The local dataset folder.

    Raises:
        SourceError: an unsupported scheme, a missing folder, or a remote store that cannot be read.
    """
    parsed = urlparse(source)
    if parsed.scheme == "s3":
        return download_s3(source, download_dir, settings)
    if parsed.scheme == "hf":
        return download_datastore(source, download_dir, settings)
    if parsed.scheme == "file":
        path = Path(parsed.path)
    elif parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive letter)
        path = Path(source)
    else:
        raise SourceError(f"unsupported dataset scheme {parsed.scheme!r}; use a folder, file://, or s3://")
    path = path.expanduser()
    if path.is_file():
        raise SourceError("is a file: a dataset is a folder with training/ (and optional validation/, testing/)")
    if not path.is_dir():
        raise SourceError("dataset folder does not exist")
    return path


def download_datastore(source: str, download_dir: Path, settings: Settings | None = None) -> Path:
    """Copy ``hf://datasets/namespace/name`` from the Data Store into ``download_dir``.

    Raises:
        SourceError: not a dataset URL, or the Data Store holds no files for it.
    """
    from customizer.settings import get_settings
    from deploy.datastore import DatastoreError, download_dataset

    if not source.startswith("hf://datasets/"):
        raise SourceError("an hf:// dataset is named hf://datasets/<namespace>/<name>")
    if download_dir.exists():
        shutil.rmtree(download_dir)
    try:
        return download_dataset(source, download_dir, settings or get_settings())
    except DatastoreError as exc:
        raise SourceError(str(exc).removeprefix(f"{source}: ")) from exc


def _relative_key(key: str, prefix: str) -> PurePosixPath | None:
    """A key's path under the prefix, or None for folder markers; refuses keys that climb out of it."""
    relative = key[len(prefix):].lstrip("/")
    if not relative or relative.endswith("/"):
        return None
    path = PurePosixPath(relative)
    if any(part in ("..", ".", "") for part in path.parts):
        raise SourceError(f"object key {key!r} does not name a file inside the dataset")
    return path


def download_s3(source: str, download_dir: Path, settings: Settings | None = None) -> Path:
    """Download ``s3://bucket/prefix`` into ``download_dir``: the split folders and any data files at
    its root (so ingest can point at them), nothing else.

    Raises:
        SourceError: no bucket, no objects under the prefix, or the store refused or did not answer.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    from customizer.settings import get_settings

    parsed = urlparse(source)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if not bucket:
        raise SourceError("names no bucket; use s3://bucket/prefix")
    settings = settings or get_settings()
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, config=Config(retries={"mode": "standard", "max_attempts": 5}))
    if download_dir.exists():
        shutil.rmtree(download_dir)
    download_dir.mkdir(parents=True)
    listed = 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
            for item in page.get("Contents", []):
                listed += 1
                relative = _relative_key(item["Key"], prefix)
                if relative is None:
                    continue
                at_root = len(relative.parts) == 1
                if not (relative.parts[0] in SPLIT_FOLDERS or (at_root and relative.suffix in (".jsonl", ".json"))):
                    continue  # not part of a dataset's layout
                target = download_dir.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, item["Key"], str(target))
    except (BotoCoreError, ClientError) as exc:
        raise SourceError(f"cannot read the dataset from the S3 store: {exc}") from exc
    if not listed:
        raise SourceError("no objects under this prefix")
    return download_dir
