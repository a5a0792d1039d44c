"""The ``customize`` flow: ingest -> baseline eval -> train -> candidate eval -> gate -> register
-> publish -> promote. Every stage is a task; they pass references, never models."""

from __future__ import annotations

from prefect import flow

from tasks.data import ingest
from tasks.deploy import promote, publish_adapter, register
from tasks.evaluation import build_task_benchmark, champion_scores, evaluate, gate
from tasks.job import CustomizationResult, base_model, finish_job, mark_failed, open_job
from tasks.training import train
from training.specs import CustomizationSpec


@flow(name="customize", on_failure=[mark_failed], on_crashed=[mark_failed])
def customize(spec: CustomizationSpec) -> CustomizationResult:
    """Fine-tune a base model on a dataset and promote the result only if it beats the base model
    on the task without forgetting general skills."""
    job = open_job(spec)  # config allows the method; MLflow run opened
    base = base_model(job)  # its tokenizer measures the examples
    data = ingest(job, base)  # every line validated before any training

    # The baseline: the base model with the very prompt the training will use.
    benchmark = build_task_benchmark(job, base, data)
    baseline = evaluate(job, base, benchmark, adapter_dir=None, stage="baseline")

    trained = train(job, base, data)
    candidate = evaluate(job, base, benchmark, adapter_dir=trained.adapter_dir, stage="candidate")

    champion = champion_scores(job, data)
    decision = gate(job, baseline, candidate, champion)

    # Register and publish every candidate; only a promoted one, fully published, becomes champion.
    version = register(job, base, data, trained, baseline, candidate, decision)
    published = publish_adapter(job, base, data, trained, version)
    version = promote(job, version, published, decision)
    return finish_job(job, data, trained, baseline, candidate, decision, version, published)
