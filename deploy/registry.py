"""The MLflow model registry: one registered model per output model, one version per job.

Versions carry lineage tags (dataset sha256 and URI, base model, config URN, hyperparameters,
scores, decision); aliases ``candidate`` and ``champion`` mark the latest and the promoted version.
MLflow names may not contain ``/``, so ``namespace/name`` is registered as ``namespace.name``.
"""

from __future__ import annotations

from pydantic import BaseModel

from customizer.settings import Settings
from deploy.tracking import client

CHAMPION = "champion"
CANDIDATE = "candidate"


class RegisteredVersion(BaseModel):
    registered_model: str
    version: str
    source: str
    aliases: list[str]


def registered_name(output_model: str) -> str:
    """``namespace/name`` -> the MLflow registered model name ``namespace.name``."""
    return output_model.replace("/", ".")


def register_version(
    settings: Settings, output_model: str, source: str, run_id: str, tags: dict[str, str], description: str = ""
) -> RegisteredVersion:
    """Create a model version for an adapter logged in ``run_id`` and mark it ``candidate``.

    Re-running the same job (same run id) returns the version it already created.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    name = registered_name(output_model)
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        mlflow_client.create_registered_model(name, tags={"customizer.output_model": output_model})
    existing = [v for v in mlflow_client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    if existing:
        version = existing[0]
    else:
        version = mlflow_client.create_model_version(name, source=source, run_id=run_id, tags=tags, description=description)
    mlflow_client.set_registered_model_alias(name, CANDIDATE, str(version.version))
    return describe(settings, output_model, str(version.version))


def set_version_tags(settings: Settings, output_model: str, version: str, tags: dict[str, str]) -> None:
    mlflow_client = client(settings)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(registered_name(output_model), version, key, value)


def promote(settings: Settings, output_model: str, version: str) -> RegisteredVersion:
    """Point the ``champion`` alias at ``version``."""
    client(settings).set_registered_model_alias(registered_name(output_model), CHAMPION, version)
    return describe(settings, output_model, version)


def champion_tags(settings: Settings, output_model: str) -> dict[str, str] | None:
    """Tags of the current champion version, or None when the model has no champion."""
    from mlflow.exceptions import MlflowException

    try:
        version = client(settings).get_model_version_by_alias(registered_name(output_model), CHAMPION)
    except MlflowException:
        return None
    return dict(version.tags)


def champions(settings: Settings, output_models: list[str] | None = None) -> list[tuple[str, str | None, dict[str, str]]]:
    """``(output_model, champion version or None, its tags)`` for the given output models, or for
    every registered one, by name. A model without a champion (or not registered) has version None."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    if output_models is None:
        names, token = [], None
        while True:  # results come in pages
            page = mlflow_client.search_registered_models(page_token=token)
            names += [m.tags.get("customizer.output_model") or m.name.replace(".", "/", 1) for m in page]
            if not (token := page.token):
                break
        output_models = sorted(names)
    found = []
    for output_model in output_models:
        try:
            version = mlflow_client.get_model_version_by_alias(registered_name(output_model), CHAMPION)
        except MlflowException:
            found.append((output_model, None, {}))
            continue
        found.append((output_model, str(version.version), dict(version.tags)))
    return found


def download_version(settings: Settings, output_model: str, version: str, dest) -> str:
    """Download a version's artifacts (an adapter or full weights) into ``dest``; returns the local folder."""
    import mlflow.artifacts

    source = client(settings).get_model_version(registered_name(output_model), version).source
    return mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=settings.tracking_uri)


def describe(settings: Settings, output_model: str, version: str) -> RegisteredVersion:
    mlflow_client = client(settings)
    name = registered_name(output_model)
    model = mlflow_client.get_model_version(name, version)
    # search/get do not fill aliases reliably; the registered model's alias map does.
    aliases = sorted(a for a, v in mlflow_client.get_registered_model(name).aliases.items() if str(v) == str(version))
    return RegisteredVersion(registered_model=name, version=str(model.version), source=model.source, aliases=aliases)


class VersionNotFound(LookupError):
    """The registered model, version or alias does not exist."""


def load_version(settings: Settings, output_model: str, ref: str = CHAMPION, dest=None):
    """Load a registered version back from MLflow, ready to generate: ``(model, tokenizer, version)``.

    ``ref`` is a version number or an alias (``champion``, ``candidate``). The version's artifacts
    (a LoRA adapter or full weights) are downloaded from the tracking store; an adapter is applied to
    the base model its ``customizer.config`` tag names, resolved through the config catalog.

    Raises:
        VersionNotFound: no such registered model, version or alias.
    """
    import tempfile
    from pathlib import Path

    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mlflow_client = client(settings)
    name = registered_name(output_model)
    try:
        version = (mlflow_client.get_model_version(name, ref) if ref.isdigit()
                   else mlflow_client.get_model_version_by_alias(name, ref))
    except MlflowException as exc:
        raise VersionNotFound(f"{output_model}: no version or alias {ref!r} in the registry") from exc
    folder = Path(dest or tempfile.mkdtemp(prefix="customizer-model-"))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(folder),
                                                      tracking_uri=settings.tracking_uri))
    if version.tags.get("customizer.artifact") == "adapter" or (local / "adapter_config.json").exists():
        from peft import PeftModel

        from training.base_model import resolve_base_model
        from training.catalog import get_config

        base = resolve_base_model(get_config(version.tags["customizer.config"], settings).target, settings)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base.path), local)
        tokenizer_dir = base.path  # the prompt format evaluation scored it with (training never changes the vocabulary)
    else:
        model, tokenizer_dir = AutoModelForCausalLM.from_pretrained(local), local
    model.eval()
    return model, AutoTokenizer.from_pretrained(tokenizer_dir), describe(settings, output_model, str(version.version))
def champion_version(settings: Settings, output_model: str) -> str | None:
    """The version the ``champion`` alias points at, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(settings).get_model_version_by_alias(registered_name(output_model), CHAMPION).version)
    except MlflowException:
        return None


def namespace_champions(settings: Settings, namespace: str) -> list[tuple[str, str, dict[str, str]]]:
    """``(output_model, version, tags)`` of every model in ``namespace`` that has a champion, by name."""
    mlflow_client = client(settings)
    found = []
    for model in mlflow_client.search_registered_models(filter_string=f"name LIKE '{namespace}.%'"):
        if not model.name.startswith(f"{namespace}."):  # LIKE reads '_' in a namespace as a wildcard
            continue
        # search results do not fill aliases reliably; the registered model's alias map does.
        version = mlflow_client.get_registered_model(model.name).aliases.get(CHAMPION)
        if version is None:
            continue
        output_model = model.tags.get("customizer.output_model") or model.name.replace(".", "/", 1)
        found.append((output_model, str(version), dict(mlflow_client.get_model_version(model.name, str(version)).tags)))
    return sorted(found)
