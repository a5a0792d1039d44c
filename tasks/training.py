"""Training as tasks: the plan (the pre-flight's guidance and estimate, the budget) and the training run itself.

Training is not retried: a re-run of the job resumes from its last checkpoint instead.
"""

from __future__ import annotations

import json
import time

from prefect import get_run_logger, runtime, task
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import Abort
from prefect.states import Cancelled
from pydantic import BaseModel

from core import tags as tag
from core import tracking
from core.secrets import unsealed_environment
from core.settings import get_settings
from data.ingest import IngestedDataset
from tasks.check import CheckedJob
from tasks.artifacts import ProgressArtifact, artifact_key
from tasks.job import Job
from training.base_model import ResolvedModel
from training.common import Hooks, TrainingCancelled, TrainResult
from training.guidance import Estimate, JobWarning, check_budget
from training.launch import TrainingRequest, launch
from training.resources import available_resources, check_resources


class TrainingPlan(BaseModel):
    warnings: list[JobWarning]
    estimate: Estimate


@task(name="plan-training")
def plan_training(job: Job, checked: CheckedJob) -> TrainingPlan:
    """Record the pre-flight's warnings and cost estimate on the job's run, and refuse a job over its
    budget (here, after the baseline: a job that prompting satisfies trains nothing and costs nothing)."""
    settings = get_settings()
    if checked.estimate is None:  # the flow's pre-flight always resolves the base model, so it always estimates
        raise ValueError(f"job {job.job_id}: the pre-flight made no cost estimate (its base model was not resolved)")
    plan = TrainingPlan(warnings=checked.warnings, estimate=checked.estimate)  # the check task logged both
    tracking.log_dict(settings, job.run_id, plan.model_dump(), "plan.json")
    tracking.client(settings).set_tag(job.run_id, tag.WARNINGS, json.dumps([w.model_dump() for w in plan.warnings]))
    check_budget(plan.estimate, job.spec.budget.max_device_hours)
    return plan


def _cancel_requested() -> bool:
    """True once this flow run is being cancelled through Prefect (the UI, the API or the CLI)."""
    flow_run_id = runtime.flow_run.id
    if not flow_run_id:
        return False
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return state is not None and (state.is_cancelling() or state.is_cancelled())


def _mark_cancelled(job: Job, message: str) -> None:
    """Finish the cancellation the user asked for: the flow run ends Cancelled, the MLflow run KILLED."""
    settings = get_settings()
    client = tracking.client(settings)
    client.set_tag(job.run_id, tag.STOP_REASON, message)
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
    hp = job.spec.hyperparameters
    # Before a training slot is taken or any model loaded: an option this worker cannot run is refused
    # with what it asks for and what the worker has, instead of starting a process per missing GPU.
    check_resources(job.config.option_for(hp.training_type, hp.finetuning_type), available_resources(), config=job.config.urn)
    settings = get_settings()
    buffer = tracking.MetricBuffer(settings, job.run_id)
    client = tracking.client(settings)
    last_progress = [0.0]
    bar = ProgressArtifact(artifact_key("progress", job.job_id), f"training {job.spec.output_model}")

    def progress(snapshot: dict) -> None:
        # The job's status (steps, epochs, percentage) is read from this tag; keep it fresh but cheap.
        now = time.monotonic()
        if snapshot["phase"] != "running" or now - last_progress[0] > 5:
            last_progress[0] = now
            client.set_tag(job.run_id, tag.PROGRESS, json.dumps(snapshot))
            bar.update(snapshot["percentage_done"])

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
    client.set_tag(job.run_id, tag.STOP_REASON, result.stop_reason)
    get_run_logger().info(
        "Trained %d steps (%.1f epochs) in %.0f s: %s; val_loss %s; forgetting_kl %s",
        result.steps, result.epochs_completed, result.train_seconds, result.stop_reason,
        ", ".join(f"{v:.3f}" for _, v in result.val_loss) or "n/a",
        ", ".join(f"{v:.4f}" for _, v in result.forgetting_kl) or "n/a",
    )
    return result
