"""Supervised fine-tuning (SFT) on TRL's SFTTrainer: LoRA, LoRA merged into the weights, or all weights.

Reads the canonical splits written by ingest, renders each example with the prompt the evaluation
uses (``data.prompts.render``) and tokenizes it with the function ingest measured it with
(``data.prompts.tokenize``), so an example ingest accepted, dropped or truncated is exactly what
training uses. The loss is on the answer tokens only, and on a CPU the logits are computed there
only (``training.answer_logits``). Validation and checkpoints follow
``val_check_interval``; a re-run resumes from the last checkpoint; early stopping keeps the best
checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.catalog import CustomizationConfig
from core.settings import Settings
from core.specs import Hyperparameters
from data.ingest import Example, IngestedDataset, read_examples
from data.prompts import render, tokenize
from training.answer_logits import keep_answer_logits
from training.common import (
    Hooks,
    TrainingError,
    TrainResult,
    common_args,
    lora_config,
    micro_batch_size,
    model_loading,
    parameter_counts,
    prepare_process,
    run_trainer,
    save_output,
)

log = logging.getLogger("customizer.training")


def sft_config(hp: Hyperparameters, config: CustomizationConfig, output_dir: Path, train_examples: int) -> Any:
    """The one place a TRL ``SFTConfig`` is built from a job's hyperparameters."""
    from trl import SFTConfig  # delayed: trl is heavy (start-up time)

    return SFTConfig(
        **common_args(hp, config, output_dir, train_examples, micro_batch_size(hp, config)),
        max_length=config.max_seq_length,
        model_init_kwargs=model_loading(hp, config),
        # Packing fills rows with several examples; position ids restart per example and the
        # attention mask is block-diagonal, so examples never attend to each other.
        packing=hp.sequence_packing_enabled,
        padding_free=hp.sequence_packing_enabled,
        # The rows come tokenized with a completion mask (see `_token_rows`): the loss is on the answer.
        completion_only_loss=True,
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


def train_sft(
    base_model_dir: str,
    dataset: IngestedDataset,
    config: CustomizationConfig,
    hp: Hyperparameters,
    work_dir: Path,
    settings: Settings,
    hooks: Hooks | None = None,
) -> TrainResult:
    """Fine-tune ``base_model_dir`` on the dataset's training split.

    Args:
        base_model_dir: local Hugging Face model folder (from ``resolve_base_model``).
        dataset: the ingested dataset (canonical splits; completion or chat records).
        config: the job's config (prompt format, max_seq_length, LoRA target modules, precision).
        hp: hyperparameters; ``finetuning_type`` picks lora, lora_merged or all_weights.
        work_dir: job folder; checkpoints go to ``work_dir/checkpoints``, the output to
            ``work_dir/adapter`` (lora) or ``work_dir/model``.
        settings: runtime settings (torch threads).
        hooks: metric sink, progress sink and cancellation check.

    Returns:
        The output folder, loss curves and the stop reason.

    Raises:
        TrainingError: examples too long, or a batch size that does not fit the config.
        TrainingCancelled: the job was cancelled.
    """
    # delayed: datasets, transformers and trl are heavy (start-up time)
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    prepare_process(settings, hp)
    hooks = hooks or Hooks()
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    train_rows = _token_rows(read_examples(dataset.files["training"]), config, tokenizer, "training")
    val_rows = _token_rows(read_examples(dataset.files["validation"]), config, tokenizer, "validation")
    mean_tokens = sum(len(r["input_ids"]) for r in train_rows) / max(len(train_rows), 1)

    checkpoints = work_dir / "checkpoints"
    trainer = SFTTrainer(
        model=base_model_dir,
        args=sft_config(hp, config, checkpoints, len(train_rows)),
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows),
        processing_class=tokenizer,
        peft_config=lora_config(hp, config) if hp.uses_lora else None,
    )
    # On a CPU, the LM head projects only the positions the loss is on (the answers).
    keep_answer_logits(trainer.model)
    trainable, total = parameter_counts(trainer.model)
    outcome = run_trainer(trainer, hp, checkpoints, hooks, mean_tokens)
    artifact, folder = save_output(trainer, hp, config, work_dir, tokenizer)
    log.info("SFT (%s, %s) finished: %s", hp.finetuning_type, outcome["precision"], outcome["stop_reason"])
    return TrainResult(artifact=artifact, output_dir=folder, trainable_parameters=trainable, total_parameters=total, **outcome)
