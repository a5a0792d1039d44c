"""Entity Store: namespaces, projects, datasets and models (``/v1/namespaces``, ``/v1/projects``,
``/v1/datasets``, ``/v1/models``)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from api.customization import DATASET, JOB, MODEL, public
from api.db import Duplicate, iso, now
from api.deps import CallerDep, ListDep, SettingsDep, StoreDep, paginate
from api.errors import Conflict, NotFound
from api.urls import checked_url
from api.schemas import (
    _NAME_PATTERN,
    DatasetCreate, DatasetUpdate, DeleteResponse, ModelCreate, ModelUpdate, NamespaceCreate, NamespaceUpdate, Page,
    ProjectCreate, ProjectUpdate,
)
from api.status import customization_jobs
from core.ids import prefixed_id

router = APIRouter(prefix="/v1", tags=["entity store"])
NAMESPACE, PROJECT = "namespace", "project"
_SORT = {"created_at", "updated_at", "name", "id", "namespace"}


def _deleted(id: str, what: str) -> dict[str, Any]:
    return {"id": id, "deleted_at": iso(now()), "message": f"{what} deleted"}


def _add(store, kind: str, namespace: str, name: str, id: str, data: dict[str, Any]) -> dict[str, Any]:
    try:
        return public(store.add(kind, id, namespace, name, data))
    except Duplicate as exc:
        raise Conflict(f"{kind} {namespace}/{name} already exists" if kind != NAMESPACE else f"namespace {name} already exists") from exc


def _get(store, kind: str, namespace: str, name: str) -> dict[str, Any]:
    found = store.find(kind, namespace, name)
    if found is None:
        raise NotFound(f"{kind} {namespace}/{name} does not exist" if kind != NAMESPACE else f"namespace {name} does not exist")
    return found


# ---------------------------------------------------------------- namespaces


@router.post("/namespaces", summary="Create a namespace")
def create_namespace(body: NamespaceCreate, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(body.id)
    return _add(store, NAMESPACE, "", body.id, body.id, body.model_dump(mode="json", exclude_none=True))


@router.get("/namespaces", summary="List namespaces", response_model=Page)
def list_namespaces(store: StoreDep, caller: CallerDep, params: ListDep) -> dict[str, Any]:
    items = [public(n) | {"namespace": n["id"]} for n in store.all(NAMESPACE)]
    page = paginate(items, params, caller, {"id", "namespace", "project"}, _SORT)
    page["data"] = [{k: v for k, v in n.items() if k != "namespace"} for n in page["data"]]
    return page


@router.get("/namespaces/{namespace_id}", summary="Get a namespace")
def get_namespace(namespace_id: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace_id)
    return public(_get(store, NAMESPACE, "", namespace_id))


@router.patch("/namespaces/{namespace_id}", summary="Update a namespace")
def update_namespace(namespace_id: str, body: NamespaceUpdate, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace_id)
    found = _get(store, NAMESPACE, "", namespace_id)
    return public(store.save(NAMESPACE, found | body.model_dump(mode="json", exclude_unset=True)))


@router.delete("/namespaces/{namespace_id}", summary="Delete a namespace", response_model=DeleteResponse)
def delete_namespace(namespace_id: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace_id)
    found = _get(store, NAMESPACE, "", namespace_id)
    store.remove(NAMESPACE, found["id"])
    return _deleted(found["id"], "namespace")


# ---------------------------------------------------------------- projects


@router.post("/projects", summary="Create a project")
def create_project(body: ProjectCreate, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(body.namespace)
    return _add(store, PROJECT, body.namespace, body.name, prefixed_id("project"), body.model_dump(mode="json", exclude_none=True))


@router.get("/projects", summary="List projects", response_model=Page)
def list_projects(store: StoreDep, caller: CallerDep, params: ListDep) -> dict[str, Any]:
    return paginate([public(p) for p in store.all(PROJECT)], params, caller, {"name", "namespace"}, _SORT)


@router.get("/projects/{namespace}/{project_name}", summary="Get a project")
def get_project(namespace: str, project_name: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    return public(_get(store, PROJECT, namespace, project_name))


@router.patch("/projects/{namespace}/{project_name}", summary="Update a project")
def update_project(namespace: str, project_name: str, body: ProjectUpdate, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    found = _get(store, PROJECT, namespace, project_name)
    return public(store.save(PROJECT, found | body.model_dump(mode="json", exclude_unset=True)))


@router.delete("/projects/{namespace}/{project_name}", summary="Delete a project", response_model=DeleteResponse)
def delete_project(namespace: str, project_name: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    found = _get(store, PROJECT, namespace, project_name)
    store.remove(PROJECT, found["id"])
    return _deleted(found["id"], "project")


# ---------------------------------------------------------------- datasets


@router.post("/datasets", summary="Register a dataset (its files_url, e.g. hf://datasets/ns/name)")
def create_dataset(body: DatasetCreate, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(body.namespace)
    checked_url(settings, caller, ("body", "files_url"), body.files_url)
    name = body.name or body.files_url.rstrip("/").rsplit("/", 1)[-1]
    if not re.fullmatch(_NAME_PATTERN, name):  # a name taken from files_url obeys the rule a sent name does
        raise RequestValidationError([{"loc": ("body", "name"), "type": "value_error",
                                       "msg": f"the name taken from files_url, {name[:64]!r}, is not a valid name (letters, digits, "
                                              ". _ @ + : -, starting with a letter or digit): send `name`"}])
    data = body.model_dump(mode="json", exclude_none=True) | {"name": name}
    return _add(store, DATASET, body.namespace, name, prefixed_id("dataset"), data)


@router.get("/datasets", summary="List datasets", response_model=Page)
def list_datasets(store: StoreDep, caller: CallerDep, params: ListDep) -> dict[str, Any]:
    return paginate([public(d) for d in store.all(DATASET)], params, caller, {"name", "namespace", "project", "format", "files_url"}, _SORT)


@router.get("/datasets/{namespace}/{dataset_name}", summary="Get a dataset")
def get_dataset(namespace: str, dataset_name: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    return public(_get(store, DATASET, namespace, dataset_name))


@router.patch("/datasets/{namespace}/{dataset_name}", summary="Update a dataset")
def update_dataset(namespace: str, dataset_name: str, body: DatasetUpdate, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    checked_url(settings, caller, ("body", "files_url"), body.files_url)
    found = _get(store, DATASET, namespace, dataset_name)
    return public(store.save(DATASET, found | body.model_dump(mode="json", exclude_unset=True, exclude_none=True)))


@router.delete("/datasets/{namespace}/{dataset_name}", summary="Delete a dataset", response_model=DeleteResponse)
def delete_dataset(namespace: str, dataset_name: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    found = _get(store, DATASET, namespace, dataset_name)
    store.remove(DATASET, found["id"])
    return _deleted(found["id"], "dataset")


# ---------------------------------------------------------------- models


def _fresh_models(store, settings, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Models still waiting on their customization job: bring the job (and so the model) up to date."""
    waiting = [m for m in models if (m.get("artifact") or {}).get("status") == "created" and (m.get("custom_fields") or {}).get("customization_job")]
    if not waiting:
        return models
    jobs = [j for j in (store.get(JOB, m["custom_fields"]["customization_job"]) for m in waiting) if j is not None]
    customization_jobs.refresh(store, settings, jobs)
    return [store.get(MODEL, m["id"]) or m for m in models]


def _peft(model: dict[str, Any]) -> Any:
    """``filter[peft][lora]=true`` means a LoRA model, whether ``peft`` says so by type or by a ``lora`` block."""
    peft = model.get("peft")
    if not isinstance(peft, dict):
        return None
    return peft | {"lora": bool(peft.get("lora")) or str(peft.get("finetuning_type", "")).startswith("lora")}


def _base_model_name(model: dict[str, Any]) -> Any:
    base = model.get("base_model")
    return base.get("name") if isinstance(base, dict) else base


def _check_model_urls(settings, caller, body: ModelCreate | ModelUpdate) -> None:
    """A model's artifact and endpoint are read by evaluations: only URLs the server may read or call."""
    if body.artifact is not None:
        checked_url(settings, caller, ("body", "artifact", "files_url"), body.artifact.files_url, kind="model")
    if body.api_endpoint is not None:
        checked_url(settings, caller, ("body", "api_endpoint", "url"), body.api_endpoint.url, kind="endpoint")


@router.post("/models", summary="Create a model")
def create_model(body: ModelCreate, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(body.namespace)
    _check_model_urls(settings, caller, body)
    return _add(store, MODEL, body.namespace, body.name, prefixed_id("model"), body.model_dump(mode="json", exclude_none=True))


@router.get("/models", summary="List models", response_model=Page)
def list_models(store: StoreDep, settings: SettingsDep, caller: CallerDep, params: ListDep) -> dict[str, Any]:
    models = _fresh_models(store, settings, [m for m in store.all(MODEL) if caller.sees(m.get("namespace"))])
    getters = {"base_model": _base_model_name, "prompt": lambda m: bool(m.get("prompt")), "peft": _peft}
    return paginate([public(m) for m in models], params, caller, {"name", "namespace", "project", "base_model", "peft", "prompt", "created_at"}, _SORT, getters)


@router.get("/models/{namespace}/{model_name}", summary="Get a model (names may carry @<job id>)")
def get_model(namespace: str, model_name: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    return public(_fresh_models(store, settings, [_get(store, MODEL, namespace, model_name)])[0])


@router.patch("/models/{namespace}/{model_name}", summary="Update a model")
def update_model(namespace: str, model_name: str, body: ModelUpdate, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    _check_model_urls(settings, caller, body)
    found = _get(store, MODEL, namespace, model_name)
    return public(store.save(MODEL, found | body.model_dump(mode="json", exclude_unset=True, exclude_none=True)))


@router.delete("/models/{namespace}/{model_name}", summary="Delete a model", response_model=DeleteResponse)
def delete_model(namespace: str, model_name: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    found = _get(store, MODEL, namespace, model_name)
    store.remove(MODEL, found["id"])
    return _deleted(found["id"], "model")
