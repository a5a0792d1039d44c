"""vLLM as customizer's serving engine: the command that starts it on a config's base model with the
trusted champions loaded, and where it finds adapters on this machine.

vLLM lives in its own venv (``make vllm``: ``.venv-vllm``, or the ``vllm_python`` setting), because
its pins (torch, transformers, fastapi) conflict with Prefect's. It is started as
``python -m vllm.entrypoints.openai.api_server`` (the CPU build's ``vllm`` console script does not
run) with:

- ``--enable-lora`` and room for ``vllm_max_lora_rank`` (raised to what the champions need), so the
  LoRA resolver (``serving.vllm_resolver``) can load any published version later;
- the trusted champions as ``--lora-modules`` (``serving.handoff.champion_adapters``, as
  ``customizer serving vllm-args`` computes them), each fetched from the store and verified against
  its manifest into ``<data>/serving/vllm/<namespace>/<name>/<version>`` unless
  ``serving_lora_root`` says where vLLM sees the store;
- ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``: ``/v1/load_lora_adapter`` (the hand-off) and the resolver
  work only with it;
- ``response_format`` (``json_object``, ``json_schema``) through llguidance, as in serve-models, with
  no whitespace between JSON tokens (a model cannot spend its tokens on blank space);
- on a machine without a GPU, ``--dtype bfloat16`` and a KV cache of ``vllm_cpu_kvcache_gib``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import BaseModel

from core.settings import Settings
from deploy.store import fetch
from serving.handoff import champion_adapters, lora_arguments, lora_path

PROJECT_DIR = Path(__file__).resolve().parents[1]
ENTRYPOINT = "vllm.entrypoints.openai.api_server"
# json_object / json_schema through llguidance, as serve-models does, and compact: no whitespace between tokens.
READY = "vLLM is serving"  # what `customizer serving start` prints once vLLM answers, before its model and URL
STRUCTURED_OUTPUTS = {"backend": "guidance", "disable_any_whitespace": True}


class VllmNotInstalled(RuntimeError):
    """There is no Python with vLLM where the settings say."""


class VllmLaunch(BaseModel):
    """How to start vLLM: the command, what to add to the environment, and where it will answer."""

    command: list[str]
    env: dict[str, str]
    url: str


def vllm_python(settings: Settings) -> Path:
    """The Python of vLLM's venv.

    Raises:
        VllmNotInstalled: it does not exist; the message says how to install it.
    """
    python = settings.vllm_python or PROJECT_DIR / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        raise VllmNotInstalled(
            f"vLLM is not installed: {python} does not exist; run `make vllm` in {PROJECT_DIR} "
            "(or set CUSTOMIZER_VLLM_PYTHON to the Python of a venv that has vLLM and customizer)"
        )
    return python


def vllm_installed(settings: Settings) -> bool:
    """Whether there is a Python with vLLM where the settings say (``make vllm`` installed it)."""
    try:
        vllm_python(settings)
    except VllmNotInstalled:
        return False
    return True


def on_gpu() -> bool:
    """Whether this machine has an NVIDIA GPU (the test ``make vllm`` uses to pick vLLM's build)."""
    return shutil.which("nvidia-smi") is not None


def local_adapter(output_model: str, version: str, settings: Settings, store_uri: str | None = None) -> Path:
    """A published version's folder on this machine, fetched from the store and verified against its
    manifest (files already there with the manifest's sha256 are not downloaded again).

    Raises:
        deploy.store.StoreError: no such version, or a file that does not match its manifest.
    """
    folder = settings.serving_cache_dir / "vllm" / output_model / version
    fetch(output_model, version, folder, settings, store_uri=store_uri)
    return folder


def launch_command(settings: Settings, base_model_dir: str | Path, served_names: list[str], namespace: str | None,
                   host: str, port: int) -> VllmLaunch:
    """The vLLM command that serves ``base_model_dir`` with the trusted champions of ``namespace``
    (None: of every model) loaded and the resolver ready for any other published version.

    Args:
        served_names: the base model's names; the first is the one responses carry.

    Raises:
        VllmNotInstalled: vLLM's venv is missing.
        serving.handoff.HandOffError: a champion's rank is above vLLM's largest, or its published
            URI names another version.
        deploy.trust.UntrustedChampion, deploy.registry.RegistryUnavailable, deploy.store.StoreError:
            a champion cannot be served (no champion is left out silently).
    """
    python = vllm_python(settings)
    adapters = champion_adapters(namespace, settings)
    modules = []
    for adapter in adapters:
        path = lora_path(adapter.published_uri, settings) if settings.serving_lora_root else str(
            local_adapter(adapter.output_model, adapter.version, settings))
        modules.append(f"{adapter.output_model}={path}")
    rank = max([settings.vllm_max_lora_rank, *(r for a in adapters for r in a.ranks)])
    command = [str(python), "-m", ENTRYPOINT, "--model", str(base_model_dir), "--served-model-name", *served_names,
               "--host", host, "--port", str(port),
               *lora_arguments(modules, rank, max(settings.vllm_max_loras, len(modules))),
               "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS)]
    # The resolver (serving.vllm_resolver) reads the settings from this environment in vLLM's process.
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "CUSTOMIZER_VLLM_BASE_MODEL": served_names[0]}
    if not on_gpu():
        command += ["--dtype", "bfloat16"]
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.vllm_cpu_kvcache_gib)
    if settings.vllm_max_model_len:
        command += ["--max-model-len", str(settings.vllm_max_model_len)]
    if settings.serving_api_key:  # through the environment: a command line is visible to every user of the machine
        env["VLLM_API_KEY"] = settings.serving_api_key.get_secret_value()
    return VllmLaunch(command=command, env=env, url=f"http://{host}:{port}")
