"""Sending a publication's files to the store: each file hashed once, and to S3 one transfer manager
for all of a publication's files.

``deploy.store.publish`` decides what is sent (content-addressed, manifest last); this module only
hashes and sends. A digest is a dict ``{"sha256": hex, "size": bytes}``, the fields of a manifest entry.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core import objects
from core.settings import Settings

Upload = Callable[[str, Path, str, int], Future]  # (store key, file, sha256, size) -> its upload


def digest(path: Path) -> dict[str, Any]:
    """A file's sha256 and size, the file read once."""
    return {"sha256": objects.sha256_file(path), "size": path.stat().st_size}


def hash_files(folder: Path, files: list[str]) -> dict[str, dict[str, Any]]:
    """``digest`` of each of ``files`` under ``folder``, in their order."""
    # hashlib releases the GIL on large buffers: shards hash in parallel.
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(files)))) as pool:
        return dict(zip(files, pool.map(lambda name: digest(folder / name), files)))


def _object_key(store: objects.S3Files, key: str) -> str:
    """The S3 object key behind a store key (``store.uri`` applies the store's one path rule)."""
    return store.uri(key).removeprefix(f"s3://{store.bucket}/")


@contextmanager
def uploader(store: objects.FolderFiles | objects.S3Files, settings: Settings) -> Iterator[Upload]:
    """A function that starts one file's upload, stored with its sha256, and returns its future.

    To S3, every file goes through one transfer manager on the store's client and transfer
    settings, so the parts of all files share ``s3_max_concurrency`` connections and the last parts
    of one file never leave the others idle. A file sent in one request carries its sha256 as
    ``ChecksumSHA256`` (when ``s3_checksums`` is ``when_supported``): S3 refuses it unless the bytes
    received are the bytes hashed, and botocore computes no checksum of its own. Multipart uploads
    keep botocore's per-part checksums, since S3 takes a whole-object sha256 for single requests
    only. Leaving the block waits for every upload; on an error the unfinished ones are cancelled.
    """
    if isinstance(store, objects.FolderFiles):
        # One writer: the copies are local, and the folder store counts bytes written without a lock.
        with ThreadPoolExecutor(max_workers=1) as pool:
            yield lambda key, path, sha256, size: pool.submit(store.put_file, key, path, sha256)
        return
    # delayed: boto3 is heavy (start-up time)
    from boto3.s3.transfer import create_transfer_manager

    def upload(key: str, path: Path, sha256: str, size: int) -> Future:
        extra: dict[str, Any] = {"Metadata": {"sha256": sha256}}  # what S3Files.stat reads back
        if settings.s3_checksums == "when_supported" and size < store.transfer.multipart_threshold:
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode()
        return manager.upload(str(path), store.bucket, _object_key(store, key), extra_args=extra)

    with create_transfer_manager(store.s3, store.transfer) as manager:
        yield upload


class UploadFailed(Exception):
    """One file's upload failed; the store's own error is the cause."""

    def __init__(self, name: str):
        super().__init__(f"uploading {name} failed")
        self.name = name


def send(
    store: objects.FolderFiles | objects.S3Files, settings: Settings, folder: Path, prefix: str, files: list[str],
    known: dict[str, dict[str, Any]] | None = None, listed: dict[str, int] | None = None,
) -> tuple[dict[str, dict[str, Any]], list[str], list[str]]:
    """Hash each file once (unless ``known``), compare it with what is stored under ``prefix``, and
    upload what differs, while the next files hash.

    Args:
        known: the digests, when the caller hashed the files already.
        listed: name -> size of what is stored under ``prefix``, when the caller listed it: a file
            not there, or there with another size, goes up without asking the store for its sha256.

    Returns:
        ``(digests, uploaded, unchanged)``, digests in the order of ``files``, once every upload is
        stored.

    Raises:
        UploadFailed: an upload failed, naming the file (the others are cancelled).
        botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError: asking what is stored failed.
    """
    digests: dict[str, dict[str, Any]] = {}
    uploads: dict[str, Future] = {}
    unchanged: list[str] = []
    # One file hashes at a time, in order, ahead of the uploads: the first upload starts as soon as
    # its file is hashed, and hashing (GB/s) keeps ahead of what a store takes in.
    with ThreadPoolExecutor(max_workers=1) as hashing, uploader(store, settings) as upload:
        hashed = hashing.map(lambda name: known[name] if known else digest(folder / name), files)
        for name, found in zip(files, hashed):
            digests[name] = found
            key = f"{prefix}/{name}"
            if (listed is None or listed.get(name) == found["size"]) and store.stat(key) == (found["sha256"], found["size"]):
                unchanged.append(name)
            else:
                uploads[name] = upload(key, folder / name, found["sha256"], found["size"])
        for name, future in uploads.items():
            try:
                future.result()
            except (*objects.store_errors(), objects.PathRefused) as exc:
                raise UploadFailed(name) from exc
    return digests, list(uploads), unchanged
