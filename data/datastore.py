"""The Data Store's files: Hugging Face-style repos (``datasets/<namespace>/<name>/...``) kept in the
artifact store, a ``file://`` folder by default or ``s3://bucket/prefix``.

Files are kept by ``core.objects`` (``FolderFiles`` or ``S3Files``). Paths inside a repo are checked
before any I/O by the one path rule (``core.objects.safe_path``): absolute paths, ``..``, empty or dot
segments, backslashes, control characters, names over 255 bytes and paths over 32 folders deep are
refused, and the folder backend never follows a symlink nor reaches outside its root. On top of it
the Data Store refuses names it would show wrongly or hide: Unicode format characters (bidi
overrides such as U+202E, zero-width characters), line and paragraph separators, and names starting
with the store's own temporary prefix (a file being written; never listed).
``download_dataset`` turns a dataset's ``hf://datasets/<namespace>/<name>`` URL into a local folder
that dataset ingest reads like any other.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from core import objects
from core.objects import FolderFiles, S3Files
from core.settings import Settings

REPO_TYPES = ("datasets", "models")
RESERVED_PREFIXES = (objects._TMP,)  # the store names files being written so; a name like it would be hidden
_HIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # control, format (bidi, zero-width), surrogate, separators


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
    data.datastore.DatastoreError: path '../etc/passwd' is refused: '..' climbs out of its folder
    >>> safe_path("training/evil\u202elsonj.jsonl")
    Traceback (most recent call last):
    ...
    data.datastore.DatastoreError: path 'training/evil\u202elsonj.jsonl' is refused: it holds U+202E (RIGHT-TO-LEFT OVERRIDE); use visible characters
    """
    try:
        path = objects.safe_path(path)
    except objects.PathRefused as exc:
        raise DatastoreError(str(exc)) from exc
    hidden = next((ch for ch in path if unicodedata.category(ch) in _HIDDEN_CATEGORIES), None)
    if hidden is not None:
        name = unicodedata.name(hidden, "a format character")
        raise DatastoreError(f"path {path[:256]!r} is refused: it holds U+{ord(hidden):04X} ({name}); use visible characters")
    reserved = next((part for part in path.split("/") for prefix in RESERVED_PREFIXES if part.startswith(prefix)), None)
    if reserved is not None:
        raise DatastoreError(f"path {path[:256]!r} is refused: names starting with {RESERVED_PREFIXES[0]!r} are the store's own; rename {reserved[:64]!r}")
    return path


def safe_name(name: str, field: str) -> str:
    """A namespace or repo name: one path segment that ``safe_path`` accepts.

    Raises:
        DatastoreError: naming ``field`` and why.

    >>> safe_name("team-a", "organization")
    'team-a'
    >>> safe_name("a/b", "name")
    Traceback (most recent call last):
    ...
    data.datastore.DatastoreError: `name` 'a/b' is refused: use a single name without '/'
    """
    if "/" in name:
        raise DatastoreError(f"`{field}` {name[:256]!r} is refused: use a single name without '/'")
    try:
        return safe_path(name)
    except DatastoreError as exc:
        raise DatastoreError(f"`{field}`: {exc}") from exc


def repo_prefix(repo_type: str, namespace: str, name: str) -> str:
    if repo_type not in REPO_TYPES:
        raise DatastoreError(f"repo type {repo_type!r}: use one of {', '.join(REPO_TYPES)}")
    return f"{repo_type}/{safe_name(namespace, 'namespace')}/{safe_name(name, 'name')}"


def open_files(settings: Settings) -> FolderFiles | S3Files:
    """The Data Store's files (``core.objects.open_files``) at ``settings.datastore_root_uri``.

    Raises:
        DatastoreError: an unsupported scheme or an S3 URI without a bucket.
    """
    uri = settings.datastore_root_uri
    try:
        files = objects.open_files(uri, settings)
    except ValueError as exc:
        raise DatastoreError(f"data store URI {exc}") from exc
    if isinstance(files, FolderFiles):
        files.root.mkdir(parents=True, exist_ok=True)
    return files


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
    try:
        listed = files.list(prefix)
        if path is not None:
            listed = {k: v for k, v in listed.items() if k == path or k.startswith(f"{path}/")}
        if not listed:
            raise DatastoreError(f"{files_url}: the Data Store has no files there (upload them with HfApi first)")
        dest.mkdir(parents=True, exist_ok=True)
        for key in sorted(listed):
            data = files.get(f"{prefix}/{key}")
            if data is None:
                raise DatastoreError(f"{files_url}: {key} disappeared while it was being copied")
            target = dest.joinpath(*PurePosixPath(objects.safe_path(key)).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    except objects.PathRefused as exc:
        raise DatastoreError(f"{files_url}: {exc}") from exc
    return dest
