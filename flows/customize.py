"""The ``customize`` flow: ingest -> baseline eval -> train -> candidate eval -> gate -> register
-> publish -> promote. Every stage is a task; they pass references, never models."""

from __future__ import annotations

from prefect import flow

from tasks.data import ingest
from tasks.deploy import promote, publish_adapter, register
from tasks.evaluation import build_task_benchmark, champion_scores, evaluate, gate
from tasks.job import CustomizationResult, base_model, finish_job, mark_failed, open_job
from tasks.training import plan_training, train
from training.specs import CustomizationSpec


@flow(name="customize", on_failure=[mark_failed], on_crashed=[mark_failed])
def customize(spec: CustomizationSpec) -> CustomizationResult:
    """Fine-tune a base model (SFT, DPO or GRPO) and promote the result only if it beats the base
    model on the task without forgetting general skills."""
    job = open_job(spec)  # config allows the method; MLflow run opened
    data = ingest(job)  # every line validated before any training
    base = base_model(job)

    # The baseline: the base model with the very prompt the training will use.
    benchmark = build_task_benchmark(job, base, data)
    baseline = evaluate(job, base, benchmark, trained=None, stage="baseline")

    plan = plan_training(job, base, data)  # warnings, cost estimate; refuses a job over its budget
    trained = train(job, base, data)
    candidate = evaluate(job, base, benchmark, trained=trained, stage="candidate")

    champion = champion_scores(job, data)
    decision = gate(job, baseline, candidate, champion, trained)

    # Register and publish every candidate; only a promoted one, fully published, becomes champion.
    version = register(job, base, data, trained, baseline, candidate, decision)
    published = publish_adapter(job, base, data, trained, version)
    version = promote(job, version, published, decision)
    return finish_job(job, data, trained, baseline, candidate, decision, version, published, [w.message for w in plan.warnings])
