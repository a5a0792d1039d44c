"""Training as tasks: the plan (the pre-flight's guidance and estimate, the budget) and the training run itself.

Training is not retried: a re-run of the job resumes from its last checkpoint instead.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

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
from tasks.check import _parameters as count_parameters
from tasks.artifacts import ProgressArtifact, artifact_key
from tasks.job import Job
from training.base_model import ResolvedModel
from training.common import Hooks, TrainingCancelled, TrainResult
from evaluation.climb import check_options, training_rungs
from training.guidance import Estimate, JobWarning, achieved, check_budget, estimate
from training.launch import TrainingRequest, launch
from training.resources import available_resources, check_resources


PLAN_FILE = "plan.json"  # the run's artifact holding the TrainingPlan


class TrainingPlan(BaseModel):
    warnings: list[JobWarning]
    estimate: Estimate  # the job's own method: the first rung
    rungs: list[Estimate] = []  # each training rung of the ladder, in climbing order (the first is ``estimate``)


@task(name="plan-training")
def plan_training(job: Job, checked: CheckedJob) -> TrainingPlan:
    """Record the pre-flight's warnings and cost estimate on the job's run, with an estimate for each rung
    of its ladder (each an option of the config), and refuse a job whose own method is over its budget
    (here, after the baseline: a job that prompting satisfies trains nothing and costs nothing)."""
    settings = get_settings()
    if checked.estimate is None:  # the flow's pre-flight always resolves the base model, so it always estimates
        raise ValueError(f"job {job.job_id}: the pre-flight made no cost estimate (its base model was not resolved)")
    check_options(job.spec.hyperparameters, job.config)
    rungs = training_rungs(job.spec.hyperparameters)
    later = []
    if len(rungs) > 1 and checked.base is not None and checked.tokens_per_epoch is not None:  # both set: there is an estimate
        parameters = count_parameters(job.config, checked.base)
        later = [estimate(hp, job.config, checked.train_examples, checked.tokens_per_epoch, parameters, job.spec.budget.utilisation,
                          settings=settings) for hp in rungs[1:]]
    plan = TrainingPlan(warnings=checked.warnings, estimate=checked.estimate, rungs=[checked.estimate, *later])  # the check task logged the first
    tracking.log_dict(settings, job.run_id, plan.model_dump(), PLAN_FILE)
    tracking.log_metric(settings, job.run_id, tracking.ESTIMATE_SECONDS, plan.estimate.seconds)
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
    if result.precision:
        client.set_tag(job.run_id, tag.TRAINING_PRECISION, result.precision)
    record_throughput(job, result, get_run_logger())
    get_run_logger().info(
        "Trained %d steps (%.1f epochs) in %.0f s: %s; val_loss %s; forgetting_kl %s",
        result.steps, result.epochs_completed, result.train_seconds, result.stop_reason,
        ", ".join(f"{v:.3f}" for _, v in result.val_loss) or "n/a",
        ", ".join(f"{v:.4f}" for _, v in result.forgetting_kl) or "n/a",
    )
    return result


def record_throughput(job: Job, result: TrainResult, logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Log training's actual seconds, tokens and achieved FLOP/s beside the plan's estimate on the job's
    run; the achieved utilisation calibrates the estimates of later jobs of the same config and method.
    A run without a plan (trained outside the ``customize`` flow) records the actuals alone."""
    from mlflow.exceptions import MlflowException  # delayed: MLflow is heavy (start-up time)

    settings = get_settings()
    client = tracking.client(settings)
    tokens = result.tokens_per_second * result.train_seconds if result.tokens_per_second else None
    values = {tracking.ACTUAL_SECONDS: result.train_seconds} | ({tracking.TOKENS: tokens} if tokens else {})
    hp, params = job.spec.hyperparameters, client.get_run(job.run_id).data.params
    plan = None
    if (params.get("training_type"), params.get("finetuning_type")) != (hp.training_type, hp.finetuning_type):
        # delayed: a later rung of the ladder shares its job's run; its time is not set against the job's own
        # method's estimate (nor calibrates it): it needs a run, or metric names, of its own.
        logger.info("Training of rung %s/%s took %.0f s", hp.training_type, hp.finetuning_type, result.train_seconds)
        return
    with tempfile.TemporaryDirectory() as scratch:
        try:
            plan = TrainingPlan.model_validate_json(Path(client.download_artifacts(job.run_id, PLAN_FILE, scratch)).read_text())
        except (OSError, MlflowException) as exc:  # no plan on this run: nothing to compare with, and nothing to calibrate from
            logger.warning("No estimate to compare training with: %s", exc)
    if plan is not None and result.train_seconds > 0:
        actual = achieved(plan.estimate, result.train_seconds, result.epochs_completed, tokens)
        values |= {
            tracking.ESTIMATE_SECONDS: actual.estimate_seconds, tracking.ESTIMATE_RATIO: actual.ratio,
            tracking.ACHIEVED_TFLOPS: actual.achieved_tflops, tracking.ACHIEVED_UTILISATION: actual.utilisation,
        }
        logger.info(
            "Training took %.0f s against an estimate of %.0f s (estimate / actual %.2f); achieved %.3g TFLOP/s per device, "
            "%.0f%% of %.3g", actual.actual_seconds, actual.estimate_seconds, actual.ratio, actual.achieved_tflops,
            100 * actual.utilisation, plan.estimate.peak_tflops,
        )
    tracking.log_metrics(settings, job.run_id, values)
