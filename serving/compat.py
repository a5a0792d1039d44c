"""The serving-compatibility check: before anything is published, would a serving engine load it?

A LoRA adapter passes when
- ``adapter_config.json`` is a LoRA config that names the base model it was trained on (the
  config's target name, which is how serving engines and ``customizer serve-models`` match it);
- its rank fits vLLM: vLLM pads every adapter to ``--max-lora-rank``, which must be one of
  ``VLLM_MAX_LORA_RANKS``, so a rank above 512 cannot be served (the check reports the smallest
  ``--max-lora-rank`` that holds the adapter);
- it uses no feature vLLM refuses: ``modules_to_save`` (vLLM accepts none; on the embeddings or
  the LM head they would also change every adapter's vocabulary), DoRA, or trained biases;
- its target modules are linear projections vLLM adapts for the architecture (never the
  embeddings or the LM head, unless ``serving_allow_embedding_targets`` says the engine takes them);
- it loads with PEFT on the base model: every tensor in the file lands on a layer with the right
  shape, no adapted layer is left without weights, and every value is finite.

A full-weights folder passes when its ``config.json`` has the base model's architecture and
vocabulary and every shard its index names is there.

Every problem found is reported, not just the first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

log = logging.getLogger("customizer.compat")

# vLLM's closed set of --max-lora-rank values (vllm/config/lora.py, MaxLoRARanks).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_DECODER_PROJECTIONS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
# Modules vLLM's LoRA layers cover, per architecture (it packs q/k/v and gate/up; adapters on any
# of the halves map onto the packed layer).
VLLM_LORA_MODULES: dict[str, frozenset[str]] = {
    "LlamaForCausalLM": _DECODER_PROJECTIONS,
    "MistralForCausalLM": _DECODER_PROJECTIONS,
    "Qwen2ForCausalLM": _DECODER_PROJECTIONS,
    "Qwen3ForCausalLM": _DECODER_PROJECTIONS,
    "GemmaForCausalLM": _DECODER_PROJECTIONS,
    "Gemma2ForCausalLM": _DECODER_PROJECTIONS,
}
EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head", "wte", "wpe", "embed_out", "word_embeddings", "embed_in"})


class CompatError(ValueError):
    """The folder would not load in a serving engine; the message lists every reason."""


class ServingCheck(BaseModel):
    """What the check found in a folder that passed."""

    kind: Literal["lora", "full"]
    base_model: str
    rank: int | None = None
    max_lora_rank: int | None = None  # the smallest vLLM --max-lora-rank that holds this adapter
    target_modules: list[str] = []

    def summary(self) -> str:
        if self.kind == "full":
            return f"passed: full weights for {self.base_model}"
        return (
            f"passed: LoRA r={self.rank} on {', '.join(self.target_modules)} for {self.base_model} "
            f"(vLLM --max-lora-rank {self.max_lora_rank} or more)"
        )


def required_max_lora_rank(rank: int) -> int | None:
    """The smallest vLLM ``--max-lora-rank`` that holds ``rank``, or None above vLLM's largest.

    >>> required_max_lora_rank(4), required_max_lora_rank(16), required_max_lora_rank(300), required_max_lora_rank(1024)
    (8, 16, 320, None)
    """
    return next((choice for choice in VLLM_MAX_LORA_RANKS if rank <= choice), None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CompatError(f"{path.parent} cannot be served: {path.name} is missing") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CompatError(f"{path.parent} cannot be served: {path.name} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CompatError(f"{path.parent} cannot be served: {path.name} is not a JSON object")
    return value


def _architecture(base_model_dir: Path) -> str:
    return (_read_json(base_model_dir / "config.json").get("architectures") or ["unknown"])[0]


def _module_problems(modules: list[str], architecture: str, allow_embeddings: bool) -> list[str]:
    problems = []
    embeddings = sorted(m for m in modules if m in EMBEDDING_MODULES)
    if embeddings and not allow_embeddings:
        problems.append(
            f"target_modules include the embeddings or LM head ({', '.join(embeddings)}), which vLLM does not adapt"
        )
    supported = VLLM_LORA_MODULES.get(architecture)
    if supported is not None:
        others = sorted(m for m in modules if m not in supported and m not in EMBEDDING_MODULES)
        if others:
            problems.append(
                f"target_modules {others} are not LoRA modules vLLM supports for {architecture} "
                f"(supported: {', '.join(sorted(supported))})"
            )
    return problems


def _static_problems(config: dict[str, Any], base_model_name: str, architecture: str, allow_embeddings: bool,
                     hub_id: str | None = None) -> list[str]:
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}; serving engines load LoRA adapters only")
    named = config.get("base_model_name_or_path")
    if named not in (base_model_name, hub_id or base_model_name):
        expected = f"{base_model_name!r}" + (f" or {hub_id!r}" if hub_id and hub_id != base_model_name else "")
        problems.append(f"adapter_config.json names base model {named!r}, not {expected}")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        problems.append(f"rank `r` is {rank!r}, not a positive integer")
    elif required_max_lora_rank(rank) is None:
        problems.append(f"rank {rank} is above vLLM's largest --max-lora-rank {VLLM_MAX_LORA_RANKS[-1]}")
    patterns = config.get("rank_pattern") or {}
    if any(required_max_lora_rank(r) is None for r in patterns.values()):
        problems.append(f"rank_pattern {patterns} has ranks above vLLM's largest --max-lora-rank {VLLM_MAX_LORA_RANKS[-1]}")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save is {config['modules_to_save']}; vLLM serves adapters only without it")
    if config.get("use_dora"):
        problems.append("the adapter uses DoRA, which vLLM does not serve")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config['bias']!r}; trained biases need vLLM's --enable-lora-bias, use bias 'none'")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        problems += _module_problems(sorted(set(targets)), architecture, allow_embeddings)
    return problems


def _load_problems(folder: Path, base_model_dir: Path, architecture: str, allow_embeddings: bool) -> tuple[list[str], list[str]]:
    """Load the adapter with PEFT on the base model; returns (problems, adapted module names)."""
    # delayed: torch, peft and transformers are heavy (start-up time)
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return [f"adapter_model.safetensors is missing from {folder}"], []
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        return [f"adapter_model.safetensors cannot be read: {exc}"], []
    problems = [f"tensor {name} has non-finite values" for name, t in tensors.items() if not torch.isfinite(t).all()]

    base = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
    try:
        model = PeftModel.from_pretrained(base, str(folder), adapter_name="serving_check")
    except (RuntimeError, ValueError, KeyError) as exc:  # shape mismatches, targets not found in the model
        return problems + [f"PEFT cannot load it on the base model: {str(exc).splitlines()[0]}"], []
    # Decide the embedding question here: PEFT's "auto" looks the base up by name, on the hub.
    targets = model.peft_config["serving_check"].target_modules or []
    on_embeddings = any(m in EMBEDDING_MODULES for m in ([targets] if isinstance(targets, str) else targets))
    loaded = get_peft_model_state_dict(model, adapter_name="serving_check", save_embedding_layers=on_embeddings)
    missing = sorted(set(loaded) - set(tensors))
    unexpected = sorted(set(tensors) - set(loaded))
    if missing:
        problems.append(f"{len(missing)} adapted weights are not in the file (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors in the file match no layer of the base model (e.g. {unexpected[0]})")
    for name in sorted(set(loaded) & set(tensors)):
        if loaded[name].shape != tensors[name].shape or not torch.equal(loaded[name].to(tensors[name].dtype), tensors[name]):
            problems.append(f"tensor {name} did not load as stored")
            break
    adapted = sorted({
        name.rpartition(".")[2]
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and ("serving_check" in module.lora_A or "serving_check" in module.lora_embedding_A)
    })
    embeddings = [
        name for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), torch.nn.Embedding)
    ]
    if embeddings and not allow_embeddings and not any("embeddings" in p for p in problems):
        problems.append(f"the adapter changes embedding layers ({embeddings[0]}), which vLLM does not adapt")
    problems += [p for p in _module_problems(adapted, architecture, allow_embeddings) if p not in problems]
    return problems, adapted


def check_adapter(folder: Path, base_model_dir: Path, base_model_name: str, allow_embedding_targets: bool = False,
                  hub_id: str | None = None) -> ServingCheck:
    """Check that a LoRA adapter folder will load in vLLM and in ``customizer serve-models``.

    Args:
        folder: the adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).
        base_model_dir: local folder of the base model it was trained on.
        base_model_name: the name the adapter must give its base (the config's target name).
        allow_embedding_targets: accept adapters on the embeddings or LM head.
        hub_id: another name the adapter may give its base (``Target.adapter_base``: its Hub id).

    Returns:
        What was found: rank, the ``--max-lora-rank`` it needs, adapted modules.

    Raises:
        CompatError: listing every reason it cannot be served.
    """
    config = _read_json(folder / "adapter_config.json")
    architecture = _architecture(base_model_dir)
    problems = _static_problems(config, base_model_name, architecture, allow_embedding_targets, hub_id)
    adapted: list[str] = []
    if not any("peft_type" in p for p in problems):
        load_problems, adapted = _load_problems(folder, base_model_dir, architecture, allow_embedding_targets)
        problems += [p for p in load_problems if p not in problems]
    if problems:
        raise CompatError(f"the adapter in {folder} cannot be served: " + "; ".join(problems))
    rank = int(config["r"])
    patterns = [int(r) for r in (config.get("rank_pattern") or {}).values()]
    return ServingCheck(
        kind="lora", base_model=base_model_name, rank=rank,
        max_lora_rank=required_max_lora_rank(max([rank, *patterns])), target_modules=adapted,
    )


def check_full_model(folder: Path, base_model_dir: Path, base_model_name: str) -> ServingCheck:
    """Check that a full-weights folder matches its base model's architecture and is complete.

    Raises:
        CompatError: listing every reason it cannot be served.
    """
    config = _read_json(folder / "config.json")
    base = _read_json(base_model_dir / "config.json")
    problems = []
    if config.get("architectures") != base.get("architectures"):
        problems.append(f"architectures {config.get('architectures')} differ from the base model's {base.get('architectures')}")
    if config.get("vocab_size") != base.get("vocab_size"):
        problems.append(f"vocab_size {config.get('vocab_size')} differs from the base model's {base.get('vocab_size')}")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        problems += [f"shard {name} named by the index is missing" for name in shards if not (folder / name).is_file()]
    elif not (folder / "model.safetensors").is_file():
        problems.append("neither model.safetensors nor model.safetensors.index.json is there")
    if problems:
        raise CompatError(f"the model in {folder} cannot be served: " + "; ".join(problems))
    return ServingCheck(kind="full", base_model=base_model_name)


def check_serving(folder: Path, base_model_dir: Path, base_model_name: str, allow_embedding_targets: bool = False,
                  hub_id: str | None = None) -> ServingCheck:
    """Check an adapter (``adapter_config.json`` present) or a full-weights folder before publication.

    Raises:
        CompatError: listing every reason it cannot be served.
    """
    if (folder / "adapter_config.json").is_file():
        return check_adapter(folder, base_model_dir, base_model_name, allow_embedding_targets, hub_id)
    return check_full_model(folder, base_model_dir, base_model_name)
