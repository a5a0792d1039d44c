"""The Data Store's files: Hugging Face-style repos (``datasets/<namespace>/<name>/...``) kept in the
artifact store, a ``file://`` folder by default or ``s3://bucket/prefix``.

Paths inside a repo are checked before any I/O: absolute paths, ``..``, empty or dot segments,
backslashes, control characters, names over 255 bytes and paths over 32 folders deep are refused, and
the folder backend never follows a symlink nor reaches outside its root.
``download_dataset`` turns a dataset's ``hf://datasets/<namespace>/<name>`` URL into a local folder
that dataset ingest reads like any other.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from core import objects
from core.objects import S3Files
from core.settings import Settings

REPO_TYPES = ("datasets", "models")


class DatastoreError(ValueError):
    """A bad repo path or URL, or a store that cannot be read or written."""


def safe_path(path: str) -> str:
    """A repo-relative path, normalised (``core.objects.safe_path``, the one path rule), or a
    DatastoreError saying why it is refused.

    >>> safe_path("training/data.jsonl")
    'training/data.jsonl'
    >>> safe_path("../etc/passwd")
    Traceback (most recent call last):
    ...
    data.datastore.DatastoreError: path '../etc/passwd' is refused: '..' climbs out of the repo
    """
    try:
        return objects.safe_path(path)
    except objects.PathRefused as exc:
        raise DatastoreError(str(exc)) from exc


def repo_prefix(repo_type: str, namespace: str, name: str) -> str:
    if repo_type not in REPO_TYPES:
        raise DatastoreError(f"repo type {repo_type!r}: use one of {', '.join(REPO_TYPES)}")
    return f"{repo_type}/{safe_path(namespace)}/{safe_path(name)}"


class FolderFiles:
    """Repo files in a local folder; symlinks are never followed."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, key: str) -> Path:
        path = self.root / key
        current = self.root
        for part in PurePosixPath(key).parts:
            current = current / part
            if current.is_symlink():
                raise DatastoreError(f"{key!r} is refused: {current.relative_to(self.root)} is a symbolic link")
        if path.resolve() != self.root.resolve() and self.root.resolve() not in path.resolve().parents:
            raise DatastoreError(f"{key!r} is refused: it leads outside the Data Store")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex}")  # short: the name itself may be 255 bytes
        tmp.write_bytes(data)
        tmp.replace(path)

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            path.unlink()

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
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
                if path.is_symlink() or filename.startswith(".tmp-"):
                    continue
                out[path.relative_to(base).as_posix()] = path.stat().st_size
        return out


def open_files(settings: Settings) -> FolderFiles | S3Files:
    """The Data Store's backend, from ``settings.datastore_root_uri``.

    Raises:
        DatastoreError: an unsupported scheme or an S3 URI without a bucket.
    """
    uri = settings.datastore_root_uri
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        root = Path(parsed.path)
        root.mkdir(parents=True, exist_ok=True)
        return FolderFiles(root)
    if parsed.scheme == "s3" and parsed.netloc:
        return S3Files(parsed.netloc, parsed.path, settings)
    raise DatastoreError(f"data store URI {uri!r}: use file:///folder or s3://bucket/prefix")


def parse_hf_url(url: str) -> tuple[str, str, str, str | None]:
    """``hf://datasets/<namespace>/<name>[/<path>]`` -> (repo type, namespace, name, path or None).

    Raises:
        DatastoreError: not an hf:// URL of that shape.
    """
    parsed = urlparse(url)
    parts = [p for p in (parsed.netloc + parsed.path).split("/") if p]
    if parsed.scheme != "hf" or len(parts) < 3 or parts[0] not in REPO_TYPES:
        raise DatastoreError(f"{url!r} is not a Data Store URL: use hf://datasets/<namespace>/<name>")
    path = safe_path("/".join(parts[3:])) if len(parts) > 3 else None
    return parts[0], parts[1], parts[2], path


def download_dataset(files_url: str, dest: Path, settings: Settings) -> Path:
    """Copy a Data Store dataset (or one file of it) into the empty folder ``dest``.

    Args:
        files_url: ``hf://datasets/<namespace>/<name>`` or ``hf://datasets/<namespace>/<name>/<path>``.
        dest: a folder to create; the repo's files keep their relative paths under it.
        settings: where the Data Store keeps its files.

    Returns:
        ``dest``.

    Raises:
        DatastoreError: a bad URL, or a repo (or path) with no files.
    """
    repo_type, namespace, name, path = parse_hf_url(files_url)
    files = open_files(settings)
    prefix = repo_prefix(repo_type, namespace, name)
    listed = files.list(prefix)
    if path is not None:
        listed = {k: v for k, v in listed.items() if k == path or k.startswith(f"{path}/")}
    if not listed:
        raise DatastoreError(f"{files_url}: the Data Store has no files there (upload them with HfApi first)")
    dest.mkdir(parents=True, exist_ok=True)
    for key in sorted(listed):
        data = files.get(f"{prefix}/{safe_path(key)}")
        if data is None:
            raise DatastoreError(f"{files_url}: {key} disappeared while it was being copied")
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return dest
