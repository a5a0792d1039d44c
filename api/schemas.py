"""The wire format: NeMo Customizer, Entity Store, Data Store and Evaluator request and response
bodies, in families ``XCreate`` (request), ``XUpdate`` (PATCH), ``XPublic`` (one) and ``XsPublic``
(a page). Field names are NeMo's; hyperparameters are customizer's own ``Hyperparameters``, whose
names already are NeMo's.

Requests forbid unknown fields (a typo is a 422 naming it), except where NeMo clients send optional
extras, and are ``api.bounds.Bounded``: every number finite and in range, every text valid Unicode
without NUL, free-form objects included. Responses allow extra fields: they echo what was stored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from api.bounds import Bounded, Positive
from core.specs import Budget, EvaluationPlan, Hyperparameters, PromotionPolicy

JobStatus = Literal["created", "pending", "running", "cancelling", "cancelled", "failed", "completed", "ready", "unknown"]
Precision = Literal["int8", "bf16", "fp16", "fp32", "fp8-mixed", "bf16-mixed", "auto"]  # auto: a customizer extension
DEFAULT_NAMESPACE = "default"

# NeMo hyperparameters customizer does not implement: accepted, ignored, and reported as job warnings.
IGNORED_HYPERPARAMETERS = {
    "optimizer": "customizer trains with AdamW and a cosine schedule",
    "sft": "hidden and attention dropout are the base model's",
    "distillation": "distillation is not a customizer training type",
    "adam_beta1": "AdamW's default betas are used",
    "adam_beta2": "AdamW's default betas are used",
}
IGNORED_DPO = {"preference_average_log_probs", "sft_average_log_probs"}

# ASCII only, starting with a letter or digit: no control or format (bidi, zero-width) characters, and
# never the Data Store's reserved names (its temporary files start with ".tmp-").
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+:-]{0,254}$"
MAX_PARAMETERS = 10**15  # a model's parameter count: above 2^31 for most models, far below 2^63


class Wire(Bounded):
    """A request body: unknown fields are an error that names them."""

    model_config = ConfigDict(extra="forbid")


class Echo(BaseModel):
    """A response body: what was stored, extra fields included."""

    model_config = ConfigDict(extra="allow")


class Ownership(Bounded):
    model_config = ConfigDict(extra="allow")

    created_by: str | None = None
    updated_by: str | None = None
    access_policies: dict[str, str] | None = None


class Pagination(BaseModel):
    page: int
    page_size: int
    current_page_size: int
    total_pages: int
    total_results: int


class Page(BaseModel):
    """The list envelope every list endpoint returns."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    sort: str | None = None
    filter: dict[str, Any] | None = None
    pagination: Pagination


class DeleteResponse(BaseModel):
    id: str | None = None
    deleted_at: str | None = None
    message: str | None = None


# ---------------------------------------------------------------- Entity Store


class EntityFields(Wire):
    """Fields every entity accepts."""

    description: str | None = Field(default=None, max_length=4096)
    project: str | None = Field(default=None, max_length=512)
    custom_fields: dict[str, Any] | None = None
    ownership: Ownership | None = None


class NamespaceCreate(EntityFields):
    id: str = Field(pattern=_NAME_PATTERN, description="The namespace's name (namespaces use it as their id).")


class NamespaceUpdate(EntityFields):
    pass


class ProjectCreate(EntityFields):
    name: str = Field(pattern=_NAME_PATTERN)
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=_NAME_PATTERN)


class ProjectUpdate(EntityFields):
    pass


class DatasetCreate(EntityFields):
    files_url: str = Field(
        min_length=1, max_length=2048,
        description="hf://datasets/<namespace>/<name> (the Data Store), s3://bucket/prefix, or file:///folder.",
    )
    name: str | None = Field(default=None, pattern=_NAME_PATTERN)
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=_NAME_PATTERN)
    format: str | None = None
    hf_endpoint: str | None = None
    limit: Positive | None = None
    split: str | None = None


class DatasetUpdate(EntityFields):
    files_url: str | None = Field(default=None, min_length=1, max_length=2048)
    format: str | None = None
    hf_endpoint: str | None = None
    limit: Positive | None = None
    split: str | None = None


class ModelArtifact(Bounded):
    model_config = ConfigDict(extra="allow")

    files_url: str
    status: Literal["created", "upload_failed", "upload_completed"] = "created"
    backend_engine: str | None = None
    gpu_arch: str | None = None
    precision: str | None = None
    tensor_parallelism: Positive | None = None


class ApiEndpoint(Bounded):
    model_config = ConfigDict(extra="allow")

    url: str
    model_id: str
    api_key: str | None = None
    format: Literal["nim", "openai", "lama_stack"] | None = None


class ModelCreate(EntityFields):
    name: str = Field(pattern=_NAME_PATTERN)
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=_NAME_PATTERN)
    base_model: str | dict[str, Any] | None = None
    peft: dict[str, Any] | None = None
    artifact: ModelArtifact | None = None
    spec: dict[str, Any] | None = None
    api_endpoint: ApiEndpoint | None = None
    prompt: dict[str, Any] | None = None
    guardrails: dict[str, Any] | None = None
    model_providers: list[str] | None = None
    schema_version: str | None = None


class ModelUpdate(EntityFields):
    base_model: str | dict[str, Any] | None = None
    peft: dict[str, Any] | None = None
    artifact: ModelArtifact | None = None
    spec: dict[str, Any] | None = None
    api_endpoint: ApiEndpoint | None = None
    prompt: dict[str, Any] | None = None
    guardrails: dict[str, Any] | None = None
    model_providers: list[str] | None = None
    schema_version: str | None = None


# ---------------------------------------------------------------- Customizer


class TrainingOption(Bounded):
    """NeMo's training option; parallelism fields customizer does not use are kept and echoed."""

    model_config = ConfigDict(extra="forbid")

    training_type: Literal["sft", "dpo", "grpo"]
    finetuning_type: Literal["lora", "lora_merged", "all_weights"]
    num_gpus: int = Field(ge=0, le=1024)
    micro_batch_size: int = Field(default=1, ge=1, le=4096)
    num_nodes: int = Field(default=1, ge=1, le=1024)
    tensor_parallel_size: int = Field(default=1, ge=1, le=1024)
    pipeline_parallel_size: int | None = Field(default=None, ge=1, le=1024)
    data_parallel_size: int | None = Field(default=None, ge=1, le=65536)
    expert_model_parallel_size: int | None = Field(default=None, ge=1, le=1024)
    use_sequence_parallel: bool | None = None


class TrainingOptionKey(Wire):
    training_type: Literal["sft", "dpo", "grpo"]
    finetuning_type: Literal["lora", "lora_merged", "all_weights"]


class TargetCreate(EntityFields):
    name: str | None = Field(default=None, pattern=_NAME_PATTERN)
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=_NAME_PATTERN)
    num_parameters: int = Field(ge=1, le=MAX_PARAMETERS)
    precision: Precision
    base_model: str | None = Field(default=None, max_length=512, description="Model name as served; default namespace/name.")
    enabled: bool = True
    model_uri: str | None = Field(
        default=None, max_length=2048,
        description="Where the weights come from: a Hugging Face repo id (hf://org/model), s3://..., a local folder, "
        "pkg://... or builtin://tiny-llama.",
    )
    model_path: str | None = Field(default=None, max_length=2048)
    hf_endpoint: str | None = None
    tokenizer: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _named(self) -> TargetCreate:
        if not self.name:
            raise ValueError("`name` is required, e.g. llama-3.2-1b-instruct@2.0")
        if not (self.model_uri or self.model_path):
            raise ValueError("`model_uri` (or `model_path`) is required: where the base model's weights come from")
        return self


class TargetUpdate(EntityFields):
    num_parameters: int | None = Field(default=None, ge=1, le=MAX_PARAMETERS)
    precision: Precision | None = None
    base_model: str | None = Field(default=None, max_length=512)
    enabled: bool | None = None
    model_uri: str | None = Field(default=None, max_length=2048)
    model_path: str | None = Field(default=None, max_length=2048)
    hf_endpoint: str | None = None
    tokenizer: dict[str, Any] | None = None


class ConfigCreate(EntityFields):
    name: str = Field(pattern=_NAME_PATTERN, description="Name with its version, e.g. my-config@v1.")
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=_NAME_PATTERN)
    target: str | TargetCreate = Field(description="A customization target URN namespace/name, or a target object.")
    max_seq_length: int = Field(ge=16, le=1_048_576)
    training_options: list[TrainingOption] = Field(min_length=1, max_length=64)
    prompt_template: str | None = Field(default=None, max_length=65536)
    chat_prompt_template: str | None = Field(default=None, max_length=65536)
    training_precision: Precision | None = None
    dataset_schemas: list[dict[str, Any]] | None = None
    pod_spec: dict[str, Any] | None = None


class ConfigUpdate(EntityFields):
    max_seq_length: int | None = Field(default=None, ge=16, le=1_048_576)
    training_options: list[TrainingOption] | None = Field(default=None, max_length=64)
    add_training_options: list[TrainingOption] | None = Field(default=None, max_length=64)
    remove_training_options: list[TrainingOptionKey] | None = Field(default=None, max_length=64)
    prompt_template: str | None = Field(default=None, max_length=65536)
    chat_prompt_template: str | None = Field(default=None, max_length=65536)
    training_precision: Precision | None = None
    dataset_schemas: list[dict[str, Any]] | None = None
    pod_spec: dict[str, Any] | None = None
    namespace: str | None = Field(default=None, pattern=_NAME_PATTERN)
    name: str | None = Field(default=None, pattern=_NAME_PATTERN)


class DatasetRef(Bounded):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME_PATTERN)
    namespace: str | None = Field(default=None, pattern=_NAME_PATTERN)
    files_url: str | None = None


class JobCreate(EntityFields):
    """``POST /v1/customization/jobs``: NeMo's ``JobCreateParams``."""

    config: str = Field(
        min_length=1, max_length=512,
        description="Config URN namespace/name@version, e.g. meta/llama-3.2-1b-instruct@v1.0.0+A100.",
    )
    dataset: str | DatasetRef = Field(description='An Entity Store dataset: "namespace/name" or {name, namespace}.')
    hyperparameters: Hyperparameters
    output_model: str | None = Field(
        default=None, max_length=512,
        description="namespace/name; stored as namespace/name@<job id>. Default: <job namespace>/<config name without "
        "its version>-<dataset name>-<method>, e.g. default/llama-3.2-1b-instruct-email-assist-dataset-lora@cust-...",
    )
    name: str | None = Field(default=None, pattern=_NAME_PATTERN)
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=_NAME_PATTERN)
    dataset_parameters: dict[str, Any] | None = None
    integrations: list[dict[str, Any]] | None = None
    # Customizer extensions: not NeMo's fields (NeMo's SDK sends them with extra_body={...}).
    evaluation: EvaluationPlan | None = Field(
        default=None,
        description="customizer extension: what baseline and candidate are scored on (task metric, general benchmarks, "
        "few-shot examples) and `target_score`, the task score at which prompting the base model is good enough and "
        "nothing is trained. Default: the platform's plan.",
    )
    budget: Budget | None = Field(
        default=None,
        description="customizer extension: `max_device_hours`, the ceiling on the job's estimated training cost; a job "
        "estimated above it is refused before training. Default: no ceiling.",
    )
    policy: PromotionPolicy | None = Field(
        default=None,
        description="customizer extension: the job's promotion policy (the gate's margins, forgetting limits, methods "
        "that need a reviewer). It may only tighten the platform's and the namespace's policy. Default: theirs.",
    )
    # Filled by the validator below from NeMo hyperparameters customizer ignores (never sent by clients).
    ignored_hyperparameters: SkipJsonSchema[list[str]] = Field(default_factory=list, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _set_aside_unsupported(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("hyperparameters"), dict):
            return data
        hp = dict(data["hyperparameters"])
        ignored = [key for key in IGNORED_HYPERPARAMETERS if hp.pop(key, None) is not None]
        if isinstance(hp.get("dpo"), dict):
            dpo = dict(hp["dpo"])
            ignored += [f"dpo.{key}" for key in sorted(IGNORED_DPO) if dpo.pop(key, None) is not None]
            hp["dpo"] = dpo
        return {**data, "hyperparameters": hp, "ignored_hyperparameters": ignored}

    @field_validator("config")
    @classmethod
    def _stripped(cls, value: str) -> str:
        return value.strip()


class JobWarning(BaseModel):
    message: str
    explanation: str | None = None


class StatusLog(BaseModel):
    updated_at: str
    message: str | None = None
    detail: str | None = None


class MetricValue(BaseModel):
    step: int
    value: float
    timestamp: str


class JobStatusPublic(Echo):
    """``GET .../status``: NeMo's ``CustomizationStatusDetails``."""

    status: JobStatus
    created_at: str
    updated_at: str
    status_logs: list[StatusLog] = []
    steps_completed: int | None = None
    epochs_completed: int | None = None
    steps_per_epoch: int | None = None
    percentage_done: float | None = None
    elapsed_time: float | None = None
    best_epoch: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    metrics: dict[str, Any] | None = None
    power: list[dict[str, Any]] | None = Field(
        default=None, description="customizer: per general benchmark (and their pool), the smallest drop the suite can "
        "rule out, planned from the baseline before training; `can_decide` false means the gate will hold for a person.",
    )
    forgetting: list[dict[str, Any]] | None = Field(
        default=None, description="customizer: after the gate, each forgetting comparison: delta, interval, the bound "
        "compared with the limit, and the verdict (passed, undecided, FAILED).",
    )
    ladder: list[dict[str, Any]] | None = Field(
        default=None, description="customizer: every rung of the customization ladder tried, cheapest first: rung, kind, "
        "metric, score and its interval (0-1), forgetting verdict, cost (`free` or device-hours), mean prompt tokens per "
        "request, and the decision (`met the target`, `missed the target`, or the gate's for a training rung).",
    )


class JobEstimate(Echo):
    """The pre-flight's estimate of a job's training cost (customizer extension)."""

    train_examples: int
    tokens_per_epoch: int = Field(description="Tokens one epoch trains on, counted with the base model's tokenizer.")
    epochs: int
    training_flops: float = Field(description="4 (LoRA) or 6 (full weights) x parameters x tokens x epochs.")
    devices: int
    device: str
    peak_tflops: float = Field(description="The device's matmul peak in training's precision, measured (else the config's); see `peak_source`.")
    utilisation: float = Field(description="Share of the peak: achieved by finished jobs of the config and method; see `utilisation_source`.")
    device_hours: float = Field(description="Device-hours (GPU-hours, or CPU-hours on a CPU config); `seconds`: the wall clock.")
    describe: str | None = None


class JobPublic(Echo):
    id: str
    config: str
    dataset: str
    hyperparameters: dict[str, Any]
    output_model: str | None = None
    status: JobStatus
    status_details: dict[str, Any] | None = None
    config_snapshot: dict[str, Any] | None = None
    warnings: list[JobWarning] = Field(default=[], description="Guidance on settings that tend to waste a run; what is ignored or deferred.")
    estimate: JobEstimate | None = Field(
        default=None, description="customizer extension: the pre-flight's cost estimate (tokens, FLOPs, device-hours); "
        "null when the base model is not on the server (the job's own pre-flight estimates before training).",
    )
    evaluation: dict[str, Any] | None = Field(default=None, description="customizer extension: the evaluation plan sent.")
    budget: dict[str, Any] | None = Field(default=None, description="customizer extension: the budget sent.")
    policy: dict[str, Any] | None = Field(default=None, description="customizer extension: the promotion policy sent.")
    created_at: str
    updated_at: str


class JobLogs(BaseModel):
    """``GET .../container-logs``: NeMo's ``JobLogs``."""

    entries: dict[str, dict[str, Any]]
    error: dict[str, Any] | None = None


# ---------------------------------------------------------------- Evaluator


class EvaluationConfigCreate(EntityFields):
    type: str = Field(
        min_length=1, max_length=128,
        description="custom (tasks of type completion / chat-completion) or an lm-eval benchmark, e.g. capitals, gsm8k.",
    )
    name: str | None = Field(default=None, pattern=_NAME_PATTERN)
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=_NAME_PATTERN)
    tasks: dict[str, dict[str, Any]] | None = None
    groups: dict[str, dict[str, Any]] | None = None
    params: dict[str, Any] | None = None
    schema_version: str | None = None
    type_prefix: str | None = None


class EvaluationConfigUpdate(EntityFields):
    type: str | None = Field(default=None, min_length=1, max_length=128)
    namespace: str | None = Field(default=None, pattern=_NAME_PATTERN)
    name: str | None = Field(default=None, pattern=_NAME_PATTERN)
    tasks: dict[str, dict[str, Any]] | None = None
    groups: dict[str, dict[str, Any]] | None = None
    params: dict[str, Any] | None = None


class EvaluationTargetCreate(EntityFields):
    type: Literal["model", "cached_outputs", "retriever", "rag", "rows", "dataset"]
    name: str | None = Field(default=None, pattern=_NAME_PATTERN)
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=_NAME_PATTERN)
    model: str | dict[str, Any] | None = None
    dataset: str | dict[str, Any] | None = None
    rows: list[dict[str, Any]] | None = None
    cached_outputs: dict[str, Any] | None = None
    retriever: dict[str, Any] | None = None
    rag: dict[str, Any] | None = None
    schema_version: str | None = None
    type_prefix: str | None = None


class EvaluationTargetUpdate(EntityFields):
    type: Literal["model", "cached_outputs", "retriever", "rag", "rows", "dataset"] | None = None
    model: str | dict[str, Any] | None = None
    dataset: str | dict[str, Any] | None = None
    rows: list[dict[str, Any]] | None = None


class EvaluationJobCreate(EntityFields):
    config: str | EvaluationConfigCreate
    target: str | EvaluationTargetCreate
    namespace: str = Field(default=DEFAULT_NAMESPACE, pattern=_NAME_PATTERN)
    output_files_url: str | None = None


class DatastoreNamespacePublic(BaseModel):
    namespace: str
    created_at: str
    updated_at: str


class ApprovalAnswer(Wire):
    """A reviewer's answer to a job that waits for an approval (before training or before promotion).

    With authentication on the reviewer is the caller's principal: ``reviewer`` may be left out, and
    when given it must be that principal's name. With authentication off nobody is identified and
    ``reviewer`` (required) is a free-text name."""

    approved: bool = Field(description="Approve (true) or reject (false).")
    reviewer: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="Who decides; never the job's submitter. With authentication on: the caller's principal (leave it "
        "out, or give that name); with authentication off: required, a free-text name.",
    )
    comment: str = Field(default="", max_length=2000, description="Why.")
