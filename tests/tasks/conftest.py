"""Tasks called through ``.fn()``: their plain bodies, without a flow run. Prefect's run logger is
switched off (there is no run to log to); MLflow is the real one on a SQLite file in a temporary
data folder; slow or remote services are replaced by small fakes in each test."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect.logging import disable_run_logger

from core import tracking
from core.catalog import get_config
from core.settings import Settings, get_settings
from core.specs import CustomizationSpec
from evaluation.runner import StageScores
from tasks.job import Job

# A shipped config: its model is never loaded by these tests, only its training options are read.
CONFIG = "customizer/tiny-llama@v1.0.0+cpu"


@pytest.fixture(autouse=True)
def no_run_logger():
    with disable_run_logger():
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One data folder, so one MLflow database, per test module: creating the database is the slow
    part, and each test's job has a run (and its model a name) of its own."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def job_settings(data_dir: Path, monkeypatch) -> Settings:
    """Settings the tasks read (``get_settings()``), on the module's data folder."""
    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(data_dir))
    for name in ("CUSTOMIZER_STORE_URI", "CUSTOMIZER_S3_ENDPOINT_URL", "CUSTOMIZER_MLFLOW_TRACKING_URI",
                 "CUSTOMIZER_NOTIFY_WEBHOOK_URL", "CUSTOMIZER_SERVING_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return get_settings()


def make_job(settings: Settings, tracked: bool = True, **spec) -> Job:
    """A job as ``open-job`` leaves it: a spec on the shipped tiny config, a work folder and, when
    ``tracked``, an open MLflow run (else a run id that names none)."""
    spec = CustomizationSpec.model_validate({"config": CONFIG, "dataset": "/nowhere", "output_model": "team/bot"} | spec)
    job_id = f"cust-{uuid.uuid4().hex[:12]}"
    work_dir = settings.jobs_dir / job_id
    work_dir.mkdir(parents=True, exist_ok=True)
    run_id = tracking.start_run(settings, job_id, tags={}, params={}) if tracked else "untracked"
    return Job(job_id=job_id, work_dir=str(work_dir), run_id=run_id, spec=spec, config=get_config(CONFIG, settings),
               policy=spec.policy, policy_source="job")


def run_tags(settings: Settings, job: Job) -> dict[str, str]:
    return tracking.client(settings).get_run(job.run_id).data.tags


def stage(task: float, general: list[float], few_shot: float | None = None, task_items: list[float] | None = None) -> StageScores:
    """Scores of one stage: ``task`` on exact_match, one general accuracy benchmark ``g`` with ``general`` per item."""
    return StageScores(
        task={"em": task}, task_metric="em", few_shot={} if few_shot is None else {"em": few_shot},
        general={"g": sum(general) / len(general)}, measures={"g": "accuracy"}, versions={"g": "1"},
        counts={"g": len(general)}, per_sample={"g": general}, per_sample_task=task_items or [], samples_dir="", seconds=1.0,
    )
