"""Fixtures for the tests that run a real vLLM (``make vllm``): a data folder with a published,
trusted champion, and ``customizer serving start`` on it, shared by every module that asks.
Tests that need the server are skipped, saying why, where vLLM's venv is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core import tracking
from core.processes import free_port, stop_processes, wait_until_healthy
from core.settings import Settings
from deploy import registry
from deploy.store import publish
from serving.vllm import READY as VLLM_READY
from serving.vllm import vllm_installed
from tests.deploy import sign_decision
from tests.serving import TINY_BASE_NAME, make_adapter
from training.tiny import write_tiny_config

FILES = ["adapter_config.json", "adapter_model.safetensors"]
VLLM_CONFIG_URN = "test/tiny-vllm@v1.0.0+cpu"
NOT_INSTALLED = ".venv-vllm not installed: run `make vllm`"


needs_vllm = pytest.mark.skipif(not vllm_installed(Settings()), reason=NOT_INSTALLED)


def build_vllm_tiny_model(folder: Path) -> Path:
    """The tiny Llama with 64-wide attention heads (vLLM's CPU attention kernels take 32 and up;
    the stock tiny model's are 16 wide), its tokenizer and chat template unchanged."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.tiny import build_tiny_model

    build_tiny_model(folder)
    config = LlamaConfig.from_pretrained(folder)
    config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim = 128, 256, 2, 1, 64
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def register_champion(settings: Settings, name: str, adapter: Path) -> str:
    """Register, publish, sign and promote ``adapter`` as the register and promote tasks do; returns its published URI."""
    run_id = tracking.start_run(settings, f"cust-{name}", tags={}, params={})
    version = registry.register_version(settings, name, str(adapter), run_id, {}).version
    uri = publish(adapter, FILES, name, version, TINY_BASE_NAME, {}, settings).uri
    registry.set_version_tags(settings, name, version, {"customizer.published_uri": uri})
    sign_decision(settings, name, version)
    registry.promote(settings, name, version)
    return uri


@pytest.fixture(scope="session")
def vllm_world(tmp_path_factory, tiny_config_dir):
    """A data folder whose registry has ``team/bot`` v1 as a trusted, published champion, and a config
    whose base model is a vLLM-sized tiny Llama named like the tiny one."""
    root = tmp_path_factory.mktemp("vllm")
    base = build_vllm_tiny_model(root / "base")
    configs = root / "configs"
    configs.mkdir()
    write_tiny_config(configs, "test/tiny-vllm@v1.0.0+cpu", TINY_BASE_NAME, base)
    settings = Settings(data_dir=root / "data", serving_lora_root=str(root / "data" / "store"))
    adapters = {seed: make_adapter(root / f"adapter-{seed}", base, seed=seed) for seed in (1, 2, 3)}
    uri1 = register_champion(settings, "team/bot", adapters[1])
    for version in (2, 3):  # published, not promoted
        publish(adapters[version], FILES, "team/bot", str(version), TINY_BASE_NAME, {}, settings)
    env = {
        "CUSTOMIZER_DATA_DIR": str(settings.root),
        "CUSTOMIZER_CONFIG_DIRS": json.dumps([str(tiny_config_dir), str(configs)]),
        "CUSTOMIZER_SERVING_LORA_ROOT": settings.serving_lora_root,
        "CUSTOMIZER_VLLM_CPU_KVCACHE_GIB": "1",
        # No more room than the champion needs: `serving start` then passes what `serving vllm-args` prints, verbatim.
        "CUSTOMIZER_VLLM_MAX_LORA_RANK": "8",
        "CUSTOMIZER_VLLM_MAX_LORAS": "1",
    }
    return {"root": root, "base": base, "settings": settings, "adapters": adapters, "uri1": uri1, "env": env}


@pytest.fixture(scope="session")
def vllm_server(vllm_world):
    """`customizer serving start` (vLLM from .venv-vllm) on the session's vLLM data folder: yields its URL and log.

    One server for every module that asks (a start takes about a minute on two cores)."""
    if not vllm_installed(Settings()):
        pytest.skip(NOT_INSTALLED)
    port = free_port()
    log = vllm_world["root"] / "serving-start.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "customizer.cli", "serving", "start", "--config", VLLM_CONFIG_URN, "--namespace", "team",
             "--port", str(port)],
            env=os.environ | vllm_world["env"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        # vLLM answers its health check a moment before the command, polling it too, says it is serving.
        wait_until_healthy(f"{url}/health", process, timeout=600, log=log, what="customizer serving start", says=VLLM_READY)
        yield {"url": url, "log": log}
    finally:
        assert stop_processes(process, grace=20) == []
    with pytest.raises(httpx.ConnectError):  # SIGTERM to `serving start` stopped vLLM too
        httpx.get(f"{url}/health", timeout=5)
