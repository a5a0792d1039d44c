"""serve-models answers ``namespace/name`` with its champion only when the platform's signed decision
allows it: a champion alias moved around the platform is refused (409) with why, and audited."""

from __future__ import annotations

import pytest

from core import audit, tracking
from core.settings import Settings
from deploy import registry
from serving.model import ModelServer
from serving.schemas import ServingError
from tests.deploy import sign_decision
from tests.serving import TINY_BASE_NAME


def test_a_forged_champion_is_not_served(tmp_path, tiny_model_dir):
    settings = Settings(data_dir=tmp_path, store_uri=(tmp_path / "store").as_uri())
    for job, decision in (("cust-1", "promote"), ("cust-2", "reject")):
        run_id = tracking.start_run(settings, job, tags={}, params={})
        version = registry.register_version(settings, "team/bot", str(tmp_path), run_id, {}).version
        sign_decision(settings, "team/bot", version, decision)
    server = ModelServer(settings, tiny_model_dir, TINY_BASE_NAME, max_adapters=1)

    registry.promote(settings, "team/bot", "1")
    assert server.lookup("team/bot").name == "team/bot@1"

    tracking.client(settings).set_registered_model_alias("team.bot", "champion", "2")  # around the platform
    with pytest.raises(ServingError) as refused:
        server.lookup("team/bot")
    assert refused.value.status == 409 and refused.value.param == "model"
    assert "team/bot: the champion alias points at version 2, which is not trusted: the gate decided 'reject'" in refused.value.message
    assert [r["detail"] for r in audit.records(settings, model="team/bot", action="champion.refused")] == [
        "serving: the gate decided 'reject', not promote"]
    assert server.lookup("team/bot@1").name == "team/bot@1"  # a version asked for by number is what it is


def test_listing_leaves_champions_out_when_the_registry_is_down_but_serving_stays_strict(tmp_path, tiny_model_dir, monkeypatch, caplog):
    import serving.model
    from deploy.registry import RegistryUnavailable

    settings = Settings(data_dir=tmp_path, store_uri=(tmp_path / "store").as_uri())
    server = ModelServer(settings, tiny_model_dir, TINY_BASE_NAME, max_adapters=1)

    def down(*args, **kwargs):
        raise RegistryUnavailable("could not read the registered models: connection refused")

    monkeypatch.setattr(serving.model, "champions", down)
    monkeypatch.setattr(serving.model, "trusted_champion", down)
    with caplog.at_level("WARNING", logger="customizer.serving"):
        assert [entry["id"] for entry in server.describe()] == [TINY_BASE_NAME]
    assert "without the registry's champions" in caplog.text
    with pytest.raises(ServingError) as unavailable:
        server.lookup("team/bot")
    assert unavailable.value.status == 503
