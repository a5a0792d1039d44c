"""Group Relative Policy Optimization (GRPO) with verifiable rewards, on TRL's GRPOTrainer.

For each prompt the model samples a group of completions; each is scored by the job's reward
functions (``training.rewards``: pure functions of the completion and the record's answer columns)
and the policy moves toward the completions that scored above their group's mean. There is no
validation loss; checkpoints follow ``val_check_interval`` and a re-run resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.catalog import CustomizationConfig
from core.settings import Settings
from core.specs import EarlyStopping, Hyperparameters
from data.formats import METHOD_FORMATS
from data.ingest import IngestedDataset, read_examples
from data.preference import reward_row
from training.common import (
    Hooks,
    TrainingError,
    TrainResult,
    common_args,
    lora_config,
    parameter_counts,
    prepare_process,
    run_trainer,
    save_output,
)
from training.rewards import resolve_reward

log = logging.getLogger("customizer.training")


def grpo_config(hp: Hyperparameters, config: CustomizationConfig, output_dir: Path, prompts: int) -> Any:
    """The one place a TRL ``GRPOConfig`` is built from a job's hyperparameters.

    NeMo's GRPO ignores ``batch_size``: a step is ``num_prompts_per_step`` prompts times
    ``num_generations_per_prompt`` completions.
    """
    from trl import GRPOConfig  # delayed: trl is heavy (start-up time)

    g = hp.grpo
    completions = g.num_prompts_per_step * g.num_generations_per_prompt
    shared = common_args(hp.model_copy(update={"batch_size": completions}), config, output_dir, prompts * g.num_generations_per_prompt, completions)
    shared |= dict(
        per_device_train_batch_size=completions,
        gradient_accumulation_steps=1,
        eval_strategy="no",
        load_best_model_at_end=False,
        metric_for_best_model=None,
    )
    return GRPOConfig(
        **shared,
        num_generations=g.num_generations_per_prompt,
        max_completion_length=g.max_new_tokens,
        temperature=g.generation_temperature,
        top_p=g.generation_top_p,
        beta=g.ref_policy_kl_penalty,
        epsilon=g.ratio_clip,
        scale_rewards="group" if g.normalize_rewards else "none",
        mask_truncated_completions=g.overlong_filtering,
        max_grad_norm=g.max_grad_norm,
    )


def _columns_dataset(rows: list[dict[str, Any]]) -> Any:
    """The rows as a ``datasets.Dataset`` whose columns are the union of every row's (None where a
    row lacks one): a ``Dataset`` built from a list takes its columns from the first row alone, and
    a record with ``solution`` after one with ``answer`` must still hand its answer to the rewards.

    Raises:
        TrainingError: a column holding values of different types across records.
    """
    # delayed: datasets and pyarrow are heavy (start-up time)
    import pyarrow
    from datasets import Dataset

    names = list(dict.fromkeys(name for row in rows for name in row))
    try:
        return Dataset.from_list([{name: row.get(name) for name in names} for row in rows])
    except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError) as exc:
        raise TrainingError(
            f"the reward records' columns cannot be passed to the rewards: each column must hold one type "
            f"across records (text, numbers, lists...): {exc}"
        ) from None


def train_grpo(
    base_model_dir: str,
    dataset: IngestedDataset,
    config: CustomizationConfig,
    hp: Hyperparameters,
    work_dir: Path,
    settings: Settings,
    hooks: Hooks | None = None,
) -> TrainResult:
    """Improve ``base_model_dir`` on the dataset's prompts by the job's rewards.

    Args and returns as ``training.sft.train_sft``; the dataset holds reward records
    (a prompt plus the answer columns the rewards read).

    Raises:
        TrainingError: not reward data, or a prompt longer than max_seq_length.
        RewardError: a reward name that does not resolve.
        TrainingCancelled: the job was cancelled.
    """
    # delayed: transformers and trl are heavy (start-up time)
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    fmt = dataset.formats["training"]
    if fmt not in METHOD_FORMATS["grpo"]:
        raise TrainingError(f"training/ holds {fmt} records; GRPO needs reward records (a prompt plus answer columns)")
    prepare_process(settings, hp)
    hooks = hooks or Hooks()
    rewards = [resolve_reward(name) for name in hp.grpo.rewards]
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    rows, total = [], 0
    for example in read_examples(dataset.files["training"]):
        row = reward_row(example.record, config, tokenizer)
        length = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]) + hp.grpo.max_new_tokens
        if length > config.max_seq_length:
            raise TrainingError(f"{example.loc}: prompt plus grpo.max_new_tokens is {length} tokens, above max_seq_length {config.max_seq_length}")
        total += length
        rows.append(row)

    checkpoints = work_dir / "checkpoints"
    trainer = GRPOTrainer(
        model=base_model_dir,
        reward_funcs=rewards,
        args=grpo_config(hp, config, checkpoints, len(rows)),
        train_dataset=_columns_dataset(rows),
        processing_class=tokenizer,
        peft_config=lora_config(hp, config) if hp.uses_lora else None,
    )
    trainable, count = parameter_counts(trainer.model)
    completions = hp.grpo.num_prompts_per_step * hp.grpo.num_generations_per_prompt
    no_validation = hp.model_copy(update={"early_stopping": EarlyStopping(enabled=False), "batch_size": completions})
    outcome = run_trainer(trainer, no_validation, checkpoints, hooks, total / max(len(rows), 1))
    artifact, folder = save_output(trainer, hp, config, work_dir, tokenizer)
    log.info("GRPO (%s) finished: %s", hp.finetuning_type, outcome["stop_reason"])
    return TrainResult(artifact=artifact, output_dir=folder, trainable_parameters=trainable, total_parameters=count, **outcome)
