"""Training throughput: customizer's SFT vs a bare TRL SFTTrainer script and vs TRL with its best
switches for this hardware, same model, data and hyperparameters, in one run.

    python bench/train.py [--steps 8] [--model embedded|tiny] [--batch-size 8] [--repeats 3] [--json results.json]
    python bench/train.py --base-shape FOLDER    # random weights shaped like FOLDER's config.json (GPU runs)
    torchrun --nproc-per-node N bench/train.py --side customizer-full --model shaped ...   # full weights (FSDP on GPUs)

Each side trains in its own process (so peak memory is its own) for the same number of steps on
the same rendered rows; the sides alternate (bare, best, customizer, bare, ...) over ``--repeats``
rounds so that a machine busy with other work slows them alike, and medians are reported. Then
customizer trains in ``auto`` precision (bf16 where the hardware runs it natively, whatever the
model's config says), then once more in fp32, for the loss parity of the two. Every side is timed
from the start of its training to the log of its last step (``StepClock``: not model loading, not
customizer's validation and checkpoint after the last step). Reported: real (non-padding) tokens/s,
their ratios, peak RSS, final loss, and the share of this machine's matmul peak (measured here, fp32
and bf16) that each side reaches with LoRA's ~4N FLOPs per token.

The bare script uses TRL's defaults, except the job's optimisation settings (learning rate, warm-up,
cosine schedule with its floor, weight decay, seed: with TRL's linear schedule the final losses after
8 steps differ by ~5% for that reason alone, and equal steps could not mean equal losses) and what
this hardware needs to run at all: ``use_cpu`` without a GPU, and ``bf16=False`` on a CPU without
native bf16 (where TRL's default bf16 autocast is emulated and runs orders of magnitude slower).
TRL-best adds what TRL offers for speed: bf16 where native, no recomputed activations (TRL turns
gradient checkpointing on by default: memory a small model does not need, for more compute per
step), padding-free batches (``padding_free=True``: each step's examples flattened into one row, no
padding tokens, position ids restarting per example), Liger kernels and flash attention where a GPU
has them installed. It does not pack (``packing=True`` fills rows with more examples than
``--batch-size``, so its loss after the same steps is not comparable).

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
import importlib.util
import json
import os
import statistics
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
from training.probe import matmul_peak  # noqa: E402

DATASET = REPO / "customizer" / "datasets" / "support-tickets"
CONFIGS = {"embedded": "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu", "tiny": "customizer/tiny-llama@v1.0.0+cpu",
           "shaped": "bench/shaped@v1.0.0"}


def shaped_config(shape: Path, work: Path) -> dict[str, str]:
    """Random weights shaped like ``shape`` and a catalog config for them; returns the environment
    that makes the config visible to the child processes."""
    import torch

    if any(shape.glob("*.safetensors")):  # already random weights of that shape (``bench/gpu_check.py`` builds them on the GPU)
        model_dir = shape
    else:
        model_dir = random_model_like(shape, work / "shaped-model", torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    configs = work / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    precision = "auto"
    (configs / "shaped.yaml").write_text(
        f"namespace: bench\nname: shaped@v1.0.0\ntarget:\n  name: bench/shaped\n  model_uri: {model_dir}\n"
        f"max_seq_length: 512\nprompt_format: chat\ntraining_precision: {precision}\n"
        "lora_target_modules: [q_proj, k_proj, v_proj, o_proj]\ntraining_options:\n"
        "  - {training_type: sft, finetuning_type: lora, num_gpus: 1, micro_batch_size: 512}\n"
        "  - {training_type: sft, finetuning_type: all_weights, num_gpus: 1, micro_batch_size: 512}\n"
    )
    return {"CUSTOMIZER_CONFIG_DIRS": json.dumps([str(configs)])}


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


SIDES = ("trl", "trl-best", "customizer")  # one round of the interleaved repeats
PARITY = "customizer-fp32"  # customizer again in fp32: the loss its `auto` precision must match
FULL = "customizer-full"  # customizer training all weights (FSDP over the GPUs under torchrun)
LOSS_TOLERANCE = 0.02  # final losses within 2% count as equal


def side_customizer(work: Path, model: str, steps: int, batch_size: int, precision: str | None = None, packing: bool = False,
                    finetuning_type: str = "lora") -> dict:
    from training.common import Hooks
    from training.sft import train_sft
    from core.specs import Hyperparameters

    settings, config, base, data = prepare(work, model)
    if precision:
        config = config.model_copy(update={"training_precision": precision})
    # Full weights validate after the last step (no checkpoint of weights and optimizer state in the timing).
    hp = Hyperparameters(epochs=1, max_steps=steps, batch_size=batch_size, learning_rate=5e-4, log_every_n_steps=1,
                         val_check_interval=steps if finetuning_type == "lora" else steps + 1, early_stopping={"enabled": False},
                         sequence_packing_enabled=packing, finetuning_type=finetuning_type)
    clock = StepClock()

    def sink(name: str, value: float, step: int) -> None:
        if name == "num_tokens":  # cumulative, over every process
            clock.log(value)

    started = time.perf_counter()
    result = train_sft(base.path, data, config, hp, work / "customizer", settings,
                       Hooks(sink=sink, progress=lambda snapshot: clock.begin()))  # the first snapshot: training begins
    return {**clock.figures(), "wall": time.perf_counter() - started, "final_loss": result.train_loss[-1][1],
            "params": result.total_parameters, "precision": result.precision}


class StepClock:
    """The training time every side is timed by: from the start of training to the log of its last
    step. Model loading and data preparation before it are not counted, nor what a side runs after
    its last step (customizer's validation, forgetting check and checkpoint, which the TRL scripts do
    not run). ``steady_tokens_per_second`` leaves out the first step as well (start-up)."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.logs: list[tuple[float, float]] = []  # (seconds since the start, tokens so far)

    def begin(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def log(self, tokens: float) -> None:
        if self.started is None:
            raise RuntimeError("a step was logged before training began")
        self.logs.append((time.perf_counter() - self.started, tokens))

    def figures(self) -> dict:
        if not self.logs:
            raise RuntimeError("training logged no tokens")
        (first, first_tokens), (seconds, tokens) = self.logs[0], self.logs[-1]
        steady = (tokens - first_tokens) / (seconds - first) if len(self.logs) > 2 else None
        return {"seconds": seconds, "tokens": tokens, "steady_tokens_per_second": steady}


def attention() -> str:
    """The fastest attention implementation installed: flash attention on a GPU that has it, else SDPA."""
    import torch

    return "flash_attention_2" if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") else "sdpa"


def side_trl(work: Path, model: str, steps: int, batch_size: int, best: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from training.common import lora_config, native_bf16
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
    bf16_native = native_bf16()
    cuda = torch.cuda.is_available()
    if best:
        # Without packing TRL does not truncate padding-free rows: ingest kept only rows under max_seq_length.
        switches = dict(bf16=bf16_native, gradient_checkpointing=False, padding_free=True, max_length=None,
                        model_init_kwargs={"attn_implementation": attention()},
                        use_liger_kernel=cuda and importlib.util.find_spec("liger_kernel") is not None)
    else:
        switches = {} if cuda or bf16_native else {"bf16": False}
    # The job's optimisation settings (warm-up, schedule, seed), so equal steps can mean equal losses.
    hp = Hyperparameters(learning_rate=5e-4, max_steps=steps, batch_size=batch_size)
    schedule = dict(learning_rate=hp.learning_rate, warmup_steps=hp.warmup_steps, weight_decay=hp.weight_decay,
                    lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": hp.floor_learning_rate},
                    seed=hp.seed, data_seed=hp.seed)
    args = SFTConfig(output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=batch_size,
                     logging_steps=1, report_to="none", save_strategy="no", use_cpu=not cuda,
                     **({"max_length": config.max_seq_length} | schedule | switches))
    clock, losses = StepClock(), []

    class Tokens(TrainerCallback):
        def on_train_begin(self, a, state, control, **k):
            clock.begin()

        def on_log(self, a, state, control, logs=None, **k):
            if logs and "num_tokens" in logs:
                clock.log(logs["num_tokens"])
                losses.append(logs.get("loss"))

    trainer = SFTTrainer(model=base.path, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora_config(Hyperparameters(), config), callbacks=[Tokens()])
    started = time.perf_counter()
    trainer.train()
    return {**clock.figures(), "wall": time.perf_counter() - started, "final_loss": [loss for loss in losses if loss is not None][-1],
            "params": sum(p.numel() for p in trainer.model.parameters()), "precision": "bf16-mixed" if args.bf16 else "fp32"}


def child(side: str, model: str, steps: int, batch_size: int, out: Path, packing: bool = False, work: Path | None = None) -> None:
    """Train one side and write its figures to ``out`` (under torchrun: rank 0 writes; ``work`` is then
    the folder every rank shares)."""
    sides = {"trl": lambda *a: side_trl(*a), "trl-best": lambda *a: side_trl(*a, best=True),
             "customizer": lambda *a: side_customizer(*a, precision="auto", packing=packing),
             PARITY: lambda *a: side_customizer(*a, precision="fp32", packing=packing),
             FULL: lambda *a: side_customizer(*a, packing=packing, finetuning_type="all_weights")}
    with tempfile.TemporaryDirectory() as scratch:
        result = sides[side](work or Path(scratch), model, steps, batch_size)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result |= device_memory()
    result["processes"] = int(os.environ.get("WORLD_SIZE", "1"))
    if os.environ.get("RANK", "0") == "0":
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


def median_of(runs: list[dict]) -> dict:
    """One side's repeats: median tokens/s, seconds and final loss; the largest peak memory; every run."""
    rates = [r["tokens"] / r["seconds"] for r in runs]
    merged = dict(runs[0])
    merged |= {"seconds": statistics.median(r["seconds"] for r in runs), "tokens_per_second": statistics.median(rates),
               "final_loss": statistics.median(r["final_loss"] for r in runs), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
               "runs": runs}
    if "peak_gpu_mb" in runs[0]:
        merged["peak_gpu_mb"] = max(r["peak_gpu_mb"] for r in runs)
    return merged


def same_loss(loss: float, reference: float) -> bool:
    """Whether two final losses are equal within ``LOSS_TOLERANCE`` (relative to ``reference``).

    >>> same_loss(1.01, 1.0), same_loss(0.97, 1.0)
    (True, False)
    """
    return abs(loss - reference) <= LOSS_TOLERANCE * abs(reference)


def no_worse_loss(loss: float, reference: float) -> bool:
    """Whether ``loss`` is at most ``LOSS_TOLERANCE`` above ``reference`` (relative): the speed rows'
    rule. Equal steps reaching a lower loss learned at least as much; only a worse loss could hide
    a speed-up bought with less learning.

    >>> no_worse_loss(1.01, 1.0), no_worse_loss(0.9, 1.0), no_worse_loss(1.03, 1.0)
    (True, True, False)
    """
    return loss <= reference + LOSS_TOLERANCE * abs(reference)


def run_sides(order: list[str], model: str, steps: int, batch_size: int, env: dict, scratch: Path, packing: bool = False) -> dict[str, dict]:
    """Train each side of ``order`` in its own process, in that order; each side's median."""
    runs: dict[str, list[dict]] = {}
    for index, side in enumerate(order):
        out = scratch / f"{index}-{side}.json"
        print(f"[train] {index + 1}/{len(order)}: {side}", flush=True)
        subprocess.run([sys.executable, __file__, "--side", side, "--model", model, "--steps", str(steps),
                        "--batch-size", str(batch_size), "--out", str(out), *(["--packing"] if packing else [])],
                       check=True, cwd=REPO, env=env)
        runs.setdefault(side, []).append(json.loads(out.read_text()))
    return {side: median_of(side_runs) for side, side_runs in runs.items()}


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--model", choices=sorted(CONFIGS), default="embedded")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step, every side (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the interleaved sides; medians are reported (default 3)")
    parser.add_argument("--base-shape", type=Path, help="folder with a config.json and tokenizer: train random weights of that shape")
    parser.add_argument("--no-parity", action="store_true", help="skip the fp32 run of the loss-parity check")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES), help="which sides to compare (default all)")
    parser.add_argument("--packing", action="store_true", help="customizer packs examples into full rows (sequence_packing_enabled)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--side", choices=[*SIDES, PARITY, FULL], help="train one side in this process (what the others run)")
    parser.add_argument("--out", type=Path, help="with --side: where its figures go")
    parser.add_argument("--work", type=Path, help="with --side: a working folder shared by the processes of one training")
    args = parser.parse_args(argv)
    if args.side:
        return child(args.side, args.model, args.steps, args.batch_size, args.out, args.packing, args.work)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    sides = [side for side in SIDES if side in args.sides]
    order = [side for _ in range(args.repeats) for side in sides] + ([] if args.no_parity or "customizer" not in sides else [PARITY])
    with tempfile.TemporaryDirectory() as scratch:
        env = os.environ.copy()
        model = args.model
        if args.base_shape:
            env |= shaped_config(args.base_shape, Path(scratch))
            model = "shaped"
        results = run_sides(order, model, args.steps, args.batch_size, env, Path(scratch), args.packing)
    summary = report(results, args)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


def report(results: dict[str, dict], args: argparse.Namespace) -> dict:
    """Print the table and return the summary the benchmark table reads (``bench/report.py``)."""
    hardware = device()
    peaks = {"fp32": matmul_peak("float32"), "bf16": matmul_peak("bfloat16")} if hardware["kind"] == "cpu" else {}
    label = f"{args.base_shape.name} shape, random weights" if args.base_shape else f"{args.model} model"
    print(f"\nTraining throughput, {label}, LoRA SFT, {args.steps} steps of batch {args.batch_size} (support-tickets) on {hardware['name']}; "
          f"medians of {args.repeats} interleaved repeat(s)")
    rates = {side: r["tokens_per_second"] for side, r in results.items()}
    baselines = [side for side in ("trl", "trl-best") if side in results and "customizer" in results]
    summary = {"model": label, "steps": args.steps, "batch_size": args.batch_size, "repeats": args.repeats, "packing": args.packing,
               "device": hardware, "sides": results, "tokens_per_second": rates,
               "same_loss": {side: no_worse_loss(results["customizer"]["final_loss"], results[side]["final_loss"]) for side in baselines}}
    if "trl" in baselines:
        summary["ratio"] = rates["customizer"] / rates["trl"]
    if "trl-best" in baselines:
        summary["ratio_best"] = rates["customizer"] / rates["trl-best"]
    if PARITY in results:
        ours = results["customizer"]
        fp32 = results[PARITY]["final_loss"]
        summary["parity"] = {"auto_precision": ours["precision"], "auto_loss": ours["final_loss"], "fp32_loss": fp32,
                             "within": same_loss(ours["final_loss"], fp32)}
    if hardware["kind"] == "cpu":
        print(f"matmul peak measured here: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")
        print(f"{'side':16} {'precision':>10} {'real tok/s':>11} {'s/step':>7} {'peak RSS MB':>12} {'final loss':>11} {'% fp32 peak':>12} {'% bf16 peak':>12}")
        native_bf16 = peaks["bf16"] > peaks["fp32"]
        for side, r in results.items():
            flops = 4 * r["params"] * rates[side] / 1e9  # LoRA: forward + activation gradients, no frozen weight gradients
            bf16_share = f"{100 * flops / peaks['bf16']:11.1f}%" if native_bf16 else f"{'n/a':>12}"
            print(f"{side:16} {r['precision']:>10} {rates[side]:11.1f} {r['seconds'] / args.steps:7.2f} {r['peak_rss_mb']:12.0f} "
                  f"{r['final_loss']:11.4f} {100 * flops / peaks['fp32']:11.1f}% {bf16_share}")
        if not native_bf16:
            print("(this CPU has no native bf16: bf16 matmuls are emulated, so every side trains in fp32)")
        summary["matmul_peak_gflops"] = peaks
    else:
        peak = hardware["peak_tflops"] * 1e12
        print(f"MFU = 6 * N * tokens/s / peak; N = all parameters; peak {hardware['peak_tflops']:.0f} TFLOP/s dense bf16 ({hardware['peak_source']})")
        print(f"{'side':16} {'precision':>10} {'real tok/s':>11} {'s/step':>7} {'peak GPU MB':>12} {'final loss':>11} {'N':>15} {'MFU 6N':>8} {'MFU 4N':>8}")
        summary["mfu"] = {}
        for side, r in results.items():
            mfu6, mfu4 = 6 * r["params"] * rates[side] / peak, 4 * r["params"] * rates[side] / peak
            summary["mfu"][side] = {"6N": mfu6, "4N": mfu4}
            print(f"{side:16} {r['precision']:>10} {rates[side]:11.1f} {r['seconds'] / args.steps:7.2f} {r.get('peak_gpu_mb', 0):12.0f} "
                  f"{r['final_loss']:11.4f} {r['params']:15,} {100 * mfu6:7.2f}% {100 * mfu4:7.2f}%")
        print("(LoRA computes no weight gradients for frozen weights: 4N is its FLOPs per token, 6N that of full training)")
    goal = "2.0x"
    loss_note = {side: "" if summary["same_loss"][side] else f", final loss worse by more than {LOSS_TOLERANCE:.0%}" for side in baselines}
    if "trl" in baselines:
        print(f"ratio customizer / bare TRL: {summary['ratio']:.2f}x tokens/s (goal >= {goal}){loss_note['trl']}")
    if "trl-best" in baselines:
        print(f"ratio customizer / TRL-best: {summary['ratio_best']:.2f}x tokens/s (goal >= 1.15x){loss_note['trl-best']}")
    if "parity" in summary:
        parity = summary["parity"]
        print(f"loss parity: customizer auto ({parity['auto_precision']}) {parity['auto_loss']:.4f} vs fp32 {parity['fp32_loss']:.4f}: "
              f"{'within' if parity['within'] else 'NOT within'} {LOSS_TOLERANCE:.0%}")
    return summary


if __name__ == "__main__":
    main()
