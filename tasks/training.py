"""Training as a task. Not retried: a re-run resumes from the last epoch checkpoint."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from customizer.settings import get_settings
from deploy import tracking
from tasks.job import Job
from training.base_model import ResolvedModel
from training.data import IngestedDataset
from training.sft import TrainResult, train_sft


@task(name="train")
def train(job: Job, base: ResolvedModel, data: IngestedDataset) -> TrainResult:
    """Fine-tune the base model with LoRA SFT; losses stream to the job's MLflow run."""
    settings = get_settings()
    client = tracking.client(settings)

    def sink(name: str, value: float, step: int) -> None:
        client.log_metric(job.run_id, name, value, step=step)

    result = train_sft(base.path, data, job.config, job.spec.hyperparameters, Path(job.work_dir), settings, sink)
    get_run_logger().info(
        "Trained %d steps (%.1f epochs) in %.0f s; train_loss %s -> %s; val_loss %s",
        result.steps, result.epochs_completed, result.train_seconds,
        f"{result.train_loss[0][1]:.3f}" if result.train_loss else "n/a",
        f"{result.train_loss[-1][1]:.3f}" if result.train_loss else "n/a",
        ", ".join(f"{v:.3f}" for _, v in result.val_loss) or "n/a",
    )
    return result
