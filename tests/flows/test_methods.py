"""Training methods through the customize flow: full weights, budget refusal, cancellation."""

import json
import threading
import time

import pytest

from core.settings import get_settings
from core import tracking
from deploy.registry import registered_name
from tests.flows.test_customize import OUTPUT, spec_for


def test_full_weight_sft_registers_and_publishes_the_model(services, ok_dataset):
    from flows.customize import customize

    spec = spec_for(ok_dataset, {"finetuning_type": "all_weights", "learning_rate": 1e-3, "epochs": 2}, operator={"review_methods": []})
    result = customize(spec)
    tags = tracking.client(get_settings()).get_model_version(registered_name(OUTPUT), result.registered.version).tags
    assert tags["customizer.artifact"] == "model" and tags["customizer.finetuning_type"] == "all_weights"
    objects = services.objects(f"{OUTPUT}/{result.registered.version}/")
    assert {"model.safetensors", "config.json", "tokenizer.json", "manifest.json"} <= objects.keys()
    assert not any(name.startswith("adapter_") for name in objects)
    manifest = json.loads(objects["manifest.json"])
    assert set(manifest["files"]) == set(objects) - {"manifest.json"}
    assert result.warnings == ["full-weight training on 18 examples"]  # guidance travels with the result


def test_a_job_over_its_budget_is_refused_before_training(services, ok_dataset):
    from flows.customize import customize

    spec = spec_for(ok_dataset).model_copy(update={"budget": {"max_device_hours": 1e-12}})
    spec = type(spec).model_validate(spec.model_dump())
    with pytest.raises(Exception, match="exceeds the budget"):
        customize(spec)
    jobs = list((get_settings().jobs_dir).iterdir())
    assert len(jobs) == 1 and not (jobs[0] / "checkpoints").exists(), "training started despite the budget"
    assert services.objects() == {}


def test_cancelling_the_flow_run_stops_training_and_publishes_nothing(services, ok_dataset):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.states import Cancelling

    from flows.customize import customize

    outcome = {}

    def run() -> None:
        try:
            outcome["result"] = customize(spec_for(ok_dataset, {"epochs": 400}))
        except BaseException as exc:  # noqa: BLE001 - the test inspects how the run ended
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    jobs_dir = get_settings().jobs_dir
    deadline = time.monotonic() + 300
    while not any(jobs_dir.glob("*/checkpoints/checkpoint-*")):  # training is under way
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.2)
    with get_client(sync_client=True) as client:
        running = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["RUNNING"]))))
        (flow_run,) = [r for r in running if r.name and r.flow_id] if len(running) == 1 else running[:1]
        asked = time.monotonic()
        client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
        thread.join(timeout=120)
        stopped = time.monotonic() - asked
        final = client.read_flow_run(flow_run.id).state
    assert not thread.is_alive() and stopped < 30, f"still running {stopped:.0f} s after the cancel"
    assert "result" not in outcome and "cancelled" in str(outcome["error"]).lower()
    assert final.type.value == "CANCELLED" and "nothing was saved" in final.message
    assert services.objects() == {}


def test_no_fine_tuning_when_prompting_already_meets_the_target(services, ok_dataset, tmp_path, tiny_model_dir, monkeypatch):
    from flows.customize import customize
    from tests.conftest import TINY_CONFIG_URN, add_config
    from core.catalog import get_config
    from data.ingest import ingest_dataset
    from training.sft import train_sft
    from core.specs import Hyperparameters

    # A base model that already does the task: the tiny model fully trained to answer "ok".
    settings = get_settings()
    data = ingest_dataset(str(ok_dataset), tmp_path / "data-for-base", seed=0)
    capable = train_sft(str(tiny_model_dir), data, get_config(TINY_CONFIG_URN, settings),
                        Hyperparameters(finetuning_type="all_weights", epochs=3, batch_size=4, learning_rate=2e-3), tmp_path / "base-job", settings)
    add_config(tmp_path / "configs", monkeypatch, "test/capable@v1", capable.output_dir, prompt_format=None)

    spec = spec_for(ok_dataset).model_copy(update={"config": "test/capable@v1"})
    spec.evaluation.target_score = 70.0  # 8 testing items all right: the lower bound of the score is 74.7
    result = customize(spec)
    assert result.outcome == "prompt_sufficient" and result.registered is None and result.candidate is None
    assert result.prompt_baseline.startswith("zero-shot reaches exact_match 100.0, lower bound 74.7 >= target 70.0")
    assert not any(get_settings().jobs_dir.glob("*/checkpoints")) and services.objects() == {}
    run = tracking.client(get_settings()).get_run(result.mlflow_run_id)
    assert run.data.tags["customizer.decision"] == "no fine-tuning needed" and run.info.status == "FINISHED"
    few_shot = result.baseline.few_shot["exact_match"]  # the few-shot prompt was scored and logged too
    assert 0.0 <= few_shot <= 1.0 and run.data.metrics["baseline.few_shot.exact_match"] == few_shot

    spec.evaluation.force_training = True
    forced = customize(spec)
    assert forced.outcome == "trained" and forced.registered is not None
