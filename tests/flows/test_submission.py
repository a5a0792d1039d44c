"""The customize flow trusts no parameter it is handed through Prefect: with authentication on it runs
only what the platform signed, a signed job stays in its submitter's namespaces, the policy is
recomputed from its layers, and a run cancelled before it started never trains."""

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from prefect.states import Cancelled

from api import orchestrator
from core.settings import get_settings
from core.submission import signed
from tests.flows.test_customize import spec_for


@pytest.fixture
def nothing_read(monkeypatch):
    """Fails the run if the job's pre-flight (which reads the dataset and the base model) is reached."""
    from tasks import check as check_tasks

    reached = []

    def pre_flight(*args, **kwargs):
        reached.append(args)
        raise AssertionError("the pre-flight ran")

    monkeypatch.setattr(check_tasks, "check", pre_flight)
    return reached


def test_an_unsigned_job_with_authentication_on_stops_before_reading_anything(services, ok_dataset, nothing_read, monkeypatch):
    from flows.customize import customize

    monkeypatch.setenv("CUSTOMIZER_AUTH_REQUIRED", "true")
    state = customize(spec_for(ok_dataset), return_state=True)
    assert state.is_failed() and "not submitted through the platform" in state.message, state.message
    assert nothing_read == []


def test_a_signed_job_whose_dataset_lies_in_another_namespace_stops(services, ok_dataset, nothing_read):
    from flows.customize import customize

    job = spec_for(ok_dataset).model_copy(update={"dataset": "hf://datasets/team-b/tickets"})
    state = customize(signed(job, get_settings(), "alice", ["team"], ["submit"]), return_state=True)
    assert state.is_failed() and "names Data Store namespace 'team-b'" in state.message, state.message
    assert nothing_read == []


def test_a_policy_that_loosens_the_layers_is_refused(services, ok_dataset):
    from flows.customize import customize

    job = spec_for(ok_dataset, review_methods=[])  # the built-in default reviews all_weights, dpo and grpo
    state = customize(signed(job, get_settings(), "alice", ["team"], ["submit"]), return_state=True)
    assert state.is_failed() and "`policy.review_methods`: [] loosens the bound" in state.message, state.message


def test_a_run_cancelled_before_it_starts_never_trains(services, ok_dataset, nothing_read):
    from flows.customize import customize

    parameters = {"spec": spec_for(ok_dataset).model_dump(mode="json")}
    with get_client(sync_client=True) as client:
        # Cancelled through the API while a worker was submitting it: Cancelling, which it cannot leave
        # for Running; the API does not report it cancelled before its worker has stopped it.
        pending = client.create_flow_run(customize, parameters=parameters)
        orchestrator.cancel(str(pending.id))
        assert client.read_flow_run(pending.id).state.type.value == "CANCELLING"
        assert orchestrator.states([str(pending.id)])[str(pending.id)].status == "cancelling"
        state = run_flow(customize, flow_run=client.read_flow_run(pending.id), parameters=parameters, return_type="state")
        assert not state.is_running() and not state.is_completed()

        # Set Cancelled by hand (Prefect's UI) while its process was starting: the process may move it to
        # Running, and the flow then ends at once, Cancelled, before any work.
        forced = client.create_flow_run(customize, parameters=parameters)
        client.set_flow_run_state(forced.id, Cancelled(message="cancelled in the UI"), force=True)
        state = run_flow(customize, flow_run=client.read_flow_run(forced.id), parameters=parameters, return_type="state")
        assert state.is_cancelled() and "cancelled before it started" in state.message, state.message
        assert client.read_flow_run(forced.id).state.is_cancelled()
    assert nothing_read == []


def test_a_retrain_carries_the_champions_submitter_forward(tmp_path, monkeypatch, tmp_path_factory):
    from core.submission import verified
    from tasks.retrain import Champion, DatasetNow, not_resubmittable, retrain_spec

    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CUSTOMIZER_ALLOWED_FILE_ROOTS", f'["{tmp_path_factory.getbasetemp()}"]')
    monkeypatch.setenv("CUSTOMIZER_AUTH_REQUIRED", "true")
    settings = get_settings()
    source = tmp_path / "tickets"
    source.mkdir()
    job = signed(_plain_spec(str(source)), settings, "alice", ["team"], ["submit"])
    champion = Champion(output_model="team/ok-bot", version="1", dataset_uri=str(source), dataset_sha256="0" * 64,
                        spec=type(job).model_validate_json(job.model_dump_json(exclude={"secrets"})))  # as the registry keeps it
    assert not_resubmittable(champion, None) is None
    snapshot = settings.root / "retrain" / "dataset-snapshots" / "abc"
    again = retrain_spec(champion, DatasetNow(source=str(source), folder=str(snapshot), sha256="1" * 64, copied=True))
    assert again.dataset == str(snapshot) and verified(again, settings).principal == "alice"
    assert verified(again, settings).namespaces == ["team"]

    assert "may not use" in not_resubmittable(champion, ["team-b"])  # a retrain signed for another namespace
    unsigned = champion.model_copy(update={"spec": champion.spec.model_copy(update={"submission": None})})
    assert "not submitted through the platform" in not_resubmittable(unsigned, None)
    elsewhere = champion.model_copy(update={"dataset_uri": "/root"})  # a lineage tag edited in the registry
    assert "outside the folders the server may read" in not_resubmittable(elsewhere, None)


def _plain_spec(dataset: str):
    from core.specs import CustomizationSpec
    from tests.conftest import TINY_CONFIG_URN

    return CustomizationSpec(config=TINY_CONFIG_URN, dataset=dataset, output_model="team/ok-bot")
