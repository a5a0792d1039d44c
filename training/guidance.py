"""Guidance before training: warnings about settings that usually go wrong, and a cost estimate.

Warnings do not stop a job (a team may know better); a budget does. Thresholds come from common
fine-tuning experience and NeMo Customizer's documentation.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from core.catalog import CustomizationConfig
from core.specs import Hyperparameters

DEFAULT_UTILISATION = 0.4  # a well-tuned Hugging Face stack reaches 25-45% of bf16 peak
CPU_EFFECTIVE_TFLOPS = 0.07  # measured fp32 matmul throughput of a 2-core CPU, for CPU configs


class JobWarning(BaseModel):
    """NeMo's warning shape: a short message and why it matters."""

    message: str
    explanation: str


class Estimate(BaseModel):
    train_examples: int
    tokens_per_epoch: int
    epochs: int
    training_flops: float  # 6 x parameters x tokens (x epochs)
    devices: int
    device: str
    peak_tflops: float
    utilisation: float
    device_hours: float

    def describe(self) -> str:
        return (
            f"{self.tokens_per_epoch:,} tokens/epoch x {self.epochs} epoch(s), {self.training_flops:.2e} FLOPs: "
            f"about {self.device_hours:.2f} {self.device}-hours on {self.devices} device(s) at "
            f"{self.utilisation:.0%} of {self.peak_tflops:g} TFLOP/s"
        )


class BudgetExceeded(ValueError):
    """The estimate is above the job's budget; the job is refused before training."""


def guidance(hp: Hyperparameters, config: CustomizationConfig, train_examples: int) -> list[JobWarning]:
    """Warnings for settings that tend to waste a run. Pure: the same inputs give the same warnings.

    >>> from core.catalog import Target, TrainingOption
    >>> cfg = CustomizationConfig(namespace="n", name="m@v1", target=Target(name="m", model_uri="m"), max_seq_length=64,
    ...     training_options=[TrainingOption(training_type="sft", finetuning_type="lora")])
    >>> [w.message for w in guidance(Hyperparameters(learning_rate=2e-3), cfg, 5000)]
    ['learning_rate 0.002 is high for LoRA']
    """
    warnings = []
    if hp.uses_lora and hp.learning_rate >= 1e-3:
        warnings.append(JobWarning(
            message=f"learning_rate {hp.learning_rate:g} is high for LoRA",
            explanation="With LoRA at 1e-3 or more, validation loss tends to diverge after 2-3 epochs; 1e-4 to 5e-4 is typical.",
        ))
    if hp.uses_lora and hp.lora.adapter_dim >= 32 and train_examples < 1000:
        warnings.append(JobWarning(
            message=f"lora.adapter_dim {hp.lora.adapter_dim} on {train_examples} examples",
            explanation="A rank of 32 or more on fewer than 1,000 examples tends to overfit; try 8 or 16.",
        ))
    if hp.finetuning_type == "all_weights" and train_examples < 2000:
        warnings.append(JobWarning(
            message=f"full-weight training on {train_examples} examples",
            explanation="Full SFT on fewer than 2,000 examples usually overfits and forgets; LoRA is the safer choice.",
        ))
    if hp.training_type in ("dpo", "grpo") and not config.target.instruction_tuned:
        warnings.append(JobWarning(
            message=f"{hp.training_type} on a base without supervised tuning",
            explanation=f"{config.target.name} had no SFT; preference and RL methods work best after SFT on the task.",
        ))
    return warnings


def estimate(
    hp: Hyperparameters,
    config: CustomizationConfig,
    train_examples: int,
    tokens_per_epoch: int,
    num_parameters: int,
    utilisation: float = DEFAULT_UTILISATION,
) -> Estimate:
    """Training cost: 6 x parameters x tokens FLOPs, spread over the config's devices.

    >>> from core.catalog import Target, TrainingOption
    >>> cfg = CustomizationConfig(namespace="n", name="m@v1", target=Target(name="m", model_uri="m"), max_seq_length=64,
    ...     gpu="A100-80GB", gpu_peak_tflops=312, training_options=[TrainingOption(training_type="sft", finetuning_type="lora")])
    >>> round(estimate(Hyperparameters(epochs=2), cfg, 1000, 10**6, 10**9).device_hours, 3)
    0.027
    """
    option = config.option_for(hp.training_type, hp.finetuning_type)
    tokens = tokens_per_epoch * hp.epochs
    if hp.training_type == "grpo":  # every prompt is sampled num_generations times, each up to max_new_tokens
        tokens = hp.epochs * train_examples * hp.grpo.num_generations_per_prompt * hp.grpo.max_new_tokens + tokens_per_epoch * hp.epochs
    flops = 6.0 * num_parameters * tokens
    if option.num_gpus > 0 and config.gpu_peak_tflops:
        devices, device, peak = option.num_gpus * option.num_nodes, config.gpu or "GPU", config.gpu_peak_tflops
    else:
        devices, device, peak = option.num_nodes * max(option.num_gpus, 1), "CPU", CPU_EFFECTIVE_TFLOPS
    hours = flops / (devices * peak * 1e12 * utilisation) / 3600
    return Estimate(
        train_examples=train_examples, tokens_per_epoch=tokens_per_epoch, epochs=hp.epochs, training_flops=flops,
        devices=devices, device=device, peak_tflops=peak, utilisation=utilisation, device_hours=hours,
    )


def check_budget(cost: Estimate, max_device_hours: float | None) -> None:
    """Refuse a job whose estimate exceeds its budget.

    Raises:
        BudgetExceeded: with the estimate and the budget in the message.
    """
    if max_device_hours is not None and cost.device_hours > max_device_hours and not math.isclose(cost.device_hours, max_device_hours):
        raise BudgetExceeded(
            f"estimated {cost.device_hours:.2f} {cost.device}-hours exceeds the budget of {max_device_hours:g} "
            f"({cost.describe()}); lower epochs or data, or raise `budget.max_device_hours`"
        )
