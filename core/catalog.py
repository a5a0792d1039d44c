"""The config catalog: versioned configs ``namespace/name@version`` that name a base model (the
target), how prompts are rendered, and which ``(training_type, finetuning_type)`` pairs a job may use.

Built-in configs are the YAML files in ``core/configs/`` (a file holds one config, or a list under
``configs:``); more folders can be added with the ``config_dirs`` setting. A config is looked up by its
full URN; a URN without ``@version`` is refused.
"""

from __future__ import annotations

import string
from collections.abc import Collection
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.settings import Settings

BUILTIN_DIR = Path(__file__).parent / "configs"
DEFAULT_NAMESPACE = "default"

TrainingType = Literal["sft", "dpo", "grpo"]
FinetuningType = Literal["lora", "lora_merged", "all_weights"]


class CatalogError(ValueError):
    """A config URN that is malformed, has no version, or names no known config."""


def parse_config_urn(urn: str) -> tuple[str, str]:
    """Split ``namespace/name@version`` into ``(namespace, "name@version")``.

    A bare ``name@version`` means the ``default`` namespace.

    Raises:
        CatalogError: the URN is empty, has more than one ``/``, or has no ``@version``.

    >>> parse_config_urn("huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu")
    ('huggingfacetb', 'smollm2-135m-instruct@v1.0.0+cpu')
    """
    text = urn.strip()
    if not text:
        raise CatalogError("`config` is empty: give a config URN such as namespace/name@version")
    namespace, _, name = text.rpartition("/")
    namespace = namespace or DEFAULT_NAMESPACE
    if "/" in namespace or not name:
        raise CatalogError(f"`config` {urn!r} is not a URN of the form namespace/name@version")
    base, at, version = name.partition("@")
    if not at or not version.strip() or not base:
        raise CatalogError(
            f"`config` {urn!r} is missing its version: configs are versioned, "
            f"write it as {namespace}/{base or name}@<version> (e.g. huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu)"
        )
    return namespace, name


class Target(BaseModel):
    """The base model a config fine-tunes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Model name as served, e.g. huggingfacetb/smollm2-135m-instruct.")
    model_uri: str = Field(
        description="Where the weights come from: pkg://<python package>/<file>.gguf, a local folder or "
        "file, file://..., s3://bucket/prefix, builtin://tiny-llama, or a Hugging Face repo id."
    )
    hub_id: str | None = Field(
        default=None,
        description="The base model's Hugging Face Hub id (or a folder it loads from), written as "
        "base_model_name_or_path in published adapters and as base_model in their model card; unset: the name.",
    )
    num_parameters: int | None = Field(default=None, ge=1, description="Parameter count (for estimates).")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    instruction_tuned: bool = Field(
        default=True, description="The base already had supervised (instruction) tuning; DPO/GRPO assume it."
    )

    def adapter_base(self, local_dir: str) -> str:
        """What a trained adapter names as its base (``base_model_name_or_path``): the Hub id; for a
        model built on this machine (``builtin://``, which has none) the folder ``local_dir`` it
        loads from, so PEFT finds it; otherwise the catalog name.

        >>> Target(name="meta/llama", model_uri="meta-llama/Llama-3.2-1B", hub_id="meta-llama/Llama-3.2-1B").adapter_base("/m")
        'meta-llama/Llama-3.2-1B'
        >>> Target(name="customizer/tiny-llama", model_uri="builtin://tiny-llama").adapter_base("/cache/tiny")
        '/cache/tiny'
        """
        if self.hub_id:
            return self.hub_id
        return str(local_dir) if local_dir and self.model_uri.startswith("builtin://") else self.name


class TrainingOption(BaseModel):
    """One allowed ``(training_type, finetuning_type)`` pair and the resources it runs with."""

    model_config = ConfigDict(extra="forbid")

    training_type: TrainingType
    finetuning_type: FinetuningType
    num_gpus: int = Field(default=1, ge=0, description="GPUs per node; 0 trains on the CPU.")
    num_nodes: int = Field(default=1, ge=1)
    micro_batch_size: int = Field(default=1, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)


class CustomizationConfig(BaseModel):
    """A versioned customization config."""

    model_config = ConfigDict(extra="forbid")

    namespace: str
    name: str = Field(description="Name with its version, e.g. smollm2-135m-instruct@v1.0.0+cpu.")
    description: str = ""
    target: Target
    max_seq_length: int = Field(ge=16)
    prompt_format: Literal["chat", "template"] = Field(
        default="chat",
        description="chat: a prompt/completion record is one user turn rendered with the model's chat "
        "template. template: rendered with prompt_template.",
    )
    prompt_template: str = Field(default="{prompt} {completion}")
    training_precision: Literal["fp32", "bf16-mixed", "auto"] = Field(
        default="fp32", description="auto: bf16 autocast where the hardware runs bf16 natively, fp32 elsewhere."
    )
    gpu: str | None = Field(default=None, description="GPU the training options are sized for, e.g. A100-80GB.")
    gpu_peak_tflops: float | None = Field(
        default=None, gt=0, description="Dense bf16 peak of that GPU, for training-time estimates."
    )
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Modules that get LoRA adapters when a job does not say.",
    )
    training_options: list[TrainingOption] = Field(min_length=1)

    @field_validator("prompt_template")
    @classmethod
    def _plain_fields(cls, value: str) -> str:
        """Only ``{prompt}`` and ``{completion}``: a template is text, so no attribute, index or format
        spec can reach into the values it is filled with.

        >>> CustomizationConfig._plain_fields("Q: {prompt} A: {completion} {{x}}")
        'Q: {prompt} A: {completion} {{x}}'
        >>> CustomizationConfig._plain_fields("{prompt.__class__}")
        Traceback (most recent call last):
        ValueError: `prompt_template` may hold only {prompt} and {completion} (write {{ and }} for braces), not {prompt.__class__}
        """
        try:
            fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"`prompt_template` is not a valid template: {exc} (write {{{{ and }}}} for braces)") from exc
        for name, spec, conversion in fields:
            if name not in ("prompt", "completion") or spec or conversion:
                shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise ValueError(f"`prompt_template` may hold only {{prompt}} and {{completion}} (write {{{{ and }}}} for braces), not {shown}")
        return value

    @property
    def urn(self) -> str:
        return f"{self.namespace}/{self.name}"

    def option_for(self, training_type: str, finetuning_type: str) -> TrainingOption:
        """The training option for a method, or a CatalogError that lists the allowed pairs."""
        for option in self.training_options:
            if (option.training_type, option.finetuning_type) == (training_type, finetuning_type):
                return option
        allowed = ", ".join(f"({o.training_type}, {o.finetuning_type})" for o in self.training_options)
        raise CatalogError(
            f"config {self.urn} does not allow training_type={training_type!r} with "
            f"finetuning_type={finetuning_type!r}; allowed: {allowed}"
        )


def _read_config_file(path: Path) -> list[CustomizationConfig]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    entries = raw["configs"] if isinstance(raw, dict) and "configs" in raw else [raw]
    if not isinstance(entries, list):
        raise CatalogError(f"{path}: `configs` must be a list of configs")
    configs = []
    for index, entry in enumerate(entries):
        where = f"{path}" if len(entries) == 1 else f"{path} (configs[{index}])"
        try:
            configs.append(CustomizationConfig.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
            raise CatalogError(f"{where}: invalid config: {problems}") from exc
    return configs


def load_catalog(settings: Settings) -> dict[str, CustomizationConfig]:
    """All configs by URN: the built-in ones, then those in ``settings.config_dirs`` (which may override),
    then those created through the API (``settings.api_configs_dir``)."""
    return _load([BUILTIN_DIR, *settings.config_dirs, settings.api_configs_dir])


def _load(folders: list[Path]) -> dict[str, CustomizationConfig]:
    catalog: dict[str, CustomizationConfig] = {}
    for folder in folders:
        for path in sorted(Path(folder).glob("*.yaml")):
            for config in _read_config_file(path):
                parse_config_urn(config.urn)  # every config must carry a version too
                catalog[config.urn] = config
    return catalog


def usable_configs(settings: Settings, namespaces: Collection[str] | None = ()) -> list[str]:
    """The URNs a caller of ``namespaces`` may use: every shipped and operator config (``core/configs``,
    ``config_dirs``) and the API-created ones of those namespaces (None or ``*``: every namespace).

    >>> from core.settings import Settings
    >>> "customizer/tiny-llama@v1.0.0+cpu" in usable_configs(Settings(data_dir="/nonexistent"))
    True
    """
    shared = _load([BUILTIN_DIR, *settings.config_dirs])
    created = _load([settings.api_configs_dir])
    everyone = namespaces is None or "*" in namespaces
    return sorted(set(shared) | {urn for urn, config in created.items() if everyone or config.namespace in namespaces})


def get_config(urn: str, settings: Settings, namespaces: Collection[str] | None = ()) -> CustomizationConfig:
    """Look a config up by URN.

    A URN already in its full form (what a validated ``JobSpec.config`` holds) is found without
    parsing it again; any other spelling is parsed first.

    Args:
        namespaces: whose configs an unknown URN's message may list (``usable_configs``); by default
            only the shipped and operator ones, as the asker's namespaces are not known here.

    Raises:
        CatalogError: the URN has no version, or no config has that URN (the message lists those usable).
    """
    catalog = load_catalog(settings)
    if urn in catalog:
        return catalog[urn]
    namespace, name = parse_config_urn(urn)
    key = f"{namespace}/{name}"
    if key not in catalog:
        known = ", ".join(usable_configs(settings, namespaces)) or "none"
        raise CatalogError(f"`config` {urn!r} is not in the catalog; available configs: {known}")
    return catalog[key]
