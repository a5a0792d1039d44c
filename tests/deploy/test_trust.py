"""Only a champion whose signed gate decision allows it is trusted: whoever writes to the registry can
move the alias or edit a tag, but not sign. Refusals name the model, the version and why, and are
on the audit trail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

from core import audit, tracking
from core import tags as tag
from core.settings import Settings
from deploy import registry, trust
from deploy.registry import RegistryUnavailable
from deploy.store import publish
from deploy.trust import UntrustedChampion, trusted_champion

MODEL = "team/bot"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def approval(approved: bool, reviewer: str = "rita") -> str:
    return json.dumps({"stage": "promotion", "approved": approved, "reviewer": reviewer, "comment": "", "decided_at": "t"})


def register(settings: Settings, job: str, decision: str, *, signed: bool = True, **extra: str) -> str:
    """A version registered as the register task does: decision tags, then their signature."""
    folder = settings.root / job
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(job.encode())
    (folder / "adapter_config.json").write_text("{}")
    run_id = tracking.start_run(settings, job, tags={}, params={})
    source = tracking.log_artifacts(settings, run_id, folder, "adapter")
    tags = {tag.DECISION: decision, tag.ARTIFACT_SHA256: "d" * 64, **extra}
    version = registry.register_version(settings, MODEL, source, run_id, tags).version
    if signed:
        registry.set_version_tags(settings, MODEL, version, trust.decision_tags(settings, MODEL, version, run_id, tags))
    return version


def refusals(settings: Settings) -> list[dict]:
    return audit.records(settings, model=MODEL, action="champion.refused")


def test_no_champion_is_none_not_an_error(settings):
    assert trusted_champion(settings, MODEL) is None
    register(settings, "cust-1", "promote")  # a candidate only
    assert trusted_champion(settings, MODEL) is None
    assert refusals(settings) == []


def test_a_promoted_version_is_trusted(settings):
    version = register(settings, "cust-1", "promote")
    registry.promote(settings, MODEL, version)
    champion = trusted_champion(settings, MODEL)
    assert (champion.version, champion.tags[tag.DECISION]) == (version, "promote")
    assert refusals(settings) == []


def test_moving_the_alias_to_a_rejected_version_is_refused(settings):
    good = register(settings, "cust-1", "promote")
    registry.promote(settings, MODEL, good)
    rejected = register(settings, "cust-2", "reject")
    tracking.client(settings).set_registered_model_alias("team.bot", "champion", rejected)  # around the platform
    with pytest.raises(UntrustedChampion) as raised:
        trusted_champion(settings, MODEL, purpose="serving")
    assert f"team/bot: the champion alias points at version {rejected}" in str(raised.value)
    assert "the gate decided 'reject'" in str(raised.value)
    (refused,) = refusals(settings)
    assert refused["model"] == f"{MODEL}@{rejected}" and refused["detail"].startswith("serving: the gate decided")


def test_editing_the_decision_to_promote_is_refused(settings):
    rejected = register(settings, "cust-1", "reject")
    client = tracking.client(settings)
    client.set_model_version_tag("team.bot", rejected, tag.DECISION, "promote")
    client.set_registered_model_alias("team.bot", "champion", rejected)
    with pytest.raises(UntrustedChampion, match="changed after the platform signed them"):
        trusted_champion(settings, MODEL)
    # A signature copied from a promoted version does not fit another one.
    promoted = register(settings, "cust-2", "promote")
    copied = client.get_model_version("team.bot", promoted).tags[tag.DECISION_SIGNATURE]
    client.set_model_version_tag("team.bot", rejected, tag.DECISION_SIGNATURE, copied)
    with pytest.raises(UntrustedChampion, match="changed after the platform signed them"):
        trusted_champion(settings, MODEL)
    assert len(refusals(settings)) == 2


def test_a_hold_needs_a_reviewers_approval(settings):
    approved = register(settings, "cust-1", "hold", **{tag.approval("promotion"): approval(True)})
    registry.promote(settings, MODEL, approved)
    assert trusted_champion(settings, MODEL).version == approved
    unanswered = register(settings, "cust-2", "hold")
    registry.promote(settings, MODEL, unanswered)
    with pytest.raises(UntrustedChampion, match="held it and no reviewer approved"):
        trusted_champion(settings, MODEL)
    # The approval cannot be added afterwards: it is part of what was signed.
    tracking.client(settings).set_model_version_tag("team.bot", unanswered, tag.approval("promotion"), approval(True))
    with pytest.raises(UntrustedChampion, match="changed after the platform signed them"):
        trusted_champion(settings, MODEL)


def test_an_unsigned_version_says_how_to_re_approve_it(settings):
    version = register(settings, "cust-1", "promote", signed=False)
    registry.promote(settings, MODEL, version)
    with pytest.raises(UntrustedChampion, match=rf"no platform signature.*customizer reapprove team/bot {version} --reviewer NAME"):
        trusted_champion(settings, MODEL)
    # Re-approval needs the version published (what is signed is its manifest's digest), then signs it.
    folder = settings.root / "cust-1"
    publish(folder, ["adapter_config.json", "adapter_model.safetensors"], MODEL, version, "tiny", {}, settings)
    with pytest.raises(ValueError, match="--reviewer"):
        trust.re_approve(settings, MODEL, version, " ")
    trust.re_approve(settings, MODEL, version, "rita", "checked the scores")
    champion = trusted_champion(settings, MODEL)
    assert json.loads(champion.tags[tag.approval("promotion")])["reviewer"] == "rita"
    assert [r["principal"] for r in audit.records(settings, model=MODEL, action="decision.signed")] == ["rita"]


def test_a_rejected_or_tampered_version_cannot_be_re_approved(settings):
    rejected = register(settings, "cust-1", "reject", signed=False)
    with pytest.raises(ValueError, match="the gate decided 'reject'"):
        trust.re_approve(settings, MODEL, rejected, "rita")
    turned_down = register(settings, "cust-3", "promote", signed=False, **{tag.approval("promotion"): approval(False)})
    with pytest.raises(ValueError, match="a reviewer rejected its promotion"):
        trust.re_approve(settings, MODEL, turned_down, "rita")
    tampered = register(settings, "cust-2", "reject")
    tracking.client(settings).set_model_version_tag("team.bot", tampered, tag.DECISION, "promote")
    with pytest.raises(ValueError, match="cannot be re-approved: its decision"):
        trust.re_approve(settings, MODEL, tampered, "rita")


def test_an_unreadable_registry_fails_closed(settings, monkeypatch):
    class Refusing:
        def get_model_version_by_alias(self, name, alias):
            raise MlflowException("Permission denied for team.bot", PERMISSION_DENIED)

    monkeypatch.setattr(registry, "client", lambda settings: Refusing())
    with pytest.raises(RegistryUnavailable, match="could not read the champion of team/bot"):
        trusted_champion(settings, MODEL)
