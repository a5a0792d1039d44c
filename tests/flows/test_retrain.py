"""The retrain flow through the real components (Prefect server, MLflow on SQLite, S3 over HTTP):
unchanged data is left alone, changed data retrains the champion's job, and the new version is
promoted only when it beats the champion on the new data."""

import json

from core.settings import get_settings
from core import tracking
from deploy.registry import registered_name
from tests.conftest import ok_rows, write_jsonl
from tests.flows.test_customize import OUTPUT, spec_for


def champion_version() -> str:
    return str(tracking.client(get_settings()).get_model_version_by_alias(registered_name(OUTPUT), "champion").version)


def versions() -> list[str]:
    found = tracking.client(get_settings()).search_model_versions(f"name = '{registered_name(OUTPUT)}'")
    return sorted(str(v.version) for v in found)


def test_retrain_skips_an_overlap_leaves_unchanged_data_and_keeps_a_champion_that_was_not_beaten(services, ok_dataset):
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running

    from flows.customize import customize
    from flows.retrain import retrain

    first = customize(spec_for(ok_dataset))
    assert first.decision.action == "promote" and champion_version() == "1"
    tags = tracking.client(get_settings()).get_model_version(registered_name(OUTPUT), "1").tags
    assert json.loads(tags["customizer.spec"])["dataset"] == str(ok_dataset)

    # A retrain of every model is still running: this one leaves the model to it.
    with get_client(sync_client=True) as client:
        running = client.create_flow_run(retrain, parameters={"output_models": None}, state=Running())
        try:
            (skipped,) = retrain()
        finally:
            client.set_flow_run_state(running.id, Completed(), force=True)
    assert skipped.action == "skipped" and str(running.id) in skipped.reason and "still running" in skipped.reason
    assert versions() == ["1"]

    # Same data: nothing is trained.
    (unchanged,) = retrain()
    assert unchanged.action == "unchanged" and unchanged.dataset_sha256 == first.dataset_sha256
    assert "unchanged" in unchanged.reason and unchanged.result is None
    assert versions() == ["1"]

    # More rows of the same task: the champion's job runs again on them. The champion, scored on the new
    # testing data, already answers every item, so the new version cannot beat it and is not promoted.
    write_jsonl(ok_dataset / "training" / "more.jsonl", ok_rows(8, start=300))
    (changed,) = retrain([OUTPUT])
    assert changed.action == "retrained" and changed.dataset_sha256 != first.dataset_sha256
    result = changed.result
    assert result.dataset_sha256 == changed.dataset_sha256 and result.registered.version == "2"
    reasons = " ".join(result.decision.reasons)
    assert result.candidate.task["exact_match"] > result.baseline.task["exact_match"]  # it beat the base model...
    assert "vs champion exact_match: 100.0" in reasons and "FAILED" in reasons  # ...but not the champion
    assert result.decision.action == "reject" and not changed.promoted
    assert champion_version() == "1" == changed.champion_version
    # The champion was scored on the new data in the job's run.
    run = tracking.client(get_settings()).get_run(result.mlflow_run_id)
    assert run.data.metrics["champion.task.exact_match"] == 1.0


def test_retrain_promotes_a_challenger_that_beats_the_champion_on_new_data(services, ok_dataset):
    from flows.customize import customize
    from flows.retrain import retrain

    first = customize(spec_for(ok_dataset))
    assert first.decision.action == "promote" and champion_version() == "1"

    # The task changed: the answer is now "yes". The champion still says "ok" and scores nothing on it.
    yes = [{"prompt": f"Reply with the word yes. Item {i}", "completion": "yes"} for i in range(30)]
    write_jsonl(ok_dataset / "training" / "train.jsonl", yes[:20])
    write_jsonl(ok_dataset / "testing" / "test.jsonl", yes[20:28])
    (changed,) = retrain()
    assert changed.action == "retrained", changed.reason
    result = changed.result
    assert "vs champion exact_match: 0.0" in " ".join(result.decision.reasons), result.decision.reasons
    assert result.decision.action == "promote", result.decision.reasons
    assert changed.promoted and champion_version() == "2" == changed.champion_version
    assert "version 2 is the champion" in changed.reason
