"""prefect.yaml deploys every flow to a real Prefect server (the test harness), and each
deployment's parameter form accepts what the flow accepts and refuses what it refuses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_CONFIG_URN

ROOT = Path(__file__).resolve().parents[2]
FLOWS = ("customize", "evaluate", "ingest", "retrain")


@pytest.fixture(scope="module")
def deployed(prefect_server):
    """Create the work pools prefect.yaml and the README name, then run ``prefect deploy --all``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="customizer", type="process"), overwrite=True)
        # The server checks the template: every placeholder must be a declared variable.
        template = json.loads((ROOT / "deploy" / "k8s-gpu-work-pool.json").read_text())
        client.create_work_pool(WorkPoolCreate(name="customizer-gpu", type="kubernetes", base_job_template=template), overwrite=True)
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    with get_client(sync_client=True) as client:
        yield client


def test_every_flow_is_deployed_on_the_process_pool(deployed):
    listed = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert sorted(d["entrypoint"].rpartition(":")[2] for d in listed) == sorted(FLOWS)
    for flow_name in FLOWS:
        deployment = deployed.read_deployment_by_name(f"{flow_name}/customizer")
        assert deployment.work_pool_name == "customizer"
        assert deployment.enforce_parameter_schema
        assert deployment.entrypoint == f"flows/{flow_name}.py:{flow_name}"

    # Only retrain runs on a schedule, one run at a time: an overlapping one is cancelled.
    retrain = deployed.read_deployment_by_name("retrain/customizer")
    assert [s.schedule.cron for s in retrain.schedules] == ["0 3 * * *"]
    assert retrain.global_concurrency_limit.limit == 1
    assert retrain.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert deployed.read_deployment_by_name("customize/customizer").schedules == []


def test_gpu_work_pool_requests_gpus(deployed):
    pool = deployed.read_work_pool("customizer-gpu")
    container = pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert pool.base_job_template["variables"]["properties"]["gpus"]["default"] == 1


def test_the_customize_form_is_the_spec_with_descriptions_and_defaults(deployed):
    from prefect.utilities.schema_tools import validate

    schema = deployed.read_deployment_by_name("customize/customizer").parameter_openapi_schema
    assert schema["required"] == ["spec"]
    definitions = schema["definitions"]
    spec = definitions["CustomizationSpec"]
    assert schema["properties"]["spec"]["$ref"] == "#/definitions/CustomizationSpec"
    assert spec["required"] == ["config", "dataset"]
    assert "Config URN" in spec["properties"]["config"]["description"]
    hyperparameters = definitions["Hyperparameters"]["properties"]
    assert hyperparameters["epochs"]["default"] and hyperparameters["learning_rate"]["description"]
    assert definitions["PromotionPolicy"]["properties"]["min_task_gain"]["default"] == 0.0

    # A form with only the dataset and the config is complete; one without a dataset is not.
    minimal = {"config": TINY_CONFIG_URN, "dataset": "s3://data/tickets"}
    validate({"spec": minimal}, schema, raise_on_error=True, ignore_required=False)
    with pytest.raises(Exception, match="dataset"):
        validate({"spec": {k: v for k, v in minimal.items() if k != "dataset"}}, schema, raise_on_error=True, ignore_required=False)
    with pytest.raises(Exception, match="epochs"):
        validate({"spec": minimal | {"hyperparameters": {"epochs": "many"}}}, schema, raise_on_error=True, ignore_required=False)


@pytest.mark.parametrize(
    ("flow_name", "good", "bad"),
    [
        ("customize", {"spec": {"config": TINY_CONFIG_URN, "dataset": "d", "output_model": "team/bot"}}, {"spec": {"dataset": "d"}}),
        ("evaluate", {"request": {"config": {}, "model": {"config": TINY_CONFIG_URN}}}, {"request": {"config": {}}}),
        ("ingest", {"dataset": "s3://data/tickets"}, {"dataset": "d", "seed": "x"}),
        ("retrain", {}, {"output_models": "team/bot"}),
    ],
)
def test_each_deployment_takes_its_flows_parameters(deployed, flow_name, good, bad):
    """The server validates a run's parameters against the deployment's schema before it is created."""
    from prefect.exceptions import PrefectHTTPStatusError

    deployment = deployed.read_deployment_by_name(f"{flow_name}/customizer")
    run = deployed.create_flow_run_from_deployment(deployment.id, parameters=good)
    assert run.state.is_scheduled()
    deployed.delete_flow_run(run.id)  # nothing runs: no worker polls the pool here
    with pytest.raises(PrefectHTTPStatusError, match="409"):
        deployed.create_flow_run_from_deployment(deployment.id, parameters=bad)
