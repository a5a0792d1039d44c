"""A disk that fills up while a checkpoint is written: training fails with an error that names the
checkpoint and the folder, the earlier checkpoint stays whole (checkpoints are written to a staging
folder and renamed into place; older ones are rotated out only after that), and once there is room
again the job resumes from it. The small disk is a tmpfs mounted for the test; where mounting is
refused, a file size limit (RLIMIT_FSIZE) on the training process stands in for it."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from core.ids import prefixed_id
from tests.conftest import TINY_CONFIG_URN
from tests.faults.conftest import ROOT, flow_run, job_spec, start_job, wait_final
from core.catalog import get_config
from training.common import CheckpointError
from data.ingest import ingest_dataset
from training.launch import TrainingRequest, run
from core.specs import Hyperparameters


def mount_small(folder: Path, size_kib: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)], capture_output=True).returncode == 0


def unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


def folder_kib(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024 + 1


def request_for(tmp_path: Path, settings, dataset: Path, model: Path, work: Path, max_steps: int) -> TrainingRequest:
    hp = {"epochs": 4, "batch_size": 4, "learning_rate": 5e-3, "val_check_interval": 5, "log_every_n_steps": 1, "max_steps": max_steps}
    return TrainingRequest(
        base_model_dir=str(model), dataset=ingest_dataset(str(dataset), tmp_path / "data", seed=0),
        config=get_config(TINY_CONFIG_URN, settings), hyperparameters=Hyperparameters.model_validate(hp), work_dir=str(work),
    )


def assert_whole(checkpoint: Path) -> None:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == int(checkpoint.name.rpartition("-")[2])
    assert load_file(checkpoint / "adapter_model.safetensors")
    assert (checkpoint / "optimizer.pt").stat().st_size > 0


def test_a_full_disk_fails_the_checkpoint_clearly_and_keeps_the_earlier_one(tmp_path, settings, ok_dataset, tiny_model_dir):
    # How much one checkpoint takes, measured: the small disk holds one and not two.
    measured = run(request_for(tmp_path, settings, ok_dataset, tiny_model_dir, tmp_path / "measure", 5), settings)
    one = folder_kib(Path(measured.output_dir).parent / "checkpoints" / "checkpoint-5")

    work = tmp_path / "job"
    checkpoints = work / "checkpoints"
    first = request_for(tmp_path, settings, ok_dataset, tiny_model_dir, work, 5)
    second = request_for(tmp_path, settings, ok_dataset, tiny_model_dir, work, 10)
    if mount_small(checkpoints, one * 3 // 2):
        try:
            run(first, settings)  # checkpoint-5 fits
            with pytest.raises(CheckpointError) as failure:
                run(second, settings)  # resumes from it; checkpoint-10 does not fit
            message = str(failure.value)
            assert_whole(checkpoints / "checkpoint-5")
            left = sorted(p.name for p in checkpoints.iterdir() if p.is_dir())
            assert left == ["checkpoint-5"]  # no partial checkpoint-10, no staging folder left
            # With room again, the job resumes from the checkpoint that was kept.
            subprocess.run(["mount", "-o", "remount,size=64m", str(checkpoints)], check=True)
            resumed = run(second, settings)
            assert resumed.resumed_from == str(checkpoints / "checkpoint-5") and resumed.steps == 10
        finally:
            unmount(checkpoints)
    else:  # no tmpfs here: a file size limit on the training process makes checkpoint-10's optimizer state too big
        run(first, settings)
        limit = (checkpoints / "checkpoint-5" / "optimizer.pt").stat().st_size // 2
        request_file = work / "train-request.json"
        request_file.write_text(second.model_dump_json())
        done = subprocess.run(
            [sys.executable, "-m", "training.launch", str(request_file)], cwd=ROOT, capture_output=True, text=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
        )
        assert done.returncode != 0
        message = done.stderr
        assert_whole(checkpoints / "checkpoint-5")
        assert not (checkpoints / "checkpoint-10").exists()
    assert f"no space left on device while writing checkpoint-10 to {checkpoints}" in message
    assert "checkpoint-5 is intact and a re-run resumes from it" in message


def test_a_full_disk_is_the_jobs_failure_reason(faulty, faulty_settings, dataset):
    """Through the worker: the job's checkpoint folder is a disk with room for a few kilobytes."""
    from api.orchestrator import states

    faulty.start_worker()
    faulty.kill_worker()  # the run waits, scheduled, while its checkpoint folder is mounted
    flow_run_id = start_job(job_spec(dataset, "faults/disk-full", epochs=2))
    checkpoints = faulty_settings.jobs_dir / prefixed_id("cust", flow_run_id) / "checkpoints"
    if not mount_small(checkpoints, 64):
        pytest.skip("mounting a tmpfs is refused here (needs CAP_SYS_ADMIN); the training-level test covers RLIMIT_FSIZE")
    try:
        faulty.start_worker()
        state = wait_final(flow_run_id, 600)
    finally:
        unmount(checkpoints)
    assert state.is_failed(), f"{state.name}: {state.message}"
    status = states([flow_run_id])[flow_run_id]  # what the REST API reports as the job's status
    assert status.status == "failed"
    assert "CheckpointError: no space left on device while writing checkpoint-" in status.message
    assert str(checkpoints) in status.message and "no earlier checkpoint exists" in status.message
    assert flow_run(flow_run_id).state.is_failed()
