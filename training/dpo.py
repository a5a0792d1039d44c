"""Direct Preference Optimization (DPO) on TRL's DPOTrainer, with LoRA or on all weights.

Preference pairs are rendered with the same prompt SFT and evaluation use. With LoRA the reference
model is the base with the adapter switched off (no second copy in memory); with all weights TRL
keeps a frozen copy. ``dpo.ref_policy_kl_penalty`` is beta; an optional SFT loss on the chosen
answer is weighted by ``dpo.sft_loss_weight``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.catalog import CustomizationConfig
from core.settings import Settings
from core.specs import Hyperparameters
from data.formats import METHOD_FORMATS
from data.ingest import IngestedDataset, read_examples
from data.preference import preference_row
from training.common import (
    Hooks,
    TrainingError,
    TrainResult,
    common_args,
    lora_config,
    micro_batch_size,
    parameter_counts,
    prepare_process,
    run_trainer,
    save_output,
)

log = logging.getLogger("customizer.training")


def dpo_config(hp: Hyperparameters, config: CustomizationConfig, output_dir: Path, train_examples: int) -> Any:
    """The one place a TRL ``DPOConfig`` is built from a job's hyperparameters."""
    from trl import DPOConfig  # delayed: trl is heavy (start-up time)

    losses, weights = ["sigmoid"], [hp.dpo.preference_loss_weight]
    if hp.dpo.sft_loss_weight > 0:
        losses.append("sft")
        weights.append(hp.dpo.sft_loss_weight)
    return DPOConfig(
        **common_args(hp, config, output_dir, train_examples, micro_batch_size(hp, config)),
        beta=hp.dpo.ref_policy_kl_penalty,
        loss_type=losses,
        loss_weights=weights,
        max_grad_norm=hp.dpo.max_grad_norm,
        max_length=config.max_seq_length,
        padding_free=hp.sequence_packing_enabled,
    )


def _rows(path: str, config: CustomizationConfig, tokenizer: Any, split: str) -> tuple[list[dict[str, str]], float]:
    rows, too_long, total = [], [], 0
    for example in read_examples(path):
        row = preference_row(example.record, config, tokenizer)
        longest = max(len(tokenizer(row["prompt"] + row[k], add_special_tokens=False)["input_ids"]) for k in ("chosen", "rejected"))
        total += longest
        if longest > config.max_seq_length:
            too_long.append(f"{example.loc} ({longest} tokens)")
        rows.append(row)
    if too_long:
        raise TrainingError(
            f"{len(too_long)} {split} pair(s) are longer than the config's max_seq_length {config.max_seq_length}: "
            + ", ".join(too_long[:10])
        )
    return rows, 2 * total / max(len(rows), 1)  # each pair is two sequences


def train_dpo(
    base_model_dir: str,
    dataset: IngestedDataset,
    config: CustomizationConfig,
    hp: Hyperparameters,
    work_dir: Path,
    settings: Settings,
    hooks: Hooks | None = None,
) -> TrainResult:
    """Align ``base_model_dir`` to the dataset's preference pairs.

    Args and returns as ``training.sft.train_sft``; the dataset holds preference records.

    Raises:
        TrainingError: not preference data, pairs too long, or a batch size that does not fit.
        TrainingCancelled: the job was cancelled.
    """
    # delayed: datasets, transformers and trl are heavy (start-up time)
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    for split in ("training", "validation"):
        fmt = dataset.formats[split]
        if fmt not in METHOD_FORMATS["dpo"]:
            raise TrainingError(f"{split}/ holds {fmt} records; DPO needs preference records (prompt, chosen_response, rejected_response)")
    prepare_process(settings, hp)
    hooks = hooks or Hooks()
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    train_rows, mean_tokens = _rows(dataset.files["training"], config, tokenizer, "training")
    val_rows, _ = _rows(dataset.files["validation"], config, tokenizer, "validation")

    checkpoints = work_dir / "checkpoints"
    trainer = DPOTrainer(
        model=base_model_dir,
        args=dpo_config(hp, config, checkpoints, len(train_rows)),
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows),
        processing_class=tokenizer,
        peft_config=lora_config(hp, config) if hp.uses_lora else None,
    )
    trainable, total = parameter_counts(trainer.model)
    outcome = run_trainer(trainer, hp, checkpoints, hooks, mean_tokens)
    artifact, folder = save_output(trainer, hp, config, work_dir, tokenizer)
    log.info("DPO (%s) finished: %s", hp.finetuning_type, outcome["stop_reason"])
    return TrainResult(artifact=artifact, output_dir=folder, trainable_parameters=trainable, total_parameters=total, **outcome)
