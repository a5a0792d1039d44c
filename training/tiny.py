"""A tiny Llama built locally (no download): the base of the built-in test config.

Four-digit parameter counts are not the point; being deterministic, offline and quick is. Two
layers, a 1k-token byte-level BPE tokenizer with a ChatML template, built in about a second.
A larger initializer range than Llama's default gives a random model sharp enough logits that a
few LoRA steps visibly change its answers, which is what tests of a training platform need.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    words = "what is the capital of reply with word ok item hello yes no answer question support ticket".split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    return lines * 20 + [inspect.getsource(json)]


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random Llama and its tokenizer to ``folder`` (deterministic for a seed)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        initializer_range=0.2, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_config(folder: Path, urn: str, base_name: str, base: Path, *, num_gpus: int = 0, prompt_format: str | None = "chat") -> Path:
    """Write a LoRA config ``urn`` (``namespace/name@version``) whose base is the model folder ``base``,
    served as ``base_name``, into ``folder`` (one option asking for ``num_gpus``; ``prompt_format``
    None leaves the catalog's default); returns the file.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as scratch:
    ...     print(write_tiny_config(Path(scratch), "bench/tiny@v1.0.0+cpu", "bench/tiny", Path("/m")).read_text().splitlines()[:3])
    ['namespace: bench', 'name: tiny@v1.0.0+cpu', 'target:']
    """
    namespace, name = urn.split("/", 1)
    path = folder / f"{name.split('@')[0]}.yaml"
    path.write_text(
        f"namespace: {namespace}\nname: {name}\ntarget:\n  name: {base_name}\n  model_uri: {base}\n"
        + (f"prompt_format: {prompt_format}\n" if prompt_format else "")
        + "max_seq_length: 128\nlora_target_modules: [q_proj, v_proj]\n"
        f"training_options:\n  - {{training_type: sft, finetuning_type: lora, num_gpus: {num_gpus}, micro_batch_size: 4}}\n",
        encoding="utf-8",
    )
    return path
