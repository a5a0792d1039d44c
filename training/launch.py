"""Run a training method in this process, or across processes with ``torchrun`` (DDP; FSDP for full
weights on GPUs) when the config's training option asks for more than one device or node.

``python -m training.launch REQUEST.json`` is the per-process entry point: it reads a
``TrainingRequest``, trains, and (on rank 0) writes the ``TrainResult`` next to the request and
streams metrics and progress to the job's MLflow run itself.

Several nodes (e.g. the pods of one Kubernetes indexed Job, ``deploy/k8s-multinode-work-pool.json``):
node 0 runs the flow, and ``launch`` starts its ``torchrun``; every other node runs
``python -m training.launch --follow``, which waits for the requests node 0 posts at the path in
``CUSTOMIZER_NODE_REQUEST`` and starts the same ``torchrun`` for each. The nodes meet at the c10d
rendezvous in ``CUSTOMIZER_RDZV_ENDPOINT`` and share the data folder (paths in a request hold on every node).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from core import tags as tag
from core.catalog import CustomizationConfig
from core.processes import stop_processes
from core.settings import Settings, apply_environment, get_settings
from core.specs import Hyperparameters
from core.tracking import MetricBuffer, client, log_dataset_input, system_metrics
from data.ingest import IngestedDataset
from training.common import Hooks, TrainingCancelled, TrainingError, TrainResult
from training.dpo import train_dpo
from training.grpo import train_grpo
from training.resources import RDZV_ENDPOINT_ENV
from training.sft import train_sft

log = logging.getLogger("customizer.training")
STOP_GRACE_S = 10.0  # seconds the training processes have to exit after SIGTERM before SIGKILL
NODE_REQUEST_ENV = "CUSTOMIZER_NODE_REQUEST"  # where node 0 of a multi-node job posts each request for the other nodes
FOLLOW_POLL_S = 1.0  # how often a following node looks for a new request


class TrainingRequest(BaseModel):
    """Everything a training process needs, as plain data (it crosses a process boundary)."""

    base_model_dir: str
    dataset: IngestedDataset
    config: CustomizationConfig
    hyperparameters: Hyperparameters
    work_dir: str
    mlflow_run_id: str | None = None
    # The policy's forgetting limit (PromotionPolicy.max_forgetting_kl): stop at the first validation over it.
    max_forgetting_kl: float | None = None


class NodePost(BaseModel):
    """What node 0 posts for the other nodes of a multi-node job: a request's path, and a token that
    makes each launch a new post (the same request may be launched again)."""

    request: str
    launch: str


def methods() -> dict[str, Callable[..., TrainResult]]:
    return {"sft": train_sft, "dpo": train_dpo, "grpo": train_grpo}


def run(request: TrainingRequest, settings: Settings, hooks: Hooks | None = None) -> TrainResult:
    """Train in this process (the request's forgetting limit goes to training with the hooks)."""
    method = methods()[request.hyperparameters.training_type]
    hooks = (hooks or Hooks()).model_copy(update={"max_forgetting_kl": request.max_forgetting_kl})
    return method(request.base_model_dir, request.dataset, request.config, request.hyperparameters, Path(request.work_dir), settings, hooks)


def processes_for(request: TrainingRequest) -> tuple[int, int]:
    """``(processes per node, nodes)`` from the config's training option; 0 GPUs means one CPU process."""
    option = request.config.option_for(request.hyperparameters.training_type, request.hyperparameters.finetuning_type)
    return max(option.num_gpus, 1), option.num_nodes


def launch(
    request: TrainingRequest,
    settings: Settings,
    hooks: Hooks | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train (``_launch``); a request with a run records on it the dataset it trains on (as a dataset
    input: name, sha256, URI) and the machine's use while it trains (system metrics)."""
    if request.mlflow_run_id is None:
        return _launch(request, settings, hooks, should_stop)
    data = request.dataset
    name = data.source.rstrip("/").rsplit("/", 1)[-1] or data.source
    log_dataset_input(settings, request.mlflow_run_id, name, data.sha256, data.source)
    with system_metrics(settings, request.mlflow_run_id):
        return _launch(request, settings, hooks, should_stop)


def _launch(
    request: TrainingRequest,
    settings: Settings,
    hooks: Hooks | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train in-process for one device, else under ``torchrun`` with one process per device.

    Raises:
        TrainingError: a training process failed (the message carries the end of its log).
        TrainingCancelled: ``should_stop`` said so; the processes were stopped.
    """
    per_node, nodes = processes_for(request)
    if per_node * nodes == 1:
        return run(request, settings, hooks)

    work_dir = Path(request.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    request_path = work_dir / "train-request.json"
    result_path = work_dir / "train-result.json"
    result_path.unlink(missing_ok=True)
    request_path.write_text(request.model_dump_json(indent=2))
    command = torchrun_command(request, request_path)
    if nodes > 1:
        _post_for_other_nodes(request_path)
    log_path = work_dir / "train-processes.log"
    log.info("Launching %d training processes on %d node(s): %s", per_node * nodes, nodes, " ".join(command))
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd())
        try:
            while process.poll() is None:
                if should_stop is not None and should_stop():
                    stop_processes(process, grace=STOP_GRACE_S)
                    raise TrainingCancelled("cancelled while training; the training processes were stopped")
                time.sleep(1.0)
        except BaseException:
            stop_processes(process, grace=STOP_GRACE_S)
            raise
    if process.returncode != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise TrainingError(f"distributed training failed (exit {process.returncode}); end of its log:\n{tail}")
    return TrainResult.model_validate_json(result_path.read_text())


def torchrun_command(request: TrainingRequest, request_path: Path) -> list[str]:
    """The ``torchrun`` command that runs ``request`` on this node (the same on every node of a multi-node job)."""
    per_node, nodes = processes_for(request)
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={per_node}", f"--nnodes={nodes}"]
    if nodes > 1:
        # Multi-node: every node starts the same command; they meet at the rendezvous endpoint (e.g. node 0
        # of a Kubernetes indexed Job behind a headless Service) and the rendezvous assigns node ranks.
        command += [f"--rdzv-endpoint={os.environ[RDZV_ENDPOINT_ENV]}", "--rdzv-backend=c10d", f"--rdzv-id={Path(request.work_dir).name}"]
    else:
        command += ["--standalone"]
    return command + ["-m", "training.launch", str(request_path)]


def _post_for_other_nodes(request_path: Path) -> None:
    """Post a new request for the following nodes (``follow``), atomically, where ``CUSTOMIZER_NODE_REQUEST`` says."""
    post = os.environ.get(NODE_REQUEST_ENV)
    if not post:
        return  # the other nodes are started some other way
    path = Path(post)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(NodePost(request=str(request_path), launch=uuid.uuid4().hex).model_dump_json())
    tmp.replace(path)


def follow(post: Path, runs: int | None = None, poll_s: float = FOLLOW_POLL_S) -> int:
    """On a node other than node 0: run each request posted at ``post`` under ``torchrun``, until stopped
    (the Kubernetes Job ends these pods once node 0 finishes) or after ``runs`` requests.

    Returns the exit status: that of the first ``torchrun`` that failed, else 0.
    """
    seen = None
    done = 0
    log.info("Waiting for training requests at %s", post)
    while runs is None or done < runs:
        text = post.read_text() if post.exists() else None
        if text and text != seen:
            seen, done = text, done + 1
            request_path = Path(NodePost.model_validate_json(text).request)
            request = TrainingRequest.model_validate_json(request_path.read_text())
            command = torchrun_command(request, request_path)
            log.info("Joining the training of %s: %s", request.work_dir, " ".join(command))
            code = subprocess.run(command, cwd=os.getcwd()).returncode
            if code:
                log.error("training processes exited with %d", code)
                return code
        else:
            time.sleep(poll_s)
    return 0


def _mlflow_hooks(settings: Settings, run_id: str) -> tuple[Hooks, Callable[[], None]]:
    buffer = MetricBuffer(settings, run_id)
    mlflow = client(settings)
    last = [0.0]

    def progress(snapshot: dict) -> None:
        now = time.monotonic()
        if snapshot["phase"] != "running" or now - last[0] > 5:
            last[0] = now
            mlflow.set_tag(run_id, tag.PROGRESS, json.dumps(snapshot))

    return Hooks(sink=buffer.add, progress=progress), buffer.flush


def main(argv: list[str] | None = None) -> int:
    """Per-process entry point under ``torchrun`` (or alone)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--follow"]:  # --follow [RUNS]: a node other than node 0 of a multi-node job
        logging.basicConfig(level=logging.INFO, format="%(asctime)s follow %(levelname)s %(message)s")
        if not os.environ.get(NODE_REQUEST_ENV):
            log.error("--follow needs the path node 0 posts requests at in %s, which is not set", NODE_REQUEST_ENV)
            return 2
        return follow(Path(os.environ[NODE_REQUEST_ENV]), runs=int(args[1]) if len(args) > 1 else None)
    settings = get_settings()
    apply_environment(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank%(rank)s %(levelname)s %(message)s")
    rank = int(os.environ.get("RANK", "0"))
    logging.getLogger().handlers[0].addFilter(lambda record: setattr(record, "rank", rank) or True)
    request_path = Path(args[0])
    request = TrainingRequest.model_validate_json(request_path.read_text())
    hooks, flush = (_mlflow_hooks(settings, request.mlflow_run_id) if request.mlflow_run_id and rank == 0 else (Hooks(), lambda: None))
    try:
        result = run(request, settings, hooks)
    finally:
        flush()
    if rank == 0:
        tmp = request_path.with_name("train-result.json.tmp")
        tmp.write_text(result.model_dump_json(indent=2))
        tmp.replace(request_path.with_name("train-result.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
