"""MLflow tracking for a job: one run per job, addressed by run id from any task or process, with
its training dataset as a dataset input and the machine's use as system metrics while it trains."""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core import tags as tag
from core.settings import Settings

log = logging.getLogger("customizer.tracking")


# MLflow's HTTP client retries a failed request 7 times with backoff by default (about 4 minutes to
# give up on a server that is down) and waits 120 s for an answer. Registry reads retry on top of
# that (deploy.registry), so bound each request: 3 retries, backoff 1 s (about 0 + 2 + 4 s, plus
# jitter) and 60 s per answer. Values the user already set are left alone.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def client(settings: Settings):
    """An MlflowClient on the configured tracking URI (no global MLflow state is touched, apart
    from bounded HTTP retry defaults for a remote tracking server, see ``HTTP_DEFAULTS``)."""
    from mlflow import MlflowClient

    if settings.tracking_uri.startswith(("http://", "https://")):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)  # MLflow reads them at each request
    if settings.tracking_uri.startswith("sqlite:///"):
        Path(settings.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _experiment_id(mlflow_client, settings: Settings) -> str:
    experiment = mlflow_client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if settings.mlflow_tracking_uri is None:  # embedded default: artifacts next to the database
        settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
        artifact_location = settings.mlflow_artifact_root.as_uri()
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.create_experiment(settings.mlflow_experiment, artifact_location=artifact_location)
    except MlflowException:
        # Two jobs starting at once both found no experiment; the one that lost the race uses the other's.
        experiment = mlflow_client.get_experiment_by_name(settings.mlflow_experiment)
        if experiment is None:
            raise
        return experiment.experiment_id


def start_run(settings: Settings, job_id: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """Open (or reopen, when the job is re-run) the job's MLflow run and return its id."""
    mlflow_client = client(settings)
    experiment_id = _experiment_id(mlflow_client, settings)
    existing = mlflow_client.search_runs([experiment_id], filter_string=f"tags.`customizer.job_id` = '{job_id}'", max_results=1)
    if existing:
        run_id = existing[0].info.run_id
        mlflow_client.update_run(run_id, status="RUNNING")
        return run_id
    run = mlflow_client.create_run(experiment_id, run_name=job_id, tags={tag.JOB_ID: job_id, **tags})
    for key, value in params.items():
        mlflow_client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def log_metric(settings: Settings, run_id: str, name: str, value: float, step: int = 0) -> None:
    client(settings).log_metric(run_id, name, value, step=step)


def log_metrics(settings: Settings, run_id: str, values: dict[str, float], step: int = 0) -> None:
    mlflow_client = client(settings)
    for name, value in values.items():
        mlflow_client.log_metric(run_id, name, value, step=step)


def log_dict(settings: Settings, run_id: str, value: Any, artifact_file: str) -> None:
    client(settings).log_text(run_id, json.dumps(value, indent=2, default=str), artifact_file)


def log_artifacts(settings: Settings, run_id: str, folder: str | Path, artifact_path: str) -> str:
    """Upload a folder into the run's artifacts; returns its artifact URI."""
    mlflow_client = client(settings)
    mlflow_client.log_artifacts(run_id, str(folder), artifact_path)
    return f"{mlflow_client.get_run(run_id).info.artifact_uri}/{artifact_path}"


@contextmanager
def process_default(settings: Settings) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to the settings' for the block, for the few MLflow
    calls that read it instead of their client's (the SQL registry store looks a LoggedModel up
    that way when a version is created from ``models:/<model id>``)."""
    # private, in the pinned mlflow (<3.18): the public setter cannot put back "never set"
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    environment = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(settings.tracking_uri):
            yield
    finally:  # putting back "never set" unsets the variable, which the user may have set
        if environment is not None:
            os.environ["MLFLOW_TRACKING_URI"] = environment


def dataset_source(uri: str):
    """An MLflow dataset source for a dataset URI: a folder, ``file://`` or ``s3://`` as the
    artifact-store source MLflow resolves it to; ``hf://datasets/<ns>/<name>`` (the Data Store,
    which speaks the Hugging Face Hub's API) as a Hugging Face source of ``<ns>/<name>``.

    Raises:
        MlflowException: a URI of no kind MLflow knows.
    """
    # delayed: mlflow is heavy (start-up time)
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    if uri.startswith("hf://datasets/"):
        return HuggingFaceDatasetSource(path=uri.removeprefix("hf://datasets/").strip("/"))
    with warnings.catch_warnings():  # MLflow registers its local source for two schemes and warns that both match
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return resolve_dataset_source(uri)


def log_dataset_input(settings: Settings, run_id: str, name: str, sha256: str, uri: str, context: str = "training") -> None:
    """Record a dataset as an input of the run (MLflow's dataset tracking): its name, its sha256 as
    the digest and where it came from. MLflow caps a digest at 36 characters, so the digest is the
    sha256's first 32 hex digits and the whole sha256 is a tag of the input, beside the URI.
    Logging the same dataset again adds nothing.

    Raises:
        MlflowException: the run could not be written, or ``uri`` is of no kind MLflow knows.
    """
    # delayed: mlflow is heavy (start-up time)
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = MetaDataset(source=dataset_source(uri), name=name, digest=sha256[:32])
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, context), InputTag(tag.DATASET_SHA256, sha256), InputTag(tag.DATASET_URI, uri)]
    client(settings).log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=tags)])


@contextmanager
def system_metrics(settings: Settings, run_id: str, interval_s: float = 10.0) -> Iterator[None]:
    """Log the machine's CPU, memory, disk and network use (and GPU use where MLflow can read it)
    to the run as ``system/...`` metrics every ``interval_s`` seconds while the block runs
    (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides the interval)."""
    # delayed: mlflow is heavy (start-up time)
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=True, tracking_uri=settings.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def fail_job_runs(settings: Settings, job_id: str, message: str) -> None:
    """Close every MLflow run of a job as FAILED with the reason (a flow's failure hook), so no run
    is left dangling RUNNING."""
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return
    for run in mlflow_client.search_runs([experiment.experiment_id], filter_string=f"tags.`customizer.job_id` = '{job_id}'"):
        mlflow_client.set_tag(run.info.run_id, tag.FAILURE, message[:4000])
        mlflow_client.set_terminated(run.info.run_id, status="FAILED")


def end_run(settings: Settings, run_id: str, status: str) -> None:
    client(settings).set_terminated(run_id, status=status)


class MetricBuffer:
    """Collect metrics on the training thread and send them to MLflow in batches.

    One ``log_batch`` every few seconds instead of one request per value keeps tracking off the
    training loop's critical path (a synchronous ``log_metric`` costs milliseconds to a SQLite
    store and far more to a remote server).
    """

    def __init__(self, settings: Settings, run_id: str, every_seconds: float = 5.0):
        self._client = client(settings)
        self._run_id = run_id
        self._every = every_seconds
        self._pending: list = []
        self._last_flush = time.monotonic()

    def add(self, name: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        if not math.isfinite(value):
            return  # MLflow rejects NaN/inf; a diverged loss shows as the last finite value and a warning
        self._pending.append(Metric(key=_metric_key(name), value=float(value), timestamp=int(time.time() * 1000), step=step))
        if time.monotonic() - self._last_flush >= self._every:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:1000], self._pending[1000:]  # MLflow's batch limit
            self._client.log_batch(self._run_id, metrics=batch)
        self._last_flush = time.monotonic()


def _metric_key(name: str) -> str:
    """MLflow metric names allow letters, digits and ``_-./ :``; TRL's names fit, others are cleaned."""
    return "".join(ch if ch.isalnum() or ch in "_-./ :" else "_" for ch in name)


# What training achieved against its estimate, on the job's run (``record_throughput``); the achieved
# utilisation calibrates the estimates of later jobs of the same config and method.
ESTIMATE_SECONDS = "training.estimate_seconds"
ACTUAL_SECONDS = "training.actual_seconds"
ESTIMATE_RATIO = "training.estimate_ratio"  # estimate / actual: above 1 overestimated
TOKENS = "training.tokens"
ACHIEVED_TFLOPS = "training.achieved_tflops"
ACHIEVED_UTILISATION = "training.achieved_utilisation"  # of the peak the estimate used


def achieved_utilisation(settings: Settings, config_urn: str, training_type: str, finetuning_type: str, recent: int = 3) -> list[float]:
    """The achieved utilisation of the ``recent`` most recently started jobs of this config and method
    that finished training (newest first); empty when there are none.

    Raises:
        MlflowException, SQLAlchemyError, OSError: the registry cannot be read (an estimate falls back to its prior).
    """
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return []
    quoted = [value.replace("'", "\\'") for value in (config_urn, training_type, finetuning_type)]
    runs = mlflow_client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{tag.CONFIG}` = '{quoted[0]}' and params.training_type = '{quoted[1]}' "
                      f"and params.finetuning_type = '{quoted[2]}' and metrics.`{ACHIEVED_UTILISATION}` > 0",
        order_by=["attributes.start_time DESC"], max_results=recent,
    )
    return [run.data.metrics[ACHIEVED_UTILISATION] for run in runs]
