"""Dataset ingest as a task."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from customizer.settings import get_settings
from deploy import tracking
from tasks.job import Job
from training.data import IngestedDataset, ingest_dataset


@task(name="ingest")
def ingest(job: Job) -> IngestedDataset:
    """Validate the dataset, write its canonical splits, and record its identity on the run."""
    settings = get_settings()
    logger = get_run_logger()
    data = ingest_dataset(job.spec.dataset, Path(job.work_dir) / "data", seed=job.spec.hyperparameters.seed)
    for warning in data.warnings:
        logger.warning(warning)
    logger.info("Dataset %s: sha256 %s, %s", job.spec.dataset, data.sha256[:16], data.counts)
    client = tracking.client(settings)
    client.set_tag(job.run_id, "customizer.dataset.sha256", data.sha256)
    client.set_tag(job.run_id, "customizer.dataset.uri", data.source)
    tracking.log_dict(settings, job.run_id, data.model_dump(), "ingest/report.json")
    return data
