"""Customizer logic behind the routes: configs and targets (built-in YAML plus API-created ones),
job creation (validate everything up front, translate to a ``CustomizationSpec``, start the flow
run). A job's status, from its flow run and MLflow run, lives in ``api.status``.

Errors are raised as ``ApiError`` subclasses; the app turns them into HTTP answers at the edge.
Whatever a request names (a dataset, config, target or output model) must lie in a namespace the
caller's key may use; one it may not use answers as if it did not exist.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import uuid
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from api import orchestrator
from api.db import Duplicate, JobRun, Store, iso, now
from api.deps import Caller
from api.errors import ApiError, BadRequest, Conflict, NotFound, Unprocessable
from api.datasets import DATASET, dataset_of, discard_snapshot, snapshot_dataset  # noqa: F401 - DATASET, dataset_of: named from here too
from api.job_spec import output_model_of, submitter, to_spec
from api.schemas import IGNORED_HYPERPARAMETERS, ConfigCreate, JobCreate, TargetCreate
from api.urls import checked_url
from core import audit
from core.ids import prefixed_id
from core.secrets import seal
from core.submission import signed
from core.settings import Settings
from core.catalog import CatalogError, CustomizationConfig, Target, TrainingOption, get_config, load_catalog, parse_config_urn
from core.specs import CustomizationSpec, method_name
from tasks.check import CheckedJob, JobRefused, check
from training.resources import InsufficientResources, available_gpus, check_capacity

log = logging.getLogger("customizer.api")

JOB, CONFIG, TARGET, MODEL = "customization_job", "customization_config", "customization_target", "model"
_PRECISION = {"fp32": "fp32", "bf16": "bf16", "bf16-mixed": "bf16", "fp16": "fp16"}
_TRAINING_PRECISION = {"fp32": "fp32", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed", "auto": "auto"}  # auto: bf16 where native


def public(data: dict[str, Any]) -> dict[str, Any]:
    """The wire view of a stored entity: internal bookkeeping (keys starting with ``_``) left out."""
    return {k: v for k, v in data.items() if not k.startswith("_")}


def stable_id(prefix: str, key: str) -> str:
    """A prefixed id for a built-in entity that stays the same across restarts."""
    return prefixed_id(prefix, uuid.uuid5(uuid.NAMESPACE_URL, f"customizer:{prefix}:{key}"))


# ---------------------------------------------------------------- targets


def _split(urn: str) -> tuple[str, str]:
    namespace, _, name = urn.strip().rpartition("/")
    return namespace or "default", name


def builtin_target(target: Target) -> dict[str, Any]:
    namespace, name = _split(target.name)
    return {
        "id": stable_id("customization_target", target.name), "namespace": namespace, "name": name,
        "base_model": target.name, "model_uri": target.model_uri, "model_path": target.model_uri,
        "num_parameters": target.num_parameters, "precision": target.precision, "enabled": True, "status": "ready",
        "description": "built in (read-only)", "custom_fields": {"builtin": True},
        "created_at": "1970-01-01T00:00:00", "updated_at": "1970-01-01T00:00:00",
    }


def list_targets(store: Store, settings: Settings) -> list[dict[str, Any]]:
    targets = {(t["namespace"], t["name"]): t for t in store.all(TARGET)}
    for config in load_catalog(settings).values():
        entry = builtin_target(config.target)
        targets.setdefault((entry["namespace"], entry["name"]), entry)
    return list(targets.values())


def find_target(store: Store, settings: Settings, namespace: str, name: str, caller: Caller | None = None) -> dict[str, Any]:
    """A created or built-in target; a created one in a namespace ``caller`` may not use is not found."""
    stored = store.find(TARGET, namespace, name)
    if stored is not None and (caller is None or caller.sees(stored["namespace"])):
        return stored
    if stored is not None:
        raise NotFound(f"customization target {namespace}/{name} does not exist")
    for entry in list_targets(store, settings):
        if (entry["namespace"], entry["name"]) == (namespace, name):
            return entry
    raise NotFound(f"customization target {namespace}/{name} does not exist")


def _as_target(entry: dict[str, Any]) -> Target:
    precision = _PRECISION.get(entry.get("precision") or "fp32")
    if precision is None:
        raise BadRequest(f"target precision {entry.get('precision')!r} is not supported; use fp32, bf16 or fp16")
    uri = entry.get("model_uri") or entry.get("model_path")
    if uri and uri.startswith("hf://") and not uri.startswith("hf://datasets/"):
        uri = uri.removeprefix("hf://").split("@")[0]  # a Hugging Face repo id
    return Target(
        name=entry.get("base_model") or f"{entry['namespace']}/{entry['name'].split('@')[0]}",
        model_uri=uri, num_parameters=entry.get("num_parameters"), precision=precision,
    )


def check_target(settings: Settings, caller: Caller, target: dict[str, Any], loc: tuple[str, ...] = ("body",)) -> None:
    """Refuse a target whose weights would come from a URL the server may not read (422), or whose
    ``base_model`` names another namespace (403): the catalog lists a config's target under that name."""
    for field in ("model_uri", "model_path"):
        checked_url(settings, caller, (*loc, field), target.get(field), kind="model")
    base_model = target.get("base_model")
    if isinstance(base_model, str) and "/" in base_model:
        caller.check(_split(base_model)[0])


def create_target(store: Store, settings: Settings, body: TargetCreate) -> dict[str, Any]:
    data = body.model_dump(mode="json", exclude_none=True) | {"status": "ready"}
    if any((t["namespace"], t["name"]) == (body.namespace, body.name) for t in list_targets(store, settings)):
        raise Conflict(f"customization target {body.namespace}/{body.name} already exists")
    try:
        return store.add(TARGET, prefixed_id("customization_target"), body.namespace, body.name, data)
    except Duplicate as exc:
        raise Conflict(f"customization target {body.namespace}/{body.name} already exists") from exc


# ---------------------------------------------------------------- configs


def config_to_wire(config: CustomizationConfig, stored: dict[str, Any] | None = None) -> dict[str, Any]:
    """A catalog config in NeMo's ``CustomizationConfig`` shape (an API-created one: as it was stored)."""
    if stored is not None:
        return public(stored)
    namespace, name = _split(config.target.name)
    return {
        "id": stable_id("customization_config", config.urn),
        "namespace": config.namespace, "name": config.name, "description": config.description,
        "target": builtin_target(config.target) | {"namespace": namespace, "name": name},
        "max_seq_length": config.max_seq_length,
        "prompt_template": config.prompt_template if config.prompt_format == "template" else None,
        "training_precision": config.training_precision,
        "training_options": [o.model_dump() for o in config.training_options],
        "custom_fields": {"builtin": True, "prompt_format": config.prompt_format, "gpu": config.gpu},
        "created_at": "1970-01-01T00:00:00", "updated_at": "1970-01-01T00:00:00",
    }


def list_configs(store: Store, settings: Settings) -> list[dict[str, Any]]:
    stored = {f"{c['namespace']}/{c['name']}": c for c in store.all(CONFIG)}
    return [config_to_wire(config, stored.get(urn)) for urn, config in load_catalog(settings).items()]


def find_config(store: Store, settings: Settings, namespace: str, name: str,
                caller: Caller | None = None) -> tuple[CustomizationConfig, dict[str, Any] | None]:
    """A config and its stored entry (None for a shipped one).

    Raises:
        NotFound: no such config; the message lists only those ``caller`` may use (without a caller:
            the shipped and operator ones).
    """
    try:
        config = get_config(f"{namespace}/{name}", settings, caller.namespaces if caller else ())
    except CatalogError as exc:
        raise NotFound(str(exc)) from exc
    return config, store.find(CONFIG, namespace, name)


def _config_from_wire(data: dict[str, Any], target: Target) -> CustomizationConfig:
    precision = data.get("training_precision") or "fp32"
    if precision not in _TRAINING_PRECISION:
        raise BadRequest(f"`training_precision` {precision!r} is not supported; use fp32, bf16, bf16-mixed or auto")
    options = [
        TrainingOption(**{k: o[k] for k in ("training_type", "finetuning_type", "num_gpus", "num_nodes", "micro_batch_size", "tensor_parallel_size") if o.get(k) is not None})
        for o in data["training_options"]
    ]
    template = data.get("prompt_template")
    try:
        return CustomizationConfig(
            namespace=data["namespace"], name=data["name"], description=data.get("description") or "", target=target,
            max_seq_length=data["max_seq_length"], prompt_format="template" if template else "chat",
            prompt_template=template or "{prompt} {completion}", training_precision=_TRAINING_PRECISION[precision],
            training_options=options,
        )
    except ValidationError as exc:
        raise BadRequest("; ".join(f"`{'.'.join(map(str, e['loc']))}`: {e['msg']}" for e in exc.errors())) from exc


def _config_file(settings: Settings, config_id: str) -> Path:
    return settings.api_configs_dir / f"{config_id}.yaml"


def _write_config(settings: Settings, config_id: str, config: CustomizationConfig) -> None:
    """Write an API-created config where the catalog reads it, so jobs find it by URN like any other."""
    settings.api_configs_dir.mkdir(parents=True, exist_ok=True)
    path = _config_file(settings, config_id)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def _resolve_target(store: Store, settings: Settings, target: str | TargetCreate, namespace: str, caller: Caller) -> tuple[Any, Target]:
    if isinstance(target, str):
        t_namespace, t_name = _split(target) if "/" in target else (namespace, target)
        entry = find_target(store, settings, t_namespace, t_name, caller)
        if entry.get("enabled") is False:
            raise BadRequest(f"customization target {t_namespace}/{t_name} is disabled")
        return target, _as_target(entry)
    entry = target.model_dump(mode="json", exclude_none=True)
    check_target(settings, caller, entry, ("body", "target"))
    return entry, _as_target(entry)


def create_config(store: Store, settings: Settings, body: ConfigCreate, caller: Caller) -> dict[str, Any]:
    try:
        parse_config_urn(f"{body.namespace}/{body.name}")
    except CatalogError as exc:
        raise BadRequest(str(exc).replace("`config`", "`name`")) from exc
    if f"{body.namespace}/{body.name}" in load_catalog(settings):
        raise Conflict(f"customization config {body.namespace}/{body.name} already exists")
    target_wire, target = _resolve_target(store, settings, body.target, body.namespace, caller)
    data = body.model_dump(mode="json", exclude_none=True) | {"target": target_wire}
    config = _config_from_wire(data, target)
    config_id = prefixed_id("customization_config")
    try:
        stored = store.add(CONFIG, config_id, body.namespace, body.name, data)
    except Duplicate as exc:
        raise Conflict(f"customization config {body.namespace}/{body.name} already exists") from exc
    _write_config(settings, config_id, config)
    return stored


def update_config(store: Store, settings: Settings, stored: dict[str, Any], changes: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """PATCH semantics: fields replaced; training options keyed by (training_type, finetuning_type)."""
    data = dict(stored)
    key = lambda o: (o["training_type"], o["finetuning_type"])  # noqa: E731
    options = {key(o): o for o in data["training_options"]}
    for option in changes.pop("training_options", None) or []:
        options[key(option)] = option
    for option in changes.pop("add_training_options", None) or []:
        options.setdefault(key(option), option)
    for option in changes.pop("remove_training_options", None) or []:
        options.pop(key(option), None)
    if not options:
        raise BadRequest("`training_options`: a config needs at least one training option")
    data["training_options"] = list(options.values())
    pod_spec = changes.pop("pod_spec", None)
    if pod_spec:
        data["pod_spec"] = (data.get("pod_spec") or {}) | pod_spec
    data |= changes
    try:
        parse_config_urn(f"{data['namespace']}/{data['name']}")
    except CatalogError as exc:
        raise BadRequest(str(exc).replace("`config`", "`name`")) from exc
    _, target = _resolve_target(store, settings, data["target"] if isinstance(data["target"], str) else TargetCreate(**data["target"]), data["namespace"], caller)
    config = _config_from_wire(data, target)
    try:
        saved = store.save(CONFIG, data, namespace=data["namespace"], name=data["name"])
    except Duplicate as exc:
        raise Conflict(f"customization config {data['namespace']}/{data['name']} already exists") from exc
    _write_config(settings, data["id"], config)
    return saved


def delete_config(store: Store, settings: Settings, stored: dict[str, Any]) -> None:
    _config_file(settings, stored["id"]).unlink(missing_ok=True)
    store.remove(CONFIG, stored["id"])


# ---------------------------------------------------------------- jobs


class NotRecorded(ApiError):
    """The audit record of an act could not be written, so the act was undone: answered 503."""

    status_code = 503


def _snapshot(config: CustomizationConfig, option: TrainingOption) -> dict[str, Any]:
    return {
        "base_model": config.target.name,
        "max_seq_length": config.max_seq_length,
        "precision": config.training_precision,
        "training_option": option.model_dump() | {"pipeline_parallel_size": 1, "data_parallel_size": option.num_gpus * option.num_nodes or 1,
                                                  "use_sequence_parallel": False},
        "prompt_template": config.prompt_template,
    }


def _refused(exc: JobRefused, dataset: dict[str, Any]) -> ApiError:
    """The HTTP answer to a job the pre-flight refused: an unknown config is not found; a method the
    config does not allow and a dataset with errors are bad requests; a well-formed dataset that does
    not fit the job (records the method does not read, examples over max_seq_length) and any other
    refusal of the job's own fields (e.g. a policy that would loosen the platform's) are unprocessable."""
    if exc.reason == "config":
        return NotFound(str(exc))
    if exc.reason == "method":
        return BadRequest(str(exc))
    named = f"`dataset` {dataset['namespace']}/{dataset['name']} ({dataset['files_url']})"
    if exc.reason == "fit":
        return Unprocessable(f"{named} does not fit this job: {exc}")
    if exc.reason == "dataset":
        return BadRequest(f"{named} is not valid: {exc}")
    return Unprocessable(str(exc))


def _check_capacity(settings: Settings, checked: CheckedJob) -> None:
    """Refuse (422, naming `training_option` and its field) a job whose option asks for more GPUs per node
    than a training worker has: ``worker_gpus``, else this machine's (``customizer up`` trains where it answers)."""
    known = settings.worker_gpus is not None
    gpus = settings.worker_gpus if known else available_gpus()
    holder = "a training worker has" if known else "this machine, where jobs train, has"
    try:
        check_capacity(checked.option, gpus, config=checked.config.urn, holder=holder)
    except InsufficientResources as exc:
        raise Unprocessable(f"`training_option`: {exc}") from exc


def _guidance(body: JobCreate, checked: CheckedJob) -> list[dict[str, Any]]:
    """The job's warnings: the pre-flight's guidance, what the server ignores, and a cost over the budget."""
    warnings = [w.model_dump() for w in checked.warnings]
    warnings += [
        {"message": f"`hyperparameters.{name}` is ignored", "explanation": _ignored_reason(name)} for name in body.ignored_hyperparameters
    ]
    if body.integrations and importlib.util.find_spec("wandb") is None:
        warnings.append({"message": "`integrations` are recorded but W&B is not installed on this server",
                         "explanation": "customizer tracks every job in MLflow; install wandb where jobs run to also report to W&B "
                                        "(the wandb-api-key header is passed to the run)"})
    ceiling, cost = checked.spec.budget.max_device_hours, checked.estimate
    if ceiling is not None and cost is not None and cost.device_hours > ceiling:
        warnings.append({"message": f"the estimate ({cost.device_hours:.2f} device-hours) is over `budget.max_device_hours` ({ceiling:g})",
                         "explanation": "the job is refused before training unless prompting the base model already reaches "
                                        "the target score; lower epochs or the dataset's size, or raise the budget"})
    return warnings


def _check_and_start(
    settings: Settings, body: JobCreate, spec: CustomizationSpec, dataset: dict[str, Any]
) -> tuple[CheckedJob, list[dict[str, Any]], str]:
    """Run the job's pre-flight on the dataset copy, then start the flow run; returns what the job record needs."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            # The weights may not be on this server: then the job's own pre-flight measures the lengths.
            checked = check(spec, settings, Path(scratch), model="if_available")
        except JobRefused as exc:
            raise _refused(exc, dataset) from exc
    _check_capacity(settings, checked)
    warnings = _guidance(body, checked)
    flow_run_id = orchestrator.start(
        settings.customize_deployment, {"spec": spec.model_dump(mode="json")}, tags=["customizer-api", f"namespace:{body.namespace}"]
    )
    return checked, warnings, flow_run_id


def create_job(store: Store, settings: Settings, body: JobCreate, secrets: dict[str, str], caller: Caller) -> dict[str, Any]:
    """Check a job with the pre-flight every front door runs, start its flow run and record it (in
    the entity store and, as ``job.created``, in the audit trail).

    The job trains on a snapshot of the dataset taken now; its lineage is the dataset's ``files_url``
    with the sha256 of that snapshot, so a retrain reads the source again and sees it change.

    Raises:
        BadRequest: config without a version, method not allowed, dataset invalid, hyperparameters out of range.
        Unprocessable: the dataset does not fit the job (a format the method does not read, examples
            over the config's max_seq_length), naming the file and line; or the pre-flight refused
            another of the job's fields.
        Forbidden: the output model is in a namespace ``caller`` may not use.
        NotFound: config or dataset does not exist (or is in a namespace ``caller`` may not use).
        OrchestratorUnavailable: Prefect is not reachable (nothing is recorded then).
        NotRecorded: the audit record could not be written (the flow run is cancelled, nothing is kept).
    """
    config_namespace, config_name = _split(body.config)
    stored_config = store.find(CONFIG, config_namespace, config_name)
    if stored_config is not None and not caller.sees(stored_config["namespace"]):  # before the pre-flight: it would describe the config
        raise NotFound(f"customization config {body.config} does not exist")
    try:
        parse_config_urn(body.config)
    except CatalogError as exc:
        raise BadRequest(str(exc)) from exc
    try:  # before the pre-flight, whose message would list every namespace's configs
        get_config(body.config, settings, caller.namespaces)
    except CatalogError as exc:
        raise NotFound(str(exc)) from exc
    dataset = dataset_of(store, body.dataset, body.namespace, caller)
    spec_model, suffix = output_model_of(body, dataset)
    caller.check(spec_model.split("/")[0])
    checked_url(settings, caller, ("body", "dataset"), dataset["files_url"])
    folder = snapshot_dataset(dataset["files_url"], settings, caller.namespaces)
    created_by = submitter(body, caller)
    try:
        sealed = {name: seal(settings, value) for name, value in secrets.items()}
        spec = to_spec(body, str(folder), spec_model, dataset["files_url"], created_by).model_copy(update={"secrets": sealed})  # only sealed ones reach Prefect
        spec = signed(spec, settings, caller.principal, caller.namespaces, caller.roles)  # the flow runs it only signed (with auth on)
        checked, warnings, flow_run_id = _check_and_start(settings, body, spec, dataset)
    except BaseException:
        discard_snapshot(settings, folder)  # a refused job leaves no copy behind
        raise
    job_id = prefixed_id("cust", flow_run_id)
    output_model = f"{spec.output_model}{suffix or '@' + job_id}"
    dataset_urn = f"{dataset['namespace']}/{dataset['name']}"
    stamp = now()
    created = iso(stamp)
    wire = public(body.model_dump(mode="json", exclude_none=True, exclude={"ignored_hyperparameters"}))
    if created_by is not None:
        wire["ownership"] = wire.get("ownership", {}) | {"created_by": created_by}
    data = wire | {
        "config": body.config,
        "dataset": dataset_urn,
        "hyperparameters": body.hyperparameters.model_dump(mode="json"),
        "output_model": output_model,
        "status": "created",
        "status_details": {
            "created_at": created, "updated_at": created, "status": "created", "elapsed_time": 0.0, "steps_completed": 0,
            "epochs_completed": 0, "percentage_done": 0.0, "status_logs": [{"updated_at": created, "message": "created"}],
        },
        "config_snapshot": _snapshot(checked.config, checked.option),
        "warnings": warnings,
        "estimate": checked.estimate.model_dump() | {"seconds": checked.estimate.seconds, "describe": checked.estimate.describe()}
        if checked.estimate else None,
    } | JobRun(
        flow_run_id=flow_run_id, dataset_dir=str(folder), dataset_files_url=dataset["files_url"],
        dataset_sha256=checked.dataset.sha256, spec_output_model=spec.output_model, secrets=sealed,
    ).stored()
    try:
        stored = store.add(JOB, job_id, body.namespace, body.name or job_id, data, stamp)
    except Duplicate as exc:
        orchestrator.cancel(flow_run_id)
        raise Conflict(f"a customization job named {body.name!r} already exists in namespace {body.namespace}") from exc
    _record_creation(store, settings, stored, spec, checked)
    _create_output_model(store, stored, checked.config)
    log.info("Job %s: config %s, dataset %s, flow run %s", job_id, body.config, dataset_urn, flow_run_id)
    return stored


def _record_creation(store: Store, settings: Settings, job: dict[str, Any], spec: CustomizationSpec, checked: CheckedJob) -> None:
    """Append ``job.created``; a job whose creation cannot be recorded does not go ahead.

    Raises:
        NotRecorded: the record could not be written (the flow run is cancelled, the job removed).
    """
    run = JobRun.of(job)
    hp = spec.hyperparameters
    summary = {
        "config": spec.config, "dataset": spec.dataset_uri, "dataset_sha256": run.dataset_sha256,
        "method": {"training_type": hp.training_type, "finetuning_type": hp.finetuning_type},
        "estimate": checked.estimate.describe() if checked.estimate else None,
    }
    try:
        audit.record(settings, "job.created", spec.submitted_by, job=job["id"], flow_run=run.flow_run_id, namespace=job["namespace"],
                     model=spec.output_model, after=summary,
                     detail=f"{spec.config} on {spec.dataset_uri} (sha256 {(run.dataset_sha256 or '-')[:16]}), {method_name(hp.training_type, hp.finetuning_type)}")
    except audit.AuditError as exc:  # its message names the database URL, which may hold a password: logged only
        log.error("Job %s not created: %s", job["id"], exc)
        orchestrator.cancel(run.flow_run_id)
        store.remove(JOB, job["id"])
        discard_snapshot(settings, Path(run.dataset_dir or ""))
        raise NotRecorded("the job's creation could not be recorded in the audit trail, so it was not created "
                          "(the server log says why); try again later") from exc


def cancel_job(store: Store, settings: Settings, job: dict[str, Any], caller: Caller) -> None:
    """Ask a job's flow run to stop and append ``job.cancelled`` (who asked, the status it had).

    Raises:
        NotRecorded: the record could not be written; the run is not asked to stop.
        OrchestratorUnavailable: Prefect is not reachable.
    """
    run = JobRun.of(job)
    try:
        audit.record(settings, "job.cancelled", caller.principal, job=job["id"], flow_run=run.flow_run_id, namespace=job.get("namespace"),
                     model=run.spec_output_model, before={"status": job.get("status")}, after={"status": "cancelling"},
                     detail=f"cancellation asked while {job.get('status')}")
    except audit.AuditError as exc:
        log.error("Job %s not cancelled: %s", job["id"], exc)
        raise NotRecorded("the cancellation could not be recorded in the audit trail, so the job was not cancelled "
                          "(the server log says why); try again later") from exc
    orchestrator.cancel(run.flow_run_id)


def _ignored_reason(name: str) -> str:
    return IGNORED_HYPERPARAMETERS.get(name, "not used by customizer's DPO")


def _create_output_model(store: Store, job: dict[str, Any], config: CustomizationConfig) -> None:
    """The output model's Entity Store entry exists from job creation; its artifact completes with the job."""
    namespace, _, name = job["output_model"].partition("/")
    entry = {
        "name": name, "namespace": namespace, "base_model": config.target.name,
        "peft": {"finetuning_type": job["hyperparameters"]["finetuning_type"]} if job["hyperparameters"]["finetuning_type"] != "all_weights" else None,
        "artifact": {"files_url": "", "status": "created", "backend_engine": "hugging_face", "precision": config.target.precision},
        "custom_fields": {"customization_job": job["id"], "config": job["config"]},
        "description": f"output of customization job {job['id']}",
    }
    try:
        store.add(MODEL, prefixed_id("model"), namespace, name, {k: v for k, v in entry.items() if v is not None})
    except Duplicate:
        log.warning("Model %s already exists; job %s will update it", job["output_model"], job["id"])
