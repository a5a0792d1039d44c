"""The resource check before training: each rule refuses what it should and passes what it should,
and every refusal names the config, the option, the field, what it asks for and what the worker has."""

from __future__ import annotations

import pytest

from core.catalog import TrainingOption
from training.resources import (
    RDZV_ENDPOINT_ENV,
    InsufficientResources,
    Resources,
    available_resources,
    check_capacity,
    check_resources,
)

pytestmark = pytest.mark.unit

CPU = Resources(gpus=0, cpus=2)
FOUR_GPUS = Resources(gpus=4, cpus=32)


def option(**fields) -> TrainingOption:
    return TrainingOption(training_type=fields.pop("training_type", "sft"), finetuning_type=fields.pop("finetuning_type", "lora"), **fields)


def refusal(opt: TrainingOption, available: Resources, config: str = "meta/llama@v1") -> InsufficientResources:
    with pytest.raises(InsufficientResources) as raised:
        check_resources(opt, available, config=config)
    return raised.value


def test_what_this_worker_has_is_reported(monkeypatch):
    import os

    import torch

    monkeypatch.setenv(RDZV_ENDPOINT_ENV, "head:29400")
    found = available_resources()
    assert found.gpus == torch.cuda.device_count()
    assert found.cpus == len(os.sched_getaffinity(0)) >= 1 and found.rendezvous_endpoint == "head:29400"
    monkeypatch.setenv(RDZV_ENDPOINT_ENV, "")
    assert available_resources().rendezvous_endpoint is None  # empty is unset


def test_cpu_training_on_one_node_is_always_fine():
    check_resources(option(num_gpus=0), CPU)
    check_resources(option(num_gpus=0, tensor_parallel_size=3), CPU)  # not used without GPUs
    check_resources(option(num_gpus=0), Resources(gpus=0, cpus=1))


def test_one_gpu_on_one_node_trains_on_the_cpu_of_a_worker_without_gpus():
    check_resources(option(num_gpus=1), CPU)
    with pytest.raises(InsufficientResources):
        check_resources(option(num_gpus=1, num_nodes=2), Resources(gpus=0, cpus=2, rendezvous_endpoint="head:29400"))


def test_more_gpus_than_the_worker_has_is_refused_naming_both():
    error = refusal(option(num_gpus=8), CPU)
    assert str(error) == ("config meta/llama@v1 option sft/lora asks for 8 GPUs per node (`num_gpus` 8); "
                          "this worker has 0 GPUs and 2 CPU cores (set num_gpus: 0 to train on the CPU)")
    assert error.fields == ("num_gpus",)

    error = refusal(option(finetuning_type="all_weights", num_gpus=8), FOUR_GPUS)
    assert "option sft/all_weights asks for 8 GPUs per node" in str(error) and "this worker has 4 GPUs and 32 CPU cores" in str(error)
    assert "set num_gpus to 4 or fewer" in str(error)
    check_resources(option(num_gpus=4), FOUR_GPUS)  # exactly what it has
    check_resources(option(num_gpus=2), FOUR_GPUS)


def test_a_tensor_parallel_size_that_does_not_divide_the_gpus_is_refused():
    error = refusal(option(num_gpus=4, tensor_parallel_size=8), FOUR_GPUS)
    assert error.fields == ("tensor_parallel_size",) and "`tensor_parallel_size` 8" in str(error) and "`num_gpus` 4" in str(error)
    error = refusal(option(num_gpus=4, tensor_parallel_size=3), FOUR_GPUS)
    assert error.fields == ("tensor_parallel_size",) and "does not divide" in str(error)
    check_resources(option(num_gpus=4, tensor_parallel_size=2), FOUR_GPUS)
    check_resources(option(num_gpus=4, tensor_parallel_size=4), FOUR_GPUS)


def test_several_nodes_need_the_rendezvous_endpoint():
    error = refusal(option(num_gpus=4, num_nodes=2), FOUR_GPUS)
    assert error.fields == ("num_nodes",)
    assert "asks for 2 nodes (`num_nodes` 2)" in str(error) and RDZV_ENDPOINT_ENV in str(error)
    check_resources(option(num_gpus=4, num_nodes=2), Resources(gpus=4, cpus=32, rendezvous_endpoint="head:29400"))
    check_resources(option(num_gpus=0, num_nodes=2), Resources(gpus=0, cpus=2, rendezvous_endpoint="head:29400"))


def test_every_problem_is_in_one_message():
    error = refusal(option(num_gpus=6, tensor_parallel_size=4, num_nodes=2), FOUR_GPUS, config="")
    assert error.fields == ("num_gpus", "tensor_parallel_size", "num_nodes")
    assert str(error).startswith("option sft/lora asks for 6 GPUs per node")
    assert "`tensor_parallel_size` 4" in str(error) and "asks for 2 nodes" in str(error)


def test_the_capacity_check_at_creation_uses_the_gpu_rules_only():
    with pytest.raises(InsufficientResources, match=r"asks for 8 GPUs per node \(`num_gpus` 8\); a training worker has 0 GPUs \(set num_gpus: 0"):
        check_capacity(option(num_gpus=8), 0)
    check_capacity(option(num_gpus=8), 8)
    check_capacity(option(num_gpus=1), 0)  # one process: trains on the CPU
    check_capacity(option(num_gpus=8, num_nodes=4), 8)  # the rendezvous endpoint is the workers' concern
    with pytest.raises(InsufficientResources, match="this machine has 2 GPUs"):
        check_capacity(option(num_gpus=4), 2, holder="this machine has")
    with pytest.raises(InsufficientResources) as raised:
        check_capacity(option(num_gpus=8, tensor_parallel_size=16), 8)
    assert raised.value.fields == ("tensor_parallel_size",)


def test_the_refusal_survives_a_process_boundary():
    import pickle

    error = refusal(option(num_gpus=8), CPU)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is InsufficientResources and str(copy) == str(error) and copy.fields == error.fields
