"""What every training method shares: the result shape, the LoRA config, the trainer arguments that
do not depend on the method, precision and device choice, validation/checkpoint cadence, and the
loop around ``trainer.train()`` (callbacks, resume, stop reason). Each method module builds its own
TRL config from these in one function and reads top to bottom."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from core.settings import Settings
from core.storage import out_of_room
from training.callbacks import MetricsCallback, MetricSink, ProgressSink, StopCallback
from core.catalog import CustomizationConfig
from training.forgetting import ForgettingCallback, ForgettingProbe, is_adapter_model
from training.precision import lora_sum_in_fp32
from core.specs import Hyperparameters

log = logging.getLogger("customizer.training")

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class TrainingError(ValueError):
    """Training cannot start with this data or these settings."""


class TrainingCancelled(RuntimeError):
    """The job was cancelled while training; nothing was saved as its output."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (a full disk, a quota); the previous checkpoints are intact."""


class TrainResult(BaseModel):
    """What training produced: an adapter or a full model folder, the loss and forgetting curves and
    why it stopped. ``forgetting_kl`` is (step, KL(base || model) in nats per token) at each validation."""

    artifact: Literal["adapter", "model"]
    output_dir: str
    steps: int
    epochs_completed: float
    train_loss: list[tuple[int, float]]
    val_loss: list[tuple[int, float]]
    forgetting_kl: list[tuple[int, float]] = []
    best_val_loss: float | None
    best_step: int | None
    stop_reason: str
    train_seconds: float
    tokens_per_second: float | None
    # What training ran in on its hardware (a config's `auto` resolved): bf16-mixed or fp32.
    precision: Literal["bf16-mixed", "fp32"] | None = None
    trainable_parameters: int
    total_parameters: int
    resumed_from: str | None = None


class Hooks(BaseModel):
    """Where training reports to and what stops it (all optional): metrics, progress, a cancellation
    check, and the policy's forgetting limit (``PromotionPolicy.max_forgetting_kl``: stop at the first
    validation whose forgetting_kl exceeds it and keep the best checkpoint under it)."""

    model_config = {"arbitrary_types_allowed": True}

    sink: MetricSink | None = None
    progress: ProgressSink | None = None
    should_stop: Callable[[], bool] | None = None
    max_forgetting_kl: float | None = None


def lora_config(hp: Hyperparameters, config: CustomizationConfig) -> Any:
    """The one place a ``LoraConfig`` is built from a job's hyperparameters."""
    from peft import LoraConfig

    return LoraConfig(
        r=hp.lora.adapter_dim,
        lora_alpha=hp.lora.alpha,
        lora_dropout=hp.lora.adapter_dropout,
        target_modules=hp.lora.target_modules or config.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def native_bf16() -> bool:
    """Whether the hardware runs bf16 natively: a GPU with bf16, a CPU with AVX512-BF16 or AMX.

    Elsewhere bf16 is emulated and several times slower than fp32.
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_bf16(config: CustomizationConfig) -> bool:
    """bf16 autocast where the config asks for it (``bf16-mixed`` or ``auto``) and the hardware runs it
    natively; fp32 elsewhere (emulated bf16 is several times slower than fp32)."""
    return config.training_precision in ("bf16-mixed", "auto") and native_bf16()


def training_precision(config: CustomizationConfig) -> Literal["bf16-mixed", "fp32"]:
    """The precision training runs in on this hardware for the config (``auto`` resolved)."""
    return "bf16-mixed" if use_bf16(config) else "fp32"


def model_loading(hp: Hyperparameters, config: CustomizationConfig) -> dict[str, Any] | None:
    """How the trainer loads the base model (TRL's ``model_init_kwargs``; None: TRL's defaults).

    On a GPU training in bf16: LoRA keeps the frozen base in bf16 (TRL loads fp32 by default, which
    doubles the weights' memory and re-casts every weight to bf16 at each step; the adapters stay
    fp32), and attention runs in flash attention when ``flash_attn`` is installed (SDPA otherwise).
    Full weights keep fp32 master weights. On a CPU the base stays fp32 under bf16 autocast.
    """
    import torch

    if not (torch.cuda.is_available() and use_bf16(config)):
        return None
    kwargs: dict[str, Any] = {"dtype": "bfloat16"} if hp.uses_lora else {}
    if importlib.util.find_spec("flash_attn") is not None:
        kwargs["attn_implementation"] = "flash_attention_2"
    return kwargs or None


def steps_per_epoch(examples: int, batch_size: int) -> int:
    return max(1, math.ceil(examples / batch_size))


def validation_every(hp: Hyperparameters, per_epoch: int) -> int:
    """Steps between validations (and checkpoints): a fraction of an epoch, or a step count."""
    if hp.val_check_interval <= 1:
        return max(1, round(hp.val_check_interval * per_epoch))
    return min(int(hp.val_check_interval), per_epoch)


def common_args(
    hp: Hyperparameters, config: CustomizationConfig, output_dir: Path, train_examples: int, micro_batch: int
) -> dict[str, Any]:
    """Trainer arguments every method shares (TRL configs all extend ``TrainingArguments``)."""
    import torch

    # `batch_size` is global (NeMo's meaning): split over the data-parallel processes, then accumulated.
    replicas = world_size()
    micro_batch = max(1, min(micro_batch, hp.batch_size // replicas))
    if hp.batch_size % (micro_batch * replicas):
        raise TrainingError(
            f"`batch_size` {hp.batch_size} is not a multiple of the config's micro_batch_size {micro_batch}"
            + (f" x {replicas} processes" if replicas > 1 else "")
        )
    every = validation_every(hp, steps_per_epoch(train_examples, hp.batch_size))
    use_cuda = torch.cuda.is_available()
    precision = training_precision(config)
    log.info("Training precision: %s (the config asks %s; %s)", precision, config.training_precision,
             "this hardware runs bf16 natively" if native_bf16() else "this hardware has no native bf16")
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro_batch,
        per_device_eval_batch_size=micro_batch,
        gradient_accumulation_steps=hp.batch_size // (micro_batch * replicas),
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": hp.floor_learning_rate},
        warmup_steps=hp.warmup_steps,
        weight_decay=hp.weight_decay,
        logging_steps=hp.log_every_n_steps,
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=2,  # the best and the latest
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=hp.seed,
        data_seed=hp.seed,
        # Recomputing activations saves memory a model of this size does not need and costs ~2x per step.
        gradient_checkpointing=False,
        use_cpu=not use_cuda,
        bf16=precision == "bf16-mixed",
        # W&B as well as MLflow when the run was given a key (the API's wandb-api-key) and wandb is installed.
        report_to=["wandb"] if os.environ.get("WANDB_API_KEY") and importlib.util.find_spec("wandb") else "none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        save_only_model=False,  # optimizer, scheduler and RNG state too: a resume continues exactly
        # Liger's fused kernels (RMSNorm, RoPE, SwiGLU) on GPUs, when the `gpu` extra is installed.
        use_liger_kernel=use_cuda and importlib.util.find_spec("liger_kernel") is not None,
        **_distributed_args(hp, use_cuda),
    )


def _distributed_args(hp: Hyperparameters, use_cuda: bool) -> dict[str, Any]:
    """Under torchrun: gloo between CPU processes; FSDP to shard full weights across GPUs (also with
    one process, so that a one-GPU machine runs the same path as several)."""
    if world_size() == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return {}
    if not use_cuda:
        return {"ddp_backend": "gloo"}
    if hp.finetuning_type == "all_weights":
        return {"fsdp": "full_shard auto_wrap", "ddp_backend": "nccl"}
    return {"ddp_backend": "nccl"}


@contextlib.contextmanager
def supervised_positions_only_on_cpu() -> Iterator[None]:
    """Let TRL's fused LM head score only the supervised positions on the CPU too.

    TRL 1.16 computes the loss through a chunked LM head. On CUDA it projects only the positions
    that carry loss; elsewhere it projects every position through the whole vocabulary (to keep tile
    shapes static for compilers such as Neuron's). On a CPU that is most of the step: with a 49k
    vocabulary and completion-only loss, ~3x slower for an identical loss. The switch it reads is
    looked up at call time, so it is flipped for CPU devices while training runs.
    """
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def _no_room(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of room. Not every writer raises an ``OSError`` for it (the
    tokenizers library and torch raise their own errors), so a nearly full filesystem counts too."""
    if out_of_room(exc):
        return True
    text = str(exc)
    return any(s in text for s in ("No space left", "os error 28", "Disk quota", "File too large")) or shutil.disk_usage(folder).free < 2**20


def atomic_checkpoints(trainer: Any, folder: Path) -> None:
    """Make the trainer write each checkpoint into a hidden staging folder and rename it into place
    once complete, so ``checkpoint-N`` is either whole or absent. The older checkpoints are
    rotated out (``save_total_limit``) only after the rename; a write that fails for lack of room
    removes its staging folder and raises ``CheckpointError`` naming the checkpoint, the folder and
    the checkpoint a re-run resumes from.

    One training process only: under torchrun every rank writes its own part of a checkpoint.
    """
    from transformers.trainer_utils import rotate_checkpoints

    if world_size() > 1:
        return
    save = trainer._save_checkpoint

    def save_atomically(model: Any, trial: Any) -> None:
        name = f"checkpoint-{trainer.state.global_step}"
        staging = folder / f".partial-{name}"  # not `checkpoint-*`: never resumed from, never rotated
        shutil.rmtree(staging, ignore_errors=True)
        trainer._get_output_dir = lambda trial=None: str(staging)  # the trainer writes staging/checkpoint-N
        try:
            save(model, trial)
            staged, final = staging / name, folder / name
            if trainer.state.best_model_checkpoint == str(staged):
                trainer.state.best_model_checkpoint = str(final)
                trainer.state.save_to_json(str(staged / "trainer_state.json"))
            shutil.rmtree(final, ignore_errors=True)  # a leftover of a run cut short at this very step
            os.replace(staged, final)
            staging.rmdir()
        except Exception as exc:
            full = _no_room(exc, folder)
            shutil.rmtree(staging, ignore_errors=True)
            if not full:
                raise
            previous = last_checkpoint(folder)
            raise CheckpointError(
                f"no space left on device while writing {name} to {folder} ({exc}); "
                + (f"{Path(previous).name} is intact and a re-run resumes from it" if previous else "no earlier checkpoint exists")
            ) from exc
        finally:
            del trainer._get_output_dir  # back to the class's method
        rotate_checkpoints(output_dir=str(folder), save_total_limit=trainer.args.save_total_limit,
                           best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)

    trainer._save_checkpoint = save_atomically


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint. The trainer writes ``trainer_state.json`` last, so a
    checkpoint cut short by a crash (no readable state file) is skipped, not resumed from."""
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.rpartition("-")[2]), reverse=True)
    for checkpoint in checkpoints:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, ValueError):
            log.warning("Skipping incomplete checkpoint %s", checkpoint.name)
            continue
        return str(checkpoint)
    return None


def prepare_process(settings: Settings, hp: Hyperparameters) -> None:
    """Threads and seeds, before any model is built: LoRA's initial weights come from the seed too,
    so the same seed, data and config give the same run."""
    import torch
    from transformers import set_seed

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    set_seed(hp.seed)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def run_trainer(trainer: Any, hp: Hyperparameters, checkpoints: Path, hooks: Hooks, tokens_per_example: float) -> dict[str, Any]:
    """Train with progress, forgetting watch, early stopping and cancellation wired in; resume from
    the last checkpoint.

    Every validation also measures ``forgetting_kl`` (``training.forgetting``); the first one over
    ``hooks.max_forgetting_kl`` stops training, is not saved, and the best checkpoint under the
    threshold is what the trainer ends with. Methods without validation (GRPO) are not watched.

    Returns:
        Curves, timing and the stop reason (the pieces of ``TrainResult`` every method shares).

    Raises:
        TrainingCancelled: ``hooks.should_stop`` said so; no output is saved.
        CheckpointError: a checkpoint could not be written for lack of room.
        TrainingError: the first validation's forgetting_kl already exceeded ``hooks.max_forgetting_kl``
            (no checkpoint under the threshold to keep).
    """
    from transformers import EarlyStoppingCallback, PrinterCallback

    trainer.remove_callback(PrinterCallback)  # progress goes through MetricsCallback's log lines
    limit = hooks.max_forgetting_kl
    forgetting = None
    if str(getattr(trainer.args.eval_strategy, "value", trainer.args.eval_strategy)) != "no":
        probe = ForgettingProbe(trainer.processing_class)
        if not is_adapter_model(trainer.model):
            # Full weights: the base's log-probabilities now, before a resume loads trained weights.
            probe.cache_base(trainer.model)
        forgetting = ForgettingCallback(probe, limit)
        trainer.add_callback(forgetting)  # before MetricsCallback: it adds forgetting_kl to the logs that one streams
    elif limit is not None:
        log.warning("max_forgetting_kl %g is not watched: this method runs no validation", limit)
    metrics = MetricsCallback(hooks.sink, hooks.progress, tokens_per_example, forgetting_limit=limit)
    trainer.add_callback(metrics)
    stopper = StopCallback(hooks.should_stop) if hooks.should_stop else None
    if stopper:
        trainer.add_callback(stopper)
    early = None
    if hp.early_stopping.enabled:
        early = EarlyStoppingCallback(hp.early_stopping.patience, hp.early_stopping.min_delta)
        trainer.add_callback(early)

    if trainer.args.bf16 and is_adapter_model(trainer.model):
        lora_sum_in_fp32(trainer.model)  # else bf16 rounds early LoRA updates away (training.precision)
    atomic_checkpoints(trainer, checkpoints)
    resume = last_checkpoint(checkpoints)
    if resume:
        log.info("Resuming from %s", resume)
    started = time.monotonic()
    with supervised_positions_only_on_cpu():
        trainer.train(resume_from_checkpoint=resume)
    seconds = time.monotonic() - started
    if stopper and stopper.stopped:
        raise TrainingCancelled(f"cancelled at step {trainer.state.global_step}; nothing was saved")

    state = trainer.state
    history = state.log_history
    val = [(h["step"], float(h["eval_loss"])) for h in history if "eval_loss" in h]
    kl = [(h["step"], float(h["forgetting_kl"])) for h in history if "eval_loss" in h and "forgetting_kl" in h]
    over = {step for step, value in kl if limit is not None and not value <= limit}
    kept = [point for point in val if point[0] not in over]  # a validation over the limit is never kept
    best = min(kept, key=lambda point: point[1]) if kept else None
    if forgetting is not None and forgetting.exceeded is not None:
        reason = _forgetting_reason(forgetting.exceeded, limit, state.best_model_checkpoint, dict(kl))
    elif early is not None and early.early_stopping_patience_counter >= hp.early_stopping.patience:
        reason = (
            f"early stopping at step {state.global_step}: val_loss did not improve by {hp.early_stopping.min_delta} "
            f"for {hp.early_stopping.patience} validations (best {best[1]:.4f} at step {best[0]}, kept)"
        )
    elif hp.max_steps > 0 and state.global_step >= hp.max_steps:
        reason = f"reached max_steps ({hp.max_steps})"
    else:
        reason = f"completed {hp.epochs} epoch(s)"
    trained_steps = state.global_step - (int(resume.rpartition("-")[2]) if resume else 0)
    return dict(
        steps=state.global_step,
        epochs_completed=float(state.epoch or 0.0),
        train_loss=[(h["step"], float(h["loss"])) for h in history if "loss" in h],
        val_loss=val,
        forgetting_kl=kl,
        best_val_loss=best[1] if best else None,
        best_step=best[0] if best else None,
        stop_reason=reason,
        train_seconds=seconds,
        tokens_per_second=(trained_steps * hp.batch_size * tokens_per_example / seconds) if seconds > 0 and trained_steps > 0 else None,
        resumed_from=resume,
        precision="bf16-mixed" if trainer.args.bf16 else "fp32",
    )


def _forgetting_reason(exceeded: tuple[int, float], limit: float, kept: str | None, values: dict[int, float]) -> str:
    """The stop reason of a run stopped by ``max_forgetting_kl``, naming the checkpoint kept.

    Raises:
        TrainingError: no checkpoint under the threshold exists (the first validation exceeded it).
    """
    step, value = exceeded
    over = f"forgetting_kl {value:.3g} at step {step} exceeded the policy's max_forgetting_kl {limit:g}"
    if kept is None or not Path(kept).is_dir():
        first = " at the first validation" if not any(earlier < step for earlier in values) else ""
        raise TrainingError(
            f"forgetting: {over}{first}, so there is no checkpoint under the threshold to keep; "
            "lower the learning rate, validate more often (val_check_interval) or raise max_forgetting_kl"
        )
    name = Path(kept).name
    kept_value = values.get(int(name.rpartition("-")[2]))
    return f"forgetting: {over}; kept {name}" + (f" (forgetting_kl {kept_value:.3g})" if kept_value is not None else "")


def parameter_counts(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def name_base_model(adapter_dir: Path, config: CustomizationConfig) -> None:
    """Name the base model by its Hub id (``Target.adapter_base``), not this machine's cache path,
    so ``AutoPeftModelForCausalLM`` and the Hub find it (a serving engine matches it to its base by
    the catalog name or this id). Target modules are sorted (PEFT keeps them as a set) so that the
    same training writes the same bytes, which publication relies on to skip unchanged content."""
    path = adapter_dir / "adapter_config.json"
    values = json.loads(path.read_text())
    # PEFT recorded the folder the base was loaded from: what a locally built base resolves to.
    values["base_model_name_or_path"] = config.target.adapter_base(values.get("base_model_name_or_path") or "")
    if isinstance(values.get("target_modules"), list):
        values["target_modules"] = sorted(values["target_modules"])
    path.write_text(json.dumps(values, indent=2, sort_keys=True))


def micro_batch_size(hp: Hyperparameters, config: CustomizationConfig) -> int:
    option = config.option_for(hp.training_type, hp.finetuning_type)
    return min(option.micro_batch_size, hp.batch_size)


def save_output(trainer: Any, hp: Hyperparameters, config: CustomizationConfig, work_dir: Path, tokenizer: Any) -> tuple[str, str]:
    """Save what the job delivers: the adapter (lora), the merged model (lora_merged) or the model.

    Returns:
        ``(artifact, folder)`` with artifact ``"adapter"`` or ``"model"``.
    """
    if hp.finetuning_type == "lora":
        folder = work_dir / "adapter"
        trainer.save_model(str(folder))  # writes on the main process only
        if trainer.is_world_process_zero():
            name_base_model(folder, config)
        return "adapter", str(folder)
    folder = work_dir / "model"
    if hp.finetuning_type == "all_weights":
        trainer.save_model(str(folder))
    elif trainer.is_world_process_zero():
        trainer.model.merge_and_unload().save_pretrained(str(folder))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(folder))
    return "model", str(folder)

