"""The ``customize`` flow: check -> ingest -> baseline (zero- and few-shot) -> [approval] -> train ->
candidate eval (-> [approval] -> the next training rung, while the target is missed) -> gate -> [approval]
-> register -> publish -> promote -> go live -> report. Every stage is a task; they pass references,
never models."""

from __future__ import annotations

from prefect import flow

from core.specs import CustomizationSpec
from tasks.approval import approve_promotion
from tasks.check import check_job
from tasks.data import ingest
from tasks.deploy import go_live, promote, publish_adapter, register
from tasks.evaluation import (
    build_task_benchmark,
    champion_scores,
    check_prompt_baseline,
    evaluate,
    gate,
    power,
    report,
)
from tasks.job import (
    CustomizationResult,
    cancelled_before_start,
    finish_job,
    mark_failed,
    open_job,
    record_process,
)
from tasks.ladder import climb
from tasks.training import plan_training


# Results persist so a run resumed after an approval (or after losing its worker) reuses every task
# that completed instead of running it again: Prefect's default cache key holds the flow run id.
@flow(name="customize", on_running=[record_process], on_failure=[mark_failed], on_crashed=[mark_failed], persist_result=True)
def customize(spec: CustomizationSpec) -> CustomizationResult:
    """Fine-tune a base model (SFT, DPO or GRPO) and promote the result only if it beats the base
    model on the task without forgetting general skills."""
    if cancelled := cancelled_before_start():  # a job cancelled before it started stays cancelled
        return cancelled
    # Who submitted it and what it names (its signature, namespaces, folders), then the pre-flight
    # every front door runs: config and method, policy (recomputed), base model, every example, cost.
    checked = check_job(spec)
    job = open_job(checked)  # work folder and MLflow run
    base = checked.base  # resolved by the check: its tokenizer measured the examples
    data = ingest(job, checked)  # the checked dataset on the run, replay examples mixed in

    # The baseline: the base model with the very prompt the training will use (and with examples).
    benchmarks = build_task_benchmark(job, base, data)
    baseline = evaluate(job, base, benchmarks, trained=None, stage="baseline")
    if enough := check_prompt_baseline(job, baseline):
        return finish_job(job, data, baseline, prompt_baseline=enough)
    if spec.evaluation.ladder_only:  # advice asked for before committing to training: the free rungs' table
        return finish_job(job, data, baseline, advice=True)

    evidence = power(job, baseline)  # which drops the general suite can rule out, known before training
    plan = plan_training(job, checked)  # warnings, cost estimate of each rung; refuses a job over its budget
    # Train the job's method; while a candidate misses the target, the next rung of its ladder, within
    # the budget. Reviewed methods wait for a person first, rung by rung.
    climbed = climb(job, base, data, benchmarks, baseline, plan)
    chosen = climbed.chosen  # the rung that met the target, else the last one tried: the gate judges it
    job, trained, candidate = chosen.job, chosen.trained, chosen.candidate  # from here on, the job as that rung trained it

    champion = champion_scores(job, base, benchmarks, data)  # scored on this data if it was not yet
    decision, approved_promotion = approve_promotion(job, gate(job, baseline, candidate, champion, trained))
    ladder = climbed.rows(baseline, decision)  # every rung tried, cheapest first: the free ones, then the training rungs

    # Register and publish every candidate; only a promoted one, fully published, becomes champion.
    approvals = [*climbed.approvals, approved_promotion]  # the training approvals of every rung tried, then promotion's
    version = register(job, base, data, trained, baseline, candidate, decision, approvals)
    published = publish_adapter(job, base, data, trained, version)
    version = promote(job, version, published, decision)
    go_live(job, version, published, trained.artifact)  # a promoted adapter is live on the serving endpoint, if one is set
    page = report(job, data, baseline, candidate, champion, decision, trained, chosen.estimate.describe(), evidence, ladder)
    return finish_job(
        job, data, baseline, trained, candidate, decision, version, published,
        [w.message for w in plan.warnings], approvals, report=page, power=evidence, ladder=ladder, climb=climbed.outcome,
    )
