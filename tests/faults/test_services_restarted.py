"""The REST API and the Prefect server killed (SIGKILL) and started again while a job trains: the
job is still listed afterwards, its status is true all along (the last known one while Prefect is
away, never a made-up final one), and it completes."""

from __future__ import annotations

import shutil
import sys

import httpx

from tests.faults.conftest import free_port, healthy, kill_group, wait_until

FINAL = {"completed", "failed", "cancelled"}


def start_api(faulty, port: int):
    process = faulty._spawn("api", [sys.executable, "-m", "uvicorn", "--factory", "api.app:app_from_environment",
                                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], faulty.env)
    wait_until(lambda: healthy(f"http://127.0.0.1:{port}/v1/health"), 120, "the REST API")
    return process


def test_a_job_survives_restarts_of_the_api_and_the_prefect_server(faulty, faulty_settings, dataset):
    port = free_port("127.0.0.1")
    faulty.start_worker()
    api = start_api(faulty, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            inside = shutil.copytree(dataset, faulty_settings.data_dir / "datasets" / "restarts")  # where the API may read
            assert client.post("/v1/datasets", json={"name": "restarts", "files_url": inside.as_uri()}).status_code == 200
            created = client.post("/v1/customization/jobs", json={
                "config": "test/tiny-llama@v1.0.0+cpu", "dataset": {"name": "restarts"}, "output_model": "faults/restarts",
                "hyperparameters": {"training_type": "sft", "finetuning_type": "lora", "epochs": 8, "batch_size": 4,
                                    "learning_rate": 0.01, "lora": {"adapter_dim": 8, "adapter_dropout": 0.0}},
            })
            assert created.status_code == 200, created.text
            job_id = created.json()["id"]
            checkpoints = faulty_settings.jobs_dir / job_id / "checkpoints"
            wait_until(lambda: any(checkpoints.glob("checkpoint-*/trainer_state.json")), 420, "training to write a checkpoint")

            # Both services go away without warning in the middle of training.
            kill_group(api)
            kill_group(faulty.prefect)
            assert faulty.worker.poll() is None  # the worker and the job's flow run keep going
            faulty.start_prefect()
            api = start_api(faulty, port)

            listed = client.get("/v1/customization/jobs", params={"page_size": 100}).json()["data"]
            assert job_id in [job["id"] for job in listed]

            def final():
                status = client.get(f"/v1/customization/jobs/{job_id}/status").json()
                return status if status["status"] in FINAL else None

            status = wait_until(final, 600, f"job {job_id} to end", interval=2)
            assert status["status"] == "completed", status["status_logs"]
            assert status["percentage_done"] == 100.0
            model = client.get(f"/v1/models/{created.json()['output_model']}").json()
            assert model["artifact"]["status"] == "upload_completed"
    finally:
        kill_group(api)
