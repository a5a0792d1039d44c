"""The ``evaluate`` flow: score a model on an evaluation config (custom tasks or an lm-eval benchmark)
and record the results in NeMo Evaluator's shape."""

from __future__ import annotations

from typing import Any

from prefect import flow

from evaluation.custom import EvaluationRequest
from tasks.check import check_evaluation
from tasks.evaluator import finish_evaluation, locate_model, mark_evaluation_failed, open_evaluation, run_benchmarks
from tasks.job import cancelled_before_start


@flow(name="evaluate", on_failure=[mark_evaluation_failed], on_crashed=[mark_evaluation_failed])
def evaluate(request: EvaluationRequest) -> dict[str, Any]:
    """Score one model on one evaluation config; the results go to the job's MLflow run."""
    if cancelled := cancelled_before_start():  # an evaluation cancelled before it started stays cancelled
        return cancelled
    check_evaluation(request)  # who submitted it, and that it may read the model and data it names
    job = open_evaluation(request)  # MLflow run, work folder
    model = locate_model(job)  # base model + published adapter as local folders, or an endpoint
    results = run_benchmarks(job, model)  # generation and metrics, progress on the run
    return finish_evaluation(job, results)
