"""Training throughput: customizer's SFT vs a bare TRL SFTTrainer script, same model, data and
hyperparameters, in one run.

    python bench/train.py [--steps 8] [--model embedded|tiny]

Each side trains in its own process (so peak memory is its own) for the same number of steps on
the same rendered rows. Reported: real (non-padding) tokens/s, their ratio, peak RSS, final loss,
and the share of this machine's matmul peak (measured here, fp32 and bf16) that each side reaches
with LoRA's ~4N FLOPs per token. The bare script uses TRL's defaults, except what this hardware
needs to run at all: ``use_cpu`` without a GPU, and ``bf16=False`` on a CPU without native bf16
(where TRL's default bf16 autocast is emulated and runs orders of magnitude slower).
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

DATASET = REPO / "customizer" / "datasets" / "support-tickets"
CONFIGS = {"embedded": "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu", "tiny": "customizer/tiny-llama@v1.0.0+cpu"}


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
    from customizer.settings import apply_environment, get_settings
    from training.base_model import resolve_base_model
    from training.catalog import get_config
    from training.data import ingest_dataset

    settings = get_settings()
    apply_environment(settings)
    config = get_config(CONFIGS[model], settings)
    base = resolve_base_model(config.target, settings)
    data = ingest_dataset(str(DATASET), work / "data", seed=0)
    return settings, config, base, data


def side_customizer(work: Path, model: str, steps: int) -> dict:
    from training.common import Hooks
    from training.sft import train_sft
    from training.specs import Hyperparameters

    settings, config, base, data = prepare(work, model)
    hp = Hyperparameters(epochs=1, max_steps=steps, batch_size=8, learning_rate=5e-4, log_every_n_steps=1,
                         val_check_interval=steps, early_stopping={"enabled": False})
    tokens = []
    hooks = Hooks(sink=lambda name, value, step: tokens.append(value) if name == "num_tokens" else None)
    started = time.perf_counter()
    result = train_sft(base.path, data, config, hp, work / "customizer", settings, hooks)
    return {"seconds": result.train_seconds, "wall": time.perf_counter() - started, "tokens": tokens[-1],
            "final_loss": result.train_loss[-1][1], "params": result.total_parameters}


def side_trl(work: Path, model: str, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from training.common import lora_config, use_bf16
    from training.data import read_examples
    from training.sft import rendered_rows
    from training.specs import Hyperparameters

    settings, config, base, data = prepare(work, model)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    rows, _ = rendered_rows(read_examples(data.files["training"]), config, tokenizer, "training")
    bf16_native = use_bf16(config.model_copy(update={"training_precision": "bf16-mixed"}))
    cuda = torch.cuda.is_available()
    args = SFTConfig(output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=8, learning_rate=5e-4,
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


def child(side: str, model: str, steps: int, out: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        result = (side_customizer if side == "customizer" else side_trl)(Path(scratch), model, steps)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--model", choices=sorted(CONFIGS), default="embedded")
    parser.add_argument("--side", choices=["customizer", "trl"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.side:
        return child(args.side, args.model, args.steps, args.out)

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for side in ("trl", "customizer"):
            out = Path(scratch) / f"{side}.json"
            subprocess.run([sys.executable, __file__, "--side", side, "--model", args.model, "--steps", str(args.steps), "--out", str(out)],
                           check=True, cwd=REPO, env=os.environ.copy())
            results[side] = json.loads(out.read_text())
    peaks = {"fp32": matmul_peak("float32"), "bf16": matmul_peak("bfloat16")}
    print(f"\nTraining throughput, {args.model} model, LoRA SFT, {args.steps} steps of batch 8 (support-tickets)")
    print(f"matmul peak measured here: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")
    print(f"{'side':12} {'real tok/s':>11} {'s/step':>7} {'peak RSS MB':>12} {'final loss':>11} {'% fp32 peak':>12} {'% bf16 peak':>12}")
    native_bf16 = peaks["bf16"] > peaks["fp32"]
    for side, r in results.items():
        rate = r["tokens"] / r["seconds"]
        flops = 4 * r["params"] * rate / 1e9  # LoRA: forward + activation gradients, no frozen weight gradients
        bf16_share = f"{100 * flops / peaks['bf16']:11.1f}%" if native_bf16 else f"{'n/a':>12}"
        print(f"{side:12} {rate:11.1f} {r['seconds'] / args.steps:7.2f} {r['peak_rss_mb']:12.0f} {r['final_loss']:11.4f} "
              f"{100 * flops / peaks['fp32']:11.1f}% {bf16_share}")
    if not native_bf16:
        print("(this CPU has no native bf16: bf16 matmuls are emulated, so both sides train in fp32)")
    ratio = (results["customizer"]["tokens"] / results["customizer"]["seconds"]) / (results["trl"]["tokens"] / results["trl"]["seconds"])
    print(f"ratio customizer / bare TRL: {ratio:.2f}x tokens/s (goal >= 1.3x on CPU)")


if __name__ == "__main__":
    main()
