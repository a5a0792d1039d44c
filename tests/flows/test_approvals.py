"""Approvals through Prefect: a held job pauses with a typed form, a reviewer other than the
submitter answers through Prefect's API, and who decided lands on the model version."""

import json
import threading
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.flow_runs import resume_flow_run

from core.ids import uuid_from_id
from core.settings import get_settings
from core.submission import signed
from core import tracking
from deploy.registry import registered_name
from tests.flows.test_customize import OUTPUT, REVIEW_LORA_TOO, spec_for


@pytest.fixture
def fast_approvals(monkeypatch):
    monkeypatch.setenv("CUSTOMIZER_APPROVAL_POLL_SECONDS", "1")


def start(spec) -> tuple[threading.Thread, dict]:
    from flows.customize import customize

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = customize(spec)
        except BaseException as exc:  # noqa: BLE001 - the test inspects how the run ended
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def paused_run(thread: threading.Thread, outcome: dict, timeout: float = 300):
    """Wait for the flow run to pause for an approval; return it."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            assert thread.is_alive(), outcome
            assert time.monotonic() < deadline, "the job never paused for an approval"
            paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["PAUSED"]))))
            if paused:
                return paused[0]
            time.sleep(0.3)


def answer(flow_run, **run_input) -> None:
    resume_flow_run(flow_run.id, run_input=run_input)


def wait_resumed(flow_run_id, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while client.read_flow_run(flow_run_id).state.is_paused():
            assert time.monotonic() < deadline
            time.sleep(0.2)


def logged(flow_run_id, text: str, timeout: float = 30) -> bool:
    """Whether the flow run's log (as Prefect keeps it) shows ``text`` within ``timeout`` seconds."""
    from api import orchestrator

    deadline = time.monotonic() + timeout
    while not any(text in line["message"] for line in orchestrator.logs(str(flow_run_id))):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_a_reviewed_job_waits_twice_and_records_its_reviewer(services, ok_dataset, fast_approvals):
    spec = spec_for(ok_dataset, review_methods=REVIEW_LORA_TOO).model_copy(update={"submitted_by": "alice"})
    thread, outcome = start(spec)

    first = paused_run(thread, outcome)
    assert first.state.state_details.run_input_keyset, "the pause carries a typed input form"
    assert not any(get_settings().jobs_dir.glob("*/checkpoints")), "training started before its approval"
    answer(first, approved=True, reviewer="alice", comment="my own job")  # the submitter cannot approve
    wait_resumed(first.id)
    again = paused_run(thread, outcome)
    assert again.id == first.id
    answer(again, approved=True, reviewer="bob", comment="budget ok")

    time.sleep(2)
    promotion = paused_run(thread, outcome)  # trained, evaluated: now the promotion waits too
    assert any(get_settings().jobs_dir.glob("*/adapter"))
    answer(promotion, approved=True, reviewer="carol", comment="scores look right")
    thread.join(timeout=300)

    result = outcome["result"]
    assert result.decision.action == "promote" and result.decision.reasons[-1] == "approval: approved by carol (scores look right)"
    tags = tracking.client(get_settings()).get_model_version(registered_name(OUTPUT), result.registered.version).tags
    assert json.loads(tags["customizer.approval.training"])["reviewer"] == "bob"
    assert json.loads(tags["customizer.approval.promotion"])["reviewer"] == "carol"
    assert "champion" in result.registered.aliases


def test_a_rejected_promotion_keeps_the_candidate_out(services, ok_dataset, fast_approvals, capsys):
    """Answered from the command line this time: ``customizer approve``."""
    from customizer.cli import main
    from core.ids import prefixed_id

    spec = spec_for(ok_dataset, review_methods=REVIEW_LORA_TOO, approval_timeout_hours=1.0)
    thread, outcome = start(spec)
    job_id = prefixed_id("cust", paused_run(thread, outcome).id)
    assert main(["approve", job_id, "--reviewer", "bob"]) == 0
    assert f"job {job_id}: approved by bob" in capsys.readouterr().out
    wait_resumed(uuid_from_id(job_id))
    assert main(["approve", job_id, "--reviewer", "bob"]) == 2  # nothing to answer while it trains
    assert "is not waiting for an approval" in capsys.readouterr().err
    paused_run(thread, outcome)
    assert main(["approve", job_id, "--reviewer", "carol", "--reject", "--comment", "not convinced"]) == 0
    thread.join(timeout=300)
    result = outcome["result"]
    assert result.decision.action == "reject" and "approval: rejected by carol (not convinced)" in result.decision.reasons
    assert result.registered.aliases == ["candidate"]
    tags = tracking.client(get_settings()).get_model_version(registered_name(OUTPUT), result.registered.version).tags
    assert json.loads(tags["customizer.approval.promotion"]) | {"decided_at": None} == {
        "stage": "promotion", "approved": False, "reviewer": "carol", "comment": "not convinced", "decided_at": None
    }


def test_no_answer_in_time_counts_as_a_rejection(services, ok_dataset, fast_approvals):
    from flows.customize import customize

    spec = spec_for(ok_dataset, review_methods=REVIEW_LORA_TOO, approval_timeout_hours=2 / 3600)
    with pytest.raises(Exception, match=r"training was not approved \(nobody: no approval within the timeout\)"):
        customize(spec)
    assert not any(get_settings().jobs_dir.glob("*/checkpoints"))


def test_with_authentication_on_only_the_platforms_signed_answer_counts(services, ok_dataset, fast_approvals, monkeypatch):
    """The Prefect UI's form sends no signature: refused, the job keeps waiting; the REST API's answer
    (``api.orchestrator.answer``, signed with the platform key) decides, and each decision is audited."""
    from api import orchestrator
    from core import audit
    from core.ids import prefixed_id

    monkeypatch.setenv("CUSTOMIZER_API_KEYS", '{"reviewer-key": ["*"]}')
    spec = spec_for(ok_dataset, review_methods=REVIEW_LORA_TOO, approval_timeout_hours=1.0).model_copy(update={"submitted_by": "alice"})
    thread, outcome = start(signed(spec, get_settings(), "alice", ["*"], ["submit"]))  # as the REST API submits it
    first = paused_run(thread, outcome)
    job_id = prefixed_id("cust", first.id)
    answer(first, approved=True, reviewer="mallory", comment="from the UI form")
    wait_resumed(first.id)
    again = paused_run(thread, outcome)
    assert again.state.state_details.pause_key == "training-approval-1", "the unsigned answer neither approved nor rejected"
    assert not any(get_settings().jobs_dir.glob("*/checkpoints"))
    assert logged(first.id, f"refused while authentication is on; approve through the REST API: POST /v1/customization/jobs/{job_id}/approval")

    orchestrator.answer(str(again.id), {"approved": True, "reviewer": "alice", "comment": "signed, but my own job"})
    wait_resumed(again.id)
    assert paused_run(thread, outcome).state.state_details.pause_key == "training-approval-2", "the submitter cannot approve"
    orchestrator.answer(str(again.id), {"approved": True, "reviewer": "bob", "comment": "budget ok"})
    wait_resumed(again.id)
    time.sleep(2)
    paused_run(thread, outcome)  # the promotion
    orchestrator.answer(str(again.id), {"approved": False, "reviewer": "carol", "comment": "not convinced"})
    thread.join(timeout=300)

    result = outcome["result"]
    assert [(a.stage, a.approved, a.reviewer) for a in result.approvals] == [("training", True, "bob"), ("promotion", False, "carol")]
    assert result.decision.action == "reject"
    decisions = [(r["action"], r["principal"], r["flow_run"], r["model"], r["after"]["stage"])
                 for r in audit.records(get_settings(), job=job_id) if r["action"].startswith("approval.")]
    assert decisions == [("approval.approved", "bob", str(first.id), OUTPUT, "training"),
                         ("approval.rejected", "carol", str(first.id), OUTPUT, "promotion")]
