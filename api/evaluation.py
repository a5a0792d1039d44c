"""Evaluator logic behind the routes: configs and targets as entities, evaluation jobs as flow runs
of the ``evaluate`` deployment (their status and results: ``api.status``).

A job reads only what the caller's key may use: configs, targets, models and datasets in other
namespaces answer as if they did not exist, and every URL it would read or call is checked first.
"""

from __future__ import annotations

import logging
from typing import Any

from api import orchestrator
from api.customization import CONFIG as CUSTOMIZATION_CONFIG
from api.customization import MODEL, dataset_of, public
from api.datasets import snapshot_dataset
from api.db import Duplicate, JobRun, Store
from api.deps import Caller
from api.errors import BadRequest, Conflict, NotFound, StoreUnavailable
from api.routes import published
from api.schemas import EvaluationConfigCreate, EvaluationJobCreate, EvaluationTargetCreate
from api.urls import checked_url, refuse
from core.catalog import CatalogError, get_config, parse_config_urn
from core.ids import prefixed_id
from core.settings import Settings
from core.submission import signed
from data.sources import SourceError, checked_files, everyone, local_path
from deploy.registry import RegistryUnavailable
from deploy.store import StoreError
from deploy.trust import UntrustedChampion
from evaluation.custom import ConfigProblem, EvaluationRequest, ModelSpec, check_config

log = logging.getLogger("customizer.api")
JOB, CONFIG, TARGET = "evaluation_job", "evaluation_config", "evaluation_target"
DATA_SUFFIXES = (".jsonl", ".json", ".csv")


def _named(namespace: str, name: str | None, prefix: str) -> tuple[str, str]:
    entity_id = prefixed_id(prefix)
    return entity_id, name or entity_id


def check_config_urls(settings: Settings, caller: Caller, config: dict[str, Any], loc: tuple[str, ...] = ("body",)) -> None:
    """Refuse task datasets given by a URL the server may not read (422)."""
    tasks = config.get("tasks")
    for name, task in (tasks or {}).items() if isinstance(tasks, dict) else ():
        dataset = task.get("dataset") if isinstance(task, dict) else None
        if isinstance(dataset, dict):
            checked_url(settings, caller, (*loc, "tasks", name, "dataset", "files_url"), dataset.get("files_url"))


def check_target_urls(settings: Settings, caller: Caller, target: dict[str, Any], loc: tuple[str, ...] = ("body",)) -> None:
    """Refuse a target whose endpoint the server may not call (422)."""
    model = target.get("model")
    if isinstance(model, dict) and isinstance(model.get("api_endpoint"), dict):
        checked_url(settings, caller, (*loc, "model", "api_endpoint", "url"), model["api_endpoint"].get("url"), kind="endpoint")


def create_config(store: Store, body: EvaluationConfigCreate) -> dict[str, Any]:
    data = body.model_dump(mode="json", exclude_none=True)
    try:
        check_config(data)
    except ConfigProblem as exc:
        raise BadRequest(str(exc)) from exc
    entity_id, name = _named(body.namespace, body.name, "eval-config")
    try:
        return store.add(CONFIG, entity_id, body.namespace, name, data | {"name": name})
    except Duplicate as exc:
        raise Conflict(f"evaluation config {body.namespace}/{name} already exists") from exc


def create_target(store: Store, body: EvaluationTargetCreate) -> dict[str, Any]:
    data = body.model_dump(mode="json", exclude_none=True)
    if body.type == "model" and not body.model:
        raise BadRequest("`model` is required for a target of type model: \"namespace/name\" or {\"api_endpoint\": {...}}")
    entity_id, name = _named(body.namespace, body.name, "eval-target")
    try:
        return store.add(TARGET, entity_id, body.namespace, name, data | {"name": name})
    except Duplicate as exc:
        raise Conflict(f"evaluation target {body.namespace}/{name} already exists") from exc


def _by_urn(store: Store, kind: str, urn: str, namespace: str, caller: Caller) -> dict[str, Any]:
    ns, _, name = urn.rpartition("/")
    found = store.find(kind, ns or namespace, name) or store.get(kind, urn)
    if found is None or not caller.sees(found.get("namespace")):
        raise NotFound(f"{kind.replace('_', ' ')} {urn} does not exist")
    return found


def _model_spec(store: Store, settings: Settings, target: dict[str, Any], namespace: str, caller: Caller) -> ModelSpec:
    """What the target names, as the flow needs it.

    Raises:
        BadRequest: a target type or model that cannot be scored.
    """
    if target.get("type") != "model":
        raise BadRequest(f"evaluation target type {target.get('type')!r} is not supported; use type model")
    model = target.get("model")
    if isinstance(model, dict) and isinstance(model.get("api_endpoint"), dict):
        endpoint = model["api_endpoint"]
        if not endpoint.get("url") or not endpoint.get("model_id"):
            raise BadRequest("`target.model.api_endpoint` needs `url` and `model_id`")
        checked_url(settings, caller, ("body", "target", "model", "api_endpoint", "url"), endpoint["url"], kind="endpoint")
        return ModelSpec(api_url=endpoint["url"], model_id=endpoint["model_id"])
    urn = model if isinstance(model, str) else (model or {}).get("name") if isinstance(model, dict) else None
    if not urn:
        raise BadRequest("`target.model` must be an Entity Store model \"namespace/name\" or {\"api_endpoint\": {url, model_id}}")
    if isinstance(model, dict) and model.get("namespace") and "/" not in urn:
        urn = f"{model['namespace']}/{urn}"
    entry = _by_urn(store, MODEL, urn, namespace, caller)
    custom = entry.get("custom_fields") or {}
    artifact = entry.get("artifact") or {}
    if isinstance(entry.get("api_endpoint"), dict) and entry["api_endpoint"].get("url"):
        checked_url(settings, caller, ("body", "target", "model"), entry["api_endpoint"]["url"], kind="endpoint")
        return ModelSpec(api_url=entry["api_endpoint"]["url"], model_id=entry["api_endpoint"].get("model_id") or urn)
    files_url = artifact.get("files_url") or None
    if files_url and files_url.startswith(published.MODEL_REPOS):
        files_url = _published_folder(settings, caller, files_url)
    if custom.get("customization_job") and artifact.get("status") != "upload_completed":
        raise BadRequest(f"model {urn} is the output of customization job {custom['customization_job']}, which has not published it yet")
    if not files_url and not custom.get("config"):
        raise BadRequest(f"model {urn} has neither artifact.files_url nor custom_fields.config (a config URN naming its base model)")
    checked_url(settings, caller, ("body", "target", "model"), files_url, kind="model")
    if custom.get("config"):
        _check_base_config(store, settings, urn, custom["config"], caller)
    return ModelSpec(config=custom.get("config"), model_uri=files_url)


def _published_folder(settings: Settings, caller: Caller, url: str) -> str:
    """The store folder of the published version a Data Store model repo URL names, for a caller who
    may use its namespace (422 otherwise, as for any URL)."""
    loc = ("body", "target", "model")
    try:
        namespace, name, revision = published.parse_repo_url(url)
    except ValueError as exc:
        raise refuse(loc, url, str(exc)) from exc
    if not everyone(caller.namespaces) and namespace not in caller.namespaces:
        raise refuse(loc, url, f"names Data Store namespace {namespace!r}, which the caller may not use")
    try:
        return published.version_folder(settings, namespace, name, revision)
    except (StoreError, RegistryUnavailable, UntrustedChampion) as exc:
        raise StoreUnavailable(f"{namespace}/{name}@{revision}: {exc}") from exc


def _check_base_config(store: Store, settings: Settings, model_urn: str, config_urn: Any, caller: Caller) -> None:
    """Refuse a model whose ``custom_fields.config`` names a config ``caller`` may not use (as if it did not exist).

    Raises:
        NotFound: the config does not exist, or is another namespace's.
    """
    try:
        if not isinstance(config_urn, str):
            raise CatalogError(f"`config` must be a config URN namespace/name@version, got {config_urn!r}")
        namespace, name = parse_config_urn(config_urn)
        stored = store.find(CUSTOMIZATION_CONFIG, namespace, name)
        if stored is not None and not caller.sees(stored["namespace"]):
            raise CatalogError(f"`config` {config_urn!r} is not in the catalog")
        get_config(config_urn, settings, caller.namespaces)
    except CatalogError as exc:
        raise NotFound(f"model {model_urn}: `custom_fields.{str(exc).removeprefix('`')}") from exc


def _task_file(store: Store, settings: Settings, task_name: str, dataset: Any, namespace: str, caller: Caller) -> str:
    """A task's data file: the first .jsonl/.json/.csv file of its dataset, in place for a server path
    (every file below it checked where it really lies: ``data.sources.checked_files``), else in a copy."""
    if isinstance(dataset, dict) and dataset.get("files_url"):
        files_url = dataset["files_url"]
    elif isinstance(dataset, (str, dict)):
        ref = dataset if isinstance(dataset, str) else f"{dataset.get('namespace') or namespace}/{dataset.get('name')}"
        files_url = dataset_of(store, ref, namespace, caller)["files_url"]
    else:
        raise BadRequest(f"`tasks.{task_name}.dataset` must be {{\"files_url\": ...}} or \"namespace/name\"")
    loc = ("body", "config", "tasks", task_name, "dataset", "files_url")
    checked_url(settings, caller, loc, files_url)
    path = local_path(files_url)
    if path is not None:
        if not path.exists():
            raise BadRequest(f"`tasks.{task_name}.dataset` {files_url}: no such file or folder on the server")
        try:
            files = checked_files(path, settings, caller.namespaces)
        except SourceError as exc:
            raise refuse(loc, files_url, str(exc)) from exc
    else:
        folder = snapshot_dataset(files_url, settings, caller.namespaces)
        files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    candidates = [p for p in files if p.suffix in DATA_SUFFIXES]
    if not candidates:
        raise BadRequest(f"`tasks.{task_name}.dataset` {files_url}: no .jsonl, .json or .csv file there")
    return str(candidates[0])


def create_job(store: Store, settings: Settings, body: EvaluationJobCreate, caller: Caller) -> dict[str, Any]:
    """Resolve config and target, copy the task data, start the ``evaluate`` flow run, record the job.

    Raises:
        NotFound: a config, target, model or dataset that does not exist or that ``caller`` may not use.
        RequestValidationError: a URL the server may not read or call.
    """
    if isinstance(body.config, str):
        config = public(_by_urn(store, CONFIG, body.config, body.namespace, caller))
    else:
        config = body.config.model_dump(mode="json", exclude_none=True)
    try:  # a stored config too: one stored before a rule was added must not run
        check_config(config)
    except ConfigProblem as exc:
        message = str(exc)  # it names the field inside the config: `type`, `tasks.<name>...`
        raise BadRequest("`config." + message[1:] if message.startswith("`") else f"config: {message}") from exc
    target = public(_by_urn(store, TARGET, body.target, body.namespace, caller)) if isinstance(body.target, str) else body.target.model_dump(mode="json", exclude_none=True)
    spec = _model_spec(store, settings, target, body.namespace, caller)
    if config.get("type") != "custom" and spec.api_url:
        raise BadRequest(f"benchmark {config.get('type')!r} runs through lm-eval on a model customizer loads; an api_endpoint target cannot be scored this way")
    data_files = {
        name: _task_file(store, settings, name, task.get("dataset"), body.namespace, caller) for name, task in (config.get("tasks") or {}).items()
    } if config.get("type") == "custom" else {}
    request = EvaluationRequest(config={k: config[k] for k in ("type", "tasks", "groups", "params") if k in config}, model=spec, data_files=data_files)
    request = signed(request, settings, caller.principal, caller.namespaces, caller.roles)  # the flow runs it only signed (with auth on)
    flow_run_id = orchestrator.start(settings.evaluate_deployment, {"request": request.model_dump(mode="json")},
                                     tags=["customizer-api", f"namespace:{body.namespace}"])
    job_id = prefixed_id("eval", flow_run_id)
    data = body.model_dump(mode="json", exclude_none=True) | {
        "config": config, "target": target, "status": "created",
        "status_details": {"message": "created", "progress": 0.0, "task_status": {}},
    } | JobRun(flow_run_id=flow_run_id).stored()
    stored = store.add(JOB, job_id, body.namespace, job_id, data)
    log.info("Evaluation %s: config type %s, flow run %s", job_id, config.get("type"), flow_run_id)
    return stored
