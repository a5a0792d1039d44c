"""Shared set-up for the benchmarks: a base model, LoRA adapters, and servers run as subprocesses
(so the load generator and the server do not share an interpreter lock).

Run the benchmarks from the repository root, e.g. ``.venv/bin/python bench/serving_throughput.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.catalog import get_config  # noqa: E402 (the repository is on the path from here on)
from core.processes import free_port, stop_processes, wait_until_healthy  # noqa: E402
from serving.vllm import READY as VLLM_READY  # noqa: E402
from core.settings import Settings  # noqa: E402
from training.base_model import resolve_base_model  # noqa: E402

EMBEDDED = "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu"
TINY = "bench/tiny-llama@v1.0.0+cpu"


def isolate_platform(work: Path, **extra: str) -> dict[str, str]:
    """Point this process at a fresh platform state under ``work`` (data folder, Prefect's own
    database; offline), drop what could reach another platform, and return what was set.

    Set before Prefect is imported: it reads ``PREFECT_HOME`` and its other settings then.
    """
    env = {"CUSTOMIZER_DATA_DIR": str(work / "data"), "PREFECT_HOME": str(work / "prefect"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"} | extra
    for leaked in ("PREFECT_API_URL", "CUSTOMIZER_STORE_URI", "CUSTOMIZER_MLFLOW_TRACKING_URI", "CUSTOMIZER_S3_ENDPOINT_URL"):
        os.environ.pop(leaked, None)
    os.environ.update(env)
    return env


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


# Dense bf16 peak TFLOP/s by GPU name (the datasheets' larger figures assume 2:4 sparsity).
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def gpu_peak_tflops(device_name: str, override: str | None = None) -> tuple[float, str]:
    """``(dense bf16 peak TFLOP/s, where the figure comes from)`` for a GPU named like
    ``torch.cuda.get_device_name()``; ``override`` (a number) wins.

    >>> gpu_peak_tflops("NVIDIA H100 80GB HBM3")
    (989.0, 'H100 dense bf16')
    >>> gpu_peak_tflops("NVIDIA H100 80GB HBM3", "500")
    (500.0, 'CUSTOMIZER_BENCH_PEAK_TFLOPS')

    Raises:
        ValueError: the override is not a positive number, or the GPU is not in the table and no
            override was given.
    """
    if override:
        try:
            value = float(override)
        except ValueError:
            value = 0.0
        if value <= 0:
            raise ValueError(f"CUSTOMIZER_BENCH_PEAK_TFLOPS must be a positive number of TFLOP/s, got {override!r}")
        return value, "CUSTOMIZER_BENCH_PEAK_TFLOPS"
    for key, value in GPU_PEAK_TFLOPS.items():
        if key.lower() in device_name.lower():
            return value, f"{key} dense bf16"
    raise ValueError(f"no known bf16 peak for GPU {device_name!r}: set CUSTOMIZER_BENCH_PEAK_TFLOPS (dense bf16 TFLOP/s)")


def random_model_like(shape: Path, folder: Path, dtype) -> Path:
    """A model with ``shape``'s architecture (its ``config.json``) and tokenizer, randomly initialised."""
    import shutil

    import torch  # delayed: torch and transformers are heavy (start-up time)
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shape), dtype=dtype)
    model.save_pretrained(folder)
    for path in shape.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")) or path.suffix == ".jinja":
            shutil.copy(path, folder / path.name)
    return folder


def build_tiny_model(folder: Path) -> Path:
    """A 4-layer Llama (hidden 256) with a byte-level BPE tokenizer and a ChatML template."""
    import inspect
    import json as json_module

    import torch  # delayed: torch, tokenizers and transformers are heavy (start-up time)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [inspect.getsource(json_module)] * 4 + ["reply with the word ok " * 20]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=2048, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>")
    tokenizer.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def prepare_base(kind: str, work: Path, data_dir: Path) -> tuple[str, str, Path, dict[str, str]]:
    """``(config URN, served base name, base model folder, environment)`` for ``tiny`` or ``embedded``."""
    env = {"CUSTOMIZER_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if kind == "tiny":
        model_dir = work / "tiny-model"
        if not (model_dir / "config.json").exists():
            build_tiny_model(model_dir)
        configs = work / "configs"
        configs.mkdir(parents=True, exist_ok=True)
        (configs / "tiny.yaml").write_text(
            "namespace: bench\nname: tiny-llama@v1.0.0+cpu\ntarget:\n  name: bench/tiny-llama\n"
            f"  model_uri: {model_dir}\nmax_seq_length: 512\ntraining_options:\n"
            "  - {training_type: sft, finetuning_type: lora, num_gpus: 0, micro_batch_size: 8}\n"
        )
        env["CUSTOMIZER_CONFIG_DIRS"] = json.dumps([str(configs)])
        return TINY, "bench/tiny-llama", model_dir, env

    settings = Settings()  # the embedded model is converted once into the user's model cache
    config = get_config(EMBEDDED, settings)
    resolved = resolve_base_model(config.target, settings)
    # serve-models finds the converted folder through its own data folder: point it at the cache.
    (data_dir / "models").parent.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "models").exists():
        (data_dir / "models").symlink_to(settings.models_dir)
    return EMBEDDED, config.target.name, Path(resolved.path), env


def make_adapters(base_dir: Path, base_name: str, out: Path, count: int, rank: int, targets: list[str]) -> list[Path]:
    """``count`` LoRA adapters with random weights (distinct seeds), naming their base like training does."""
    import torch  # delayed: torch, peft and transformers are heavy (start-up time)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    folders = []
    for i in range(count):
        torch.manual_seed(100 + i)
        model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False, task_type="CAUSAL_LM"))
        folder = out / f"adapter-{i}"
        model.save_pretrained(folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": base_name}))
        base = model.unload()  # the same base again, without this adapter
        folders.append(folder)
    return folders


@contextmanager
def serve_models(config_urn: str, env: dict[str, str], max_adapters: int, threads: int | None, log: Path) -> Iterator[str]:
    """``customizer serve-models`` in its own process group; yields its URL once healthy."""
    port = free_port()
    full_env = os.environ | env | ({"CUSTOMIZER_TORCH_THREADS": str(threads)} if threads else {})
    command = [sys.executable, "-m", "customizer.cli", "serve-models", "--config", config_urn, "--port", str(port), "--max-adapters", str(max_adapters)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{url}/health", process, 600, log, what=f"serve-models (log {log})")
        yield url
    finally:
        stop_processes(process, grace=30)


@contextmanager
def vllm_serving(config_urn: str, env: dict[str, str], log: Path, max_loras: int = 8, max_rank: int = 16) -> Iterator[str]:
    """vLLM started by ``customizer serving start`` in its own process group (room for ``max_loras``
    adapters of rank ``max_rank`` in a batch; the store's resolver loads published versions on first
    request); yields its URL once it says it is serving."""
    port = free_port()
    full_env = os.environ | env | {"CUSTOMIZER_VLLM_MAX_LORAS": str(max_loras), "CUSTOMIZER_VLLM_MAX_LORA_RANK": str(max_rank)}
    command = [sys.executable, "-m", "customizer.cli", "serving", "start", "--config", config_urn, "--port", str(port)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{url}/health", process, 900, log, what=f"customizer serving start (log {log})", says=VLLM_READY)
        yield url
    finally:
        stop_processes(process, grace=30)


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """moto's S3 server in its own process; yields its endpoint URL."""
    import httpx  # delayed: only the load and health checks need it (start-up time)

    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not start; see {log}") from None
                time.sleep(0.2)
        yield url
    finally:
        stop_processes(process, grace=30)
