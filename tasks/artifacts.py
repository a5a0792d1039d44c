"""What a job shows in the Prefect UI beside its logs: a progress bar per training run and a table of
the scores and the decision (the HTML report stays in MLflow, linked from the report artifact).

These are an addition for the person watching the run: an artifact that cannot be written is logged
and never fails the job.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

log = logging.getLogger("customizer.artifacts")


def artifact_key(kind: str, job_id: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) for ``kind`` of job ``job_id``.

    >>> artifact_key("progress", "cust-AbC_12")
    'progress-cust-abc-12'
    """
    return re.sub(r"[^a-z0-9-]", "-", f"{kind}-{job_id}".lower())[:64]


class ProgressArtifact:
    """A progress artifact, created at the first update and moved on by later ones (0-100)."""

    def __init__(self, key: str, description: str):
        self.key, self.description = key, description
        self.artifact_id: Any = None

    def update(self, percentage: float) -> None:
        value = min(100.0, max(0.0, float(percentage)))
        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(value, key=self.key, description=self.description)
            else:
                update_progress_artifact(self.artifact_id, value)
        except Exception as exc:  # noqa: BLE001 - the bar is an addition; training goes on without it
            log.warning("Progress artifact %s not updated: %s", self.key, exc)


def scores_table(job_id: str, rows: list[dict[str, Any]], description: str) -> None:
    """The job's scores and decision as a table artifact (one row per score, then the decision)."""
    try:
        create_table_artifact(rows, key=artifact_key("scores", job_id), description=description)
    except Exception as exc:  # noqa: BLE001 - the table is an addition; the report and registry hold the scores
        log.warning("Scores table of %s not written: %s", job_id, exc)
