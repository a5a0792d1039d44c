"""Whether the platform stands behind a version being ``champion``: its gate decision, signed.

Whoever can write to the registry can move an alias or edit a tag; only a process holding the
platform key (``core.secrets``) can sign. When a job registers a version, the decision the gate
took, the approvals it went through (stage, reviewer, approved), the version's run, the digest of
the files it publishes and the lineage the platform acts on (the scores the gate compares with, the
spec, config and dataset a retrain repeats) are signed into the ``customizer.decision.signature``
tag (``decision_tags``). Serving, retraining, the gate's comparison with the champion and the
command line read the champion only through ``trusted_champion``, which refuses, naming the model,
the version and why, a champion whose decision does not allow it (rejected, or held without a
reviewer's approval), that carries no signature, or whose signed tags no longer match the
signature. Each refusal is written to the audit trail (``champion.refused``).

A version registered before decisions were signed is refused too, with how to re-approve it:
``customizer reapprove NS/NAME VERSION --reviewer NAME`` (``re_approve``), which a reviewer runs on
the server after checking the version's scores and reasons; it signs the decision again with the
reviewer's approval and the digest of the manifest the store holds.

>>> files_digest({"b.json": "02", "a.safetensors": "01"}) == files_digest({"a.safetensors": "01", "b.json": "02"})
True
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging

from pydantic import BaseModel

from core import audit, secrets
from core import tags as tag
from core.settings import Settings
from deploy import registry
from deploy.store import verify_published

log = logging.getLogger("customizer.trust")

STAGES = ("training", "promotion")
# Lineage the platform acts on besides the decision: the bar the gate compares with (the champion's
# scores on its dataset) and what a retrain repeats (its spec, config and dataset). Signed too.
LINEAGE = (tag.SCORES_CANDIDATE, tag.DATASET_SHA256, tag.DATASET_URI, tag.SPEC, tag.CONFIG)
REAPPROVE = "customizer reapprove {output_model} {version} --reviewer NAME"


class UntrustedChampion(RuntimeError):
    """The ``champion`` alias points at a version the platform's signed decision does not allow:
    nothing serves, retrains or is judged against it."""


class TrustedVersion(BaseModel):
    """A champion whose signed decision allows it."""

    output_model: str
    version: str
    run_id: str
    tags: dict[str, str]


def files_digest(files: dict[str, str]) -> str:
    """One sha256 over ``{file name: file sha256}`` (a manifest's files, or a folder about to be published)."""
    return hashlib.sha256(json.dumps(sorted(files.items()), separators=(",", ":")).encode()).hexdigest()


def _approvals(tags: dict[str, str]) -> list[list]:
    """``[stage, reviewer, approved]`` of each approval tag, by stage.

    Raises:
        ValueError: an approval tag that is not an approval record.
    """
    found = []
    for stage in STAGES:
        if (raw := tags.get(tag.approval(stage))) is None:
            continue
        try:
            record = json.loads(raw)
            found.append([stage, record["reviewer"], record["approved"]])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"its `{tag.approval(stage)}` tag is not an approval record") from exc
    return found


def decision_message(output_model: str, version: str, run_id: str | None, tags: dict[str, str]) -> str:
    """The canonical text that is signed: model, version, decision, approvals, run, artifact digest
    and the lineage the platform acts on (``LINEAGE``).

    Raises:
        ValueError: an approval tag that is not an approval record.
    """
    return json.dumps(
        ["customizer decision v1", output_model, str(version), tags.get(tag.DECISION), _approvals(tags), run_id or "",
         tags.get(tag.ARTIFACT_SHA256), [[key, tags.get(key)] for key in LINEAGE]],
        separators=(",", ":"),
    )


def decision_tags(settings: Settings, output_model: str, version: str, run_id: str | None, tags: dict[str, str]) -> dict[str, str]:
    """The signature tag of the decision ``tags`` record for a version (written next to them)."""
    return {tag.DECISION_SIGNATURE: secrets.sign(settings, decision_message(output_model, version, run_id, tags))}


def _why_not(settings: Settings, output_model: str, version: str, run_id: str | None, tags: dict[str, str]) -> str | None:
    """Why the version may not be champion, or None when its signed decision allows it."""
    action = tags.get(tag.DECISION)
    try:
        approvals = {stage: (reviewer, approved) for stage, reviewer, approved in _approvals(tags)}
        message = decision_message(output_model, version, run_id, tags)
    except ValueError as exc:
        return str(exc)
    reviewer, approved = approvals.get("promotion", (None, None))
    if action == "hold" and not (approved is True and reviewer):
        return "the gate held it and no reviewer approved its promotion"
    if action not in ("promote", "hold"):
        return f"the gate decided {action!r}, not promote" if action else "it has no recorded gate decision"
    if approved is False:
        return f"its promotion was rejected by {reviewer or 'nobody'}"
    if not (signature := tags.get(tag.DECISION_SIGNATURE)):
        return (f"its decision carries no platform signature (registered before decisions were signed, or not by the "
                f"platform); a reviewer who checked it can re-approve it: `{REAPPROVE.format(output_model=output_model, version=version)}`")
    if not secrets.verify(settings, message, signature):
        return "its decision, approvals, run, artifact digest or lineage were changed after the platform signed them"
    return None


def _refuse(settings: Settings, output_model: str, version: str, why: str, principal: str | None, purpose: str) -> UntrustedChampion:
    text = f"{output_model}: the champion alias points at version {version}, which is not trusted: {why}"
    try:
        audit.record(settings, "champion.refused", principal, model=f"{output_model}@{version}",
                     after={"version": version, "purpose": purpose}, detail=f"{purpose}: {why}" if purpose else why)
    except audit.AuditError as exc:  # the refusal stands either way; say that it is not on record
        text += f" (the refusal could not be recorded: {exc})"
    log.error("%s", text)
    return UntrustedChampion(text)


def trusted_champion(settings: Settings, output_model: str, *, principal: str | None = registry.PLATFORM,
                     purpose: str = "") -> TrustedVersion | None:
    """The version the ``champion`` alias points at, when its signed decision allows it; None when
    the model has no champion (or is not registered).

    Args:
        principal, purpose: who asks and for what (``serving``, ``retrain``, ...), for the audit record of a refusal.

    Raises:
        UntrustedChampion: the champion's decision is not promote (or an approved hold), unsigned, or
            does not match its signature (recorded as ``champion.refused``).
        RegistryUnavailable: the registry could not be read (never taken for "no champion").
    """
    found = registry._champion(settings, registry.client(settings), output_model)
    if found is None:
        return None
    version, tags = str(found.version), dict(found.tags)
    if why := _why_not(settings, output_model, version, found.run_id, tags):
        raise _refuse(settings, output_model, version, why, principal, purpose)
    return TrustedVersion(output_model=output_model, version=version, run_id=found.run_id or "", tags=tags)


def re_approve(settings: Settings, output_model: str, version: str, reviewer: str, comment: str = "") -> TrustedVersion:
    """Sign a version's decision again after ``reviewer`` checked it: for a version registered before
    decisions were signed. Only a version the gate promoted or held can be re-approved, and only once
    the store holds all of its files; the digest signed is that of its manifest.

    Raises:
        ValueError: no reviewer; the gate did not promote or hold the version, or a reviewer rejected
            its promotion; or it was signed and its tags changed since.
        deploy.store.StoreError: the version is not (completely) published.
        RegistryUnavailable: the version could not be read.
    """
    if not reviewer.strip():
        raise ValueError("`--reviewer`: name the reviewer who checked the version")
    mlflow_client = registry.client(settings)
    name = registry.registered_name(output_model)
    try:
        found = registry._read(settings, f"version {version} of {output_model}", lambda: mlflow_client.get_model_version(name, version))
    except registry._Absent as exc:
        raise ValueError(f"{output_model} has no version {version} in the registry") from exc
    tags = dict(found.tags)
    if tags.get(tag.DECISION) not in ("promote", "hold"):
        raise ValueError(f"{output_model} v{version}: the gate decided {tags.get(tag.DECISION)!r}; only a promoted or held "
                         "version can be re-approved (train a new version to replace it)")
    if tags.get(tag.DECISION_SIGNATURE):  # signed once: a mismatch means its tags were changed since
        if why := _why_not(settings, output_model, str(version), found.run_id, tags):
            raise ValueError(f"{output_model} v{version} was signed by the platform and cannot be re-approved: {why}")
        return TrustedVersion(output_model=output_model, version=str(version), run_id=found.run_id or "", tags=tags)
    try:
        answers = _approvals(tags)
    except ValueError as exc:
        raise ValueError(f"{output_model} v{version}: {exc}; it cannot be re-approved") from exc
    if any(stage == "promotion" and approved is False for stage, _, approved in answers):
        raise ValueError(f"{output_model} v{version}: a reviewer rejected its promotion; it cannot be re-approved")
    manifest = verify_published(output_model, str(version), settings)
    approval = {"stage": "promotion", "approved": True, "reviewer": reviewer.strip(),
                "comment": comment or "re-approved for a signed decision",
                "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    new = {tag.DECISION: "promote", tag.approval("promotion"): json.dumps(approval),
           tag.ARTIFACT_SHA256: files_digest({n: e.sha256 for n, e in manifest.files.items()})}
    new.update(decision_tags(settings, output_model, str(version), found.run_id, {**tags, **new}))
    # On record first: a signature the trail does not explain is never written.
    audit.record(settings, "decision.signed", reviewer.strip(), model=f"{output_model}@{version}",
                 before={"decision": tags.get(tag.DECISION), "signed": False},
                 after={"decision": "promote", "approved_by": reviewer.strip()}, detail=comment or "re-approved")
    registry.set_version_tags(settings, output_model, str(version), new)
    return TrustedVersion(output_model=output_model, version=str(version), run_id=found.run_id or "", tags={**tags, **new})
