"""Training throughput: customizer's SFT vs a bare TRL SFTTrainer script, same model, data and
hyperparameters, in one run.

    python bench/train.py [--steps 8] [--model embedded|tiny] [--batch-size 8] [--json results.json]
    python bench/train.py --base-shape FOLDER    # random weights shaped like FOLDER's config.json (GPU runs)

Each side trains in its own process (so peak memory is its own) for the same number of steps on
the same rendered rows. Reported: real (non-padding) tokens/s, their ratio, peak RSS, final loss,
and the share of this machine's matmul peak (measured here, fp32 and bf16) that each side reaches
with LoRA's ~4N FLOPs per token. The bare script uses TRL's defaults, except what this hardware
needs to run at all: ``use_cpu`` without a GPU, and ``bf16=False`` on a CPU without native bf16
(where TRL's default bf16 autocast is emulated and runs orders of magnitude slower).

On a CUDA GPU it also reports model FLOPs utilisation: MFU = 6 * N * tokens/s / peak, with N all
parameters of the model (embeddings included), tokens the real (non-padding) tokens and the peak the
GPU's dense bf16 FLOP/s from ``common.GPU_PEAK_TFLOPS`` (or ``CUSTOMIZER_BENCH_PEAK_TFLOPS``). 6N
counts the weight gradients a LoRA run does not compute (LoRA is ~4N), so the LoRA figure at 4N is
printed beside it. ``--base-shape`` takes a folder with a model's ``config.json`` and tokenizer but
no weights and trains randomly initialised weights of that shape: throughput does not depend on the
values, and the folder is small enough to carry to a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from common import gpu_peak_tflops, random_model_like  # noqa: E402

DATASET = REPO / "customizer" / "datasets" / "support-tickets"
CONFIGS = {"embedded": "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu", "tiny": "customizer/tiny-llama@v1.0.0+cpu",
           "shaped": "bench/shaped@v1.0.0"}


def shaped_config(shape: Path, work: Path) -> dict[str, str]:
    """Random weights shaped like ``shape`` and a catalog config for them; returns the environment
    that makes the config visible to the child processes."""
    import torch

    model_dir = random_model_like(shape, work / "shaped-model", torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    configs = work / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    precision = "bf16-mixed" if torch.cuda.is_available() else "fp32"
    (configs / "shaped.yaml").write_text(
        f"namespace: bench\nname: shaped@v1.0.0\ntarget:\n  name: bench/shaped\n  model_uri: {model_dir}\n"
        f"max_seq_length: 512\nprompt_format: chat\ntraining_precision: {precision}\n"
        "lora_target_modules: [q_proj, k_proj, v_proj, o_proj]\ntraining_options:\n"
        "  - {training_type: sft, finetuning_type: lora, num_gpus: 1, micro_batch_size: 512}\n"
    )
    return {"CUSTOMIZER_CONFIG_DIRS": json.dumps([str(configs)])}


def matmul_peak(dtype_name: str, size: int = 1024, seconds: float = 3.0) -> float:
    """Sustained GFLOP/s of a square matmul on this machine (0 when the dtype is not supported)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e9


def prepare(work: Path, model: str):
    from core.settings import apply_environment, get_settings
    from training.base_model import resolve_base_model
    from core.catalog import get_config
    from data.ingest import ingest_dataset

    settings = get_settings()
    apply_environment(settings)
    config = get_config(CONFIGS[model], settings)
    base = resolve_base_model(config.target, settings)
    data = ingest_dataset(str(DATASET), work / "data", seed=0)
    return settings, config, base, data


def side_customizer(work: Path, model: str, steps: int, batch_size: int) -> dict:
    from training.common import Hooks
    from training.sft import train_sft
    from core.specs import Hyperparameters

    settings, config, base, data = prepare(work, model)
    hp = Hyperparameters(epochs=1, max_steps=steps, batch_size=batch_size, learning_rate=5e-4, log_every_n_steps=1,
                         val_check_interval=steps, early_stopping={"enabled": False})
    tokens = []
    hooks = Hooks(sink=lambda name, value, step: tokens.append(value) if name == "num_tokens" else None)
    started = time.perf_counter()
    result = train_sft(base.path, data, config, hp, work / "customizer", settings, hooks)
    return {"seconds": result.train_seconds, "wall": time.perf_counter() - started, "tokens": tokens[-1],
            "final_loss": result.train_loss[-1][1], "params": result.total_parameters}


def side_trl(work: Path, model: str, steps: int, batch_size: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from training.common import lora_config, use_bf16
    from data.ingest import read_examples
    from data.prompts import render
    from core.specs import Hyperparameters

    settings, config, base, data = prepare(work, model)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    # What a bare script would write: prompt/completion text, the prompt rendered with the chat template.
    rows = []
    for example in read_examples(data.files["training"]):
        sample = render(example.record, config, tokenizer)
        rows.append({"prompt": sample.prompt, "completion": sample.target + sample.end_text})
    bf16_native = use_bf16(config.model_copy(update={"training_precision": "bf16-mixed"}))
    cuda = torch.cuda.is_available()
    args = SFTConfig(output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=5e-4,
                     logging_steps=1, report_to="none", max_length=config.max_seq_length, save_strategy="no",
                     use_cpu=not cuda, **({} if cuda or bf16_native else {"bf16": False}))
    seen = []

    class Tokens(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **k):
            if logs and "num_tokens" in logs:
                seen.append((logs["num_tokens"], logs.get("loss")))

    trainer = SFTTrainer(model=base.path, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora_config(Hyperparameters(), config), callbacks=[Tokens()])
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    return {"seconds": output.metrics["train_runtime"], "wall": seconds, "tokens": seen[-1][0],
            "final_loss": [loss for _, loss in seen if loss is not None][-1], "params": sum(p.numel() for p in trainer.model.parameters())}


def child(side: str, model: str, steps: int, batch_size: int, out: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        result = (side_customizer if side == "customizer" else side_trl)(Path(scratch), model, steps, batch_size)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result |= device_memory()
    out.write_text(json.dumps(result))


def device_memory() -> dict:
    import torch

    return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20} if torch.cuda.is_available() else {}


def device() -> dict:
    """What trained: the CPU, or the GPU with its dense bf16 peak (for MFU)."""
    import torch

    if not torch.cuda.is_available():
        return {"kind": "cpu", "name": "cpu", "threads": torch.get_num_threads()}
    name = torch.cuda.get_device_name()
    peak, source = gpu_peak_tflops(name, os.environ.get("CUSTOMIZER_BENCH_PEAK_TFLOPS"))
    return {"kind": "cuda", "name": name, "peak_tflops": peak, "peak_source": source}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--model", choices=sorted(CONFIGS), default="embedded")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step, both sides (default 8)")
    parser.add_argument("--base-shape", type=Path, help="folder with a config.json and tokenizer: train random weights of that shape")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--side", choices=["customizer", "trl"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.side:
        return child(args.side, args.model, args.steps, args.batch_size, args.out)

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        env = os.environ.copy()
        model = args.model
        if args.base_shape:
            env |= shaped_config(args.base_shape, Path(scratch))
            model = "shaped"
        for side in ("trl", "customizer"):
            out = Path(scratch) / f"{side}.json"
            subprocess.run([sys.executable, __file__, "--side", side, "--model", model, "--steps", str(args.steps),
                            "--batch-size", str(args.batch_size), "--out", str(out)], check=True, cwd=REPO, env=env)
            results[side] = json.loads(out.read_text())
    hardware = device()
    peaks = {"fp32": matmul_peak("float32"), "bf16": matmul_peak("bfloat16")} if hardware["kind"] == "cpu" else {}
    label = f"{args.base_shape.name} shape, random weights" if args.base_shape else f"{args.model} model"
    print(f"\nTraining throughput, {label}, LoRA SFT, {args.steps} steps of batch {args.batch_size} (support-tickets) on {hardware['name']}")
    rates = {side: r["tokens"] / r["seconds"] for side, r in results.items()}
    summary = {"model": label, "steps": args.steps, "batch_size": args.batch_size, "device": hardware, "sides": results,
               "tokens_per_second": rates, "ratio": rates["customizer"] / rates["trl"]}
    if hardware["kind"] == "cpu":
        print(f"matmul peak measured here: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")
        print(f"{'side':12} {'real tok/s':>11} {'s/step':>7} {'peak RSS MB':>12} {'final loss':>11} {'% fp32 peak':>12} {'% bf16 peak':>12}")
        native_bf16 = peaks["bf16"] > peaks["fp32"]
        for side, r in results.items():
            flops = 4 * r["params"] * rates[side] / 1e9  # LoRA: forward + activation gradients, no frozen weight gradients
            bf16_share = f"{100 * flops / peaks['bf16']:11.1f}%" if native_bf16 else f"{'n/a':>12}"
            print(f"{side:12} {rates[side]:11.1f} {r['seconds'] / args.steps:7.2f} {r['peak_rss_mb']:12.0f} {r['final_loss']:11.4f} "
                  f"{100 * flops / peaks['fp32']:11.1f}% {bf16_share}")
        if not native_bf16:
            print("(this CPU has no native bf16: bf16 matmuls are emulated, so both sides train in fp32)")
        summary["matmul_peak_gflops"] = peaks
    else:
        peak = hardware["peak_tflops"] * 1e12
        print(f"MFU = 6 * N * tokens/s / peak; N = all parameters; peak {hardware['peak_tflops']:.0f} TFLOP/s dense bf16 ({hardware['peak_source']})")
        print(f"{'side':12} {'real tok/s':>11} {'s/step':>7} {'peak GPU MB':>12} {'final loss':>11} {'N':>13} {'MFU 6N':>8} {'MFU 4N':>8}")
        summary["mfu"] = {}
        for side, r in results.items():
            mfu6, mfu4 = 6 * r["params"] * rates[side] / peak, 4 * r["params"] * rates[side] / peak
            summary["mfu"][side] = {"6N": mfu6, "4N": mfu4}
            print(f"{side:12} {rates[side]:11.1f} {r['seconds'] / args.steps:7.2f} {r.get('peak_gpu_mb', 0):12.0f} {r['final_loss']:11.4f} "
                  f"{r['params']:13,} {100 * mfu6:7.2f}% {100 * mfu4:7.2f}%")
        print("(LoRA computes no weight gradients for frozen weights: 4N is its FLOPs per token, 6N that of full training)")
    goal = "2.0x on a GPU" if hardware["kind"] == "cuda" else "1.3x on a CPU"
    print(f"ratio customizer / bare TRL: {summary['ratio']:.2f}x tokens/s (goal >= {goal})")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
