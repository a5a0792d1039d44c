"""Evaluation and the gate as tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from customizer.settings import get_settings
from deploy import registry, tracking
from evaluation.gate import Decision, decide
from evaluation.runner import StageScores, evaluate_model, task_benchmark
from tasks.job import Job
from training.base_model import ResolvedModel
from training.common import TrainResult
from training.data import IngestedDataset


@task(name="build-task-benchmark")
def build_task_benchmark(job: Job, base: ResolvedModel, data: IngestedDataset) -> dict[str, Any]:
    """Render the testing split with the training prompt into an lm-eval benchmark."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    return task_benchmark(
        data, job.config, tokenizer, job.spec.evaluation, Path(job.work_dir) / "benchmarks", job.spec.hyperparameters.grpo.rewards
    )


@task(name="evaluate", task_run_name="evaluate-{stage}")
def evaluate(job: Job, base: ResolvedModel, benchmark: dict[str, Any], trained: TrainResult | None, stage: str) -> StageScores:
    """Score the base model (baseline) or the trained model (candidate) on the task and general benchmarks."""
    settings = get_settings()
    model_dir, adapter_dir = base.path, None
    if trained is not None:
        model_dir, adapter_dir = (base.path, trained.output_dir) if trained.artifact == "adapter" else (trained.output_dir, None)
    scores = evaluate_model(model_dir, adapter_dir, benchmark, job.spec.evaluation, Path(job.work_dir) / "eval" / stage, settings)
    values = {f"{stage}.task.{k}": v for k, v in scores.task.items()} | {f"{stage}.general.{k}": v for k, v in scores.general.items()}
    tracking.log_metrics(settings, job.run_id, values)
    tracking.log_artifacts(settings, job.run_id, Path(job.work_dir) / "eval" / stage, f"eval/{stage}")
    get_run_logger().info("%s scores: task %s, general %s (%.0f s)", stage, scores.task, scores.general, scores.seconds)
    return scores


@task(name="champion-scores")
def champion_scores(job: Job, data: IngestedDataset) -> dict[str, dict[str, float]] | None:
    """The current champion's scores, when it was scored on the same testing data and benchmarks."""
    tags = registry.champion_tags(get_settings(), job.spec.output_model)
    if tags is None:
        return None
    if tags.get("customizer.dataset.sha256") != data.sha256:
        get_run_logger().info("The champion was scored on other data; it is not compared on scores")
        return None
    scores = json.loads(tags["customizer.scores.candidate"])
    return {"task": scores["task"], "general": scores["general"]}


@task(name="gate")
def gate(
    job: Job, baseline: StageScores, candidate: StageScores, champion: dict[str, dict[str, float]] | None, trained: TrainResult
) -> Decision:
    """Apply the promotion policy (a pure function) and record the decision on the run."""
    settings = get_settings()
    hp = job.spec.hyperparameters
    decision = decide(
        baseline.model_dump(include={"task", "general", "per_sample"}),
        candidate.model_dump(include={"task", "general", "per_sample"}),
        champion,
        job.spec.policy,
        candidate.task_metric,
        curves={"train_loss": trained.train_loss, "val_loss": trained.val_loss},
        method=(hp.training_type, hp.finetuning_type),
    )
    client = tracking.client(settings)
    client.set_tag(job.run_id, "customizer.decision", decision.action)
    tracking.log_dict(settings, job.run_id, decision.model_dump(), "decision.json")
    logger = get_run_logger()
    logger.info("Decision: %s", decision.action.upper())
    for reason in decision.reasons:
        logger.info("  %s", reason)
    return decision
