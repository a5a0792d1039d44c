"""Evaluation, the prompt baseline, the gate and the job report as tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact

from core import audit, tracking
from core import tags as tag
from core.catalog import get_config
from core.settings import get_settings
from data.ingest import IngestedDataset
from deploy import registry
from deploy.trust import trusted_champion
from evaluation.gate import Decision, Power, decide, plan_power
from evaluation.ladder import (
    LADDER_TAG,
    LadderRow,
    baseline_benchmarks,
    baseline_scores,
    free_rows,
    judged_rungs,
    ladder_dicts,
    ladder_json,
)
from evaluation.report import training_time, write_report
from evaluation.rungs import (
    PROMPT_RETRIEVAL,
    PROMPT_RUN_ID,
    PROMPT_RUNG,
    PROMPT_SCORE,
    PROMPT_SHOTS,
    RungResult,
    RungScore,
    registered_template,
    winner,
)
from evaluation.runner import StageScores, evaluate_model, observed_spreads
from tasks.artifacts import scores_table
from tasks.job import Job
from training.base_model import ResolvedModel, resolve_base_model
from training.common import TrainResult


@task(name="build-task-benchmark")
def build_task_benchmark(job: Job, base: ResolvedModel, data: IngestedDataset) -> dict[str, Any]:
    """Render the testing split with the training prompt into lm-eval benchmarks (zero- and few-shot),
    and with each free rung of the ladder (candidate prompts, retrieval-augmented few-shot)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    return baseline_benchmarks(data, job.config, tokenizer, job.spec.evaluation, Path(job.work_dir) / "benchmarks",
                               job.spec.hyperparameters.grpo.rewards)


def _log_scores(job: Job, stage: str, scores: StageScores, folder: Path) -> None:
    settings = get_settings()
    values = {f"{stage}.task.{k}": v for k, v in scores.task.items()} | {f"{stage}.general.{k}": v for k, v in scores.general.items()}
    values |= {f"{stage}.few_shot.{k}": v for k, v in scores.few_shot.items()}
    values |= {f"{stage}.rung.{r.benchmark}.{scores.task_metric}": r.score for r in scores.rungs}
    tracking.log_metrics(settings, job.run_id, values)
    tracking.log_artifacts(settings, job.run_id, folder, f"eval/{stage}")


@task(name="evaluate", task_run_name="evaluate-{stage}")
def evaluate(job: Job, base: ResolvedModel, benchmarks: dict[str, Any], trained: TrainResult | None, stage: str) -> StageScores:
    """Score the base model (baseline, with the few-shot prompt baseline) or the trained model
    (candidate) on the task and general benchmarks. Baselines are cached by model digest,
    benchmark contents and settings, so an unchanged base is not scored twice."""
    settings = get_settings()
    logger = get_run_logger()
    folder = Path(job.work_dir) / "eval" / stage
    plan = job.spec.evaluation
    if trained is None:
        scores, from_cache = baseline_scores(base.path, base.digest, benchmarks, plan, folder, settings)
        if from_cache:
            logger.info("baseline scores from the cache (same base model, benchmarks and settings): task %s", scores.task)
            _log_scores(job, stage, scores, folder)
            return scores
    else:
        model_dir, adapter_dir = (base.path, trained.output_dir) if trained.artifact == "adapter" else (trained.output_dir, None)
        scores = evaluate_model(model_dir, adapter_dir, benchmarks["task"], plan, folder, settings)
    _log_scores(job, stage, scores, folder)
    logger.info("%s scores: task %s%s, general %s (%.0f s)", stage, scores.task,
                f", few-shot {scores.few_shot}" if scores.few_shot else "", scores.general, scores.seconds)
    return scores


@task(name="prompt-baseline")
def check_prompt_baseline(job: Job, baseline: StageScores) -> str | None:
    """Whether prompting alone already reaches the job's target (then no fine-tuning is needed): each
    free rung (zero-shot, candidate prompts, few-shot, retrieval few-shot) judged on the lower bound of
    its score. The ladder's free rows are kept on the run (the API's status shows them); the winning
    rung's prompt is kept in the prompt registry."""
    plan = job.spec.evaluation
    settings = get_settings()
    alpha = job.policy.forgetting_alpha
    tracking.client(settings).set_tag(job.run_id, LADDER_TAG, ladder_json(free_rows(baseline, plan.target_score, alpha)))
    if plan.target_score is None:
        return None
    logger = get_run_logger()
    coverage = f"{100 * (1 - 2 * alpha):.0f}% CI"
    pairs = judged_rungs(baseline, plan.target_score, alpha)
    for _, rung in pairs:
        logger.info("Free rung: %s", rung.describe(coverage))
    if pairs:
        tracking.log_dict(settings, job.run_id, [judged.model_dump() for _, judged in pairs], "rungs.json")
    kept = winner([r for r, _ in pairs], [j for _, j in pairs])
    if kept is None:
        return None
    best = kept[1]
    enough = f"{best.label} reaches {best.metric} {best.score:.1f}, lower bound {best.ci_low:.1f} >= target {best.target:.1f}"
    if plan.force_training:
        logger.info("%s, but the job forces training", enough)
        return None
    logger.info("No fine-tuning needed: %s", enough)
    name, version = _keep_prompt(job, *kept)
    logger.info("The prompt is kept in the prompt registry as %s version %s", name, version)
    enough += f"; prompt registered as {name} version {version}"
    tracking.client(settings).set_tag(job.run_id, tag.DECISION, "no fine-tuning needed")
    return enough


def _keep_prompt(job: Job, rung: RungResult, judged: RungScore) -> tuple[str, int]:
    """Register the winning rung's prompt in MLflow's prompt registry, named in the job's namespace,
    with the job's lineage (job, run, dataset, base model, rung, score) as tags, and how its examples
    were chosen (few-shot, retrieval)."""
    settings = get_settings()
    client = tracking.client(settings)
    lineage = client.get_run(job.run_id).data.tags
    missing = [k for k in (tag.DATASET_SHA256, tag.DATASET_URI, tag.BASE_MODEL) if k not in lineage]
    if missing:  # fail closed: a prompt is not kept without the lineage that says where it came from
        raise RuntimeError(f"the job's run {job.run_id} lacks the lineage tags {', '.join(missing)}; not registering its prompt")
    tags = {
        tag.JOB_ID: job.job_id, PROMPT_RUN_ID: job.run_id, tag.OUTPUT_MODEL: job.spec.output_model, tag.CONFIG: job.spec.config,
        tag.DATASET_SHA256: lineage[tag.DATASET_SHA256], tag.DATASET_URI: lineage[tag.DATASET_URI],
        tag.BASE_MODEL: lineage[tag.BASE_MODEL], PROMPT_RUNG: rung.label, tag.TASK_METRIC: judged.metric,
        PROMPT_SCORE: json.dumps({"score": judged.score, "ci": [judged.ci_low, judged.ci_high], "items": judged.items,
                                  "target": judged.target}),
    } | ({tag.BASE_MODEL_DIGEST: lineage[tag.BASE_MODEL_DIGEST]} if tag.BASE_MODEL_DIGEST in lineage else {})
    if rung.retrieval:
        tags[PROMPT_RETRIEVAL] = json.dumps(rung.retrieval, sort_keys=True)
    if rung.shots:
        tags[PROMPT_SHOTS] = json.dumps(rung.shots, sort_keys=True)
    name = registry.registered_name(job.spec.output_model) + "-prompt"
    version = client.register_prompt(name=name, template=registered_template(rung), tags=tags,
                                     commit_message=f"{rung.label}: {judged.describe(f'{100 * (1 - 2 * job.policy.forgetting_alpha):.0f}% CI')}"[:500])
    return name, int(version.version)


@task(name="plan-power")
def power(job: Job, baseline: StageScores) -> list[Power]:
    """Before any training: which drops each general benchmark (and their pool) can rule out, so a
    job learns whether the gate will be able to decide before it spends the compute."""
    rows = plan_power(baseline.gate_scores(), baseline.counts, job.policy, observed_spreads(job.spec.evaluation.general_benchmarks))
    logger = get_run_logger()
    for row in rows:
        (logger.info if row.can_decide else logger.warning)("Power, %s: %s", row.benchmark, row.describe())
    summary = [row.model_dump() | {"can_decide": row.can_decide, "describe": row.describe()} for row in rows]
    settings = get_settings()
    tracking.client(settings).set_tag(job.run_id, tag.POWER, json.dumps(summary))
    tracking.log_dict(settings, job.run_id, summary, "power.json")
    return rows


@task(name="champion-scores")
def champion_scores(
    job: Job, base: ResolvedModel, benchmarks: dict[str, Any], data: IngestedDataset
) -> dict[str, dict[str, float]] | None:
    """The current champion's scores on this job's testing data: from its tags when it was scored on
    the same data, else scored again here on the job's benchmarks, so a candidate is never promoted
    over a champion it did not beat on the same items.

    Raises:
        deploy.trust.UntrustedChampion: the champion alias points at a version whose signed decision
            does not allow it: the bar is neither lowered nor raised by a version nobody promoted.
    """
    settings = get_settings()
    champion = trusted_champion(settings, job.spec.output_model, purpose=f"gate of job {job.job_id}")
    if champion is None:
        return None
    version, tags = champion.version, champion.tags
    if tags.get(tag.DATASET_SHA256) == data.sha256:
        scores = json.loads(tags[tag.SCORES_CANDIDATE])
        return {"task": scores["task"], "general": scores["general"]}
    logger = get_run_logger()
    logger.info("The champion (version %s) was scored on other data: scoring it on this job's benchmarks", version)
    folder = Path(job.work_dir) / "eval" / "champion"
    local = registry.download_version(settings, job.spec.output_model, version, Path(job.work_dir) / "champion")
    if tags.get(tag.ARTIFACT, "adapter") == "adapter":
        # An adapter applies to the base of the config it was trained with.
        champion_base = base.path if tags.get(tag.CONFIG) == job.spec.config else resolve_base_model(
            get_config(tags[tag.CONFIG], settings).target, settings).path
        model_dir, adapter_dir = champion_base, local
    else:
        model_dir, adapter_dir = local, None
    scores = evaluate_model(model_dir, adapter_dir, benchmarks["task"], job.spec.evaluation, folder, settings)
    _log_scores(job, "champion", scores, folder)
    logger.info("champion scores: task %s, general %s", scores.task, scores.general)
    return {"task": scores.task, "general": scores.general}


def _one_line(decision: Decision, limit: int = 400) -> str:
    """The decision and its reasons on one line, for the audit trail's summary."""
    text = " ".join(f"{decision.action}: {'; '.join(decision.reasons) or 'no reasons given'}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@task(name="gate")
def gate(
    job: Job, baseline: StageScores, candidate: StageScores, champion: dict[str, dict[str, float]] | None, trained: TrainResult
) -> Decision:
    """Apply the promotion policy (a pure function) and record the decision in the audit trail
    (first: a decision that cannot be kept on record fails the job) and on the run."""
    settings = get_settings()
    hp = job.spec.hyperparameters
    decision = decide(
        baseline.gate_scores(),
        candidate.gate_scores(),
        champion,
        job.policy,
        candidate.task_metric,
        curves={"train_loss": trained.train_loss, "val_loss": trained.val_loss},
        method=(hp.training_type, hp.finetuning_type),
    )
    flow_run = runtime.flow_run.id
    audit.record(
        settings, "gate.decided", registry.PLATFORM, job=job.job_id, flow_run=str(flow_run) if flow_run else None,
        model=job.spec.output_model, after=decision, detail=_one_line(decision),
    )
    client = tracking.client(settings)
    client.set_tag(job.run_id, tag.DECISION, decision.action)
    client.set_tag(job.run_id, tag.FORGETTING, json.dumps([
        {"benchmark": d.benchmark, "measure": d.measure, "items": d.items, "delta": d.delta, "ci": [d.ci_low, d.ci_high],
         "bound": d.bound, "limit": d.limit, "verdict": d.verdict} for d in decision.deltas
    ]))
    tracking.log_dict(settings, job.run_id, decision.model_dump(), "decision.json")
    logger = get_run_logger()
    logger.info("Decision: %s", decision.action.upper())
    for reason in decision.reasons:
        logger.info("  %s", reason)
    return decision


@task(name="report")
def report(
    job: Job,
    data: IngestedDataset,
    baseline: StageScores,
    candidate: StageScores,
    champion: dict[str, dict[str, float]] | None,
    decision: Decision,
    trained: TrainResult,
    estimate: str,
    evidence: list[Power] | None = None,
    ladder: list[LadderRow] | None = None,
) -> str:
    """Write the job's HTML report with its charts and its ladder (``ladder``: every rung tried; the
    baseline's free rungs when not given), log it to MLflow and link it from the Prefect run."""
    settings = get_settings()
    hp = job.spec.hyperparameters
    folder = Path(job.work_dir) / "report"
    files = write_report(
        folder,
        title=f"{job.job_id}: {job.spec.output_model}",
        summary={
            "config": job.spec.config, "dataset": data.source, "dataset sha256": data.sha256, "examples": data.counts,
            "method": f"{hp.training_type}/{hp.finetuning_type}", "hyperparameters": hp.model_dump(),
            "stopped": trained.stop_reason, "estimate": estimate,
            "training time": training_time(tracking.client(settings).get_run(job.run_id).data.metrics) or "not recorded",
            "policy": job.policy_source,
            "power": [{"benchmark": p.benchmark, "items": p.items, "describe": p.describe()} for p in evidence or []],
        },
        baseline=baseline.gate_scores(), candidate=candidate.gate_scores(), champion=champion,
        counts=candidate.counts, task_metric=candidate.task_metric, decision=decision,
        train_loss=trained.train_loss, val_loss=trained.val_loss,
        ladder=ladder_dicts(ladder if ladder is not None else free_rows(baseline, job.spec.evaluation.target_score,
                                                                          job.policy.forgetting_alpha)),
    )
    uri = tracking.log_artifacts(settings, job.run_id, folder, "report")
    scores_table(job.job_id, score_rows(baseline, candidate, decision), f"scores and decision of {job.spec.output_model}")
    create_markdown_artifact(
        key=f"report-{job.job_id.lower().replace('_', '-')}"[:64],
        markdown=(
            f"## {job.job_id}: {decision.action.upper()}\n\n"
            + "\n".join(f"- {r}" for r in decision.reasons)
            + f"\n\nReport (HTML with charts): `{uri}/report.html` (MLflow run `{job.run_id}`), also at `{files['html']}`"
        ),
        description=f"customize report for {job.spec.output_model}",
    )
    return f"{uri}/report.html"


def score_rows(baseline: StageScores, candidate: StageScores, decision: Decision) -> list[dict[str, Any]]:
    """One row per score (points, 0-100; bits per byte as is) with the gate's verdict where it judged
    one, then the decision with its reasons: the table the Prefect UI shows for the job."""
    verdicts = {d.benchmark: d.verdict for d in decision.deltas}
    rows = []
    for kind, names in (("task", baseline.task), ("general", baseline.general)):
        for name in names:
            scale = 1.0 if baseline.measures.get(name) == "bits_per_byte" else 100.0
            before, after = scale * getattr(baseline, kind)[name], scale * getattr(candidate, kind)[name]
            verdict = (decision.task.verdict if decision.task and name == candidate.task_metric else "") if kind == "task" else verdicts.get(name, "")
            rows.append({"score": f"{kind} {name}", "baseline": round(before, 3), "candidate": round(after, 3),
                         "delta": round(after - before, 3), "verdict": verdict})
    rows.append({"score": "decision", "baseline": None, "candidate": None, "delta": None,
                 "verdict": f"{decision.action}: " + "; ".join(decision.reasons)})
    return rows
