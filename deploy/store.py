"""The artifact store: publish a model version's files with a manifest, to ``file://`` or ``s3://``.

Layout: ``<store>/<namespace>/<name>/<version>/`` holding the files and ``manifest.json`` (sha256
and size per file, base model, lineage, MLflow version). Files go first and the manifest last, so
a manifest only exists for a complete upload. Publication is content-addressed: a file whose stored
sha256 and size already match is not uploaded again, so re-publishing identical content sends no
bytes. Each file is hashed once, and goes up while the next ones hash (``deploy.uploads``).
Downloads verify every file against the manifest.

A published version is immutable: once its manifest is written, publishing other content under the
same model and version is refused (``VersionExists``), and publishing the same content again is a
no-op that returns the existing publication. A version without a manifest was never published.

Both stores are ``core.objects`` files (the one client factory and path rule). Large files go up to
S3 in parts (``s3_multipart_threshold``); botocore's "standard" mode retries connection errors,
throttling and 5xx answers only, so a missing bucket or a refused credential fails at once with a
``StoreError`` that says which.

Which files of a trained folder are published is decided by one rule (``publishable_files``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ValidationError

from core import objects
from core.objects import sha256_file
from core.settings import Settings
from deploy.uploads import UploadFailed, hash_files, send

log = logging.getLogger("customizer.store")
MANIFEST = "manifest.json"

# What a serving engine needs from a trained folder: weights, their configs, and a tokenizer only
# where it differs from the base model's. Checkpoints, optimizer state and READMEs stay behind.
MODEL_CONFIG_FILES = ("adapter_config.json", "config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
)
# Keys transformers writes about where a tokenizer was loaded from, not what it is.
_VOLATILE_TOKENIZER_KEYS = {"is_local", "local_files_only", "name_or_path", "_commit_hash", "cache_dir", "revision"}


# S3 error codes that no retry can fix, and those that say "try later".
_MISSING_BUCKET = {"NoSuchBucket"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken", "ExpiredToken"}
Store = objects.FolderFiles | objects.S3Files


class StoreError(RuntimeError):
    """The store is unreachable, misconfigured, or holds something that does not match its manifest."""


class NotPublished(StoreError):
    """The version has no readable manifest in the store: it was never (completely) published."""


class VersionExists(ValueError):
    """A version that is already published was asked to hold other content. Published versions never
    change (serving, fetches and the registry's lineage all trust them), so no retry can succeed: the
    content goes out as a new version."""


class FileEntry(BaseModel):
    sha256: str
    size: int


class Manifest(BaseModel):
    output_model: str
    version: str
    base_model: str
    files: dict[str, FileEntry]
    lineage: dict[str, Any]
    created_at: float


class Published(BaseModel):
    uri: str
    manifest: Manifest
    uploaded: list[str]
    unchanged: list[str]
    bytes_uploaded: int = 0  # request bodies sent to the store (0 when nothing changed)


def _tokenizer_content(path: Path) -> Any:
    if path.suffix != ".json":
        return path.read_bytes()
    value = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in value.items() if k not in _VOLATILE_TOKENIZER_KEYS} if isinstance(value, dict) else value


def _is_tokenizer_file(name: str) -> bool:
    return name in TOKENIZER_FILES or name.endswith(".jinja")


def tokenizer_differs(folder: Path, base_model_dir: Path) -> bool:
    """Whether ``folder``'s tokenizer files differ from the base model's (by content, ignoring load paths)."""
    ours = {p.name for p in folder.iterdir() if p.is_file() and _is_tokenizer_file(p.name)}
    theirs = {p.name for p in base_model_dir.iterdir() if p.is_file() and _is_tokenizer_file(p.name)}
    if ours != theirs:
        return True
    return any(_tokenizer_content(folder / name) != _tokenizer_content(base_model_dir / name) for name in sorted(ours))


def publishable_files(folder: Path, base_model_dir: Path | None = None) -> list[str]:
    """The files of a trained folder that are published, by one rule.

    Published: every top-level ``*.safetensors`` file (an adapter, or all shards of a full model),
    ``*.safetensors.index.json``, ``adapter_config.json`` / ``config.json`` / ``generation_config.json``,
    and the tokenizer files (``tokenizer*.json``, ``*.jinja`` chat templates, vocabularies) only when
    they differ from ``base_model_dir``'s (always, when no base is given). Left out: checkpoints,
    optimizer and trainer state, ``*.bin``, READMEs, anything in subfolders.

    Raises:
        StoreError: the folder does not exist or holds no ``*.safetensors`` weights.
    """
    if not folder.is_dir():
        raise StoreError(f"cannot publish {folder}: no such folder")
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    weights = [n for n in names if n.endswith((".safetensors", ".safetensors.index.json")) or n in MODEL_CONFIG_FILES]
    if not any(n.endswith(".safetensors") for n in weights):
        raise StoreError(f"cannot publish {folder}: it holds no *.safetensors weights (files: {', '.join(names) or 'none'})")
    tokenizer = [n for n in names if _is_tokenizer_file(n)]
    if tokenizer and base_model_dir is not None and not tokenizer_differs(folder, base_model_dir):
        tokenizer = []
    return weights + tokenizer


def parse_published_uri(uri: str) -> tuple[str, str, str]:
    """Split a published version's URI into ``(store URI, "namespace/name", version)``.

    >>> parse_published_uri("s3://models/adapters/team/bot/3/")
    ('s3://models/adapters', 'team/bot', '3')

    Raises:
        StoreError: the URI is not ``file://`` or ``s3://`` or has fewer than three path parts.
    """
    parsed = urlparse(uri)
    parts = [p for p in parsed.path.split("/") if p]
    if parsed.scheme not in ("file", "s3") or len(parts) < 3:
        raise StoreError(f"{uri!r} is not a published version's URI (<store>/<namespace>/<name>/<version>/)")
    store_path = "/".join(parts[:-3])
    root = f"{parsed.scheme}://{parsed.netloc}" + (f"/{store_path}" if store_path else ("/" if parsed.scheme == "file" else ""))
    return root, f"{parts[-3]}/{parts[-2]}", parts[-1]


def open_store(uri: str, settings: Settings) -> Store:
    """The store behind ``file:///path`` or ``s3://bucket/prefix`` (``core.objects.open_files``).

    Raises:
        StoreError: any other scheme, or an S3 URI without a bucket.
    """
    try:
        return objects.open_files(uri, settings)
    except ValueError as exc:
        raise StoreError(f"store URI {exc}") from exc


def _check_name(name: str) -> str:
    """A published file name: a safe relative path (``core.objects.safe_path``) whose name does not
    start with a dot (dot names are partial downloads and temporary files).

    Raises:
        StoreError: naming the file.
    """
    try:
        objects.safe_path(name)
    except objects.PathRefused as exc:
        raise StoreError(f"file name {name!r} is not allowed in a published version: {exc}") from exc
    if any(part.startswith(".") for part in name.split("/")):
        raise StoreError(f"file name {name!r} is not allowed in a published version: it starts with a dot")
    return name


def _matches(stored: objects.Stored | None, entry: FileEntry) -> bool:
    return stored is not None and stored == (entry.sha256, entry.size)


def _store_failures() -> tuple[type[BaseException], ...]:
    return (*objects.store_errors(), objects.PathRefused)


def _explain(exc: BaseException, store: Store, doing: str) -> StoreError:
    """Turn a store failure into a StoreError that says whether retrying could help."""
    # delayed: boto3 is heavy (start-up time)
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
    attempts = getattr(store, "max_attempts", 1)
    if any(isinstance(e, NoCredentialsError) for e in chain):
        return StoreError(f"{doing} failed: no AWS credentials found (environment, ~/.aws or an instance role)")
    if client_error is not None:
        code = objects.s3_error_code(client_error)
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
            return StoreError(f"{doing} failed: S3 at {endpoint} kept answering {code} (transient; tried {attempts} times)")
        return StoreError(f"{doing} failed: S3 answered {code}: {client_error}")
    if any(isinstance(e, EndpointConnectionError) for e in chain):
        return StoreError(f"{doing} failed: cannot reach the S3 endpoint {endpoint} (tried {attempts} times): {exc}")
    return StoreError(f"{doing} failed: {exc}")


def _check_files(folder: Path, files: list[str], output_model: str, version: str) -> None:
    """Every listed file has an allowed name and is in ``folder``, checked before the store is touched.

    Raises:
        StoreError: naming the first file refused or missing.
    """
    for name in files:
        _check_name(name)
        if not (folder / name).is_file():
            raise StoreError(f"cannot publish {output_model} v{version}: {folder / name} is missing")


def publish(
    folder: Path,
    files: list[str],
    output_model: str,
    version: str,
    base_model: str,
    lineage: dict[str, Any],
    settings: Settings,
) -> Published:
    """Publish ``files`` from ``folder`` as ``output_model`` version ``version``, once.

    A version whose manifest is in the store is published and never changes:

    - the same files (names, sha256 and sizes) for the same base model: nothing is written and the
      existing publication is returned, its manifest (and lineage) as first written. A re-run after
      a crash between publishing and registering reuses it. A stored file that no longer matches the
      manifest is uploaded again from these identical bytes, which repairs it without changing
      what was published;
    - anything else (a file added, left out or with other bytes, another base model) is refused
      with ``VersionExists``, naming the first differing file and both sha256.

    A version with files but no manifest is what an upload that stopped half-way leaves behind. It
    was never published (fetching, verifying and listing all ignore it), so it is completed here
    with whatever content this call brings: matching files are kept, others replaced, files this
    publication does not list are deleted, and the manifest is written last. Publishing assumes one
    writer per version (the registry gives every job its own version number).

    Returns:
        Where it was published, its manifest, which files were uploaded or already there, and how
        many bytes went to the store.

    Raises:
        VersionExists: the version is published with other content.
        StoreError: a listed file is missing, the stored manifest cannot be read (a version that may
            be published is not overwritten), or the store rejects the upload (the message says
            whether the bucket is missing, access was denied, or the endpoint was unreachable).
    """
    store = open_store(settings.publish_uri, settings)
    prefix = f"{output_model}/{version}"
    doing = f"publishing {output_model} v{version} to {settings.publish_uri}"
    _check_files(folder, files, output_model, version)
    try:
        # One listing says what the version holds; it fails as clearly as a bucket check would
        # (a missing bucket, refused credentials), so a new version costs a single request before its files.
        stored = store.list(prefix)
        previous = _published_manifest(store, prefix) if MANIFEST in stored else None
        if previous is not None:
            # Every digest is needed before anything is written: other content is refused whole.
            digests = hash_files(folder, files)
            _refuse_other_content(previous, {name: FileEntry(**d) for name, d in digests.items()}, base_model, store.uri(prefix))
            _, uploaded, unchanged = send(store, settings, folder, prefix, files, known=digests)
            manifest = previous  # identical content: the publication stays as it was
        else:
            kept = _clear_strays(store, prefix, files, stored)
            digests, uploaded, unchanged = send(store, settings, folder, prefix, files, listed=kept)
            manifest = Manifest(
                output_model=output_model, version=version, base_model=base_model,
                files={name: FileEntry(**d) for name, d in digests.items()}, lineage=lineage, created_at=time.time(),
            )
            # Last, once every file is stored: a manifest only exists for a complete upload.
            store.put(f"{prefix}/{MANIFEST}", manifest.model_dump_json(indent=2).encode())
    except UploadFailed as exc:
        raise _explain(exc.__cause__, store, f"{doing}: uploading {exc.name}") from exc.__cause__
    except _store_failures() as exc:
        raise _explain(exc, store, doing) from exc
    log.info(
        "%s %s v%s to %s (%d uploaded, %d unchanged, %d bytes sent)",
        "Already published:" if previous is not None else "Published", output_model, version, store.uri(prefix),
        len(uploaded), len(unchanged), store.bytes_sent,
    )
    return Published(
        uri=store.uri(prefix) + "/", manifest=manifest, uploaded=uploaded, unchanged=unchanged, bytes_uploaded=store.bytes_sent
    )


def _published_manifest(store: Store, prefix: str) -> Manifest | None:
    """The manifest of a published version, or None when the version has none (never published).

    Raises:
        StoreError: a manifest is there but cannot be read: the version may be published, so it is
            neither overwritten nor taken for unpublished.
    """
    data = store.get(f"{prefix}/{MANIFEST}")
    if data is None:
        return None
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise StoreError(
            f"{store.uri(prefix)}/{MANIFEST} cannot be read ({exc.error_count()} errors), so the version is not "
            "overwritten; publish as a new version, or remove the version from the store if it was never used"
        ) from exc


def _refuse_other_content(previous: Manifest, entries: dict[str, FileEntry], base_model: str, where: str) -> None:
    """Raises VersionExists unless ``entries`` for ``base_model`` are exactly what ``previous`` published."""
    head = f"{previous.output_model} v{previous.version} is already published at {where}/ with other content"
    tail = "a published version never changes: publish this content as a new version"
    for name in sorted(previous.files.keys() | entries.keys()):
        published, offered = previous.files.get(name), entries.get(name)
        if published != offered:
            was = published.sha256 if published else "none (not in the published version)"
            now = offered.sha256 if offered else "none (not in this publication)"
            raise VersionExists(f"{head}: {name} has sha256 {was} there and {now} here; {tail}")
    if previous.base_model != base_model:
        raise VersionExists(f"{head}: it was published for base model {previous.base_model!r}, not {base_model!r}; {tail}")


def _clear_strays(store: Store, prefix: str, files: list[str], stored: dict[str, int]) -> dict[str, int]:
    """Delete what an upload that stopped half-way left under an unpublished version (``stored``, its
    listing) and this publication does not list, so the version holds exactly what its manifest will list.

    Returns:
        name -> size of the listed files already there (candidates for being kept unchanged).
    """
    kept = {}
    for name, size in stored.items():
        if name in files:
            kept[name] = size
        elif name != MANIFEST:
            log.info("Removing %s/%s: left by an unfinished upload, not part of this publication", store.uri(prefix), name)
            store.delete(f"{prefix}/{name}")
    return kept


def _stored_manifest(store: Store, key: str) -> Manifest | None:
    data = store.get(key)
    try:
        return Manifest.model_validate_json(data) if data is not None else None
    except ValidationError:  # unreadable: fetching and verifying refuse it, publishing never overwrites it
        return None


def _readable_manifest(store: Store, output_model: str, version: str, store_uri: str) -> Manifest:
    """The manifest of a published version, which every reader verifies files against.

    Raises:
        NotPublished: it has none, or none that can be read.
    """
    manifest = _stored_manifest(store, f"{output_model}/{version}/{MANIFEST}")
    if manifest is None:
        raise NotPublished(f"{output_model} v{version} is not published in {store_uri} (no readable manifest)")
    return manifest


def fetch(output_model: str, version: str, dest: Path, settings: Settings, store_uri: str | None = None) -> Manifest:
    """Download a published version into ``dest``, verifying every file against the manifest.

    Files already in ``dest`` with the manifest's sha256 are not downloaded again. Each file lands
    under a temporary name and is renamed only once its hash matched; ``manifest.json`` is written
    last, so a folder with a manifest is complete and verified.

    Args:
        store_uri: the store to read; default the ``store_uri`` setting.

    Raises:
        StoreError: no manifest, a missing file, or a file whose sha256 or size does not match.
    """
    store_uri = store_uri or settings.publish_uri
    store = open_store(store_uri, settings)
    prefix = f"{output_model}/{version}"
    try:
        manifest = _readable_manifest(store, output_model, version, store_uri)
        dest.mkdir(parents=True, exist_ok=True)
        for name, entry in manifest.files.items():
            target = dest / _check_name(name)
            if target.is_file() and target.stat().st_size == entry.size and sha256_file(target) == entry.sha256:
                continue
            partial = dest / f".{name}.partial"
            if not store.get_file(f"{prefix}/{name}", partial):
                raise StoreError(f"{store.uri(prefix)}/{name} is listed in the manifest but missing from the store")
            if partial.stat().st_size != entry.size or sha256_file(partial) != entry.sha256:
                partial.unlink()
                raise StoreError(f"{store.uri(prefix)}/{name} does not match its manifest (sha256 or size differs)")
            partial.replace(target)
    except _store_failures() as exc:
        raise _explain(exc, store, f"fetching {output_model} v{version} from {store_uri}") from exc
    (dest / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return manifest


def verify_published(output_model: str, version: str, settings: Settings, expected: Manifest | None = None) -> Manifest:
    """Check that a version is completely published: its manifest is there (and is ``expected``'s
    content, when given) and every file it lists is stored with the manifest's sha256 and size.
    What is promoted to serving must pass this first.

    Raises:
        StoreError: no readable manifest, a different manifest, or a file missing or not matching.
    """
    store = open_store(settings.publish_uri, settings)
    prefix = f"{output_model}/{version}"
    try:
        manifest = _readable_manifest(store, output_model, version, settings.publish_uri)
        if expected is not None and (manifest.files != expected.files or manifest.base_model != expected.base_model):
            raise StoreError(f"{store.uri(prefix)}/{MANIFEST} lists other files than this job published")
        for name, entry in manifest.files.items():
            stored = store.stat(f"{prefix}/{_check_name(name)}")
            if not _matches(stored, entry):
                found = "missing" if stored is None else f"sha256 {(stored.sha256 or 'unrecorded')[:12]}..., {stored.size} bytes"
                raise StoreError(f"{store.uri(prefix)}/{name} does not match its manifest ({found}; "
                                 f"expected sha256 {entry.sha256[:12]}..., {entry.size} bytes)")
    except _store_failures() as exc:
        raise _explain(exc, store, f"verifying {output_model} v{version} in {settings.publish_uri}") from exc
    return manifest


def read_published_file(output_model: str, version: str, name: str, settings: Settings, store_uri: str | None = None) -> bytes:
    """One file of a published version, verified against the manifest.

    Raises:
        StoreError: the version is not published, the file is not in it, or it does not match.
    """
    store_uri = store_uri or settings.publish_uri
    store = open_store(store_uri, settings)
    prefix = f"{output_model}/{version}"
    try:
        manifest = _readable_manifest(store, output_model, version, store_uri)
        entry = manifest.files.get(name)
        data = store.get(f"{prefix}/{_check_name(name)}") if entry else None
    except _store_failures() as exc:
        raise _explain(exc, store, f"reading {output_model} v{version} from {store_uri}") from exc
    if entry is None or data is None:
        raise StoreError(f"{output_model} v{version} in {store_uri} has no {name}")
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise StoreError(f"{store.uri(prefix)}/{name} does not match its manifest (sha256 or size differs)")
    return data


def list_published(settings: Settings, store_uri: str | None = None) -> list[str]:
    """Every published version in the store, as ``namespace/name@version``."""
    store_uri = store_uri or settings.publish_uri
    store = open_store(store_uri, settings)
    try:
        keys = store.list("")
    except _store_failures() as exc:
        raise _explain(exc, store, f"listing {store_uri}") from exc
    names = []
    for key in keys:
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == MANIFEST:
            names.append(f"{parts[0]}/{parts[1]}@{parts[2]}")
    return sorted(names)
