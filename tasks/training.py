"""Training as tasks: a plan (guidance, estimate, budget) and the training run itself.

Training is not retried: a re-run of the job resumes from its last checkpoint instead.
"""

from __future__ import annotations

import json
import time

from prefect import get_run_logger, runtime, task
from prefect.concurrency.sync import concurrency
from prefect.exceptions import Abort
from pydantic import BaseModel

from core.secrets import unsealed_environment
from core.settings import get_settings
from core import tracking
from tasks.job import Job
from training.base_model import ResolvedModel
from training.common import Hooks, TrainingCancelled, TrainResult
from data.ingest import IngestedDataset, read_examples
from training.guidance import Estimate, JobWarning, check_budget, estimate, guidance
from training.launch import TrainingRequest, launch
from data.preference import reward_row
from data.prompts import render


class TrainingPlan(BaseModel):
    warnings: list[JobWarning]
    estimate: Estimate


def _tokens_per_epoch(job: Job, base: ResolvedModel, data: IngestedDataset) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    total = 0
    for example in read_examples(data.files["training"]):
        record = example.record
        if "chosen_response" in record:
            text = str(record["prompt"]) + record["chosen_response"] + record["rejected_response"]
        elif "completion" in record or "messages" in record:
            sample = render(record, job.config, tokenizer)
            text = sample.prompt + sample.target
        else:
            text = reward_row(record, job.config, tokenizer)["prompt"]
        total += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return total


@task(name="plan-training")
def plan_training(job: Job, base: ResolvedModel, data: IngestedDataset) -> TrainingPlan:
    """Warn about risky settings, estimate the cost, and refuse a job over its budget."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = get_settings()
    hp = job.spec.hyperparameters
    examples = data.counts["training"]
    parameters = job.config.target.num_parameters
    if parameters is None:  # count them without allocating weights
        import torch

        with torch.device("meta"):
            parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base.path)).parameters())
    cost = estimate(hp, job.config, examples, _tokens_per_epoch(job, base, data), parameters, job.spec.budget.utilisation)
    plan = TrainingPlan(warnings=guidance(hp, job.config, examples), estimate=cost)
    logger = get_run_logger()
    for warning in plan.warnings:
        logger.warning("%s: %s", warning.message, warning.explanation)
    logger.info("Estimate: %s", cost.describe())
    tracking.log_dict(settings, job.run_id, plan.model_dump(), "plan.json")
    tracking.client(settings).set_tag(job.run_id, "customizer.warnings", json.dumps([w.model_dump() for w in plan.warnings]))
    check_budget(cost, job.spec.budget.max_device_hours)
    return plan


def _cancel_requested() -> bool:
    """True once this flow run is being cancelled through Prefect (the UI, the API or the CLI)."""
    from prefect.client.orchestration import get_client

    flow_run_id = runtime.flow_run.id
    if not flow_run_id:
        return False
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return state is not None and (state.is_cancelling() or state.is_cancelled())


def _mark_cancelled(job: Job, message: str) -> None:
    """Finish the cancellation the user asked for: the flow run ends Cancelled, the MLflow run KILLED."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    settings = get_settings()
    client = tracking.client(settings)
    client.set_tag(job.run_id, "customizer.stop_reason", message)
    client.set_terminated(job.run_id, status="KILLED")
    if runtime.flow_run.id:
        with get_client(sync_client=True) as prefect:
            prefect.set_flow_run_state(runtime.flow_run.id, Cancelled(message=message), force=True)


TRAINING_LIMIT = "customizer-training"


def training_limits(output_model: str) -> list[str]:
    """The Prefect global concurrency limits a training run takes a slot of: all training, and its namespace's.

    >>> training_limits("team-a/bot")
    ['customizer-training', 'customizer-training-team-a']
    """
    return [TRAINING_LIMIT, f"{TRAINING_LIMIT}-{output_model.partition('/')[0]}"]


@task(name="train")
def train(job: Job, base: ResolvedModel, data: IngestedDataset) -> TrainResult:
    """Run the job's method (SFT, DPO or GRPO) in-process, or under torchrun for several devices;
    metrics and progress stream to the job's MLflow run. The policy's ``max_forgetting_kl`` stops
    training at the first validation over it (the best checkpoint under it is delivered)."""
    settings = get_settings()
    buffer = tracking.MetricBuffer(settings, job.run_id)
    client = tracking.client(settings)
    last_progress = [0.0]

    def progress(snapshot: dict) -> None:
        # The job's status (steps, epochs, percentage) is read from this tag; keep it fresh but cheap.
        now = time.monotonic()
        if snapshot["phase"] != "running" or now - last_progress[0] > 5:
            last_progress[0] = now
            client.set_tag(job.run_id, "customizer.progress", json.dumps(snapshot))

    hooks = Hooks(sink=buffer.add, progress=progress, should_stop=_cancel_requested)
    request = TrainingRequest(
        base_model_dir=base.path, dataset=data, config=job.config, hyperparameters=job.spec.hyperparameters,
        work_dir=job.work_dir, mlflow_run_id=job.run_id, max_forgetting_kl=job.policy.max_forgetting_kl,
    )
    limits = training_limits(job.spec.output_model)
    get_run_logger().info("Waiting for a training slot (concurrency limits %s, where they exist)", ", ".join(limits))
    try:
        # A slot of the global and of the namespace's limit, taken together: a schedule cannot stack GPU jobs.
        with concurrency(limits, occupy=1, strict=False), unsealed_environment(settings, job.spec.secrets) as variables:
            if variables:
                get_run_logger().info("Secrets in the training environment: %s", ", ".join(variables))
            result = launch(request, settings, hooks, should_stop=_cancel_requested)
    except TrainingCancelled as exc:
        _mark_cancelled(job, str(exc))
        # Abort ends the run where it stands (Cancelled) instead of proposing Failed over it.
        raise Abort(str(exc)) from exc
    finally:
        buffer.flush()
    client.set_tag(job.run_id, "customizer.stop_reason", result.stop_reason)
    get_run_logger().info(
        "Trained %d steps (%.1f epochs) in %.0f s: %s; val_loss %s; forgetting_kl %s",
        result.steps, result.epochs_completed, result.train_seconds, result.stop_reason,
        ", ".join(f"{v:.3f}" for _, v in result.val_loss) or "n/a",
        ", ".join(f"{v:.4f}" for _, v in result.forgetting_kl) or "n/a",
    )
    return result
