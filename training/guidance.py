"""Guidance before training: warnings about settings that usually go wrong, and a cost estimate.

Warnings do not stop a job (a team may know better); a budget does. Thresholds come from common
fine-tuning experience and NeMo Customizer's documentation.
"""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from core import tracking
from core.catalog import CustomizationConfig
from core.settings import Settings, get_settings
from core.specs import Hyperparameters
from training import probe
from training.common import use_bf16

log = logging.getLogger("customizer.guidance")

# The share of the peak training reaches before any finished job of the config and method says better.
# A GPU's is of its measured (or data-sheet) dense peak: a well-tuned Hugging Face stack reaches
# 25-45%. A CPU's is of the probe's matmul peak: in fp32 the embedded model's training matmuls come
# close to it; bf16 autocast spends a larger share converting and in ops without bf16 kernels.
PRIOR_UTILISATION = {("gpu", "float32"): 0.4, ("gpu", "bfloat16"): 0.4, ("cpu", "float32"): 0.7, ("cpu", "bfloat16"): 0.3}


class Peak(BaseModel):
    """A device's peak throughput and where the figure came from."""

    device: str  # what the estimate is counted in: "CPU", or the GPU's name
    kind: Literal["cpu", "gpu"]
    dtype: probe.Dtype  # the precision training computes in
    tflops: float
    source: str


class JobWarning(BaseModel):
    """NeMo's warning shape: a short message and why it matters."""

    message: str
    explanation: str


class Estimate(BaseModel):
    train_examples: int
    tokens_per_epoch: int
    epochs: int
    training_flops: float  # 4N (LoRA) or 6N (full) x tokens (x epochs), see method_flops_per_token
    devices: int
    device: str
    peak_tflops: float
    peak_source: str = "assumed"
    utilisation: float
    utilisation_source: str = "assumed"
    device_hours: float

    @property
    def seconds(self) -> float:
        """Wall-clock seconds of training (the devices work in parallel)."""
        return self.device_hours * 3600 / self.devices

    def describe(self) -> str:
        return (
            f"{self.tokens_per_epoch:,} tokens/epoch x {self.epochs} epoch(s), {self.training_flops:.2e} FLOPs: "
            f"about {self.device_hours:.2f} {self.device}-hours ({_duration(self.seconds)}) on {self.devices} device(s) at "
            f"{self.utilisation:.0%} ({self.utilisation_source}) of {self.peak_tflops:.3g} TFLOP/s ({self.peak_source})"
        )


def _duration(seconds: float) -> str:
    """A duration for people: minutes, or hours from an hour and a half.

    >>> _duration(95), _duration(5400)
    ('2 min', '1.5 h')
    """
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(1, round(seconds / 60))} min"


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


def method_flops_per_token(hp: Hyperparameters) -> int:
    """FLOPs per trained token, in units of the model's parameter count N.

    A forward pass costs 2N (a multiply and an add per weight); backward costs 2N for the activation
    gradients and 2N for the weight gradients. Full-weight training does all three: 6N. LoRA freezes
    the base weights, so their weight gradients are never computed: 4N (the adapters' own gradients
    are a rounding error at the ranks used). DPO counts both sequences of a pair (the pre-flight's
    tokens do); GRPO adds its generated tokens at the same rate (see ``estimate``).

    >>> method_flops_per_token(Hyperparameters(finetuning_type="lora")), method_flops_per_token(Hyperparameters(finetuning_type="all_weights"))
    (4, 6)
    """
    return 4 if hp.uses_lora else 6


def cost(
    hp: Hyperparameters,
    config: CustomizationConfig,
    train_examples: int,
    tokens_per_epoch: int,
    num_parameters: int,
    peak: Peak,
    utilisation: float,
    basis: str,
) -> Estimate:
    """The estimate from its inputs (pure): method FLOPs over the device's peak at ``utilisation``.

    >>> from core.catalog import Target, TrainingOption
    >>> cfg = CustomizationConfig(namespace="n", name="m@v1", target=Target(name="m", model_uri="m"), max_seq_length=64,
    ...     gpu="A100-80GB", gpu_peak_tflops=312, training_options=[TrainingOption(training_type="sft", finetuning_type="lora")])
    >>> round(cost(Hyperparameters(epochs=2), cfg, 1000, 10**6, 10**9, Peak(device="A100-80GB", kind="gpu", dtype="bfloat16", tflops=312, source="config"), 0.4, "x").device_hours, 3)
    0.018
    """
    option = config.option_for(hp.training_type, hp.finetuning_type)
    tokens = tokens_per_epoch * hp.epochs
    if hp.training_type == "grpo":  # every prompt is sampled num_generations times, each up to max_new_tokens
        tokens = hp.epochs * train_examples * hp.grpo.num_generations_per_prompt * hp.grpo.max_new_tokens + tokens_per_epoch * hp.epochs
    flops = float(method_flops_per_token(hp) * num_parameters * tokens)
    devices = option.num_nodes * max(option.num_gpus, 1)
    hours = flops / (peak.tflops * 1e12 * utilisation) / 3600  # device-hours: the devices share the FLOPs
    return Estimate(
        train_examples=train_examples, tokens_per_epoch=tokens_per_epoch, epochs=hp.epochs, training_flops=flops,
        devices=devices, device=peak.device, peak_tflops=peak.tflops, peak_source=peak.source, utilisation=utilisation,
        utilisation_source=basis, device_hours=hours,
    )


def device_peak(config: CustomizationConfig, hp: Hyperparameters, cache_dir: Path) -> Peak:
    """The peak the job's devices reach in the precision training uses: measured on this machine's GPU
    (GPU configs) or CPU (CPU configs) and cached; a GPU config on a machine without a GPU (the API
    server) takes the config's ``gpu_peak_tflops``."""
    # delayed: torch is heavy (start-up time)
    import torch

    option = config.option_for(hp.training_type, hp.finetuning_type)
    dtype = "bfloat16" if use_bf16(config) else "float32"
    if option.num_gpus > 0:
        if torch.cuda.is_available():
            measured = probe.device_peak(dtype, cache_dir, kind="cuda")
            if measured.tflops > 0:
                return Peak(device=measured.device, kind="gpu", dtype=dtype, tflops=measured.tflops, source=f"{dtype} matmul measured here")
        if config.gpu_peak_tflops:
            return Peak(device=config.gpu or "GPU", kind="gpu", dtype=dtype, tflops=config.gpu_peak_tflops, source="the config's gpu_peak_tflops")
    measured = probe.device_peak(dtype, cache_dir, kind="cpu")
    if measured.tflops <= 0:  # a dtype without a kernel here: training would not run it either
        measured = probe.device_peak("float32", cache_dir, kind="cpu")
    return Peak(device="CPU", kind="cpu", dtype=measured.dtype, tflops=measured.tflops, source=f"{measured.dtype} matmul measured on {measured.device}")


def estimate(
    hp: Hyperparameters,
    config: CustomizationConfig,
    train_examples: int,
    tokens_per_epoch: int,
    num_parameters: int,
    utilisation: float | None = None,
    *,
    settings: Settings | None = None,
) -> Estimate:
    """Training cost on the device this machine has: the method's FLOPs (``method_flops_per_token``)
    over the device's measured matmul peak (``device_peak``), at ``utilisation`` when the job sets it,
    else the utilisation that recent finished jobs of the same config and method achieved
    (``tracking.achieved_utilisation``), else the device's typical share (``PRIOR_UTILISATION``).

    A registry that cannot be read costs the calibration, not the estimate: the prior is used, a
    warning logged and the estimate's description says so.

    Args:
        utilisation: the share of the peak to assume (the job's ``budget.utilisation``); None: calibrated.
        settings: where the registry and the probe's cache are; default: the environment's.
    """
    # delayed: MLflow and SQLAlchemy are heavy (start-up time)
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    settings = settings or get_settings()
    peak = device_peak(config, hp, settings.root / "cache")
    if utilisation is not None:  # the job's own figure (budget.utilisation) is taken as given
        return cost(hp, config, train_examples, tokens_per_epoch, num_parameters, peak, utilisation, "set by budget.utilisation")
    share, basis = PRIOR_UTILISATION[peak.kind, peak.dtype], f"typical {peak.kind.upper()} {peak.dtype} share"
    try:
        achieved = tracking.achieved_utilisation(settings, config.urn, hp.training_type, hp.finetuning_type)
    except (MlflowException, SQLAlchemyError, OSError) as exc:  # a registry outage costs the calibration, not the estimate
        log.warning("estimate not calibrated: finished jobs of %s could not be read from MLflow: %s", config.urn, exc)
        basis += " (finished jobs unreadable)"
    else:
        if achieved:
            share = statistics.median(achieved)
            basis = f"achieved by the last {len(achieved)} finished job(s) of this config and method"
    return cost(hp, config, train_examples, tokens_per_epoch, num_parameters, peak, share, basis)


class Achieved(BaseModel):
    """What training achieved against its estimate."""

    estimate_seconds: float
    actual_seconds: float
    ratio: float  # estimate / actual: above 1 the estimate was high
    tokens: float | None
    achieved_tflops: float  # per device
    utilisation: float  # of the peak the estimate used


def achieved(cost: Estimate, train_seconds: float, epochs_completed: float, tokens: float | None) -> Achieved:
    """Compare training with its estimate. The FLOPs done are the estimate's in proportion to the epochs
    trained (a run stopped early did less of them), so a stopped run calibrates later estimates as well
    as a complete one.

    >>> from core.catalog import Target, TrainingOption
    >>> est = Estimate(train_examples=10, tokens_per_epoch=1000, epochs=2, training_flops=4e12, devices=1, device="CPU",
    ...     peak_tflops=0.1, utilisation=0.5, device_hours=80 / 3600)
    >>> a = achieved(est, train_seconds=50, epochs_completed=1.0, tokens=1000)
    >>> round(a.ratio, 2), round(a.achieved_tflops, 3), round(a.utilisation, 2)
    (1.6, 0.04, 0.4)
    """
    done = min(1.0, epochs_completed / cost.epochs) if cost.epochs else 1.0
    seconds = max(train_seconds, 1e-9)
    tflops = cost.training_flops * done / seconds / cost.devices / 1e12
    return Achieved(
        estimate_seconds=cost.seconds, actual_seconds=train_seconds, ratio=cost.seconds / seconds, tokens=tokens,
        achieved_tflops=tflops, utilisation=tflops / cost.peak_tflops,
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
