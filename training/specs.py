"""The job spec: one pydantic model, ``CustomizationSpec``, that the ``customize`` flow takes.

Field names follow NeMo Customizer's wire format (``training_type``, ``finetuning_type``,
``epochs``, ``batch_size``, ``learning_rate``, ``lora.adapter_dim``, ...), so the API translates a
request into a spec without renaming. Defaults live here and nowhere else.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from training.catalog import FinetuningType, TrainingType, parse_config_urn

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class LoraParams(BaseModel):
    """LoRA adapter shape."""

    model_config = ConfigDict(extra="forbid")

    adapter_dim: int = Field(default=8, ge=1, le=1024, description="LoRA rank r (a power of 2).")
    alpha: int = Field(default=16, ge=1, description="LoRA scaling numerator; the scale is alpha / adapter_dim.")
    adapter_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        default=None, description="Module names to adapt; default: the config's lora_target_modules."
    )

    @field_validator("adapter_dim")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"`lora.adapter_dim` must be a power of 2, got {value}")
        return value


class Hyperparameters(BaseModel):
    """Training hyperparameters (NeMo Customizer names)."""

    model_config = ConfigDict(extra="forbid")

    training_type: TrainingType = Field(default="sft", description="Training objective.")
    finetuning_type: FinetuningType = Field(default="lora", description="Which weights are trained.")
    epochs: int = Field(default=1, ge=1, le=1000, description="Passes over the training split.")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Global batch size (examples per optimizer step).")
    learning_rate: float = Field(default=5e-4, gt=0.0, lt=1.0, description="Peak learning rate (cosine decay).")
    warmup_steps: int = Field(default=2, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(default=0.0, ge=0.0, lt=1.0)
    max_steps: int = Field(default=-1, description="Stop after this many steps if > 0.")
    log_every_n_steps: int = Field(default=2, ge=1, description="Train-loss logging interval, in steps.")
    seed: int = Field(default=42, description="Seed for data order, holdout split and initialisation.")
    lora: LoraParams = Field(default_factory=LoraParams)


class EvaluationPlan(BaseModel):
    """What baseline and candidate are scored on."""

    model_config = ConfigDict(extra="forbid")

    task_metric: Literal["exact_match", "json_field_match"] = Field(
        default="exact_match", description="Metric of the task benchmark (built from testing/) that the gate uses."
    )
    general_benchmarks: list[str] = Field(
        default_factory=lambda: ["capitals", "everyday"],
        description="Shipped general benchmarks (evaluation/benchmarks/general) for the forgetting check.",
    )
    limit: int | None = Field(default=None, ge=1, description="Score at most this many items per benchmark.")
    batch_size: int = Field(default=16, ge=1, le=512, description="Evaluation batch size.")
    max_new_tokens: int = Field(default=48, ge=1, le=4096, description="Generation budget per task item.")


class PromotionPolicy(BaseModel):
    """When a candidate becomes the champion."""

    model_config = ConfigDict(extra="forbid")

    min_task_gain: float = Field(
        default=0.0, ge=0.0, description="Points (0-100 scale) the task score must gain over the baseline, strictly."
    )
    max_general_drop: float = Field(
        default=2.0, ge=0.0, description="Points any general benchmark may drop (the forgetting limit)."
    )
    forgetting_alpha: float = Field(
        default=0.05,
        gt=0.0,
        le=1.0,
        description="A drop beyond the limit counts as forgetting when a paired sign test over the "
        "per-item results gives p below this (1.0: any drop beyond the limit counts).",
    )


class DataOptions(BaseModel):
    """How ingest treats examples that do not fit the config."""

    model_config = ConfigDict(extra="forbid")

    long_examples: Literal["error", "drop", "truncate"] = Field(
        default="error",
        description="Examples longer than the config's max_seq_length (in the target model's tokens, as "
        "training renders them): error refuses the dataset naming each one; drop leaves them out; "
        "truncate keeps their first max_seq_length tokens. Dropped and truncated examples are counted "
        "and listed in the dataset report.",
    )


class CustomizationSpec(BaseModel):
    """One customization job: which base, which data, how to train, how to judge."""

    model_config = ConfigDict(extra="forbid")

    config: str = Field(
        description="Config URN namespace/name@version, e.g. huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu."
    )
    dataset: str = Field(
        description="Dataset with training/ (and optional validation/, testing/): a folder, file:// or s3://bucket/prefix."
    )
    output_model: str = Field(description="Output model name, namespace/name.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    data: DataOptions = Field(default_factory=DataOptions)
    evaluation: EvaluationPlan = Field(default_factory=EvaluationPlan)
    policy: PromotionPolicy = Field(default_factory=PromotionPolicy)

    @field_validator("config")
    @classmethod
    def _versioned(cls, value: str) -> str:
        parse_config_urn(value)  # CatalogError is a ValueError: pydantic reports it on `config`
        return value.strip()

    @field_validator("output_model")
    @classmethod
    def _namespaced(cls, value: str) -> str:
        namespace, slash, name = value.strip().partition("/")
        if not slash or not _NAME.match(namespace) or not _NAME.match(name):
            raise ValueError(
                f"`output_model` must be namespace/name in lowercase letters, digits, '.', '_' or '-', got {value!r}"
            )
        return f"{namespace}/{name}"
