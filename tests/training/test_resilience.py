"""Training that survives what goes wrong: SIGKILL and resume, cancellation, early stopping,
reproducibility, and several processes (DDP on the CPU with gloo)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_CONFIG_URN, SESSION_DIR
from core.catalog import get_config
from training.common import Hooks, TrainingCancelled
from data.ingest import ingest_dataset
from training.launch import TrainingRequest, launch, run
from core.specs import Hyperparameters

REPO = Path(__file__).resolve().parents[2]


def request_for(tmp_path: Path, settings, dataset: Path, model: Path, name: str, urn: str = TINY_CONFIG_URN, **hp) -> TrainingRequest:
    values = {"epochs": 4, "batch_size": 2, "learning_rate": 5e-3, "val_check_interval": 3, "log_every_n_steps": 1} | hp
    return TrainingRequest(
        base_model_dir=str(model),
        dataset=ingest_dataset(str(dataset), tmp_path / f"{name}-data", seed=0),
        config=get_config(urn, settings),
        hyperparameters=Hyperparameters.model_validate(values),
        work_dir=str(tmp_path / name),
    )


def adapter(result_dir: str) -> dict[str, torch.Tensor]:
    return load_file(Path(result_dir) / "adapter_model.safetensors")


def test_same_seed_same_loss_curve(tmp_path, settings, ok_dataset, tiny_model_dir):
    first = run(request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "a", epochs=1), settings)
    second = run(request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "b", epochs=1), settings)
    assert first.train_loss == second.train_loss and first.val_loss == second.val_loss
    other_seed = run(request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "c", epochs=1, seed=7), settings)
    assert other_seed.train_loss != first.train_loss


@pytest.mark.faults  # kills the training process mid-epoch and recovers from what it left
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, settings, ok_dataset, tiny_model_dir):
    reference = run(request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "reference"), settings)

    request = request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "killed")
    work = Path(request.work_dir)
    work.mkdir(parents=True)
    (work / "train-request.json").write_text(request.model_dump_json())
    process = subprocess.Popen(
        [sys.executable, "-m", "training.launch", str(work / "train-request.json")],
        cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not (work / "checkpoints" / "checkpoint-6" / "trainer_state.json").exists():
        assert process.poll() is None, "the training process ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (work / "adapter").exists(), "a killed run must not leave an output behind"

    resumed = run(request, settings)
    step = int(resumed.resumed_from.rpartition("-")[2])
    assert 6 <= step < resumed.steps == reference.steps == 36  # resumed mid-run (9 steps per epoch)
    assert [p for p in resumed.train_loss if p[0] > step] == [p for p in reference.train_loss if p[0] > step]
    expected, got = adapter(reference.output_dir), adapter(resumed.output_dir)
    assert expected.keys() == got.keys() and all(torch.allclose(expected[k], got[k], atol=1e-6) for k in expected)


def test_cancel_stops_training_within_seconds_and_saves_nothing(tmp_path, settings, ok_dataset, tiny_model_dir):
    asked = []

    def should_stop() -> bool:
        asked.append(time.monotonic())
        return len(asked) >= 2

    started = time.monotonic()
    with pytest.raises(TrainingCancelled, match="cancelled at step"):
        run(request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "job", epochs=50), settings, Hooks(should_stop=should_stop))
    assert time.monotonic() - asked[1] < 5, "training went on after it was cancelled"
    assert not (tmp_path / "job" / "adapter").exists()
    assert time.monotonic() - started < 60


def test_early_stopping_keeps_the_best_checkpoint_and_says_why(tmp_path, settings, ok_dataset, tiny_model_dir):
    request = request_for(
        tmp_path, settings, ok_dataset, tiny_model_dir, "job", epochs=6, val_check_interval=1.0,
        early_stopping={"patience": 1, "min_delta": 10.0},  # no later validation can improve by 10
    )
    result = run(request, settings)
    assert result.steps == 18 and len(result.val_loss) == 2  # stopped after epoch 2 of 6
    assert result.stop_reason.startswith("early stopping at step 18: val_loss did not improve by 10.0 for 1 validations")
    assert result.best_step == min(result.val_loss, key=lambda p: p[1])[0]


def test_two_cpu_processes_train_with_ddp_and_deliver_the_same_adapter_format(tmp_path, settings, ok_dataset, tiny_model_dir):
    folder = SESSION_DIR / "ddp-configs"
    folder.mkdir(exist_ok=True)
    (folder / "tiny-ddp.yaml").write_text(
        "namespace: test\nname: tiny-ddp@v1\n"
        f"target: {{name: test/tiny-llama, model_uri: {tiny_model_dir}}}\n"
        "max_seq_length: 128\nlora_target_modules: [q_proj, v_proj]\n"
        "training_options: [{training_type: sft, finetuning_type: lora, num_gpus: 2, micro_batch_size: 2}]\n"
    )
    os.environ["CUSTOMIZER_CONFIG_DIRS"] = json.dumps([*json.loads(os.environ["CUSTOMIZER_CONFIG_DIRS"]), str(folder)])
    from core.settings import get_settings

    settings = get_settings()
    distributed = launch(request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "ddp", urn="test/tiny-ddp@v1", epochs=1, batch_size=4), settings)
    single = run(request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "single", epochs=1, batch_size=4), settings)

    log = (tmp_path / "ddp" / "train-processes.log").read_text()
    assert "rank0" in log and "rank1" in log, "both processes should have trained"
    assert distributed.steps == single.steps == 5  # the global batch of 4 is split over the 2 processes
    ddp_weights, single_weights = adapter(distributed.output_dir), adapter(single.output_dir)
    assert {k: v.shape for k, v in ddp_weights.items()} == {k: v.shape for k, v in single_weights.items()}
    ddp_config = json.loads((Path(distributed.output_dir) / "adapter_config.json").read_text())
    single_config = json.loads((Path(single.output_dir) / "adapter_config.json").read_text())
    assert ddp_config == single_config
