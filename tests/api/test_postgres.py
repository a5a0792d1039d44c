"""The production-shaped platform: `customizer up` with its state on PostgreSQL (the REST API's,
MLflow's store and Prefect's server, each in its own database), one customization job through it
end to end, and the API's schema made by its migrations there."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from api.db import open_database
from tests.api.conftest import TINY_CONFIG, add_dataset, start_platform
from tests.conftest import SESSION_DIR, ok_rows
from tests.postgres import binaries, local_postgres

if binaries() is None:  # .ci/run installs it: there the test must run
    if os.environ.get("CI"):
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql), and CI must run the PostgreSQL tests")
    pytest.skip("PostgreSQL is not installed (apt-get install postgresql)", allow_module_level=True)


@pytest.fixture(scope="module")
def server():
    with local_postgres(Path(tempfile.mkdtemp(prefix="customizer-pg-"))) as url:
        yield url


@pytest.fixture(scope="module")
def platform(server):
    started = start_platform(SESSION_DIR / "postgres", env={"CUSTOMIZER_POSTGRES_URL": server})
    yield started
    started.stop()


def query(server: str, database: str, sql: str) -> list[tuple]:
    with psycopg.connect(f"{server}/{database}") as conn:
        return conn.execute(sql).fetchall()


def test_a_job_runs_end_to_end_with_every_state_on_postgres(server, platform):
    with httpx.Client(base_url=platform.api, timeout=120) as client:
        add_dataset(client, "team-pg", "tickets", ok_rows(16))
        created = client.post("/v1/customization/jobs", json={
            "config": TINY_CONFIG, "dataset": "team-pg/tickets", "namespace": "team-pg", "output_model": "team-pg/pg-model",
            "hyperparameters": {"training_type": "sft", "finetuning_type": "lora", "epochs": 1, "batch_size": 4, "learning_rate": 0.001},
            "evaluation": {"general_benchmarks": ["capitals"], "limit": 8, "max_new_tokens": 4},
        })
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 900
        while (status := client.get(f"/v1/customization/jobs/{job_id}/status").json())["status"] not in ("completed", "failed", "cancelled"):
            assert time.monotonic() < deadline, status
            time.sleep(2)
        assert status["status"] == "completed", status.get("status_logs")
        output = client.get(f"/v1/customization/jobs/{job_id}").json()["output_model"]
        model = client.get(f"/v1/models/{output}").json()
        assert model["custom_fields"]["decision"] in ("promote", "reject", "hold")

    # Every part kept its state on PostgreSQL, none in the data folder's SQLite files.
    assert query(server, "customizer_api", f"SELECT kind FROM entities WHERE id = '{job_id}'") == [("customization_job",)]
    assert query(server, "customizer_api", "SELECT version_num FROM alembic_version") == [("0002",)]
    assert ("COMPLETED",) in query(server, "customizer_prefect", "SELECT state_type FROM flow_run WHERE name IS NOT NULL")
    assert query(server, "customizer_mlflow", "SELECT count(*) FROM runs WHERE status = 'FINISHED'")[0][0] >= 1
    assert query(server, "customizer_mlflow", "SELECT count(*) FROM model_versions")[0][0] >= 1
    data = platform.data_dir
    assert not (data / "api" / "api.db").exists() and not (data / "mlflow" / "mlflow.db").exists()
    assert not list((data / "prefect").glob("*.db"))


def test_the_api_schema_is_migrated_on_postgres(server):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from api.db import metadata
    from core.postgres import database_url

    psycopg.connect(f"{server}/postgres", autocommit=True).execute("CREATE DATABASE schema_check")
    url = database_url(server, "api").rsplit("/", 1)[0] + "/schema_check"
    engine = open_database(url)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0002"
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()
