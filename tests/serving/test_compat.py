"""The serving-compatibility check on real PEFT adapters of the tiny model."""

import json
from pathlib import Path

import pytest

from serving.compat import CompatError, check_serving

BASE_NAME = "test/tiny-llama"


def make_adapter(folder: Path, base_dir: Path, **lora) -> Path:
    """Save a PEFT LoRA adapter of the tiny model (random weights) naming its base like training does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    options = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False} | lora
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(task_type="CAUSAL_LM", **options))
    model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": BASE_NAME}))
    return folder


def edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | values))


def test_a_servable_adapter_passes_and_reports_the_rank_vllm_needs(tmp_path, tiny_model_dir):
    adapter = make_adapter(tmp_path / "a", tiny_model_dir, r=4)
    check = check_serving(adapter, tiny_model_dir, BASE_NAME)
    assert (check.kind, check.rank, check.max_lora_rank, check.target_modules) == ("lora", 4, 8, ["q_proj", "v_proj"])
    assert "vLLM --max-lora-rank 8" in check.summary()


def test_every_reason_an_adapter_cannot_be_served_is_reported(tmp_path, tiny_model_dir):
    adapter = make_adapter(tmp_path / "a", tiny_model_dir)
    edit_config(adapter, base_model_name_or_path="/home/me/cache/model", r=1024, modules_to_save=["lm_head"], use_dora=True)
    with pytest.raises(CompatError) as caught:
        check_serving(adapter, tiny_model_dir, BASE_NAME)
    message = str(caught.value)
    assert "names base model '/home/me/cache/model', not 'test/tiny-llama'" in message
    assert "rank 1024 is above vLLM's largest --max-lora-rank 512" in message
    assert "modules_to_save is ['lm_head']" in message
    assert "DoRA" in message


def test_embedding_targets_are_refused_unless_allowed(tmp_path, tiny_model_dir):
    adapter = make_adapter(tmp_path / "a", tiny_model_dir, target_modules=["embed_tokens", "q_proj"])
    with pytest.raises(CompatError, match=r"embeddings or LM head \(embed_tokens\)"):
        check_serving(adapter, tiny_model_dir, BASE_NAME)
    assert check_serving(adapter, tiny_model_dir, BASE_NAME, allow_embedding_targets=True).target_modules == ["embed_tokens", "q_proj"]


def test_unsupported_modules_broken_weights_and_missing_tensors_are_caught(tmp_path, tiny_model_dir):
    import torch
    from safetensors.torch import load_file, save_file

    odd = make_adapter(tmp_path / "odd", tiny_model_dir, target_modules=["q_proj"])
    edit_config(odd, target_modules=["q_proj", "rotary_emb"])
    with pytest.raises(CompatError, match=r"not LoRA modules vLLM supports for LlamaForCausalLM"):
        check_serving(odd, tiny_model_dir, BASE_NAME)

    broken = make_adapter(tmp_path / "nan", tiny_model_dir)
    tensors = load_file(str(broken / "adapter_model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(broken / "adapter_model.safetensors"))
    with pytest.raises(CompatError, match=f"tensor {name} has non-finite values"):
        check_serving(broken, tiny_model_dir, BASE_NAME)

    partial = make_adapter(tmp_path / "partial", tiny_model_dir)
    tensors = load_file(str(partial / "adapter_model.safetensors"))
    save_file({k: v for k, v in tensors.items() if "layers.1." not in k}, str(partial / "adapter_model.safetensors"))
    with pytest.raises(CompatError, match=r"adapted weights are not in the file"):
        check_serving(partial, tiny_model_dir, BASE_NAME)

    wrong_shape = make_adapter(tmp_path / "shape", tiny_model_dir)
    tensors = load_file(str(wrong_shape / "adapter_model.safetensors"))
    save_file({k: torch.zeros(v.shape[0] + 1, v.shape[1]) for k, v in tensors.items()}, str(wrong_shape / "adapter_model.safetensors"))
    with pytest.raises(CompatError, match=r"PEFT cannot load it on the base model"):
        check_serving(wrong_shape, tiny_model_dir, BASE_NAME)


def test_full_weight_folders_are_checked_against_the_base(tmp_path, tiny_model_dir):
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (full / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (full / "model-00001-of-00002.safetensors").write_bytes(b"x")
    with pytest.raises(CompatError, match="shard model-00002-of-00002.safetensors named by the index is missing"):
        check_serving(full, tiny_model_dir, BASE_NAME)
    (full / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert check_serving(full, tiny_model_dir, BASE_NAME).kind == "full"
