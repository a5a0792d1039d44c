"""Dataset ingest as tasks: inside a customize job, and on its own (the ``ingest`` flow)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, runtime, task

from customizer.ids import prefixed_id
from customizer.settings import get_settings
from deploy import tracking
from tasks.job import Job
from training.base_model import ResolvedModel, resolve_base_model
from training.catalog import CustomizationConfig, get_config
from training.data import DatasetError, IngestedDataset, ingest_dataset
from training.data_report import DataReport
from training.lengths import LengthCheck
from training.specs import DataOptions


def _length_check(config: CustomizationConfig, model_dir: str, options: DataOptions) -> LengthCheck:
    from transformers import AutoTokenizer

    return LengthCheck(config, AutoTokenizer.from_pretrained(model_dir), options.long_examples)


@task(name="ingest")
def ingest(job: Job, base: ResolvedModel) -> IngestedDataset:
    """Validate the dataset with the base model's tokenizer, write its canonical splits, and log its
    identity and report (JSON and HTML) on the job's run, also when the dataset is refused."""
    settings = get_settings()
    logger = get_run_logger()
    out_dir = Path(job.work_dir) / "data"
    client = tracking.client(settings)
    try:
        data = ingest_dataset(
            job.spec.dataset, out_dir, seed=job.spec.hyperparameters.seed, settings=settings,
            lengths=_length_check(job.config, base.path, job.spec.data),
            method=job.spec.hyperparameters.training_type,
        )
    except DatasetError:
        _log_report(client, job.run_id, out_dir)
        raise
    for warning in data.warnings:
        logger.warning(warning)
    logger.info("Dataset %s: sha256 %s, %s (dropped %s, truncated %s)", job.spec.dataset, data.sha256[:16], data.counts, data.dropped or 0, data.truncated or 0)
    client.set_tag(job.run_id, "customizer.dataset.sha256", data.sha256)
    client.set_tag(job.run_id, "customizer.dataset.uri", data.source)
    _log_report(client, job.run_id, out_dir)
    return data


def _log_report(client, run_id: str, out_dir: Path) -> None:
    """Attach ``ingest/report.json`` and ``ingest/report.html`` to the run (when ingest got to write them)."""
    for name in ("report.json", "report.html"):
        if (out_dir / name).is_file():
            client.log_artifact(run_id, str(out_dir / name), "ingest")


@task(name="resolve-config-model")
def config_model(config_urn: str) -> ResolvedModel:
    """Find (or convert once into the cache) a config's base model, for its tokenizer."""
    settings = get_settings()
    return resolve_base_model(get_config(config_urn, settings).target, settings)


@task(name="check-dataset")
def check_dataset(dataset: str, config_urn: str | None, base: ResolvedModel | None, options: DataOptions, seed: int) -> DataReport:
    """Run ingest's checks on a dataset alone; the report and splits go to a folder of their own.

    Raises:
        DatasetError: the dataset has errors (the report is written first).
    """
    settings = get_settings()
    run_id = runtime.flow_run.id
    out_dir = settings.root / "ingest" / (prefixed_id("ingest", run_id) if run_id else prefixed_id("ingest"))
    lengths = _length_check(get_config(config_urn, settings), base.path, options) if config_urn and base else None
    logger = get_run_logger()
    try:
        data = ingest_dataset(dataset, out_dir, seed=seed, lengths=lengths, settings=settings)
    except DatasetError:
        logger.error("Report: %s", out_dir / "report.html")
        raise
    for warning in data.warnings:
        logger.warning(warning)
    logger.info("Dataset %s is valid: sha256 %s, %s; report %s", dataset, data.sha256[:16], data.counts, data.report_files["html"])
    return DataReport.model_validate_json(Path(data.report_files["json"]).read_text())
