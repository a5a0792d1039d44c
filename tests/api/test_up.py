"""`customizer up` keeps its state in the data folder: after a restart the jobs are still listed,
their statuses, metrics and logs still read from Prefect and MLflow. (Runs last in this package:
it restarts the platform.)"""

from __future__ import annotations

import pytest
from nemo_microservices import NeMoMicroservices

from tests.api.conftest import wait_for


def test_services_run_below_the_workers_priority(platform):
    """The API, Prefect server and MLflow UI yield the CPU to the worker and the jobs it runs."""
    import psutil

    niceness = {}
    for child in psutil.Process(platform.process.pid).children():
        line = " ".join(child.cmdline())
        name = next(n for n in ("uvicorn", "prefect", "mlflow", "worker") if n in line)
        niceness[name] = {child.nice(), *(grandchild.nice() for grandchild in child.children(recursive=True))}
    base = psutil.Process().nice()
    niced = min(19, base + 10)
    assert niceness == {"uvicorn": {niced}, "prefect": {niced}, "mlflow": {niced}, "worker": {base}}


def test_the_orchestrator_and_the_registry_admit_only_the_platform(platform):
    """Prefect and MLflow ask for the service account, answer no foreign origin or Host, and the UI still loads."""
    import httpx

    with httpx.Client(timeout=30) as client:
        runs = f"{platform.prefect_api}/flow_runs/filter"
        assert client.post(runs, json={}).status_code == 401
        assert client.post(runs, json={}, auth=("customizer", "a-guess-of-32-characters-long-xx")).status_code == 401
        assert client.post(runs, json={}, auth=platform.services_auth).status_code == 200
        preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        assert "access-control-allow-origin" not in client.options(runs, headers=preflight).headers
        port = platform.prefect_api.rsplit(":", 1)[1].split("/")[0]
        assert client.get(f"{platform.prefect_api}/health", headers={"Host": f"evil.example:{port}"}).status_code == 400
        ui = client.get(platform.prefect_api.removesuffix("/api") + "/")
        assert ui.status_code == 200 and "<html" in ui.text.lower()
        alias = f"{platform.mlflow}/api/2.0/mlflow/registered-models/alias"
        champion = {"name": "default/any", "alias": "champion", "version": "1"}
        assert client.post(alias, json=champion).status_code == 401
        assert client.get(f"{platform.mlflow}/api/2.0/mlflow/registered-models/search").status_code == 401
        assert client.get(f"{platform.mlflow}/api/2.0/mlflow/registered-models/search", auth=platform.services_auth).status_code == 200


@pytest.mark.faults  # stops and starts the service it depends on
def test_state_survives_a_restart(platform, example_jobs):
    before = NeMoMicroservices(base_url=platform.api, max_retries=0)
    llama_id, tiny_id = (r.json()["id"] for r in example_jobs)
    wait_for(before, tiny_id, {"completed", "failed", "cancelled"}, timeout=900)
    wait_for(before, llama_id, {"completed", "failed", "cancelled"}, timeout=420)
    jobs = {j.id: j.status for j in before.customization.jobs.list(page_size=100)}
    assert platform.mlflow.startswith("http://")  # the MLflow UI was started and its URL printed
    assert "customizer is up" in platform.output.read_text() and "Prefect UI" in platform.output.read_text()

    platform.restart(mlflow_ui=False)
    after = NeMoMicroservices(base_url=platform.api, max_retries=0)
    assert {j.id: j.status for j in after.customization.jobs.list(page_size=100)} == jobs
    status = after.customization.jobs.status(tiny_id)
    assert status.status == "completed" and status.metrics.metrics.train_loss
    logs = after.customization.jobs.container_logs(llama_id)
    assert any("BaseModelError" in line for line in logs.entries[llama_id].logs["customize"])
    assert "MLflow UI   run: mlflow ui" in platform.output.read_text()
