"""A job's dataset: the Entity Store entry a request names, and its files as a local folder (the
Data Store's ``hf://`` and S3 copied under the data folder, ``file://`` taken in place once it is
shown to hold no link out of itself). The job trains on that folder; its lineage is the entry's
``files_url``."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from api.db import Store
from api.deps import Caller
from api.errors import BadRequest, NotFound, Unprocessable
from api.schemas import DatasetRef
from core import objects
from core.settings import Settings
from data import datastore
from data.sources import SourceError, check_access, checked_files, local_path

DATASET = "dataset"


def dataset_of(store: Store, ref: str | DatasetRef, namespace: str, caller: Caller) -> dict[str, Any]:
    """The Entity Store dataset a job names (``"ns/name"``, a bare name, or ``{name, namespace}``).

    Raises:
        NotFound: no such dataset, or one in a namespace ``caller`` may not use.
        Unprocessable: ``dataset.files_url`` is given and is not the files of the dataset named.
    """
    if isinstance(ref, DatasetRef):
        d_namespace, d_name = ref.namespace or namespace, ref.name
    else:
        d_namespace, _, d_name = ref.strip().rpartition("/") if "/" in ref else (namespace, "", ref)
        d_namespace = d_namespace or "default"
    found = store.find(DATASET, d_namespace, d_name) if caller.sees(d_namespace) else None
    if found is None and not isinstance(ref, DatasetRef) and "/" not in ref and namespace != "default" and caller.sees("default"):
        found = store.find(DATASET, "default", d_name)
    if found is None:
        raise NotFound(
            f"`dataset` {d_namespace}/{d_name} does not exist in the Entity Store: upload its files to the Data Store "
            f"and register it with POST /v1/datasets (files_url hf://datasets/{d_namespace}/{d_name})"
        )
    if isinstance(ref, DatasetRef) and ref.files_url is not None and ref.files_url != found["files_url"]:
        # The job trains on the named dataset's files: a different URL beside it would be silently ignored.
        raise Unprocessable(
            f"`dataset.files_url` {ref.files_url!r} is not the files of dataset {found['namespace']}/{found['name']} "
            f"({found['files_url']}): leave it out, or register those files as a dataset and name that one"
        )
    return found


def snapshot_dataset(files_url: str, settings: Settings, namespaces: Collection[str] | None = None) -> Path:
    """A local folder with a dataset's files: a copy under the data folder for the Data Store and S3,
    the folder itself for ``file://`` (what the job trains on).

    Args:
        namespaces: those the caller may use (None: every namespace); a ``file://`` folder's files
            are each checked against them (``data.sources.checked_files``).

    Raises:
        BadRequest: the URL is not allowed (``data.sources.check_access``) or cannot be read, or a
            folder holds a file it may not read or a symbolic link that leads out of it.
    """
    try:
        check_access(files_url, settings, namespaces, "dataset")
    except SourceError as exc:
        raise BadRequest(f"dataset files_url {files_url!r} is refused: {exc}") from exc
    dest = _snapshots(settings) / uuid.uuid4().hex
    scheme = files_url.split("://", 1)[0] if "://" in files_url else ""
    if scheme in ("hf", "s3"):
        return _copy(files_url, scheme, dest, settings)
    path = local_path(files_url)
    if path is None or not path.is_dir():
        raise BadRequest(f"dataset files_url {files_url}: no such folder on the server")
    _refuse_links_out(path, files_url)
    try:
        checked_files(path, settings, namespaces)
    except SourceError as exc:
        raise BadRequest(f"dataset files_url {files_url}: {exc}") from exc
    return path


def discard_snapshot(settings: Settings, folder: Path) -> None:
    """Remove a copy ``snapshot_dataset`` made (a ``file://`` folder taken in place is left alone)."""
    if _snapshots(settings) in folder.parents:
        shutil.rmtree(folder, ignore_errors=True)


def _snapshots(settings: Settings) -> Path:
    return settings.root / "api" / "dataset-snapshots"


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
