"""The ``ingest`` flow: a dataset's checks on their own, before any job is submitted.

Validates every line, splits, hashes and writes the report (``report.json``, ``report.html``);
with a config it also measures every example with the config's tokenizer and applies the
long-example policy. It fails, listing each problem as ``file:line: reason``, when the dataset has
errors.
"""

from __future__ import annotations

from prefect import flow

from tasks.check import check_ingest
from tasks.data import check_dataset, config_model
from tasks.job import cancelled_before_start
from data.report import DataReport
from core.specs import DataOptions, Submission


@flow(name="ingest")
def ingest(dataset: str, config: str | None = None, data: DataOptions | None = None, seed: int = 42,
           submission: Submission | None = None) -> DataReport:
    """Check a dataset (a folder, file:// or s3:// URI) as a customize job would ingest it."""
    if cancelled := cancelled_before_start():  # a run cancelled before it started stays cancelled
        return cancelled
    check_ingest(dataset, config, data, seed, submission)  # who submitted it, and that it may read the dataset
    base = config_model(config) if config else None  # its tokenizer measures the examples
    return check_dataset(dataset, config, base, data or DataOptions(), seed)
