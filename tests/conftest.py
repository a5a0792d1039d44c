"""Test setup: an isolated, offline environment and a tiny model built once per session.

Everything runs offline: hub access is off and a socket audit hook fails any connection that
leaves the machine. Services (Prefect, MLflow, S3) are real and local.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

SESSION_DIR = Path(tempfile.mkdtemp(prefix="customizer-tests-"))
os.environ.update(
    {
        "CUSTOMIZER_DATA_DIR": str(SESSION_DIR / "data"),
        "CUSTOMIZER_TORCH_THREADS": "2",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PREFECT_HOME": str(SESSION_DIR / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)
for leaked in ("CUSTOMIZER_STORE_URI", "CUSTOMIZER_MLFLOW_TRACKING_URI", "CUSTOMIZER_S3_ENDPOINT_URL", "PREFECT_API_URL"):
    os.environ.pop(leaked, None)

from customizer.settings import apply_environment, get_settings  # noqa: E402

apply_environment(get_settings())

_LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost", "0.0.0.0", None, ""}


def _no_network(event: str, args: tuple) -> None:
    """Fail any connection or name lookup that is not for this machine."""
    if event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL_HOSTS:
            raise RuntimeError(f"test tried to reach the network: {address}")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode()
        if host not in _LOCAL_HOSTS and not str(host).endswith(".localhost"):
            raise RuntimeError(f"test tried to resolve a remote host: {host}")


sys.addaudithook(_no_network)

TINY_CONFIG_URN = "test/tiny-llama@v1.0.0+cpu"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    import inspect
    import json as json_module

    words = "what is the capital of reply with word ok item hello yes no answer question support ticket".split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    return lines * 20 + [inspect.getsource(json_module)]


def build_tiny_model(folder: Path) -> Path:
    """A 4-layer Llama with a 1k-token byte-level BPE tokenizer and a ChatML template (~1 s)."""
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
    import torch

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return build_tiny_model(SESSION_DIR / "tiny-model")


@pytest.fixture(scope="session")
def tiny_config_dir(tiny_model_dir: Path) -> Path:
    """A config folder with the tiny model's config, added to the catalog for the whole session."""
    folder = SESSION_DIR / "configs"
    folder.mkdir(exist_ok=True)
    (folder / "tiny-llama.yaml").write_text(
        "namespace: test\n"
        "name: tiny-llama@v1.0.0+cpu\n"
        "target:\n"
        "  name: test/tiny-llama\n"
        f"  model_uri: {tiny_model_dir}\n"
        "max_seq_length: 128\n"
        "prompt_format: chat\n"
        "lora_target_modules: [q_proj, v_proj]\n"
        "training_options:\n"
        "  - {training_type: sft, finetuning_type: lora, num_gpus: 0, micro_batch_size: 4}\n"
    )
    os.environ["CUSTOMIZER_CONFIG_DIRS"] = json.dumps([str(folder)])
    return folder


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def ok_rows(count: int, start: int = 0) -> list[dict]:
    """A task a tiny model learns in a few steps: always answer "ok"."""
    return [{"prompt": f"Reply with the word ok. Item {i}", "completion": "ok"} for i in range(start, start + count)]


@pytest.fixture
def ok_dataset(tmp_path: Path) -> Path:
    """20 training rows, 8 testing rows, no validation/ (so 10% is held out)."""
    root = tmp_path / "ok-dataset"
    write_jsonl(root / "training" / "train.jsonl", ok_rows(20))
    write_jsonl(root / "testing" / "test.jsonl", ok_rows(8, start=100))
    return root


@pytest.fixture
def settings(tiny_config_dir: Path):
    return get_settings()
