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
