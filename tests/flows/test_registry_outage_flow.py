"""The customize flow when the registry cannot be read at the champion check: the job fails with
that reason instead of judging the candidate against the baseline, and the champion stays."""

from __future__ import annotations

import pytest

from core import tracking
from core.processes import free_port
from core.settings import get_settings
from deploy import registry
from tests.flows.test_customize import OUTPUT, spec_for


def test_registry_outage_at_the_champion_read_fails_the_job(services, ok_dataset, tmp_path):
    from mlflow import MlflowClient

    from flows.customize import customize

    settings = get_settings()
    # An earlier job's champion, in the flow's own (SQLite) registry.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    run_id = tracking.start_run(settings, "cust-earlier", tags={}, params={})
    source = tracking.log_artifacts(settings, run_id, adapter, "adapter")
    registry.promote(settings, OUTPUT, registry.register_version(settings, OUTPUT, source, run_id, {}).version)

    # The registry reads go to a server that is down (nothing listens on the port); tracking still works.
    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    with pytest.MonkeyPatch.context() as outage:
        outage.setattr(registry, "client", lambda s: MlflowClient(tracking_uri=dead, registry_uri=dead))
        outage.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        outage.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
        state = customize(spec_for(ok_dataset), return_state=True)
    assert state.is_failed()
    assert "RegistryUnavailable" in state.message and "could not read the champion of team/ok-bot" in state.message
    assert "connection refused" in state.message

    # The registry is back: the champion is where it was and no candidate was registered.
    client = tracking.client(settings)
    assert str(client.get_model_version_by_alias(registry.registered_name(OUTPUT), "champion").version) == "1"
    assert [str(v.version) for v in client.search_model_versions(f"name = '{registry.registered_name(OUTPUT)}'")] == ["1"]
    # The job's MLflow run was closed as FAILED with the reason.
    job_runs = client.search_runs([client.get_experiment_by_name(settings.mlflow_experiment).experiment_id],
                                  filter_string="tags.`customizer.job_id` != 'cust-earlier'")
    assert [r.info.status for r in job_runs] == ["FAILED"]
    assert "could not read the champion" in job_runs[0].data.tags["customizer.failure"]
