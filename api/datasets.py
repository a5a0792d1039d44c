"""A job's dataset as a local folder: the Data Store (``hf://``) and S3 copied under the data folder,
``file://`` taken in place once it is shown to hold no link out of itself."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlparse

from api.errors import BadRequest
from core import objects
from core.settings import Settings
from data import datastore
from data.sources import SourceError, check_url, local_path


def snapshot_dataset(files_url: str, settings: Settings) -> Path:
    """A local folder with a dataset's files: a copy under the data folder for the Data Store and S3,
    the folder itself for ``file://`` (what the job trains on).

    Raises:
        BadRequest: the URL is not allowed (``data.sources.check_url``) or cannot be read, or a
            folder holds a symbolic link that leads out of it.
    """
    try:
        check_url(files_url, settings, "dataset")
    except SourceError as exc:
        raise BadRequest(f"dataset files_url {files_url!r} is refused: {exc}") from exc
    dest = settings.root / "api" / "dataset-snapshots" / uuid.uuid4().hex
    scheme = files_url.split("://", 1)[0] if "://" in files_url else ""
    if scheme in ("hf", "s3"):
        return _copy(files_url, scheme, dest, settings)
    path = local_path(files_url)
    if path is None or not path.is_dir():
        raise BadRequest(f"dataset files_url {files_url}: no such folder on the server")
    _refuse_links_out(path, files_url)
    return path


def _copy(files_url: str, scheme: str, dest: Path, settings: Settings) -> Path:
    """Copy a Data Store (``hf://``) or ``s3://`` dataset into ``dest``.

    Raises:
        BadRequest: the dataset has no files, a key would land outside ``dest``, or the store
            refused the request or did not answer.
    """
    try:
        if scheme == "hf":
            return datastore.download_dataset(files_url, dest, settings)
        parsed = urlparse(files_url)
        if not objects.download_prefix(objects.s3_client(settings), parsed.netloc, parsed.path, dest, settings=settings):
            raise BadRequest(f"dataset files_url {files_url}: no objects under that prefix")
        return dest
    except objects.PathRefused as exc:
        raise BadRequest(f"dataset files_url {files_url}: {exc}") from exc
    except datastore.DatastoreError as exc:
        raise BadRequest(f"dataset: {exc}") from exc
    except objects.store_errors() as exc:
        raise BadRequest(f"dataset files_url {files_url} cannot be read: {type(exc).__name__}: {exc}") from exc


def _refuse_links_out(folder: Path, files_url: str) -> None:
    """Refuse a dataset folder holding a symbolic link to anything outside it (e.g. a link to /etc)."""
    inside = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder):  # links to folders are listed, not walked into
        for entry in (*dirnames, *filenames):
            path = Path(dirpath) / entry
            if path.is_symlink() and inside not in path.resolve().parents:
                raise BadRequest(f"dataset files_url {files_url}: {path.relative_to(folder)} is a symbolic link that leads out of the dataset folder")
