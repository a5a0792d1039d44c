"""The MLflow registry on a SQLite store: versions with lineage tags, candidate and champion aliases."""

from pathlib import Path

from core.settings import Settings
from deploy import registry
from core import tracking


def test_register_tag_alias_and_promote(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    run_id = tracking.start_run(settings, "cust-abc", tags={"customizer.config": "x/y@v1"}, params={"epochs": 2})
    source = tracking.log_artifacts(settings, run_id, adapter, "adapter")

    version = registry.register_version(settings, "team/model", source, run_id, {"customizer.dataset.sha256": "f00"})
    assert (version.registered_model, version.version, version.aliases) == ("team.model", "1", ["candidate"])
    assert registry.champion_tags(settings, "team/model") is None

    # The same job registering again gets its version back, not a new one.
    assert registry.register_version(settings, "team/model", source, run_id, {}).version == "1"
    # The job's run is found again by its job id.
    assert tracking.start_run(settings, "cust-abc", tags={}, params={}) == run_id

    promoted = registry.promote(settings, "team/model", "1")
    assert promoted.aliases == ["candidate", "champion"]
    assert registry.champion_tags(settings, "team/model")["customizer.dataset.sha256"] == "f00"

    client = tracking.client(settings)
    assert client.get_model_version("team.model", "1").tags["customizer.dataset.sha256"] == "f00"
    assert client.get_run(run_id).data.params["epochs"] == "2"
