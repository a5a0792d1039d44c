"""A job whose training option asks for more GPUs than the worker has fails when it reaches training,
before any model is loaded or process started, with what it asks for and what the worker has as the
reason on its run (as a job over its budget is refused before training)."""


import pytest

from core import tags as tag
from core import tracking
from core.settings import get_settings
from tests.conftest import add_config
from tests.flows.test_customize import spec_for
from training.resources import available_gpus


def test_a_job_needing_more_gpus_than_the_worker_has_fails_before_training(services, ok_dataset, tiny_model_dir, tmp_path, monkeypatch):
    from flows.customize import customize

    if available_gpus() >= 8:
        pytest.skip("this machine has 8 GPUs: the option fits")
    add_config(tmp_path / "configs", monkeypatch, "test/eight-gpus@v1", tiny_model_dir, num_gpus=8, prompt_format=None)

    spec = spec_for(ok_dataset).model_copy(update={"config": "test/eight-gpus@v1"})
    reason = r"config test/eight-gpus@v1 option sft/lora asks for 8 GPUs per node \(`num_gpus` 8\); this worker has \d GPUs? and \d+ CPU core"
    with pytest.raises(Exception, match=reason):
        customize(spec)
    settings = get_settings()
    jobs = list(settings.jobs_dir.iterdir())
    assert len(jobs) == 1 and not (jobs[0] / "checkpoints").exists(), "training started despite the missing GPUs"
    assert not (jobs[0] / "train-request.json").exists()  # no torchrun was launched
    assert services.objects() == {}

    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert "asks for 8 GPUs per node (`num_gpus` 8); this worker has" in run.data.tags[tag.FAILURE]
