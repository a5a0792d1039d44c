"""Supervised fine-tuning (SFT) with LoRA, on TRL's SFTTrainer and PEFT.

Reads the canonical splits written by ingest, renders each example with the same prompt the
evaluation uses (``training.prompts.render``) and tokenizes it with the function ingest measured it
with (``training.prompts.tokenize``), so an example ingest accepted, dropped or truncated is exactly
what training uses. Trains with the loss on the answer tokens only, checkpoints every epoch (a
re-run resumes from the last checkpoint), and saves the adapter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from customizer.settings import Settings
from training.callbacks import MetricsCallback, MetricSink
from training.catalog import CustomizationConfig
from training.data import Example, IngestedDataset, read_examples
from training.prompts import render, tokenize
from training.specs import Hyperparameters

log = logging.getLogger("customizer.training")

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class TrainingError(ValueError):
    """Training cannot start with this data or these settings."""


class TrainResult(BaseModel):
    """What training produced: the adapter folder and the loss curves (``(step, value)`` points)."""

    adapter_dir: str
    steps: int
    epochs_completed: float
    train_loss: list[tuple[int, float]]
    val_loss: list[tuple[int, float]]
    train_seconds: float
    trainable_parameters: int
    resumed_from: str | None = None


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


def sft_config(hp: Hyperparameters, config: CustomizationConfig, output_dir: Path, use_cuda: bool) -> Any:
    """The one place a TRL ``SFTConfig`` is built from a job's hyperparameters."""
    from trl import SFTConfig

    option = config.option_for(hp.training_type, hp.finetuning_type)
    micro = min(option.micro_batch_size, hp.batch_size)
    if hp.batch_size % micro:
        raise TrainingError(
            f"`batch_size` {hp.batch_size} is not a multiple of the config's micro_batch_size {micro}"
        )
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=micro,
        gradient_accumulation_steps=hp.batch_size // micro,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=hp.warmup_steps,
        weight_decay=hp.weight_decay,
        logging_steps=hp.log_every_n_steps,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        seed=hp.seed,
        data_seed=hp.seed,
        max_length=config.max_seq_length,
        packing=False,
        # The rows come tokenized with a completion mask (see `_token_rows`): the loss is on the answer.
        completion_only_loss=True,
        # Recomputing activations saves memory we do not need at this size and costs ~2x per step.
        gradient_checkpointing=False,
        use_cpu=not use_cuda,
        bf16=use_cuda and config.training_precision == "bf16-mixed",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _token_rows(examples: list[Example], config: CustomizationConfig, tokenizer: Any, split: str) -> list[dict[str, list[int]]]:
    """Tokenize examples into TRL rows (``input_ids`` + ``completion_mask``).

    Ingest decided what happens to examples longer than max_seq_length: dropped ones are not in the
    split, truncated ones are marked and cut here to their first max_seq_length tokens. An example
    still too long was not measured at ingest (ingested without the model's tokenizer, or under
    another config): it is refused, never cut silently.

    Raises:
        TrainingError: naming the examples that are too long or would keep no answer token.
    """
    limit = config.max_seq_length
    rows, too_long = [], []
    for example in examples:
        tokens = tokenize(render(example.record, config, tokenizer), tokenizer)
        ids, start = tokens.input_ids, tokens.prompt_length
        if len(ids) > limit:
            if not example.truncated or start >= limit:
                too_long.append(f"{example.loc} ({len(ids)} tokens)")
                continue
            ids = ids[:limit]
        rows.append({"input_ids": ids, "completion_mask": [0] * start + [1] * (len(ids) - start)})
    if too_long:
        shown = ", ".join(too_long[:10]) + (f" and {len(too_long) - 10} more" if len(too_long) > 10 else "")
        raise TrainingError(
            f"{len(too_long)} {split} example(s) are longer than the config's max_seq_length {limit} and ingest did not accept them: {shown}; "
            "ingest the dataset with the job's config and data.long_examples set to drop or truncate"
        )
    return rows


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


def _last_checkpoint(folder: Path) -> str | None:
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.rpartition("-")[2]))
    return str(checkpoints[-1]) if checkpoints else None


def train_sft(
    base_model_dir: str,
    dataset: IngestedDataset,
    config: CustomizationConfig,
    hp: Hyperparameters,
    work_dir: Path,
    settings: Settings,
    sink: MetricSink | None = None,
) -> TrainResult:
    """Fine-tune ``base_model_dir`` with LoRA on the dataset's training split.

    Args:
        base_model_dir: local Hugging Face model folder (from ``resolve_base_model``).
        dataset: the ingested dataset (canonical splits).
        config: the job's config (prompt format, max_seq_length, LoRA target modules).
        hp: hyperparameters.
        work_dir: job folder; checkpoints go to ``work_dir/checkpoints``, the adapter to ``work_dir/adapter``.
        settings: runtime settings (torch threads).
        sink: receives ``(name, value, step)`` for train_loss, val_loss and learning_rate.

    Returns:
        The adapter folder and loss curves.

    Raises:
        TrainingError: examples too long, or a batch size that does not fit the config.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback
    from trl import SFTTrainer

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    use_cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    train_rows = _token_rows(read_examples(dataset.files["training"]), config, tokenizer, "training")
    val_rows = _token_rows(read_examples(dataset.files["validation"]), config, tokenizer, "validation")

    checkpoints = work_dir / "checkpoints"
    args = sft_config(hp, config, checkpoints, use_cuda)
    callback = MetricsCallback(sink)
    trainer = SFTTrainer(
        model=base_model_dir,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows),
        processing_class=tokenizer,
        peft_config=lora_config(hp, config),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through MetricsCallback's log lines
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    resume = _last_checkpoint(checkpoints)
    if resume:
        log.info("Resuming from %s", resume)
    started = time.monotonic()
    with supervised_positions_only_on_cpu():
        trainer.train(resume_from_checkpoint=resume)
    seconds = time.monotonic() - started

    adapter_dir = work_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    # Name the base model by its catalog name, not this machine's cache path, so the adapter is
    # portable and a serving engine can match it to its base.
    adapter_config = adapter_dir / "adapter_config.json"
    values = json.loads(adapter_config.read_text())
    values["base_model_name_or_path"] = config.target.name
    adapter_config.write_text(json.dumps(values, indent=2, sort_keys=True))

    state = trainer.state
    history = state.log_history
    return TrainResult(
        adapter_dir=str(adapter_dir),
        steps=state.global_step,
        epochs_completed=float(state.epoch or 0.0),
        train_loss=[(h["step"], float(h["loss"])) for h in history if "loss" in h],
        val_loss=[(h["step"], float(h["eval_loss"])) for h in history if "eval_loss" in h],
        train_seconds=seconds,
        trainable_parameters=trainable,
        resumed_from=resume,
    )
