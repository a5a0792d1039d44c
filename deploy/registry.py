"""The MLflow model registry: one registered model per output model, one version per job.

Versions carry lineage tags (dataset sha256 and URI, base model, config URN, hyperparameters,
scores, decision); aliases ``candidate`` and ``champion`` mark the latest and the promoted version.
MLflow names may not contain ``/``, so ``namespace/name`` is registered as ``namespace.name``.
A version is created from the MLflow Model its job logged (``deploy.mlflow_model``), so MLflow loads
and serves it (``mlflow.pyfunc.load_model("models:/namespace.name@champion")``); customizer's own
loaders (``download_version``, ``load_version``) take the weights from that model too.

The registry is read fail-closed: only a definite "does not exist" (the registered model or its
alias is absent) reads as "no champion". Any other error (the server down, a locked SQLite database,
a timeout, HTTP 5xx/429) is retried a few times within a bounded time when it is transient, then
raised as :class:`RegistryUnavailable`, so nothing is judged or promoted against a champion that
could not be read.

Every alias move goes through one function (``_move_alias``), which writes an ``alias.moved``
record to the audit trail (``core.audit``) with the version before and after. A move whose record
cannot be written is undone and the ``AuditError`` raised: no alias points anywhere unrecorded.

Where an alias points is not proof that the platform put it there: whoever can write the registry
can move it. What serves, retrains or sets the gate's bar reads the champion through
``deploy.trust.trusted_champion``, which checks the version's signed decision; the readers here
(``champion_version``, ``champion_tags``, ``champions``, ``namespace_champions``) give the raw alias.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from core import audit, tracking
from core import tags as tag
from core.catalog import get_config
from core.settings import Settings
from core.tracking import client
from deploy.mlflow_model import ModelFormatError, download_weights
from training.base_model import resolve_base_model

CHAMPION = "champion"
CANDIDATE = "candidate"
PLATFORM = "customizer"  # the principal of what the platform does by itself, in the audit trail

log = logging.getLogger("customizer.registry")
T = TypeVar("T")

# A read is tried at most READ_ATTEMPTS times, waiting READ_DELAYS_S between tries, and not tried
# again when the next try would likely end past READ_BUDGET_S (MLflow's HTTP client retries each
# request itself too, see core.tracking.client, and SQLite waits up to 20 s on a locked database).
READ_ATTEMPTS = 3
READ_DELAYS_S = (1.0, 3.0)
READ_BUDGET_S = 20.0
_sleep = time.sleep  # replaced in tests

# Substrings (lowercase) of an error or its causes that mark it as transient, and how to say it.
_TRANSIENT = (
    ("connection refused", "connection refused"),
    ("failed to establish a new connection", "connection refused"),
    ("connection reset", "connection reset"),
    ("connection aborted", "connection reset"),
    ("remote end closed", "connection reset"),
    ("remotedisconnected", "connection reset"),
    ("database is locked", "database is locked"),
    ("database table is locked", "database is locked"),
    ("timed out", "timed out"),
    ("timeout", "timed out"),
    ("temporarily unavailable", "temporarily unavailable"),
    ("service unavailable", "HTTP 503"),
    ("bad gateway", "HTTP 502"),
    ("gateway timeout", "HTTP 504"),
    ("too many requests", "HTTP 429 (rate limited)"),
    ("max retries exceeded", "no answer after retries"),
)
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED"}


class RegistryUnavailable(RuntimeError):
    """The registry could not be read (server unreachable, database locked, an unexpected error):
    the caller stops rather than take "no champion" for an answer it did not get."""


class _Absent(Exception):
    """The registered model or alias definitely does not exist (internal)."""


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 10:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def is_absent(exc: BaseException) -> bool:
    """Whether an MLflow error says the registered model (``RESOURCE_DOES_NOT_EXIST``, from the
    SQLite and the REST store alike) or the alias (``INVALID_PARAMETER_VALUE`` "Registered model
    alias ... not found.") does not exist. INVALID_PARAMETER_VALUE means other things too, so the
    message decides there."""
    from mlflow.exceptions import (
        MlflowException,  # delayed: mlflow is heavy (start-up time)
    )

    if not isinstance(exc, MlflowException):
        return False
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    return exc.error_code == "INVALID_PARAMETER_VALUE" and re.search(r"alias \S+ not found", str(exc), re.IGNORECASE) is not None


def _transient_reason(exc: BaseException) -> str | None:
    """A short reason when the error is worth another try (connection refused or reset, timeouts,
    HTTP 5xx/429, a locked database), else None."""
    chain = _chain(exc)
    text = " ".join(f"{type(e).__name__} {e}" for e in chain).lower()
    if match := re.search(r"too many (\d{3}) error responses", text):
        return f"HTTP {match[1]} responses"
    for needle, reason in _TRANSIENT:
        if needle in text:
            return reason
    if any(isinstance(e, (ConnectionError, TimeoutError)) for e in chain):
        return "connection failed"
    if any(getattr(e, "error_code", None) in _TRANSIENT_CODES for e in chain):
        return str(getattr(exc, "error_code", "temporarily unavailable")).lower().replace("_", " ")
    return None


def _short(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return first if len(first) <= 300 else first[:297] + "..."


def _where(settings: Settings) -> str:
    return re.sub(r"//[^/@]*@", "//***@", settings.tracking_uri)  # no credentials in messages


def _read(settings: Settings, what: str, call: Callable[[], T]) -> T:
    """``call()``, retried while it fails transiently; raises ``_Absent`` when it says the model or
    alias does not exist, and RegistryUnavailable for every other failure."""
    from mlflow.exceptions import (
        MlflowException,  # delayed: mlflow is heavy (start-up time)
    )

    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        tried = time.monotonic()
        try:
            return call()
        except (MlflowException, OSError) as exc:
            if is_absent(exc):
                raise _Absent(str(exc)) from exc
            reason = _transient_reason(exc)
            took = time.monotonic() - tried
            delay = READ_DELAYS_S[min(attempt - 1, len(READ_DELAYS_S) - 1)]
            if reason is not None and attempt < READ_ATTEMPTS and time.monotonic() - start + delay + took <= READ_BUDGET_S:
                log.warning("Reading %s from the registry failed (%s), trying again in %.0f s", what, reason, delay)
                _sleep(delay)
                continue
            why = reason or _short(exc)
            tries = f"{attempt} attempt{'s' if attempt > 1 else ''} in {time.monotonic() - start:.0f} s"
            raise RegistryUnavailable(
                f"could not read {what} from the registry at {_where(settings)}: {why} ({tries}); "
                "stopping rather than deciding without it"
            ) from exc


class RegisteredVersion(BaseModel):
    registered_model: str
    version: str
    source: str
    aliases: list[str]


def registered_name(output_model: str) -> str:
    """``namespace/name`` -> the MLflow registered model name ``namespace.name``."""
    return output_model.replace("/", ".")


def register_version(
    settings: Settings, output_model: str, source: str, run_id: str, tags: dict[str, str], description: str = "",
    *, principal: str | None = PLATFORM, job: str | None = None, flow_run: str | None = None,
) -> RegisteredVersion:
    """Create a model version from the job's model and mark it ``candidate``.

    Re-running the same job (same run id) returns the version it already created.

    Args:
        source: the MLflow Model the job logged under ``run_id`` (``models:/<model id>``, see
            ``deploy.mlflow_model.log_chat_model``); the version loads with ``mlflow.pyfunc.load_model``.
        principal, job, flow_run: who moves the ``candidate`` alias and for which job, for its
            audit record (default: the platform itself, no job).

    Raises:
        RegistryUnavailable: whether the model is registered, or where its alias points, could not be read.
        AuditError: the alias move could not be recorded (the alias stays where it was).
    """
    mlflow_client = client(settings)
    name = registered_name(output_model)
    try:
        _read(settings, f"the registered model {output_model}", lambda: mlflow_client.get_registered_model(name))
    except _Absent:  # only a model that definitely does not exist is created
        mlflow_client.create_registered_model(name, tags={tag.OUTPUT_MODEL: output_model})
    existing = [v for v in mlflow_client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    if existing:
        version = existing[0]
    else:
        version = _create_version(settings, mlflow_client, name, source, run_id, tags, description)
    _move_alias(settings, output_model, CANDIDATE, str(version.version), principal=principal, job=job, flow_run=flow_run)
    return describe(settings, output_model, str(version.version))


def _create_version(settings: Settings, mlflow_client, name: str, source: str, run_id: str, tags: dict[str, str], description: str):
    """A new version of ``name`` from ``source``, its run kept as ``run_id``. A LoggedModel source
    (``models:/<model id>``) is looked up by the SQL registry store through MLflow's process-wide
    tracking URI, set here for the call; the model is tagged with the versions made from it, as
    ``mlflow.register_model`` does."""
    model_id = source.removeprefix("models:/") if source.startswith("models:/m-") else None
    with tracking.process_default(settings):
        version = mlflow_client.create_model_version(name, source=source, run_id=run_id, tags=tags, description=description,
                                                     model_id=model_id)
    if model_id is not None:
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS  # delayed: mlflow is heavy (start-up time)

        known = json.loads(mlflow_client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        mlflow_client.set_logged_model_tags(model_id, {
            MLFLOW_MODEL_VERSIONS: json.dumps([*known, {"name": name, "version": str(version.version)}])})
    return version


def set_version_tags(settings: Settings, output_model: str, version: str, tags: dict[str, str]) -> None:
    mlflow_client = client(settings)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(registered_name(output_model), version, key, value)


def promote(
    settings: Settings, output_model: str, version: str,
    *, principal: str | None = PLATFORM, job: str | None = None, flow_run: str | None = None,
) -> RegisteredVersion:
    """Point the ``champion`` alias at ``version`` (recorded in the audit trail).

    Raises:
        RegistryUnavailable: where the alias points now could not be read.
        AuditError: the move could not be recorded (the champion stays where it was).
    """
    _move_alias(settings, output_model, CHAMPION, str(version), principal=principal, job=job, flow_run=flow_run)
    return describe(settings, output_model, version)


def _move_alias(
    settings: Settings, output_model: str, alias: str, version: str, *, principal: str | None, job: str | None, flow_run: str | None
) -> str | None:
    """Point ``alias`` at ``version`` and append an ``alias.moved`` record; returns the version it
    pointed at before (None when it pointed nowhere). An alias already on ``version`` does not move
    and nothing is recorded.

    The move comes first and its record second, so the trail never tells of a move that failed; a
    record that cannot be written undoes the move before the ``AuditError`` is raised.

    Raises:
        RegistryUnavailable: where the alias points now could not be read.
        AuditError: the record could not be written (the alias is back where it was).
    """
    mlflow_client = client(settings)
    name = registered_name(output_model)
    try:
        before = _read(settings, f"the {alias} alias of {output_model}", lambda: mlflow_client.get_registered_model(name).aliases.get(alias))
    except _Absent:
        before = None
    before = None if before is None else str(before)
    if before == version:
        return before
    mlflow_client.set_registered_model_alias(name, alias, version)
    try:
        audit.record(
            settings, "alias.moved", principal, job=job, flow_run=flow_run, model=f"{output_model}@{version}",
            before={"alias": alias, "version": before}, after={"alias": alias, "version": version},
            detail=f"{alias} of {output_model}: {'v' + before if before else 'none'} -> v{version}",
        )
    except audit.AuditError as exc:
        try:
            if before is None:
                mlflow_client.delete_registered_model_alias(name, alias)
            else:
                mlflow_client.set_registered_model_alias(name, alias, before)
        except Exception as undo:  # noqa: BLE001 - reported in the error raised, never swallowed
            raise audit.AuditError(
                f"{exc}; moving the {alias} alias of {output_model} back failed too ({_short(undo)}): "
                f"it points at version {version} without an audit record"
            ) from exc
        raise
    log.info("Moved the %s alias of %s from %s to version %s", alias, output_model, before or "nowhere", version)
    return before


def _champion(settings: Settings, mlflow_client, output_model: str):
    """The champion ModelVersion of ``output_model``, or None when the model or its alias does not exist."""
    name = registered_name(output_model)
    try:
        return _read(settings, f"the champion of {output_model}", lambda: mlflow_client.get_model_version_by_alias(name, CHAMPION))
    except _Absent:
        return None


def champion_tags(settings: Settings, output_model: str) -> dict[str, str] | None:
    """Tags of the current champion version, or None when the model has no champion.

    Raises:
        RegistryUnavailable: the registry could not be read (never taken for "no champion").
    """
    version = _champion(settings, client(settings), output_model)
    return None if version is None else dict(version.tags)


def champions(settings: Settings, output_models: list[str] | None = None) -> list[tuple[str, str | None, dict[str, str]]]:
    """``(output_model, champion version or None, its tags)`` for the given output models, or for
    every registered one, by name. A model without a champion (or not registered) has version None.

    Raises:
        RegistryUnavailable: the registry could not be read (never taken for "no champion").
    """
    mlflow_client = client(settings)
    if output_models is None:
        names, token = [], None
        while True:  # results come in pages
            try:
                page = _read(settings, "the registered models", lambda: mlflow_client.search_registered_models(page_token=token))
            except _Absent as exc:  # a search names no single model: "not found" here is not an answer
                raise RegistryUnavailable(f"could not list the registered models at {_where(settings)}: {exc}") from exc
            names += [m.tags.get(tag.OUTPUT_MODEL) or m.name.replace(".", "/", 1) for m in page]
            if not (token := page.token):
                break
        output_models = sorted(names)
    found = []
    for output_model in output_models:
        version = _champion(settings, mlflow_client, output_model)
        found.append((output_model, None, {}) if version is None else (output_model, str(version.version), dict(version.tags)))
    return found


def download_version(settings: Settings, output_model: str, version: str, dest) -> str:
    """Download a version's model into ``dest``; returns the local folder of its weights (an adapter
    or full weights, the ``weights`` artifact of the MLflow Model).

    Raises:
        deploy.mlflow_model.ModelFormatError: the version's model has no weights artifact.
    """
    return str(download_weights(settings, registered_name(output_model), str(version), dest))


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

    ``ref`` is a version number or an alias (``champion``, ``candidate``). The version's model is
    downloaded from the tracking store and its weights (a LoRA adapter or full weights) loaded; an
    adapter is applied to the base model its ``customizer.config`` tag names, resolved through the
    config catalog.

    Raises:
        VersionNotFound: no such registered model, version or alias, or the version's model holds no weights.
        RegistryUnavailable: the registry could not be read.
    """
    import tempfile
    from pathlib import Path

    # delayed: transformers is heavy (start-up time)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mlflow_client = client(settings)
    name = registered_name(output_model)
    try:
        version = _read(settings, f"version {ref!r} of {output_model}",
                        lambda: mlflow_client.get_model_version(name, ref) if ref.isdigit()
                        else mlflow_client.get_model_version_by_alias(name, ref))
    except _Absent as exc:
        raise VersionNotFound(f"{output_model}: no version or alias {ref!r} in the registry") from exc
    folder = Path(dest or tempfile.mkdtemp(prefix="customizer-model-"))
    try:
        local = download_weights(settings, name, str(version.version), folder)
    except ModelFormatError as exc:
        raise VersionNotFound(f"{output_model} v{version.version}: {exc}") from exc
    if version.tags.get(tag.ARTIFACT) == "adapter" or (local / "adapter_config.json").exists():
        from peft import PeftModel  # delayed: peft is heavy (start-up time)

        base = resolve_base_model(get_config(version.tags[tag.CONFIG], settings).target, settings)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base.path), local)
        tokenizer_dir = base.path  # the prompt format evaluation scored it with (training never changes the vocabulary)
    else:
        model, tokenizer_dir = AutoModelForCausalLM.from_pretrained(local), local
    model.eval()
    return model, AutoTokenizer.from_pretrained(tokenizer_dir), describe(settings, output_model, str(version.version))


def champion_version(settings: Settings, output_model: str) -> str | None:
    """The version the ``champion`` alias points at, or None when there is none.

    Raises:
        RegistryUnavailable: the registry could not be read (never taken for "no champion").
    """
    version = _champion(settings, client(settings), output_model)
    return None if version is None else str(version.version)


def namespace_champions(settings: Settings, namespace: str) -> list[tuple[str, str, dict[str, str]]]:
    """``(output_model, version, tags)`` of every model in ``namespace`` that has a champion, by name.

    Raises:
        RegistryUnavailable: the registry could not be read (never taken for "no champion").
    """
    mlflow_client = client(settings)
    found = []
    models, token = [], None
    while True:  # results come in pages
        try:
            page = _read(settings, f"the registered models of namespace {namespace}",
                         lambda: mlflow_client.search_registered_models(filter_string=f"name LIKE '{namespace}.%'", page_token=token))
        except _Absent as exc:  # a search names no single model: "not found" here is not an answer
            raise RegistryUnavailable(f"could not list the registered models at {_where(settings)}: {exc}") from exc
        models += list(page)
        if not (token := page.token):
            break
    for model in models:
        if not model.name.startswith(f"{namespace}."):  # LIKE reads '_' in a namespace as a wildcard
            continue
        output_model = model.tags.get(tag.OUTPUT_MODEL) or model.name.replace(".", "/", 1)
        # search results do not fill aliases reliably; the registered model's alias map does.
        try:
            version = _read(settings, f"the champion of {output_model}",
                            lambda: mlflow_client.get_registered_model(model.name).aliases.get(CHAMPION))
            if version is None:
                continue
            tags = _read(settings, f"the champion of {output_model}",
                         lambda: dict(mlflow_client.get_model_version(model.name, str(version)).tags))
        except _Absent:  # deleted since the search
            continue
        found.append((output_model, str(version), tags))
    return sorted(found)
