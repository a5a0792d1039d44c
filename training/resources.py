"""What a training worker has (GPUs, CPU cores, a rendezvous endpoint) and the check that a config's
training option fits it, run before any model is loaded or process started.

A training option says how many GPUs per node and how many nodes it trains on; ``training.launch``
starts one process per GPU. Without this check an option sized for 8 GPUs would start 8 processes on
a machine with none. The worker runs ``check_resources`` at the start of training; the REST API runs
``check_capacity`` (the GPU rules only: a multi-node job's rendezvous endpoint is the workers'
environment, not the API's) when a job is created, so a job that cannot train is refused up front.

Rules:
  * ``num_gpus`` (per node) may not exceed the worker's GPUs. One process on one node is the
    exception: on a worker without GPUs it trains on the CPU, as ``num_gpus: 0`` does.
  * ``tensor_parallel_size`` must divide ``num_gpus`` (so it is at most ``num_gpus``); with
    ``num_gpus: 0`` it is not used.
  * ``num_nodes > 1`` needs the rendezvous endpoint every node meets at, in ``CUSTOMIZER_RDZV_ENDPOINT``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from core.catalog import TrainingOption

RDZV_ENDPOINT_ENV = "CUSTOMIZER_RDZV_ENDPOINT"  # host:port of the node that hosts torchrun's c10d rendezvous


@dataclass(frozen=True)
class Resources:
    """What a worker has to train with."""

    gpus: int
    cpus: int
    rendezvous_endpoint: str | None = None


class InsufficientResources(ValueError):
    """A training option asks for more than the worker has, or for a layout it cannot run.

    ``fields`` names the option's fields at fault (e.g. ``("num_gpus",)``), each problem once in the message.
    """

    def __init__(self, message: str, fields: tuple[str, ...]):
        super().__init__(message)
        self.fields = fields

    def __reduce__(self):  # pickled across processes by the orchestrator: rebuild from the fields
        return (InsufficientResources, (str(self), self.fields))


def available_gpus() -> int:
    """CUDA GPUs this process can use (``CUDA_VISIBLE_DEVICES`` applies); 0 without CUDA."""
    # delayed: torch is heavy (start-up time)
    import torch

    return torch.cuda.device_count()


def available_resources() -> Resources:
    """What this worker has: its GPUs, the CPU cores this process may run on, and the rendezvous
    endpoint from ``CUSTOMIZER_RDZV_ENDPOINT`` (None when unset or empty)."""
    try:
        cpus = len(os.sched_getaffinity(0))  # the cores this process may use (a container's or taskset's share)
    except AttributeError:  # not on every platform
        cpus = os.cpu_count() or 1
    return Resources(gpus=available_gpus(), cpus=cpus, rendezvous_endpoint=os.environ.get(RDZV_ENDPOINT_ENV) or None)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _gpu_problems(option: TrainingOption, gpus: int, cpus: int | None, holder: str) -> list[tuple[str, str]]:
    """``(field, problem)`` for the GPU count and the tensor-parallel layout."""
    problems = []
    one_process = option.num_gpus == 1 and option.num_nodes == 1
    if option.num_gpus > gpus and not (gpus == 0 and one_process):
        cores = f" and {_plural(cpus, 'CPU core')}" if cpus is not None else ""
        hint = "set num_gpus: 0 to train on the CPU" if gpus == 0 else f"set num_gpus to {gpus} or fewer, or train on a worker with more GPUs"
        problems.append(("num_gpus", f"asks for {_plural(option.num_gpus, 'GPU')} per node (`num_gpus` {option.num_gpus}); "
                                     f"{holder} {_plural(gpus, 'GPU')}{cores} ({hint})"))
    if option.num_gpus > 0 and option.num_gpus % option.tensor_parallel_size:
        problems.append(("tensor_parallel_size", f"has `tensor_parallel_size` {option.tensor_parallel_size}, which does not divide its "
                                                 f"`num_gpus` {option.num_gpus} (each model replica needs that many GPUs of one node)"))
    return problems


def _refuse(option: TrainingOption, config: str, problems: list[tuple[str, str]]) -> None:
    if problems:
        subject = f"config {config} option" if config else "option"
        text = "; it ".join(problem for _, problem in problems)
        raise InsufficientResources(f"{subject} {option.training_type}/{option.finetuning_type} {text}",
                                    tuple(field for field, _ in problems))


def check_resources(option: TrainingOption, available: Resources, *, config: str = "") -> None:
    """Refuse a training option this worker cannot run (every problem in one message).

    Args:
        option: the config's option for the job's ``(training_type, finetuning_type)``.
        available: what the worker has (``available_resources()``).
        config: the config's URN, named in the message.

    Raises:
        InsufficientResources: naming the option, what it asks for and what the worker has.

    >>> cpu = Resources(gpus=0, cpus=2)
    >>> check_resources(TrainingOption(training_type="sft", finetuning_type="lora", num_gpus=0), cpu)
    >>> check_resources(TrainingOption(training_type="sft", finetuning_type="lora", num_gpus=8), cpu, config="meta/llama@v1")
    Traceback (most recent call last):
    training.resources.InsufficientResources: config meta/llama@v1 option sft/lora asks for 8 GPUs per node (`num_gpus` 8); this worker has 0 GPUs and 2 CPU cores (set num_gpus: 0 to train on the CPU)
    """
    problems = _gpu_problems(option, available.gpus, available.cpus, "this worker has")
    if option.num_nodes > 1 and not available.rendezvous_endpoint:
        problems.append(("num_nodes", f"asks for {option.num_nodes} nodes (`num_nodes` {option.num_nodes}); multi-node training needs "
                                      f"the rendezvous endpoint (host:port) every node meets at in {RDZV_ENDPOINT_ENV}, which this "
                                      f"worker does not have"))
    _refuse(option, config, problems)


def check_capacity(option: TrainingOption, gpus: int, *, config: str = "", holder: str = "a training worker has") -> None:
    """Refuse, at a job's creation, an option that asks for more GPUs per node than a training worker
    has (``gpus``), or a tensor-parallel layout its GPUs cannot hold.

    Raises:
        InsufficientResources: naming the option, what it asks for and ``gpus``.

    >>> check_capacity(TrainingOption(training_type="sft", finetuning_type="all_weights", num_gpus=8), 4)
    Traceback (most recent call last):
    training.resources.InsufficientResources: option sft/all_weights asks for 8 GPUs per node (`num_gpus` 8); a training worker has 4 GPUs (set num_gpus to 4 or fewer, or train on a worker with more GPUs)
    """
    _refuse(option, config, _gpu_problems(option, gpus, None, holder))
