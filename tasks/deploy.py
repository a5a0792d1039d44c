"""Registration, publication (after the serving check), promotion and the hand-off to serving as
tasks. Only store and registry I/O is retried, and only for transient errors.

Registration and promotion are written to the audit trail (``core.audit``) as the platform's own
acts for the job, and each time the version's ``customizer.audit`` tag is set to the job's trail so
far. A record that cannot be written fails the task with the reason."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, runtime, task

from core import __version__, audit, secrets, tracking
from core.objects import sha256_file
from core import tags as tag
from core.settings import Settings, get_settings
from data.ingest import IngestedDataset
from deploy import registry
from deploy.card import CardFacts, write_card
from deploy.mlflow_model import config_for, log_chat_model
from deploy.notify import notify
from deploy.registry import RegisteredVersion
from deploy.store import Published, VersionExists, publish, publishable_files, verify_published
from deploy.trust import UntrustedChampion, decision_message, decision_tags, files_digest, trusted_champion
from evaluation.gate import ApprovalRecord, Decision
from evaluation.runner import StageScores
from serving import handoff
from serving.compat import CompatError, check_serving
from tasks.approval import approval_tags
from tasks.job import Job
from training.base_model import ResolvedModel
from training.common import TrainResult
from training.replay import replay_tags

TRANSIENT = ("ConnectionError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "Throttling", "SlowDown")


def transient_io_error(task, task_run, state) -> bool:
    """Retry condition: only connection failures, timeouts and throttling are worth a retry."""
    try:
        state.result()
    except VersionExists:  # a published version never takes other bytes, however often it is asked
        return False
    except Exception as exc:  # noqa: BLE001 - inspecting the task's own failure
        chain = [exc, exc.__cause__, exc.__context__]
        return any(e is not None and any(t in type(e).__name__ or t in str(e) for t in TRANSIENT) for e in chain)
    return False


def _scores_tag(scores: StageScores) -> str:
    return json.dumps({"task": scores.task, "general": scores.general, "versions": scores.versions})


def _flow_run() -> str | None:
    """The Prefect flow run the task runs in (None when called outside a flow)."""
    run_id = runtime.flow_run.id
    return str(run_id) if run_id else None


def _tag_audit(settings: Settings, job: Job, version: str) -> None:
    """Set the version's audit tag to the job's trail so far (REST records of its flow run included)."""
    trail = audit.summary(audit.records(settings, job=job.job_id))
    registry.set_version_tags(settings, job.spec.output_model, version, {tag.AUDIT: trail})


def _artifact_digest(base: ResolvedModel, trained: TrainResult) -> str:
    """The digest of the trained files ``publish_adapter`` publishes (by the same rule); it signs the
    manifest's digest, model card included, once the card naming this version is published."""
    folder = Path(trained.output_dir)
    names = publishable_files(folder, Path(base.path) if trained.artifact == "adapter" else None)
    return files_digest({name: sha256_file(folder / name) for name in names})


@task(name="register", retries=2, retry_delay_seconds=2, retry_condition_fn=transient_io_error)
def register(
    job: Job,
    base: ResolvedModel,
    data: IngestedDataset,
    trained: TrainResult,
    baseline: StageScores,
    candidate: StageScores,
    decision: Decision,
    approvals: list[ApprovalRecord | None] | None = None,
) -> RegisteredVersion:
    """Log the output to the run as an MLflow Model (a pyfunc chat model carrying the trained folder)
    and register it as a model version with lineage tags (alias candidate)."""
    settings = get_settings()
    source = log_chat_model(
        settings, job.run_id, trained.output_dir, config_for(trained.artifact, job.config, base.path),
        job.spec.output_model, tags={tag.JOB_ID: job.job_id, tag.OUTPUT_MODEL: job.spec.output_model},
    )
    tags = {
        tag.JOB_ID: job.job_id,
        tag.DATASET_SHA256: data.sha256,
        tag.DATASET_URI: data.source,
        **replay_tags(data.replay),  # general examples mixed into training (data.replay), with their own digest
        tag.BASE_MODEL: job.config.target.name,
        tag.BASE_MODEL_DIGEST: base.digest,
        tag.CONFIG: job.spec.config,
        tag.TRAINING_TYPE: job.spec.hyperparameters.training_type,
        tag.FINETUNING_TYPE: job.spec.hyperparameters.finetuning_type,
        tag.HYPERPARAMETERS: job.spec.hyperparameters.model_dump_json(),
        # The whole job, so a retrain can repeat it on new data (sealed secrets stay with the job).
        tag.SPEC: job.spec.model_dump_json(exclude={"secrets"}),
        tag.SCORES_BASELINE: _scores_tag(baseline),
        tag.SCORES_CANDIDATE: _scores_tag(candidate),
        tag.TASK_METRIC: candidate.task_metric,
        tag.ARTIFACT: trained.artifact,
        tag.ARTIFACT_SHA256: _artifact_digest(base, trained),
        tag.STOP_REASON: trained.stop_reason,
        tag.DECISION: decision.action,
        tag.DECISION_REASONS: json.dumps(decision.reasons),
        tag.CODE_VERSION: __version__,
        tag.BENCHMARK_VERSIONS: json.dumps(candidate.versions),
        tag.POLICY: job.policy_source,
        **approval_tags(approvals or []),
    }
    flow_run = _flow_run()
    version = registry.register_version(
        settings, job.spec.output_model, source, job.run_id, tags, description=f"customize job {job.job_id}",
        principal=registry.PLATFORM, job=job.job_id, flow_run=flow_run,
    )
    # The decision, its approvals, the run and the files, signed: what makes the version trustable as champion.
    registry.set_version_tags(settings, job.spec.output_model, version.version,
                              decision_tags(settings, job.spec.output_model, version.version, job.run_id, tags))
    model = f"{job.spec.output_model}@{version.version}"
    # A re-run returns the version the job already registered: that registration is on record once.
    if not audit.records(settings, job=job.job_id, model=model, action="model.registered"):
        audit.record(
            settings, "model.registered", registry.PLATFORM, job=job.job_id, flow_run=flow_run, model=model,
            after={"registered_model": version.registered_model, "version": version.version, "run_id": job.run_id,
                   "decision": decision.action},
            detail=f"{model} registered from run {job.run_id} (gate: {decision.action})",
        )
    _tag_audit(settings, job, version.version)
    get_run_logger().info("Registered %s version %s (aliases: %s)", version.registered_model, version.version, version.aliases)
    return version


def _card(job: Job, trained: TrainResult, version: RegisteredVersion, hub_id: str, tags: dict[str, str]) -> CardFacts:
    """What the model card says: the version's lineage as the registry records it."""
    try:
        task_scores = json.loads(tags.get(tag.SCORES_CANDIDATE) or "{}").get("task") or {}
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{job.spec.output_model} v{version.version}: tag {tag.SCORES_CANDIDATE} is not a score record") from exc
    metric = tags.get(tag.TASK_METRIC) or ""
    score = task_scores.get(metric)
    return CardFacts(
        output_model=job.spec.output_model, version=version.version, base_model=hub_id, catalog_name=job.config.target.name,
        artifact=trained.artifact, finetuning_type=job.spec.hyperparameters.finetuning_type,
        training_type=job.spec.hyperparameters.training_type, job_id=job.job_id,
        dataset_sha256=tags.get(tag.DATASET_SHA256, ""), config=job.spec.config, run_id=job.run_id,
        registered_model=version.registered_model, decision=tags.get(tag.DECISION, ""), task_metric=metric,
        task_score=float(score) if isinstance(score, int | float) else None,
    )


def _sign_published_files(settings: Settings, job: Job, version: RegisteredVersion, tags: dict[str, str], published: Published) -> None:
    """Make the signed artifact digest that of the manifest: the card, written after registration
    (it names the version), is one of the published files. The decision signed at registration must
    still verify, so nothing changed in the registry since is signed over."""
    digest = files_digest({n: e.sha256 for n, e in published.manifest.files.items()})
    if tags.get(tag.ARTIFACT_SHA256) == digest:
        return
    message = decision_message(job.spec.output_model, version.version, job.run_id, tags)
    if not secrets.verify(settings, message, tags.get(tag.DECISION_SIGNATURE) or ""):
        raise ValueError(f"{job.spec.output_model} v{version.version}: its decision no longer matches the platform's "
                         "signature, so the published files' digest is not signed")
    new = {tag.ARTIFACT_SHA256: digest}
    new.update(decision_tags(settings, job.spec.output_model, version.version, job.run_id, {**tags, **new}))
    registry.set_version_tags(settings, job.spec.output_model, version.version, new)


@task(name="publish", retries=2, retry_delay_seconds=2, retry_condition_fn=transient_io_error)
def publish_adapter(job: Job, base: ResolvedModel, data: IngestedDataset, trained: TrainResult, version: RegisteredVersion) -> Published:
    """Check a serving engine would load the adapter, publish it with its model card and manifest,
    record the URI."""
    settings = get_settings()
    folder, base_dir = Path(trained.output_dir), Path(base.path)
    hub_id = job.config.target.adapter_base(str(base_dir))
    try:
        check = check_serving(folder, base_dir, job.config.target.name, settings.serving_allow_embedding_targets, hub_id)
    except CompatError as exc:  # nothing is published; the version says why
        registry.set_version_tags(settings, job.spec.output_model, version.version, {tag.SERVING_CHECK: f"failed: {exc}"[:5000]})
        raise
    get_run_logger().info("Serving check %s", check.summary())
    lineage = {
        "job_id": job.job_id,
        "config": job.spec.config,
        "dataset_sha256": data.sha256,
        "dataset_uri": data.source,
        "base_model_digest": base.digest,
        "base_model_hub_id": hub_id,
        "mlflow": {"registered_model": version.registered_model, "version": version.version, "run_id": job.run_id},
    }
    tags = dict(tracking.client(settings).get_model_version(version.registered_model, version.version).tags)
    card = write_card(folder, _card(job, trained, version, hub_id, tags))
    # Full weights carry their tokenizer (engines load the folder alone); an adapter only a changed one.
    try:
        published = publish(
            folder, [*publishable_files(folder, base_dir if trained.artifact == "adapter" else None), card],
            job.spec.output_model, version.version, job.config.target.name, lineage, settings,
        )
    except VersionExists as exc:  # the job fails with the reason; transient_io_error never retries it
        get_run_logger().error("Not published: %s", exc)
        raise
    _sign_published_files(settings, job, version, tags, published)
    registry.set_version_tags(
        settings, job.spec.output_model, version.version,
        {tag.PUBLISHED_URI: published.uri, tag.SERVING_CHECK: check.summary()},
    )
    tracking.client(settings).set_tag(job.run_id, tag.PUBLISHED_URI, published.uri)
    return published


def _record_promotion(settings: Settings, job: Job, version: str, previous: str | None, flow_run: str | None, decision: Decision) -> None:
    """Append ``model.promoted`` once per job and version. A retry finds the alias already moved, so
    the champion it replaced is taken from the job's own ``alias.moved`` record; a version that was
    champion before this job touched it was not promoted here."""
    model = f"{job.spec.output_model}@{version}"
    if audit.records(settings, job=job.job_id, model=model, action="model.promoted"):
        return
    moves = [r for r in audit.records(settings, job=job.job_id, model=model, action="alias.moved")
             if (r["after"] or {}).get("alias") == registry.CHAMPION]
    if previous == version and not moves:
        return
    before = moves[-1]["before"]["version"] if moves else previous
    audit.record(
        settings, "model.promoted", registry.PLATFORM, job=job.job_id, flow_run=flow_run, model=model,
        before={"champion": before}, after={"champion": version},
        detail=f"{model} is the champion (was {'v' + before if before else 'none'}; gate: {decision.action})",
    )


@task(name="promote", retries=2, retry_delay_seconds=2, retry_condition_fn=transient_io_error)
def promote(job: Job, version: RegisteredVersion, published: Published, decision: Decision) -> RegisteredVersion:
    """Move the ``champion`` alias to this version if the gate promoted it, once the store holds all
    of its files as the manifest lists them (a version is never champion without its artifacts)."""
    settings = get_settings()
    if decision.action != "promote":
        get_run_logger().info("Not promoted: %s stays candidate", version.version)
        return registry.describe(settings, job.spec.output_model, version.version)
    verify_published(job.spec.output_model, version.version, settings, expected=published.manifest)
    flow_run = _flow_run()
    previous = registry.champion_version(settings, job.spec.output_model)
    promoted = registry.promote(settings, job.spec.output_model, version.version,
                                principal=registry.PLATFORM, job=job.job_id, flow_run=flow_run)
    _record_promotion(settings, job, promoted.version, previous, flow_run, decision)
    _tag_audit(settings, job, promoted.version)
    get_run_logger().info("%s version %s is now the champion", promoted.registered_model, promoted.version)
    notify(settings, f"{job.spec.output_model} version {promoted.version} is the champion (job {job.job_id}), published at {published.uri}",
           namespace=job.spec.output_model.partition("/")[0])
    return promoted


@task(name="go-live")
def go_live(job: Job, version: RegisteredVersion, published: Published, artifact: str = "adapter") -> handoff.HandOff | None:
    """Load a promoted, published version into the configured serving endpoint (vLLM, NIM, serve-models).

    A failure does not fail the job (the adapter is published and promoted); it is recorded as a
    warning on the run and the version.
    """
    settings = get_settings()
    logger = get_run_logger()
    if not settings.serving_endpoint:
        return None
    if artifact != "adapter":  # full weights are a new model to deploy, not an adapter to hot-load
        logger.info("Version %s holds full weights: deploy %s as its own model; nothing is hot-loaded", version.version, published.uri)
        return None
    if registry.CHAMPION not in version.aliases:
        logger.info("Version %s was not promoted: not loaded into %s", version.version, settings.serving_endpoint)
        return None
    try:  # what goes live under the model's plain name is the champion the platform's signed decision allows
        champion = trusted_champion(settings, job.spec.output_model, purpose=f"go-live of job {job.job_id}")
    except UntrustedChampion as exc:
        logger.error("Not loaded into %s: %s", settings.serving_endpoint, exc)
        return None
    if champion is None or champion.version != version.version:
        logger.warning("Version %s is no longer the champion: not loaded into %s", version.version, settings.serving_endpoint)
        return None
    result = handoff.go_live(job.spec.output_model, version.version, published.uri, settings)
    tags = {tag.SERVING_ENDPOINT: result.endpoint, tag.SERVING_LIVE_AS: ", ".join(result.loaded)}
    if result.warning:
        tags[tag.SERVING_WARNING] = result.warning[:5000]
        logger.warning(result.warning)
    else:
        logger.info("Live on %s as %s", result.endpoint, ", ".join(result.loaded))
    registry.set_version_tags(settings, job.spec.output_model, version.version, tags)
    client = tracking.client(settings)
    for key, value in tags.items():
        client.set_tag(job.run_id, key, value)
    return result
