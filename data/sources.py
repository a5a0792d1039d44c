"""Where a dataset comes from: a local folder, ``file://``, ``s3://bucket/prefix``, or
``hf://datasets/namespace/name`` (the Data Store, whose files HfApi uploads through the REST API).

A remote dataset is downloaded into a folder of the job, then read like a local one, so its identity
(the sha256 over its content) is the same wherever it is stored.

``check_url`` is the rule for URLs the service is handed by its callers: only the configured schemes,
``file://`` only inside the allowed folders and ``http(s)://`` only to the allowed hosts, so a request
can neither make the server read an arbitrary folder nor call an arbitrary address.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlparse

from core import objects
from core.settings import Settings, get_settings
from data.datastore import DatastoreError, download_dataset

SPLIT_FOLDERS = ("training", "validation", "testing")
UrlKind = Literal["dataset", "model", "endpoint"]
_KIND_SCHEMES: dict[str, tuple[str, ...]] = {
    "dataset": ("hf", "s3", "file"),
    "model": ("hf", "s3", "file", "builtin", "pkg"),
    "endpoint": ("http", "https"),
}


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


def allowed_urls(settings: Settings, kind: UrlKind = "dataset") -> str:
    """The URLs ``check_url`` accepts for ``kind``, in words (for error messages)."""
    schemes = [s for s in _KIND_SCHEMES[kind] if s in settings.url_schemes or s in ("builtin", "pkg")]
    words = {
        "hf": "hf://datasets/<namespace>/<name> (the Data Store)" if kind == "dataset" else "hf://<org>/<model> or a repo id",
        "s3": "s3://<bucket>/<prefix> (on the configured S3 endpoint)",
        "file": "file:// (or a path) under " + ", ".join(str(root) for root in settings.file_roots),
        "builtin": "builtin://<name>",
        "pkg": "pkg://<package>/<path>",
        "http": "http(s):// to " + (", ".join(sorted(settings.http_hosts)) or "no host (none is configured)"),
    }
    listed = [words[s] for s in schemes if s != "https"]
    if "https" in schemes and "http" not in schemes:
        listed.append(words["http"].replace("http(s)", "https"))
    return "; ".join(listed) or "none (no scheme is enabled)"


def local_path(url: str) -> Path | None:
    """The server path a ``file://`` URL or an absolute path names (None for any other URL)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme and url.startswith(("/", "~")):
        return Path(url).expanduser()
    return None


def check_url(url: str, settings: Settings, kind: UrlKind = "dataset") -> None:
    """Refuse a URL the service must not read or call.

    Args:
        url: a dataset ``files_url``, a model or base model URI, or an endpoint URL.
        settings: the allowed schemes, folders and hosts.
        kind: ``dataset`` (hf, s3, file), ``model`` (also builtin://, pkg:// and repo ids) or
            ``endpoint`` (http, https).

    Raises:
        SourceError: why the URL is refused, with the allowed set.
    """
    allowed = f"allowed: {allowed_urls(settings, kind)}"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in url) or "\\" in url:
        raise SourceError(f"control characters and backslashes are not allowed ({allowed})")
    try:
        parsed = urlparse(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise SourceError(f"not a valid URL: {exc} ({allowed})") from exc
    scheme = parsed.scheme.lower()
    path = local_path(url)
    if path is not None:
        scheme = "file"
    elif not scheme:
        if kind == "model" and not url.startswith(".") and ".." not in url.split("/"):
            return  # a Hugging Face repo id, e.g. org/model
        raise SourceError(f"{url!r} is not a URL or an absolute path ({allowed})")
    builtin = kind == "model" and scheme in ("builtin", "pkg")
    if scheme not in _KIND_SCHEMES[kind] or not (builtin or scheme in settings.url_schemes):
        raise SourceError(f"unsupported scheme {scheme!r} ({allowed})")
    if scheme == "hf" and kind == "dataset" and not url.startswith("hf://datasets/"):
        raise SourceError(f"a Data Store dataset is named hf://datasets/<namespace>/<name> ({allowed})")
    if scheme == "s3" and not parsed.netloc:
        raise SourceError(f"an s3:// URL names a bucket: s3://<bucket>/<prefix> ({allowed})")
    if path is not None:
        if parsed.netloc not in ("", "localhost"):
            raise SourceError(f"file:// URLs name a path on this server, not host {parsed.netloc!r} ({allowed})")
        resolved = path.expanduser().resolve()  # symlinks resolved: a link cannot lead out of the roots
        if not any(resolved == root or root in resolved.parents for root in settings.file_roots):
            raise SourceError(f"{path} is outside the folders the server may read ({allowed})")
        if any(resolved == folder or folder in resolved.parents for folder in settings.private_dirs):
            raise SourceError(f"{path} holds the service's own state, which is not readable through a URL ({allowed})")
    if scheme in ("http", "https"):
        host = (parsed.hostname or "").lower()
        port = _port(parsed)
        port = f":{port}" if port else ""
        if not host or not ({host, f"{host}{port}"} & settings.http_hosts):
            raise SourceError(f"host {host or '(none)'!r} is not an allowed host ({allowed})")


def _port(parsed) -> int | None:
    try:
        return parsed.port
    except ValueError as exc:
        raise SourceError(f"the port is not a number: {exc}") from exc


def download_datastore(source: str, download_dir: Path, settings: Settings | None = None) -> Path:
    """Copy ``hf://datasets/namespace/name`` from the Data Store into ``download_dir``.

    Raises:
        SourceError: not a dataset URL, or the Data Store holds no files for it.
    """
    if not source.startswith("hf://datasets/"):
        raise SourceError("an hf:// dataset is named hf://datasets/<namespace>/<name>")
    if download_dir.exists():
        shutil.rmtree(download_dir)
    try:
        return download_dataset(source, download_dir, settings or get_settings())
    except DatastoreError as exc:
        raise SourceError(str(exc).removeprefix(f"{source}: ")) from exc


def download_s3(source: str, download_dir: Path, settings: Settings | None = None) -> Path:
    """Download ``s3://bucket/prefix`` into ``download_dir``: the split folders and any data files at
    its root (so ingest can point at them), nothing else.

    Raises:
        SourceError: no bucket, no objects under the prefix, or the store refused or did not answer.
    """
    parsed = urlparse(source)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if not bucket:
        raise SourceError("names no bucket; use s3://bucket/prefix")
    settings = settings or get_settings()
    if download_dir.exists():
        shutil.rmtree(download_dir)
    download_dir.mkdir(parents=True)

    def in_layout(relative: PurePosixPath) -> bool:
        """The split folders and data files at the root (so ingest can point at them), nothing else."""
        return relative.parts[0] in SPLIT_FOLDERS or (len(relative.parts) == 1 and relative.suffix in (".jsonl", ".json"))

    try:
        listed = objects.download_prefix(objects.s3_client(settings), bucket, prefix, download_dir, keep=in_layout, settings=settings)
    except objects.PathRefused as exc:
        raise SourceError(f"{exc}: it does not name a file inside the dataset") from exc
    except objects.store_errors() as exc:
        raise SourceError(f"cannot read the dataset from the S3 store: {exc}") from exc
    if not listed:
        raise SourceError("no objects under this prefix")
    return download_dir
