"""Helpers for serving tests: LoRA adapters of the tiny model and a running serve-models server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.settings import Settings
from serving.model import ModelServer
from serving.server import create_app, serve_in_thread
from tests.conftest import TINY_CONFIG_URN

TINY_BASE_NAME = "test/tiny-llama"


def make_adapter(folder: Path, base_dir: Path, seed: int = 0, **lora) -> Path:
    """Save a PEFT LoRA adapter of the tiny model with random (non-zero) weights, naming its base
    the way training does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    options = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False} | lora
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(task_type="CAUSAL_LM", **options))
    model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": TINY_BASE_NAME}))
    return folder


@contextmanager
def running_server(settings: Settings, base_dir: Path, max_adapters: int = 8) -> Iterator[tuple[ModelServer, str]]:
    """serve-models on the tiny model, in this process on a free port: yields (ModelServer, base URL)."""
    server = ModelServer(settings, base_dir, TINY_BASE_NAME, (TINY_CONFIG_URN,), max_adapters=max_adapters)
    with serve_in_thread(create_app(server)) as url:
        yield server, url


def reference_chat(base_dir: Path, adapter_dir: Path | None, content: str, max_tokens: int) -> str:
    """What greedy decoding gives for one user turn, with transformers + PEFT directly (the adapter
    merged, as the job's candidate evaluation runs it)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
