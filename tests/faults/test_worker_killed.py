"""kill -9 of the worker (with the flow-run process and the training it runs) during each stage of a
customize job: ingest, training, evaluation, registration and publication. The worker started
next takes the job back; it resumes (training from its last checkpoint) and completes, and at no
point is a version champion without its complete, verified artifacts in the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.ids import prefixed_id
from customizer.up import RESUME_LIMIT, RESUMING, resume_orphaned_runs
from deploy import registry
from deploy.store import StoreError, verify_published
from tests.faults.conftest import (
    DEPLOYMENT, flow_run, job_spec, running_tasks, start_job, state_history, wait_final, wait_until,
)

OUTPUT = "faults/every-stage"


def no_champion_without_artifacts(settings, output_model: str) -> None:
    """The invariant, checked between kills: a champion, if any, is completely published."""
    champion = registry.champion_version(settings, output_model)
    if champion is not None:
        verify_published(output_model, champion, settings)


def complete_checkpoints(folder: Path) -> list[int]:
    return sorted(int(p.name.rpartition("-")[2]) for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file())


def kill_in(faulty, flow_run_id: str, task: str, marker: Path | None = None) -> None:
    """Kill the worker while ``task`` runs: once its held body has started (``marker``), and once
    the Prefect server has the task run as Running."""
    if marker is not None:
        wait_until(marker.exists, 300, f"the {task} task to start")
    wait_until(lambda: task in running_tasks(flow_run_id), 60, f"Prefect to report {task} running")
    faulty.kill_worker()
    assert not flow_run(flow_run_id).state.is_final()  # nothing got to report the loss


def test_a_job_killed_in_every_stage_resumes_and_completes(faulty, faulty_settings, dataset):
    settings = faulty_settings
    marker = faulty.start_worker(hold="ingest")
    flow_run_id = start_job(job_spec(dataset, OUTPUT, epochs=6))
    job_dir = settings.jobs_dir / prefixed_id("cust", flow_run_id)

    # 1. ingest
    kill_in(faulty, flow_run_id, "ingest", marker)

    # 2. training, once a checkpoint is complete and before the last step
    faulty.start_worker()
    first = wait_until(lambda: complete_checkpoints(job_dir / "checkpoints"), 300, "a complete checkpoint", interval=0.1)
    faulty.kill_worker()
    assert not (job_dir / "adapter").exists(), "training had finished before the kill"
    killed_at = complete_checkpoints(job_dir / "checkpoints")[-1]

    # 3. evaluation of the candidate
    marker = faulty.start_worker(hold="evaluate:candidate")
    kill_in(faulty, flow_run_id, "evaluate-candidate", marker)

    # 4. registration
    marker = faulty.start_worker(hold="register")
    kill_in(faulty, flow_run_id, "register", marker)
    no_champion_without_artifacts(settings, OUTPUT)

    # 5. publication: the adapter's files are uploaded, the manifest's upload is in flight
    faulty.s3.hold("/manifest.json")
    faulty.start_worker()
    assert faulty.s3.arrived.wait(timeout=300), "publication did not reach the manifest"
    prefix = f"faults/{OUTPUT}/1/"
    assert "adapter_model.safetensors" in faulty.s3.keys(prefix) and "manifest.json" not in faulty.s3.keys(prefix)
    faulty.kill_worker()
    faulty.s3.release()
    assert registry.champion_version(settings, OUTPUT) is None
    with pytest.raises(StoreError, match="no readable manifest"):
        verify_published(OUTPUT, "1", settings)  # readers refuse the half-uploaded version

    # The next worker takes the job back once more and it completes.
    faulty.start_worker()
    state = wait_final(flow_run_id, 600)
    assert state.is_completed(), f"{state.name}: {state.message}\n{faulty.worker_log()}"

    resumes = [s for s in state_history(flow_run_id) if s.name == RESUMING]
    assert len(resumes) == 5 and all("its worker stopped" in s.message for s in resumes)
    assert first and killed_at < 30  # 6 epochs of 5 steps: killed mid-run

    # Training resumed from its checkpoint, not from the start: no step up to it was trained twice
    # (metrics go to MLflow in batches, so the last ones before a kill may be missing, never doubled).
    client = registry.client(settings)
    run_id = client.get_model_version(registry.registered_name(OUTPUT), "1").run_id
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert all(steps.count(step) <= 1 for step in range(1, killed_at + 1)), steps
    assert set(range(killed_at + 1, 31)) <= set(steps), steps

    # One job, one version: the re-runs reused it, published it completely, then promoted it.
    client = registry.client(settings)
    versions = client.search_model_versions(f"name = '{registry.registered_name(OUTPUT)}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert registry.champion_version(settings, OUTPUT) == "1"
    manifest = verify_published(OUTPUT, "1", settings)
    assert set(manifest.files) >= {"adapter_config.json", "adapter_model.safetensors"}
    tags = client.get_model_version(registry.registered_name(OUTPUT), "1").tags
    assert tags["customizer.published_uri"] == f"s3://models/faults/{OUTPUT}/1/"


def test_a_job_lost_too_often_fails_with_the_reason(faulty, faulty_settings, dataset):
    """A run that keeps losing its process is not resumed forever: past the limit it is crashed,
    and the job's status (the API reads the flow run's state) says why."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running, Scheduled

    from api.orchestrator import states

    faulty.start_worker(hold="ingest")  # the deployment exists; the run is held, never trained
    flow_run_id = start_job(job_spec(dataset, "faults/lost"))
    faulty.kill_worker()
    with get_client(sync_client=True) as client:
        for _ in range(RESUME_LIMIT):  # as if it had been resumed and lost that many times already
            client.set_flow_run_state(flow_run_id, Scheduled(name=RESUMING), force=True)
        client.set_flow_run_state(flow_run_id, Running(), force=True)
        client.update_flow_run(flow_run_id, infrastructure_pid=f"{__import__('socket').gethostname()}:999999999")

    assert resume_orphaned_runs(DEPLOYMENT) == [(flow_run_id, "crashed")]
    state = flow_run(flow_run_id).state
    assert state.is_crashed() and f"{RESUME_LIMIT + 1} times" in state.message and "not resumed again" in state.message
    status = states([flow_run_id])[flow_run_id]
    assert status.status == "failed" and "the worker running this job stopped" in status.message
    assert resume_orphaned_runs(DEPLOYMENT) == []  # a crashed run is left alone


def test_a_run_left_cancelling_without_its_process_is_cancelled_while_the_worker_runs(faulty, faulty_settings, dataset):
    """The worker's watch (``watch_cancellations``) settles a run whose process ended while it was
    cancelling (cancelled as its worker started it), and leaves every other lost run to the next
    worker start, which resumes it."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling, Running

    faulty.start_worker(hold="ingest")
    cancelling = start_job(job_spec(dataset, "faults/cancelling"))
    running = start_job(job_spec(dataset, "faults/running"))
    faulty.kill_worker()
    gone = f"{__import__('socket').gethostname()}:999999999"
    with get_client(sync_client=True) as client:
        for flow_run_id in (running, cancelling):  # as if a worker had started both
            client.update_flow_run(flow_run_id, infrastructure_pid=gone)
            client.set_flow_run_state(flow_run_id, Running(), force=True)
        client.set_flow_run_state(cancelling, Cancelling(), force=True)

    assert resume_orphaned_runs(DEPLOYMENT, cancelling_only=True) == [(cancelling, "cancelled")]
    assert flow_run(cancelling).state.is_cancelled()
    assert flow_run(running).state.is_running()  # lost too, but only a starting worker resumes it
