"""The training estimate from the device measured here and from finished jobs: the probe's cache,
the method's FLOPs, calibration from MLflow (on SQLite) and the comparison after training."""

from __future__ import annotations

import json
import time

import pytest
import torch

from core import tracking
from core.catalog import get_config
from core.settings import get_settings
from core.specs import Hyperparameters
from tests.conftest import TINY_CONFIG_URN
from training import probe
from training.common import use_bf16
from training.guidance import PRIOR_UTILISATION, achieved, estimate


def test_the_probe_measures_once_per_device_and_dtype_then_reads_its_cache(tmp_path):
    first = probe.device_peak("float32", tmp_path, seconds=0.05)
    assert not first.cached and first.tflops > 0 and first.device == probe.device_name("cpu")
    cache = json.loads((tmp_path / probe.CACHE_FILE).read_text())
    key = probe.cache_key(first.device, "float32", torch.get_num_threads())
    assert cache == {key: pytest.approx(first.tflops)} and f"torch {torch.__version__}" in key

    again = probe.device_peak("float32", tmp_path, seconds=0.05)
    assert again.cached and again.tflops == pytest.approx(first.tflops)
    other = probe.device_peak("bfloat16", tmp_path, seconds=0.05)  # another dtype: measured, added beside
    assert not other.cached and set(json.loads((tmp_path / probe.CACHE_FILE).read_text())) == {key, probe.cache_key(first.device, "bfloat16", torch.get_num_threads())}


def test_an_unreadable_cache_is_measured_again_and_rewritten(tmp_path):
    (tmp_path / probe.CACHE_FILE).write_text("{not json")
    peak = probe.device_peak("float32", tmp_path, seconds=0.05)
    assert not peak.cached and json.loads((tmp_path / probe.CACHE_FILE).read_text())


def cached_peak(settings, tflops: float) -> None:
    """Put a known peak in the settings' probe cache (both precisions), so the estimate's arithmetic is exact."""
    folder = settings.root / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    keys = [probe.cache_key(probe.device_name("cpu"), dtype, torch.get_num_threads()) for dtype in ("float32", "bfloat16")]
    (folder / probe.CACHE_FILE).write_text(json.dumps(dict.fromkeys(keys, tflops)))


def finished_job(settings, config: str, method: tuple[str, str], utilisation: float) -> str:
    run_id = tracking.start_run(settings, f"cust-{time.time_ns()}", {"customizer.config": config},
                                {"training_type": method[0], "finetuning_type": method[1]})
    tracking.log_metric(settings, run_id, tracking.ACHIEVED_UTILISATION, utilisation)
    time.sleep(0.01)  # distinct start times: "most recent" is well defined
    return run_id


def test_a_cpu_estimate_uses_the_measured_peak_and_the_typical_share(settings):
    cached_peak(settings, 0.2)
    config = get_config(TINY_CONFIG_URN, settings)
    cost = estimate(Hyperparameters(epochs=2), config, 100, 50_000, 10**8, settings=settings)
    assert cost.device == "CPU" and cost.peak_tflops == 0.2 and "matmul measured on" in cost.peak_source
    dtype = "bfloat16" if use_bf16(config) else "float32"  # the precision the config trains in here
    assert cost.utilisation == PRIOR_UTILISATION["cpu", dtype] and cost.utilisation_source == f"typical CPU {dtype} share"
    assert cost.seconds == pytest.approx(4 * 10**8 * 100_000 / (0.2e12 * PRIOR_UTILISATION["cpu", dtype]))


def test_finished_jobs_of_the_same_config_and_method_calibrate_the_estimate(settings):
    cached_peak(settings, 0.2)
    config = get_config(TINY_CONFIG_URN, settings)
    finished_job(settings, TINY_CONFIG_URN, ("sft", "lora"), 0.9)  # older than the three below: not counted
    for share in (0.3, 0.5, 0.6):
        finished_job(settings, TINY_CONFIG_URN, ("sft", "lora"), share)
    finished_job(settings, TINY_CONFIG_URN, ("sft", "all_weights"), 0.05)  # another method
    finished_job(settings, "other/config@v1", ("sft", "lora"), 0.05)  # another config
    tracking.start_run(settings, "cust-unfinished", {"customizer.config": TINY_CONFIG_URN}, {"training_type": "sft", "finetuning_type": "lora"})

    assert sorted(tracking.achieved_utilisation(settings, TINY_CONFIG_URN, "sft", "lora")) == [0.3, 0.5, 0.6]
    cost = estimate(Hyperparameters(epochs=2), config, 100, 50_000, 10**8, settings=settings)
    assert cost.utilisation == pytest.approx(0.5)  # the median of the three most recent
    assert "achieved by the last 3 finished job(s)" in cost.describe()
    given = estimate(Hyperparameters(epochs=2), config, 100, 50_000, 10**8, 0.4, settings=settings)
    assert given.utilisation == 0.4 and given.utilisation_source == "set by budget.utilisation"  # the job's own figure wins
    full = estimate(Hyperparameters(epochs=2, finetuning_type="all_weights"), config, 100, 50_000, 10**8, settings=settings)
    assert full.utilisation == pytest.approx(0.05)


def test_an_unreadable_registry_leaves_the_prior_and_says_so(settings, tmp_path, caplog):
    cached_peak(settings, 0.2)
    broken = tmp_path / "broken.db"
    broken.write_text("this is not a database")
    unreadable = settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{broken}"})
    cost = estimate(Hyperparameters(epochs=2), get_config(TINY_CONFIG_URN, settings), 100, 50_000, 10**8, settings=unreadable)
    assert cost.utilisation_source.startswith("typical CPU") and "finished jobs unreadable" in cost.describe()
    assert "estimate not calibrated" in caplog.text


def test_training_is_compared_with_its_estimate_for_the_work_it_did(settings):
    cached_peak(settings, 0.2)
    cost = estimate(Hyperparameters(epochs=2), get_config(TINY_CONFIG_URN, settings), 100, 50_000, 10**8, 0.5, settings=settings)
    done = achieved(cost, train_seconds=cost.seconds / 2, epochs_completed=1.0, tokens=50_000)  # half the work, in half the time
    assert done.ratio == pytest.approx(2.0) and done.utilisation == pytest.approx(0.5)
    assert done.achieved_tflops == pytest.approx(0.1)
    assert get_settings().root == settings.root
