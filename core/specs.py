"""The job spec: one pydantic model, ``CustomizationSpec``, that the ``customize`` flow takes.

Field names follow NeMo Customizer's wire format (``training_type``, ``finetuning_type``,
``epochs``, ``batch_size``, ``learning_rate``, ``lora.adapter_dim``, ...), so the API translates a
request into a spec without renaming. Defaults live here and nowhere else.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.catalog import FinetuningType, TrainingType, parse_config_urn
from core.values import INT32_MAX, check_value

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class _Bounded(BaseModel):
    """A spec model: raw input passes ``check_value``; unknown fields and NaN or Infinity are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        check_value(data)
        return data
_NAME_CHARS = re.compile(r"[^a-z0-9._-]+")


def _name_part(text: str) -> str:
    """``text`` as part of a model name: lowercase, characters a name cannot hold replaced by ``-``."""
    return _NAME_CHARS.sub("-", text.strip().lower()).strip("-._")


def dataset_name(dataset: str) -> str:
    """A dataset reference's name: the last segment of its folder, path or URI.

    >>> dataset_name("hf://datasets/team-a/Email_Assist"), dataset_name("s3://bucket/data/triage/")
    ('email_assist', 'triage')
    """
    return _name_part(dataset.strip().rstrip("/").rpartition("/")[2])


def method_name(training_type: str, finetuning_type: str) -> str:
    """The method as an output model names it: the finetuning type, prefixed by a training type other than SFT.

    >>> method_name("sft", "lora"), method_name("dpo", "all_weights")
    ('lora', 'dpo-all_weights')
    """
    return finetuning_type if training_type == "sft" else f"{training_type}-{finetuning_type}"


def default_output_model(config_urn: str, dataset: str, method: str, namespace: str = "default") -> str:
    """The output model a job names when it names none, NeMo Customizer's pattern
    ``<namespace>/<base model>-<dataset>-<method>``: jobs on unrelated datasets never share a champion.

    Args:
        config_urn: the job's config, ``namespace/name@version``; its name without the version
            names the base model.
        dataset: the dataset's name (the API: its Entity Store name), or a folder or URI whose
            last segment names it.
        method: ``method_name(training_type, finetuning_type)``.
        namespace: where the model goes (the API: the job's namespace).

    Returns:
        ``namespace/name``, lowercase, with characters a model name cannot hold replaced by ``-``,
        the name cut to 63 characters.

    >>> default_output_model("meta/Llama-3.2-1B@v1", "/data/Email Assist", "lora")
    'default/llama-3.2-1b-email-assist-lora'
    >>> default_output_model("customizer/tiny-llama@v1.0.0+cpu", "hf://datasets/team/triage", "dpo-lora", "team")
    'team/tiny-llama-triage-dpo-lora'
    """
    base = _name_part(config_urn.strip().rpartition("/")[2].partition("@")[0])
    name = "-".join(part for part in (base, dataset_name(dataset), _name_part(method)) if part)
    return f"{namespace}/{name[:63].rstrip('-._') or 'model'}"


class LoraParams(_Bounded):
    """LoRA adapter shape."""

    adapter_dim: int = Field(default=8, ge=1, le=1024, description="LoRA rank r (a power of 2).")
    alpha: int = Field(default=16, ge=1, le=16384, description="LoRA scaling numerator; the scale is alpha / adapter_dim.")
    adapter_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        default=None, max_length=256, description="Module names to adapt; default: the config's lora_target_modules."
    )

    @field_validator("adapter_dim")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"`lora.adapter_dim` must be a power of 2, got {value}")
        return value


class DpoParams(_Bounded):
    """Direct Preference Optimization settings (NeMo names)."""

    ref_policy_kl_penalty: float = Field(
        default=0.1, gt=0.0, le=10.0, description="beta: how strongly the policy is held to the reference model."
    )
    preference_loss_weight: float = Field(default=1.0, ge=0.0, le=1000.0, description="Weight of the preference (sigmoid) loss.")
    sft_loss_weight: float = Field(default=0.0, ge=0.0, le=1000.0, description="Weight of an SFT loss on the chosen response.")
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=1e6, description="Gradient clipping norm.")


class GrpoParams(_Bounded):
    """Group Relative Policy Optimization with verifiable rewards."""

    rewards: list[str] = Field(
        default_factory=lambda: ["exact_answer"],
        min_length=1,
        max_length=64,
        description="Reward functions: built-in names (exact_answer, multiple_choice, numeric_answer, json_format) "
        "or 'module:function' for your own.",
    )
    num_generations_per_prompt: int = Field(default=4, ge=2, le=256, description="Completions sampled per prompt (the group).")
    num_prompts_per_step: int = Field(default=2, ge=1, le=4096, description="Prompts per optimizer step.")
    max_new_tokens: int = Field(default=32, ge=1, le=8192, description="Generation budget per completion.")
    generation_temperature: float = Field(default=1.0, gt=0.0, le=2.0)
    generation_top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    ref_policy_kl_penalty: float = Field(default=0.0, ge=0.0, le=100.0, description="beta of the KL term (0: no reference model).")
    ratio_clip: float = Field(default=0.2, gt=0.0, lt=1.0, description="epsilon of the clipped policy ratio.")
    normalize_rewards: bool = Field(default=True, description="Scale advantages by the group's reward std.")
    overlong_filtering: bool = Field(default=False, description="Exclude truncated completions from the loss.")
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=1e6)


class EarlyStopping(_Bounded):
    """Stop when validation loss stops improving (NeMo's defaults)."""

    enabled: bool = True
    patience: int = Field(default=10, ge=1, le=INT32_MAX, description="Validations without improvement before stopping.")
    min_delta: float = Field(default=0.001, ge=0.0, le=1e6, description="Smallest decrease of val_loss that counts.")


class LadderRung(_Bounded):
    """A training rung of the ladder: the job's training type with this finetuning type."""

    finetuning_type: FinetuningType = Field(description="lora, lora_merged or all_weights.")
    learning_rate: float | None = Field(default=None, gt=0.0, lt=1.0, description="This rung's peak learning rate; default: the job's.")
    epochs: int | None = Field(default=None, ge=1, le=1000, description="This rung's passes over the data; default: the job's.")


class Hyperparameters(_Bounded):
    """Training hyperparameters (NeMo Customizer names)."""

    training_type: TrainingType = Field(default="sft", description="Training objective: sft, dpo or grpo.")
    finetuning_type: FinetuningType = Field(
        default="lora", description="lora (adapter), lora_merged (adapter merged into full weights) or all_weights."
    )
    epochs: int = Field(default=1, ge=1, le=1000, description="Passes over the training split.")
    batch_size: int = Field(default=8, ge=1, le=4096, description="Global batch size (examples per optimizer step).")
    learning_rate: float = Field(default=5e-4, gt=0.0, lt=1.0, description="Peak learning rate.")
    min_learning_rate: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="Floor of the cosine schedule; default 0.1 x learning_rate."
    )
    warmup_steps: int = Field(default=2, ge=0, le=INT32_MAX, description="Linear warm-up steps.")
    weight_decay: float = Field(default=0.0, ge=0.0, lt=1.0)
    max_steps: int = Field(default=-1, ge=-1, le=INT32_MAX, description="Stop after this many steps if > 0 (-1: no limit).")
    val_check_interval: float = Field(
        default=1.0,
        gt=0.0,
        le=INT32_MAX,
        description="Validate (and checkpoint) every this fraction of an epoch if <= 1, else every this many steps.",
    )
    log_every_n_steps: int = Field(default=2, ge=1, le=INT32_MAX, description="Train-loss logging interval, in steps.")
    seed: int = Field(default=42, ge=0, le=INT32_MAX, description="Seed for data order, holdout split and initialisation.")
    sequence_packing_enabled: bool = Field(
        default=False, description="Pack examples into full rows without cross-attention between them (SFT)."
    )
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    lora: LoraParams = Field(default_factory=LoraParams)
    dpo: DpoParams = Field(default_factory=DpoParams)
    grpo: GrpoParams = Field(default_factory=GrpoParams)
    ladder: list[LadderRung] = Field(
        default_factory=list, max_length=4,
        description="customizer extension: training rungs climbed in order while a trained candidate misses "
        "evaluation.target_score, within budget.max_device_hours; the first is the job's own finetuning_type. "
        'E.g. [{"finetuning_type": "lora"}, {"finetuning_type": "all_weights", "learning_rate": 1e-5}].',
    )

    @model_validator(mode="after")
    def _consistent(self) -> Hyperparameters:
        for i, rung in enumerate(self.ladder):
            where = f"`hyperparameters.ladder[{i}]` ({rung.finetuning_type})"
            if i == 0 and (rung.finetuning_type != self.finetuning_type or rung.learning_rate or rung.epochs):
                raise ValueError(f"{where} must be the job's own method: finetuning_type {self.finetuning_type}, its "
                                 "learning_rate and epochs set on `hyperparameters`")
            if rung.finetuning_type in [r.finetuning_type for r in self.ladder[:i]]:
                raise ValueError(f"{where} repeats an earlier rung's finetuning_type")
            if self.min_learning_rate is not None and self.min_learning_rate >= (rung.learning_rate or self.learning_rate):
                raise ValueError(f"{where}: `min_learning_rate` ({self.min_learning_rate}) must be below its learning_rate")
        if self.min_learning_rate is not None and self.min_learning_rate >= self.learning_rate:
            raise ValueError(
                f"`min_learning_rate` ({self.min_learning_rate}) must be below `learning_rate` ({self.learning_rate})"
            )
        if self.val_check_interval > 1 and self.val_check_interval != int(self.val_check_interval):
            raise ValueError(f"`val_check_interval` above 1 counts steps and must be whole, got {self.val_check_interval}")
        if self.training_type == "grpo" and self.sequence_packing_enabled:
            raise ValueError("`sequence_packing_enabled` applies to sft and dpo, not grpo (completions are generated)")
        return self

    @property
    def floor_learning_rate(self) -> float:
        return self.min_learning_rate if self.min_learning_rate is not None else 0.1 * self.learning_rate

    @property
    def uses_lora(self) -> bool:
        return self.finetuning_type in ("lora", "lora_merged")


# The default forgetting suite: real items that ship offline (README: Evaluation).
DEFAULT_GENERAL_SUITE = ("mmlu_dev", "bb_knowledge", "bb_reasoning", "ifeval_lite", "pydoc_prose")


class EvaluationPlan(_Bounded):
    """What baseline and candidate are scored on."""

    task_metric: str | None = Field(
        default=None,
        max_length=128,
        description="Task metric the gate uses. Default by data: exact_match (completion/chat; also "
        "json_field_match, f1, rouge_l, bleu, contains), preference_accuracy (preference pairs), the first "
        "GRPO reward (reward data).",
    )
    general_benchmarks: list[str] = Field(
        default_factory=lambda: list(DEFAULT_GENERAL_SUITE),
        max_length=64,
        description="General benchmarks for the forgetting check: shipped ones (evaluation/benchmarks/general; "
        "the default suite covers knowledge, reasoning, instruction following and language modelling), or "
        "lm-eval:<task> for a task of lm-eval's registry whose data is at hand.",
    )
    limit: int | None = Field(default=None, ge=1, le=INT32_MAX, description="Score at most this many items per benchmark.")
    batch_size: int = Field(default=16, ge=1, le=512, description="Evaluation batch size.")
    max_new_tokens: int = Field(default=48, ge=1, le=4096, description="Generation budget per task item.")
    few_shot: int = Field(
        default=3, ge=0, le=32,
        description="Training examples shown before each task item in the few-shot prompt baseline (0: zero-shot only).",
    )
    target_score: float | None = Field(
        default=None, ge=0.0, le=100.0,
        description="Task score (points) that is good enough: if prompting the base model reaches it, no fine-tuning is done; "
        "a trained candidate whose lower bound misses it climbs to the next rung of `hyperparameters.ladder`.",
    )
    force_training: bool = Field(default=False, description="Train even when prompting already reaches target_score.")
    ladder_only: bool = Field(
        default=False, description="Advice before committing to training: score the free rungs of the ladder, show them "
        "(the job's status, summary and report) and end the job; nothing trains.",
    )
    prompts: list[Annotated[str, Field(max_length=4000)]] = Field(
        default_factory=list, max_length=8,  # each is one more pass over the testing split
        description="Candidate prompts scored at the baseline: a system prompt, or a user-turn template with one `{prompt}`. "
        "One whose lower bound reaches target_score ends the job untrained and is kept in the prompt registry.",
    )
    retrieval_few_shot: bool = Field(default=False, description="Also score few-shot with the `few_shot` training examples nearest each item (BM25).")

    @field_validator("prompts")
    @classmethod
    def _candidate_prompts(cls, value: list[str]) -> list[str]:
        for i, text in enumerate(value):
            if not text.strip() or text.count("{prompt}") > 1 or text in value[:i]:
                raise ValueError(f"`evaluation.prompts[{i}]` must be non-blank, unique and hold at most one `{{prompt}}`: {text[:80]!r}")
        return value


class PromotionPolicy(_Bounded):
    """When a candidate becomes the champion, and when a person must agree first.

    The policy that governs a job comes in layers (``evaluation.policy``): these defaults, then the
    operator's files in the policy folder (``_global.yaml`` for every namespace, ``<namespace>.yaml``
    over it; each sets only the fields it names), then the job's own ``policy``, which may only
    tighten what is below it: a larger ``min_task_gain``; smaller limits, ``forgetting_alpha`` and
    ``approval_timeout_hours``; more ``review_methods``; a stricter ``diverging_curves`` (ignore <
    hold < reject); more counted ``benchmarks``. A job that would loosen a field is refused at
    creation, naming the field, the value, the bound and the layer that set it. A job's field counts
    when it differs from the default here (a spec that travelled as JSON carries every field).
    """

    min_task_gain: float = Field(
        default=0.0, ge=0.0, le=100.0, description="Points (0-100 scale) the task score must gain over the baseline, strictly."
    )
    max_general_drop: float = Field(
        default=2.0, ge=0.0, le=100.0,
        description="The forgetting limit in points: the candidate must show, with a paired one-sided bound at "
        "`forgetting_alpha`, that its drop over the counted accuracy benchmarks (pooled item by item) is smaller.",
    )
    max_benchmark_drop: float | None = Field(
        default=None, ge=0.0, le=100.0,
        description="Points a single counted benchmark must show it did not lose, however well the pool did "
        "(a large drop on one benchmark blocks). Default: 3 x max_general_drop.",
    )
    max_bpb_increase: float = Field(
        default=5.0, ge=0.0, le=1e6,
        description="Percent by which the bits-per-byte of held-out prose (language-modelling benchmarks) may "
        "rise; shown with a paired one-sided bound, like the accuracy limit.",
    )
    forgetting_alpha: float = Field(
        default=0.05,
        gt=0.0,
        lt=0.5,
        description="Level of the one-sided bounds: the candidate shows non-inferiority (and the task gain) at "
        "1 - alpha confidence; a drop beyond the limit at that confidence rejects, an undecided one holds.",
    )
    max_forgetting_kl: float | None = Field(
        default=None, gt=0.0, le=1e6,
        description="Stop training at the first validation whose forgetting_kl (KL divergence of the model "
        "from the base on fixed general prompts, nats per token) exceeds this; the best checkpoint under it is kept.",
    )
    benchmarks: list[str] | None = Field(
        default=None, max_length=64, description="General benchmarks that count for forgetting; default: every one scored."
    )
    review_methods: list[str] = Field(
        default_factory=lambda: ["all_weights", "dpo", "grpo"],
        max_length=16,
        description="Methods (training or finetuning types) that need a reviewer's approval before training "
        "and before promotion. LoRA SFT is self-service by default.",
    )
    diverging_curves: Literal["hold", "reject", "ignore"] = Field(
        default="hold", description="What a validation loss that rose while training loss fell leads to."
    )
    approval_timeout_hours: float = Field(
        default=72.0, gt=0, le=87_600, description="An approval not given within this time counts as a rejection."
    )

    def needs_review(self, training_type: str, finetuning_type: str) -> bool:
        return training_type in self.review_methods or finetuning_type in self.review_methods

    @property
    def benchmark_limit(self) -> float:
        """Points one benchmark must show it did not lose (``max_benchmark_drop``, else 3x the limit)."""
        return self.max_benchmark_drop if self.max_benchmark_drop is not None else 3 * self.max_general_drop


class Budget(_Bounded):
    """A ceiling on the estimated training cost; a job above it is refused before training."""

    max_device_hours: float | None = Field(
        default=None, gt=0, le=1e9, description="GPU-hours (CPU-hours on a CPU config) the estimate may not exceed."
    )
    utilisation: float | None = Field(
        default=None, gt=0, le=1, description="Share of the device's peak the estimate assumes. Default: what the last finished "
        "jobs of the same config and method achieved, else the device's typical share.",
    )


class Replay(_Bounded):
    """General examples mixed into the training split, so the model rehearses what it already knew."""

    ratio: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Replay examples per training example (0.25: one general example for every four of yours; 0: off).",
    )
    source: str = Field(
        default="self",
        max_length=2048,
        description="self: answers the base model generates to shipped general prompts (self-rehearsal); or a "
        "dataset folder (JSONL records in the training format) whose examples are mixed in.",
    )


class DataOptions(_Bounded):
    """How ingest treats examples that do not fit the config."""

    long_examples: Literal["error", "drop", "truncate"] = Field(
        default="error",
        description="Examples longer than the config's max_seq_length (in the target model's tokens, as "
        "training renders them): error refuses the dataset naming each one; drop leaves them out; "
        "truncate keeps their first max_seq_length tokens. Dropped and truncated examples are counted "
        "and listed in the dataset report.",
    )
    replay: Replay = Field(
        default_factory=lambda: Replay(),
        description="General examples mixed into training against forgetting (SFT only).",
    )


class Submission(BaseModel):
    """Who submitted a flow run through the platform, and the platform's signature over the run's
    parameters and these fields (``core.submission``). The REST API and the CLI sign what they submit;
    a run created or edited anywhere else (Prefect's API or UI) carries no signature that verifies, and
    with authentication on its flow stops at once."""

    model_config = ConfigDict(extra="forbid")

    principal: str | None = Field(
        default=None, description="Who submitted it: the API key's principal (None with authentication off), operator for the CLI."
    )
    namespaces: list[str] = Field(
        default_factory=lambda: ["*"], description='Namespaces the submitter may use; ["*"]: every namespace.'
    )
    roles: list[str] = Field(default_factory=list, description="The submitter's roles (submit, review, admin).")
    door: Literal["api", "cli"] = Field(
        default="api",
        description="Where it was signed: the REST API (which checked every location against the caller's namespaces "
        "and the allowed folders), or the operator's CLI on the server (the operator's own files).",
    )
    signature: str = Field(default="", description="The platform's signature (core.submission); empty: unsigned.")


class CustomizationSpec(BaseModel):
    """One customization job: which base, which data, how to train, how to judge."""

    model_config = ConfigDict(extra="forbid")

    config: str = Field(
        description="Config URN namespace/name@version, e.g. huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu."
    )
    dataset: str = Field(
        description="Dataset with training/ (and optional validation/, testing/): a folder, file://, s3://bucket/prefix "
        "or hf://datasets/<namespace>/<name> (the Data Store)."
    )
    dataset_source: str | None = Field(
        default=None,
        description="Where the dataset came from, recorded as lineage (when `dataset` is a copy of it, e.g. the "
        "API's snapshot of a Data Store dataset); a retrain re-reads it. Default: `dataset`.",
    )
    output_model: str = Field(
        default="",
        validate_default=True,
        description="Output model name, namespace/name. Default: default/<config name without its version>-<dataset "
        "name>-<method>, e.g. default/tiny-llama-email-lora.",
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    data: DataOptions = Field(default_factory=DataOptions)
    evaluation: EvaluationPlan = Field(default_factory=EvaluationPlan)
    policy: PromotionPolicy = Field(default_factory=PromotionPolicy)
    budget: Budget = Field(default_factory=Budget)
    submitted_by: str | None = Field(
        default=None, description="Who submitted the job; a reviewer of its approvals must be someone else."
    )
    secrets: dict[Literal["wandb-api-key"], str] = Field(
        default_factory=dict,
        description="Secrets for the run, sealed with the platform's key (the API seals what clients send); "
        "the training task unseals them into its environment, e.g. wandb-api-key as WANDB_API_KEY.",
    )
    submission: Submission | None = Field(
        default=None,
        description="Who submitted the job, signed by the platform (the REST API and the CLI set it); checked when the job "
        "starts: with authentication on, a job without a valid one does not run.",
    )

    @field_validator("config")
    @classmethod
    def _versioned(cls, value: str) -> str:
        # CatalogError is a ValueError: pydantic reports it on `config`. Kept as namespace/name@version,
        # so nothing downstream parses the URN again.
        namespace, name = parse_config_urn(value)
        return f"{namespace}/{name}"

    @field_validator("output_model")
    @classmethod
    def _namespaced(cls, value: str) -> str:
        if not value.strip():
            return ""  # defaulted once the config, dataset and method are known (_default_output_model)
        namespace, slash, name = value.strip().partition("/")
        if not slash or not _NAME.match(namespace) or not _NAME.match(name):
            raise ValueError(
                f"`output_model` must be namespace/name in lowercase letters, digits, '.', '_' or '-', got {value!r}"
            )
        return f"{namespace}/{name}"

    @model_validator(mode="after")
    def _default_output_model(self) -> CustomizationSpec:
        # meta/llama-3.2-1b@v1 on /data/email with LoRA SFT -> default/llama-3.2-1b-email-lora
        if not self.output_model:
            hp = self.hyperparameters
            self.output_model = default_output_model(self.config, self.dataset_uri, method_name(hp.training_type, hp.finetuning_type))
        return self

    @property
    def dataset_uri(self) -> str:
        """The dataset's lineage: where it came from (``dataset_source``), else ``dataset``."""
        return self.dataset_source or self.dataset

    @model_validator(mode="after")
    def _ladder_has_a_target(self) -> CustomizationSpec:
        if len(self.hyperparameters.ladder) > 1 and self.evaluation.target_score is None:
            raise ValueError("`hyperparameters.ladder` climbs while a candidate misses `evaluation.target_score`: set it")
        return self

    @model_validator(mode="after")
    def _replay_is_for_sft(self) -> CustomizationSpec:
        # Refused when the job is created, not after it started (ingest checks again: training.replay.check_method).
        replay, method = self.data.replay, self.hyperparameters.training_type
        if replay.ratio > 0 and method != "sft":
            raise ValueError(
                f"`data.replay` (ratio {replay.ratio}) mixes SFT examples into training, but training_type {method} "
                "cannot use them: set data.replay.ratio to 0 or train with training_type sft"
            )
        return self
