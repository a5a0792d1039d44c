"""Helpers for tests that need a champion the platform trusts."""

from __future__ import annotations

from core import tags as tag
from core.settings import Settings
from deploy import registry, trust


def sign_decision(settings: Settings, output_model: str, version: str, decision: str = "promote") -> None:
    """Record ``decision`` on a registered version with the platform's signature, as the register task does."""
    found = registry.client(settings).get_model_version(registry.registered_name(output_model), version)
    tags = {**found.tags, tag.DECISION: decision}
    registry.set_version_tags(settings, output_model, version,
                              {tag.DECISION: decision, **trust.decision_tags(settings, output_model, version, found.run_id, tags)})
