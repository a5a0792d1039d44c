"""The pre-flight of a customization job: everything that can refuse a job, checked once before any
work starts.

``check`` finds the config and the training option the method needs, the promotion policy that
governs the job, the base model (for its tokenizer), then ingests the dataset with the job's method
and measures every example against the config's ``max_seq_length``; it adds the guidance warnings
and the cost estimate. The REST API (job creation), ``customizer check`` and the ``customize``
flow's first task (``check_job``) all call it, so a job is refused for the same reasons, with the
same words, whichever door it came in by; the flow's later tasks reuse what it measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, runtime, task
from prefect.client.orchestration import get_client
from pydantic import BaseModel

from core.catalog import CatalogError, CustomizationConfig, TrainingOption, get_config, parse_config_urn, usable_configs
from core.ids import prefixed_id
from core.settings import Settings, get_settings
from core.specs import CustomizationSpec, DataOptions, PromotionPolicy, Submission
from core.submission import admitted, namespaces_of, verified
from data.formats import METHOD_FORMATS
from data.ingest import DatasetError, IngestedDataset, ingest_dataset
from data.lengths import LengthCheck, Policy
from data.report import DataReport
from data.sources import SourceError, UrlKind, check_access, checked_files, local_path
from evaluation.climb import check_options
from evaluation.custom import EvaluationRequest, check_config
from evaluation.ladder import LadderRow, baseline_benchmarks, baseline_scores, free_rows
from evaluation.policy import PolicyLoosened, effective_policy
from training.base_model import BaseModelError, ResolvedModel, resolve_base_model
from training.guidance import Estimate, JobWarning, estimate, guidance

Refusal = Literal["config", "method", "dataset", "fit", "policy"]
ModelNeed = Literal["required", "if_available"]


class JobRefused(ValueError):
    """A job the pre-flight refuses. ``reason`` says which check refused it, so each front door
    answers in its own terms (the API: 404 for ``config``, 400 for ``method`` and ``dataset``, 422
    for ``fit`` and ``policy``); the message says what to fix, naming the field, or the file and line.

    Reasons: ``config`` no config has the URN; ``method`` the config does not allow the training
    method; ``dataset`` the dataset has errors of its own (bad lines, layout); ``fit`` the dataset is
    well formed but does not fit this job (records of a format the method does not read, examples
    longer than the config's max_seq_length under ``data.long_examples: error``); ``policy`` the job's
    own policy would loosen the operator's or the built-in one (a job may only tighten it).
    """

    def __init__(self, reason: Refusal, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # pickled across processes by the orchestrator: rebuild from the fields
        return (JobRefused, (self.reason, str(self)))


class CheckedJob(BaseModel):
    """What the pre-flight found; the flow's tasks read it instead of measuring again."""

    spec: CustomizationSpec
    config: CustomizationConfig
    option: TrainingOption
    policy: PromotionPolicy
    policy_source: str  # its layers, lowest first: "built-in default < <policy files> < job" (evaluation.policy)
    # None only when the caller let an unavailable model wait for the job's own pre-flight (the
    # API); the flow's check always resolves it.
    base: ResolvedModel | None
    dataset: IngestedDataset
    data_dir: str  # where ingest wrote the canonical splits and the report
    train_examples: int  # the training split, with the replay examples data.replay will mix in
    tokens_per_epoch: int | None  # None without a base model (no tokenizer to count with)
    warnings: list[JobWarning]
    estimate: Estimate | None  # None without a base model


def length_check(config: CustomizationConfig, model: ResolvedModel, policy: Policy) -> LengthCheck:
    """A length check with the base model's tokenizer, the config's max_seq_length and ``policy``."""
    # delayed: transformers is heavy (start-up time)
    from transformers import AutoTokenizer

    return LengthCheck(config, AutoTokenizer.from_pretrained(model.path), policy)


def check(spec: CustomizationSpec, settings: Settings, out_dir: Path, *, model: ModelNeed = "required") -> CheckedJob:
    """Check a job before any work starts: config and option, policy, base model, every example of
    its dataset (with its method and lengths), guidance and the cost estimate.

    Args:
        spec: the job.
        settings: the catalog, the policy folder, the model cache and the S3 endpoint.
        out_dir: where ingest writes the canonical splits and ``report.json`` / ``report.html``.
        model: ``required`` refuses a job whose base model cannot be had here; ``if_available``
            (the API, which may run where the weights are not) uses the model only if it is at hand
            without a download from the Hugging Face Hub, and otherwise accepts the job with a
            warning that its lengths and cost are checked when it runs.

    Returns:
        The checked job.

    Raises:
        JobRefused: the config, method, policy or dataset refuses the job (see its ``reason``).
        PolicyError: an operator's policy file (global or the namespace's) cannot be read.
        BaseModelError: the base model cannot be resolved (``model="required"``).
    """
    hp = spec.hyperparameters
    try:
        config = get_config(spec.config, settings)
    except CatalogError as exc:
        raise JobRefused("config", str(exc)) from exc
    try:
        option = config.option_for(hp.training_type, hp.finetuning_type)
        check_options(hp, config)  # every rung of its ladder, too
    except (CatalogError, ValueError) as exc:
        raise JobRefused("method", str(exc)) from exc
    try:
        policy, policy_source = effective_policy(spec, settings)
    except PolicyLoosened as exc:
        raise JobRefused("policy", str(exc)) from exc
    base, deferred = _base_model(config, settings, model)
    lengths = length_check(config, base, spec.data.long_examples) if base else None
    try:
        data = ingest_dataset(spec.dataset, out_dir, seed=hp.seed, lengths=lengths, method=hp.training_type, settings=settings)
    except DatasetError as exc:
        raise JobRefused(_refusal(exc, hp.training_type), str(exc)) from exc
    # Replay examples (data.replay) join the training split later; they count toward its size.
    examples = data.counts["training"] + round(spec.data.replay.ratio * data.counts["training"])
    tokens = _tokens_per_epoch(lengths, data, examples) if lengths else None
    cost = None
    if base is not None and tokens is not None:
        cost = estimate(hp, config, examples, tokens, _parameters(config, base), spec.budget.utilisation)
    return CheckedJob(
        spec=spec, config=config, option=option, policy=policy, policy_source=policy_source, base=base, dataset=data,
        data_dir=str(out_dir), train_examples=examples, tokens_per_epoch=tokens,
        warnings=guidance(hp, config, examples) + deferred, estimate=cost,
    )


def score_ladder(checked: CheckedJob, settings: Settings, out_dir: Path) -> list[LadderRow]:
    """Score the free rungs of a checked job on its base model, before any training: zero-shot, the
    candidate prompts, few-shot and retrieval few-shot, each judged on its lower bound against
    ``evaluation.target_score``. The baseline is scored as the job would score it (general benchmarks
    too) and cached, so the job that follows reuses it.

    Args:
        checked: the pre-flight's result, with its base model.
        settings: the model cache, the evaluation cache and the runtime settings.
        out_dir: where the benchmarks and per-sample outputs go.

    Returns:
        The ladder's free rows (``evaluation.ladder.free_rows``).

    Raises:
        BaseModelError: the job has no base model here to score.
    """
    # The REST API does not score inside a request (a model load, on a server that may not hold the
    # weights): there, a job with `evaluation.ladder_only` scores the free rungs on a worker instead.
    # delayed: transformers is heavy (start-up time)
    from transformers import AutoTokenizer

    if checked.base is None:
        raise BaseModelError(f"the base model of {checked.spec.config} is not at hand: the ladder cannot be scored")
    spec = checked.spec
    benchmarks = baseline_benchmarks(checked.dataset, checked.config, AutoTokenizer.from_pretrained(checked.base.path),
                                     spec.evaluation, out_dir / "benchmarks", spec.hyperparameters.grpo.rewards)
    scores, _ = baseline_scores(checked.base.path, checked.base.digest, benchmarks, spec.evaluation, out_dir / "baseline", settings)
    return free_rows(scores, spec.evaluation.target_score, checked.policy.forgetting_alpha)


def _base_model(config: CustomizationConfig, settings: Settings, need: ModelNeed) -> tuple[ResolvedModel | None, list[JobWarning]]:
    """The resolved base model (converted or downloaded once into the model cache), or, where the
    caller allows it, None and the warning that says what was left for the job's own pre-flight."""
    if need == "required":
        return resolve_base_model(config.target, settings), []
    try:
        # No download at this door: a model that is not here yet is fetched when the job runs.
        return resolve_base_model(config.target, settings.model_copy(update={"hub_offline": True})), []
    except BaseModelError as exc:
        return None, [JobWarning(
            message=f"base model {config.target.name} is not available here: example lengths not measured yet",
            explanation=f"{exc}. When the job runs, its pre-flight measures every example against max_seq_length "
                        f"{config.max_seq_length} and estimates the cost before anything is trained.",
        )]


def _refusal(exc: DatasetError, method: str) -> Refusal:
    """``fit`` when the dataset's problems include one of fit to this job (records the method does
    not read, examples over max_seq_length under the ``error`` policy), else ``dataset``."""
    report: DataReport | None = exc.report
    if report is None:
        return "dataset"
    readable = METHOD_FORMATS.get(method)
    wrong_format = readable is not None and any(s.format is not None and s.format not in readable for s in report.splits.values())
    too_long = report.lengths is not None and report.lengths.policy == "error" and any(
        stats.over_max_seq_length for split, stats in report.lengths.splits.items() if split != "testing"  # testing keeps long prompts
    )
    return "fit" if wrong_format or too_long else "dataset"


def _tokens_per_epoch(lengths: LengthCheck, data: IngestedDataset, examples: int) -> int | None:
    """Tokens one epoch trains on, from the lengths ingest measured (replay examples counted at the
    same mean). A preference pair is two sequences; ingest measured the longer, so twice it bounds
    the pair. A GRPO prompt is measured alone (the estimate adds what is generated)."""
    stats = lengths.report().splits.get("training")
    if stats is None:
        return None
    sequences = 2 if data.formats["training"] == "preference" else 1
    return round(stats.mean * examples * sequences)


def _parameters(config: CustomizationConfig, base: ResolvedModel) -> int:
    """The model's parameter count: the config's, else counted without allocating weights."""
    if config.target.num_parameters is not None:
        return config.target.num_parameters
    # delayed: torch and transformers are heavy (start-up time)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base.path)).parameters())


def job_folder(settings: Settings, flow_run_id: object | None = None) -> tuple[str, Path]:
    """The job's id (its flow run's, the id the API gives the job) and its work folder.

    Args:
        flow_run_id: the flow run; default: the one this code runs in (a new id outside a flow run).
    """
    run_id = flow_run_id if flow_run_id is not None else runtime.flow_run.id
    job_id = prefixed_id("cust", run_id) if run_id else prefixed_id("cust")
    return job_id, settings.jobs_dir / job_id


@task(name="check")
def check_job(spec: CustomizationSpec) -> CheckedJob:
    """Check who submitted the job and what it names, then run its pre-flight, the one its front door
    ran, into the job's work folder (the policy recomputed from its layers; the job's may only tighten it)."""
    settings = get_settings()
    check_origin(spec, settings)  # before anything is read
    checked = check(spec, settings, job_folder(settings)[1] / "data")
    logger = get_run_logger()
    for warning in checked.warnings:
        logger.warning("%s: %s", warning.message, warning.explanation)
    if checked.estimate is not None:
        logger.info("Estimate: %s", checked.estimate.describe())
    return checked


# --- where a run came from ------------------------------------------------------------------------
# A flow's parameters reach it through Prefect, whose API does not know the platform's callers: every
# flow checks at its start who submitted it (core.submission) and that everything it names lies in
# the submitter's namespaces and the allowed folders, as its front door checked when it was submitted.

# Copies the platform makes of a dataset (the API's snapshots, a retrain's): in its own state, so no
# caller may name them; a signed run may read them, and their source is checked as the run's lineage.
PLATFORM_COPIES = ("api/dataset-snapshots", "retrain/dataset-snapshots")


class AccessRefused(ValueError):
    """A run names something its submitter may not use; the message names the field and what to do."""


def check_namespace(namespace: str, what: str, namespaces: frozenset[str] | None) -> None:
    """Refuse ``namespace`` (of the field ``what``) outside ``namespaces`` (None: every namespace)."""
    if namespaces is not None and namespace not in namespaces:
        raise AccessRefused(f"`{what}` is in namespace {namespace!r}, which the submitter may not use "
                            f"(allowed: {', '.join(sorted(namespaces))}): submit it with a key of that namespace")


def check_read(url: str, what: str, settings: Settings, submission: Submission | None, namespaces: frozenset[str] | None,
               kind: UrlKind = "dataset") -> None:
    """Refuse a location a run would read (``data.sources.check_access``; below a local folder, every file
    where it really lies) that its submitter may not read.

    Not checked: what the operator's CLI submitted (the operator's own files on the server), and, for a
    signed run, a copy the platform made (``PLATFORM_COPIES``; the run's lineage, its source, is checked).

    Raises:
        AccessRefused: naming the field and why.
    """
    if submission is not None and (submission.door == "cli" or _platform_copy(url, settings)):
        return
    try:
        check_access(url, settings, namespaces, kind)
        path = local_path(url) if kind != "endpoint" else None
        if path is not None and path.exists():
            checked_files(path, settings, namespaces)
    except SourceError as exc:
        raise AccessRefused(f"`{what}` {url!r} is refused: {exc}") from exc


def _platform_copy(url: str, settings: Settings) -> bool:
    path = local_path(url)
    if path is None:
        return False
    resolved = path.expanduser().resolve()
    return any((settings.root / folder) in resolved.parents for folder in PLATFORM_COPIES)


def check_config_use(urn: str, what: str, settings: Settings, namespaces: frozenset[str] | None) -> None:
    """Refuse a config another namespace created (shipped and operator configs are everyone's).

    Raises:
        AccessRefused: naming the field, or that the URN is not one.
    """
    if namespaces is None:
        return
    try:
        namespace, name = parse_config_urn(urn)
    except CatalogError as exc:
        raise AccessRefused(f"`{what}`: {exc}") from exc
    if f"{namespace}/{name}" not in usable_configs(settings, namespaces):
        raise AccessRefused(f"`{what}` {urn!r} is not a config the submitter may use: name a shipped config or one of "
                            f"namespace {', '.join(sorted(namespaces))}")


def check_origin(spec: CustomizationSpec, settings: Settings) -> Submission | None:
    """Check a customize run before it reads anything: its submission's signature (required with
    authentication on), then its output model's and config's namespaces, its dataset, lineage and
    replay folder against the submitter's namespaces and the allowed folders.

    Returns:
        The submission (None: none, with authentication off).

    Raises:
        NotSubmitted: no valid signature where one is needed.
        AccessRefused: the run names what its submitter may not use.
    """
    submission = verified(spec, settings)
    namespaces = namespaces_of(submission)
    check_namespace(spec.output_model.partition("/")[0], "output_model", namespaces)
    check_config_use(spec.config, "config", settings, namespaces)
    check_read(spec.dataset, "dataset", settings, submission, namespaces)
    if spec.dataset_source:
        check_read(spec.dataset_source, "dataset_source", settings, submission, namespaces)
    if spec.data.replay.source != "self":
        check_read(spec.data.replay.source, "data.replay.source", settings, submission, namespaces)
    return submission


def ingest_parameters(dataset: str, config: str | None, data: DataOptions | None, seed: int) -> dict[str, Any]:
    """The ``ingest`` flow's parameters as its submission's signature covers them (``core.submission``, kind ``ingest``)."""
    return {"dataset": dataset, "config": config, "data": data.model_dump(mode="json") if data else None, "seed": seed}


@task(name="check-ingest")
def check_ingest(dataset: str, config: str | None, data: DataOptions | None, seed: int, submission: Submission | None) -> Submission | None:
    """Check an ingest run before it reads anything: its signature, its config, its dataset.

    Raises:
        NotSubmitted, AccessRefused: see ``check_origin``.
    """
    settings = get_settings()
    submission = admitted(settings, "ingest", ingest_parameters(dataset, config, data, seed), submission)
    namespaces = namespaces_of(submission)
    if config:
        check_config_use(config, "config", settings, namespaces)
    check_read(dataset, "dataset", settings, submission, namespaces)
    return submission


@task(name="check-evaluation")
def check_evaluation(request: EvaluationRequest) -> Submission | None:
    """Check an evaluate run before it reads anything: signature, config, the model's config, folder and
    endpoint, and every task's data file.

    Raises:
        NotSubmitted, AccessRefused: see ``check_origin``.
        ConfigProblem: the evaluation config cannot run.
    """
    settings = get_settings()
    submission = verified(request, settings)
    namespaces = namespaces_of(submission)
    check_config(request.config)
    model = request.model
    if model.config:
        check_config_use(model.config, "model.config", settings, namespaces)
    if model.model_uri:
        check_read(model.model_uri, "model.model_uri", settings, submission, namespaces, kind="model")
    if model.api_url:
        check_read(model.api_url, "model.api_url", settings, submission, namespaces, kind="endpoint")
    for name, path in sorted(request.data_files.items()):
        check_read(path, f"data_files.{name}", settings, submission, namespaces)
    return submission


@task(name="check-retrain")
def check_retrain(output_models: list[str] | None, submission: Submission | None) -> list[str] | None:
    """The namespaces a retrain run may retrain models of (None: every one), checked before it reads anything.

    A run that the deployment's schedule created (Prefect's scheduler marks it; no client can) needs
    no signature: each retrain is the champion's own job, on its submitter's behalf
    (``tasks.retrain.retrain_spec``). Any other run needs the platform's signature with authentication
    on, and may name only models of its submitter's namespaces.

    Raises:
        NotSubmitted, AccessRefused: see ``check_origin``.
    """
    if submission is None and _scheduled():
        return None
    submission = admitted(get_settings(), "retrain", {"output_models": output_models}, submission)
    namespaces = namespaces_of(submission)
    for output_model in output_models or []:
        check_namespace(output_model.partition("/")[0], "output_models", namespaces)
    return sorted(namespaces) if namespaces is not None else None


def _scheduled() -> bool:
    """Whether this flow run was created by its deployment's schedule."""
    if not runtime.flow_run.id:
        return False
    with get_client(sync_client=True) as client:
        return bool(client.read_flow_run(runtime.flow_run.id).auto_scheduled)

