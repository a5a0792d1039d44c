"""GPU readiness check: customizer's training at the sizes it is meant for, on the GPUs of this
machine, in one command that fits a 15-minute lease of a GPU machine.

    python bench/gpu_check.py [--json FILE]    # on a GPU machine
    python bench/gpu_check.py --tiny           # anywhere, a tiny shape on the CPU: that it starts and prints its table

1. LoRA SFT (``bench/train.py --base-shape``, customizer's side) on random weights shaped like
   Llama-3.1-8B, with packing, bf16, flash attention (SDPA where ``flash_attn`` is not installed)
   and Liger kernels where installed. Reported: real tokens/s and MFU at 4N (LoRA computes no
   gradients for the frozen weights) against the GPU's dense bf16 peak (``common.GPU_PEAK_TFLOPS``).
2. Full-weight SFT on random weights shaped like Llama-3.2-1B under ``torchrun`` with one process
   per GPU present and FSDP (also on one GPU); MFU at 6N per GPU.

The weights are built on the GPU from the shapes below (no download); the tokenizer is the tiny
test model's (``training.tiny``): throughput depends on the shapes, not on the values or the
vocabulary actually used. Each part runs in its own process with a time limit; a part that fails
gets a row saying why and the other still runs. Logs go to ``--out`` (``bench/results/gpu-check-<time>``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

# Architecture shapes (Hugging Face LlamaConfig fields) of the published models.
SHAPES = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
                         rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
                         rms_norm_eps=1e-5, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=1024, max_position_embeddings=1024, tie_word_embeddings=True),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def build_shape(name: str, folder: Path) -> int:
    """Random bf16 weights (fp32 on a CPU) of the shape ``name`` with the tiny tokenizer, in ``folder``;
    built on the GPU when there is one. Returns the parameter count N."""
    import torch  # delayed: torch and transformers are heavy (start-up time)
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from training.tiny import build_tiny_model

    build_tiny_model(folder / "tokenizer-source")
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer-source")
    dims = SHAPES[name] | {"vocab_size": max(SHAPES[name]["vocab_size"], len(tokenizer))}
    config = LlamaConfig(**dims, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):  # initialised in its final dtype: no fp32 copy of 8B weights
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    count = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()  # the training processes need the GPU's memory, not this one
    tokenizer.save_pretrained(folder)
    shutil.rmtree(folder / "tokenizer-source")
    return count


def run_part(command: list[str], env: dict[str, str], log: Path, timeout: int) -> str | None:
    """Run one part; None when it succeeded, else why it failed (its last error line)."""
    started = time.perf_counter()
    with open(log, "wb") as sink:
        try:
            code = subprocess.run(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout} s (see {log})"
    print(f"[gpu-check] {log.stem}: {time.perf_counter() - started:.0f} s, exit {code}", flush=True)
    if code == 0:
        return None
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return f"exit status {code}: {(errors or lines or ['no output'])[-1][:300]} (see {log})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape, three steps: checks that the script runs (CPU or GPU)")
    parser.add_argument("--steps", type=int, help="training steps per part (default 12: under an epoch, so the full-weight "
                        "part writes no checkpoint; 3 with --tiny)")
    parser.add_argument("--batch-size", type=int, help="packed rows of 512 tokens per step (default 16; 4 with --tiny)")
    parser.add_argument("--out", type=Path, help="folder for the logs and results (default bench/results/gpu-check-<time>)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import torch  # delayed: the help above answers without it

    from common import gpu_peak_tflops  # bench/common.py

    steps = args.steps or (3 if args.tiny else 12)
    batch = args.batch_size or (4 if args.tiny else 16)
    out = args.out or BENCH / "results" / f"gpu-check-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    name = torch.cuda.get_device_name() if cuda else "cpu"
    try:
        peak = gpu_peak_tflops(name, os.environ.get("CUSTOMIZER_BENCH_PEAK_TFLOPS"))[0] if cuda else None
    except ValueError as exc:  # an unknown GPU: say so before spending the lease (MFU needs its peak)
        print(f"[gpu-check] {exc}", flush=True)
        return 2
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    budget = {"lora": 300 if args.tiny else 420, "full": 300}  # seconds; with start-up and shapes, within 15 minutes
    print(f"[gpu-check] {name} x {gpus or 1}{'' if cuda else ' (no GPU: figures are CPU figures, no MFU)'}; "
          f"{steps} steps of {batch} packed rows; logs in {out}", flush=True)

    rows = []
    # 1. LoRA on the 8B shape, through bench/train.py (customizer's side only, one run).
    lora_shape = "tiny" if args.tiny else "llama-3.1-8b"
    folder = out / lora_shape
    n = build_shape(lora_shape, folder)
    result = out / "lora.json"
    failed = run_part([sys.executable, str(BENCH / "train.py"), "--base-shape", str(folder), "--steps", str(steps),
                       "--batch-size", str(batch), "--repeats", "1", "--sides", "customizer", "--packing", "--no-parity",
                       "--json", str(result)], env, out / "lora.log", budget["lora"])
    side = json.loads(result.read_text())["sides"]["customizer"] if not failed else None
    rows.append(row("LoRA SFT", lora_shape, n, 1, 4, side, peak, failed))
    shutil.rmtree(folder, ignore_errors=True)  # tens of GB on the lent machine's disk

    # 2. Full weights on the 1B shape: torchrun over every GPU present, FSDP.
    full_shape = "tiny" if args.tiny else "llama-3.2-1b"
    folder = out / full_shape
    n = build_shape(full_shape, folder)
    from train import shaped_config  # bench/train.py: the catalog config that points at the shape

    result = out / "full.json"
    processes = max(gpus, 1)
    failed = run_part([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                       str(BENCH / "train.py"), "--side", "customizer-full", "--model", "shaped", "--steps", str(steps),
                       "--batch-size", str(batch * processes), "--packing", "--out", str(result), "--work", str(out / "full-work")],
                      env | shaped_config(folder, out / "full-config"), out / "full.log", budget["full"])
    side = json.loads(result.read_text()) if not failed else None
    rows.append(row(f"full weights, {'FSDP' if cuda else 'torchrun'}", full_shape, n, processes, 6, side, peak, failed))
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(out / "full-work", ignore_errors=True)

    print_table(rows, name, peak)
    summary = {"device": name, "gpus": gpus, "peak_tflops": peak, "steps": steps, "batch_size": batch, "rows": rows}
    (out / "gpu-check.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if all(r["error"] is None for r in rows) else 1


def row(part: str, shape: str, n: int, processes: int, flops_per_token: int, side: dict | None, peak: float | None,
        error: str | None) -> dict:
    """One line of the table: throughput and MFU at ``flops_per_token``·N per GPU (None without a GPU)."""
    figures = {}
    if side is not None:
        # Steady state (after the first step, before validation and saving) where there are enough steps.
        rate = side.get("steady_tokens_per_second") or side["tokens"] / side["seconds"]
        figures = {"precision": side["precision"], "tokens_per_second": rate, "whole_run_tokens_per_second": side["tokens"] / side["seconds"],
                   "final_loss": side["final_loss"], "peak_gpu_mb": side.get("peak_gpu_mb"),
                   "mfu": flops_per_token * n * rate / processes / (peak * 1e12) if peak else None}
    return {"part": part, "shape": shape, "parameters": n, "processes": processes, "mfu_at": f"{flops_per_token}N", **figures,
            "error": error}


def print_table(rows: list[dict], device: str, peak: float | None) -> None:
    print(f"\nGPU readiness on {device}" + (f" (dense bf16 peak {peak:.0f} TFLOP/s per GPU)" if peak else " (no GPU)"))
    print(f"{'part':24} {'shape':14} {'N':>15} {'procs':>5} {'precision':>10} {'real tok/s':>11} {'final loss':>10} {'peak GPU MB':>11} {'MFU':>14}")
    for r in rows:
        head = f"{r['part']:24} {r['shape']:14} {r['parameters']:15,} {r['processes']:5}"
        if r["error"]:
            print(f"{head} FAILED: {r['error']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}% at {r['mfu_at']}" if r["mfu"] is not None else f"n/a ({r['mfu_at']})"
        memory = f"{r['peak_gpu_mb']:11.0f}" if r["peak_gpu_mb"] is not None else f"{'-':>11}"
        print(f"{head} {r['precision']:>10} {r['tokens_per_second']:11.1f} {r['final_loss']:10.4f} {memory} {mfu:>14}")


if __name__ == "__main__":
    sys.exit(main())
