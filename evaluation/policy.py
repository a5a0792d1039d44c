"""Promotion policies in layers: built-in defaults < the operator's (global, then per namespace) <
the job's own, which may only tighten what is below it.

The operator keeps YAML files in the policy folder (``Settings.policies_dir``): ``_global.yaml``
governs every namespace and ``<namespace>.yaml`` applies over it (a namespace starts with a letter
or a digit, so none is called ``_global``). A file states only the fields it sets; every other field
comes from the layer below, down to ``PromotionPolicy()``'s defaults. An operator file may loosen
the built-in defaults (it is the platform's word); a job may not: the layers below are its floor.

A job's own ``policy`` counts for the fields it states that differ from the built-in default. A
spec that travelled as JSON (the REST API's flow run, the registry's ``customizer.spec`` tag, the
Prefect UI's form) carries every field, so a value equal to the built-in default states nothing and
the operator's value stands. Each stated field must be at least as strict as the operator's bound
(``tighten``), else the job is refused, naming the field, the value asked for, the bound and the
file that set it.

A policy file that cannot be read stops the job with the reason (fail closed): it is never taken as
"no policy".
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from core.settings import Settings
from core.specs import CustomizationSpec, PromotionPolicy

GLOBAL = "_global"  # the global layer's file name (without .yaml): no namespace can be called so
BUILT_IN = "built-in default"
JOB = "job"
# An output model's namespace (core.specs): the one name a namespace's policy file may have.
NAMESPACE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_NAMESPACE = re.compile(NAMESPACE_PATTERN)
_CURVES = ("ignore", "hold", "reject")  # diverging_curves, loosest first
_AT_LEAST = ("min_task_gain",)
_AT_MOST = ("max_general_drop", "max_bpb_increase", "approval_timeout_hours", "forgetting_alpha", "max_forgetting_kl")


class PolicyError(ValueError):
    """A policy file that cannot be read, or a namespace that cannot have one (the message says which)."""


class PolicyLoosened(ValueError):
    """A job's policy that loosens the operator's bound on one field or more; the message names each
    field, the value asked for, the bound and where the bound was set."""


class OperatorPolicy(BaseModel):
    """What the operator's layers make of the policy for one namespace (or, with ``namespace`` None,
    for every namespace): each field's value and the layer that set it."""

    namespace: str | None
    policy: PromotionPolicy  # every field stated
    sources: dict[str, str]  # field -> BUILT_IN or the file that set it
    layers: list[str]  # BUILT_IN, then each file that exists, lowest first


def policy_file(settings: Settings, namespace: str | None) -> Path:
    """The operator's policy file of ``namespace`` (None: the global one).

    Raises:
        PolicyError: ``namespace`` is not a namespace's name (it could name a file elsewhere).
    """
    if namespace is None:
        return settings.policies_dir / f"{GLOBAL}.yaml"
    if not _NAMESPACE.match(namespace):
        raise PolicyError(f"`namespace` {namespace!r} is not a namespace: lowercase letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return settings.policies_dir / f"{namespace}.yaml"


def read_policy_file(path: Path) -> PromotionPolicy | None:
    """The policy a file states (its ``model_fields_set`` are the fields it sets), or None when there
    is no file.

    Raises:
        PolicyError: the file cannot be read, is not valid YAML or not a valid policy (the message names it).
    """
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot be read: {exc}") from exc
    try:
        return PromotionPolicy.model_validate(yaml.safe_load(text) or {})
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"{path}: invalid policy: {problems}") from exc


def stated(policy: PromotionPolicy | None) -> dict[str, Any] | None:
    """The fields a policy states, as JSON values (None for no policy): what a layer's file holds."""
    if policy is None:
        return None
    return policy.model_dump(mode="json", include=set(policy.model_fields_set))


def write_policy(settings: Settings, namespace: str | None, policy: PromotionPolicy) -> None:
    """Write the operator's policy file of ``namespace`` (None: the global one) with the fields
    ``policy`` states, atomically: a job never reads half a file.

    Raises:
        PolicyError: a bad namespace.
        OSError: the file could not be written (the old one is left as it was).
    """
    restore_policy(settings, namespace, yaml.safe_dump(stated(policy), sort_keys=False))


def policy_text(settings: Settings, namespace: str | None) -> str | None:
    """The policy file of ``namespace`` (None: the global one) as it stands, None when there is none:
    what ``restore_policy`` puts back, even when it is not a valid policy.

    Raises:
        PolicyError: a bad namespace, or the file cannot be read.
    """
    path = policy_file(settings, namespace)
    if not path.exists():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot be read: {exc}") from exc


def restore_policy(settings: Settings, namespace: str | None, text: str | None) -> None:
    """Make the policy file of ``namespace`` (None: the global one) hold ``text`` (None: no file),
    replacing it atomically.

    Raises:
        PolicyError: a bad namespace.
        OSError: the file could not be written or removed.
    """
    path = policy_file(settings, namespace)
    if text is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # a dot first: never a namespace's file
    try:
        with tmp.open("w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def operator_policy(settings: Settings, namespace: str | None) -> OperatorPolicy:
    """The built-in defaults with the global file over them and, for a namespace, its file over that.

    Raises:
        PolicyError: a file that exists cannot be read (fail closed), or a bad namespace.
    """
    values = PromotionPolicy().model_dump()
    sources = dict.fromkeys(values, BUILT_IN)
    layers = [BUILT_IN]
    for path in [policy_file(settings, None)] + ([policy_file(settings, namespace)] if namespace is not None else []):
        layer = read_policy_file(path)
        if layer is None:
            continue
        layers.append(str(path))
        for name in layer.model_fields_set:
            values[name], sources[name] = getattr(layer, name), str(path)
    return OperatorPolicy(namespace=namespace, policy=PromotionPolicy.model_validate(values), sources=sources, layers=layers)


def job_fields(policy: PromotionPolicy) -> list[str]:
    """The fields a job's policy states: those it set, less those equal to the built-in default
    (a spec that travelled as JSON carries every field)."""
    defaults = PromotionPolicy()
    return [name for name in PromotionPolicy.model_fields
            if name in policy.model_fields_set and getattr(policy, name) != getattr(defaults, name)]


def tighten(operator: OperatorPolicy, job: PromotionPolicy, scored: list[str]) -> PromotionPolicy:
    """The operator's policy with the fields the job states, each at least as strict as the operator's.

    Args:
        operator: the operator's layers for the job's namespace.
        job: the job's own policy.
        scored: the general benchmarks the job scores (what ``benchmarks: null`` counts).

    Raises:
        PolicyLoosened: naming every field the job would loosen, its value, the bound and who set it.
    """
    bound = operator.policy
    values = bound.model_dump()
    problems = []
    for name in job_fields(job):
        asked = getattr(job, name)
        allowed = _loosens(name, asked, bound, scored)
        if allowed is not None:
            limit, hint = allowed
            problems.append(f"`policy.{name}`: {_show(asked)} loosens the bound {limit} set by {operator.sources[name]} ({hint})")
        values[name] = asked
    if problems:
        raise PolicyLoosened("; ".join(problems) + "; a job may only tighten its policy")
    return PromotionPolicy.model_validate(values)


def _loosens(name: str, asked: Any, bound: PromotionPolicy, scored: list[str]) -> tuple[str, str] | None:
    """None when ``asked`` is at least as strict as the operator's ``name``, else (the bound as
    shown, what the job may ask for)."""
    current = getattr(bound, name)
    if name in _AT_LEAST:
        return None if asked >= current else (_show(current), f"ask for {_show(current)} or more")
    if name in _AT_MOST:
        if current is None:  # no limit set: any limit tightens
            return None
        return None if asked is not None and asked <= current else (_show(current), f"ask for {_show(current)} or less")
    if name == "max_benchmark_drop":
        limit = bound.benchmark_limit
        shown = _show(limit) + ("" if current is not None else " (3 x max_general_drop)")
        return None if asked is not None and asked <= limit else (shown, f"ask for {_show(limit)} or less")
    if name == "review_methods":
        missing = [m for m in current if m not in asked]
        return None if not missing else (_show(current), f"keep {_show(missing)}; you may add methods")
    if name == "diverging_curves":
        stricter = list(_CURVES[_CURVES.index(current):])
        return None if asked in stricter else (_show(current), f"ask for one of {_show(stricter)}")
    if name == "benchmarks":
        counted = scored if current is None else current  # null counts every benchmark the job scores
        missing = [b for b in counted if b not in (asked or [])]
        shown = _show(current) if current is not None else f"null (every scored benchmark: {_show(scored)})"
        return None if asked is None or not missing else (shown, f"keep {_show(missing)}; you may add benchmarks")
    raise ValueError(f"`policy.{name}`: no rule says which way is stricter")  # a new field needs its rule here


def _show(value: Any) -> str:
    return json.dumps(value)


def effective_policy(spec: CustomizationSpec, settings: Settings) -> tuple[PromotionPolicy, str]:
    """The policy that governs a job, and where it came from: its layers, lowest first, joined by
    `` < `` (e.g. ``built-in default < /policies/_global.yaml < /policies/team-a.yaml < job``).

    Raises:
        PolicyError: an operator's policy file cannot be read (fail closed).
        PolicyLoosened: the job's own policy loosens the operator's.
    """
    namespace = spec.output_model.partition("/")[0]
    operator = operator_policy(settings, namespace)
    policy = tighten(operator, spec.policy, spec.evaluation.general_benchmarks)
    layers = operator.layers + ([JOB] if job_fields(spec.policy) else [])
    return policy, " < ".join(layers)
