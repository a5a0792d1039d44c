"""``customizer jobs`` and ``customizer datasets`` against the running, keyed platform: each command as a
process, as a script would run it, with the key from the environment and its exit status checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ok_rows
from tests.security.conftest import TINY_HYPERPARAMETERS
from tests.api.conftest import TINY_CONFIG

pytestmark = pytest.mark.platform
REPO = Path(__file__).resolve().parents[2]


def cli(platform, key: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CUSTOMIZER_API_KEY", "CUSTOMIZER_API_URL")}
    env |= {"CUSTOMIZER_API_URL": platform.api} | ({"CUSTOMIZER_API_KEY": key} if key else {})
    done = subprocess.run([sys.executable, "-m", "customizer.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def write_dataset(folder: Path) -> Path:
    for split, rows in (("training", ok_rows(24)), ("validation", ok_rows(8, 100)), ("testing", ok_rows(8, 200))):
        (folder / split).mkdir(parents=True)
        (folder / split / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def uploaded(platform, world, tmp_path_factory):
    """team-a/cli-ds, uploaded and registered by `customizer datasets upload` with team-a's key."""
    done = cli(platform, "ka", "datasets", "upload", "team-a/cli-ds", str(write_dataset(tmp_path_factory.mktemp("cli") / "ds")), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["files_url"] == "hf://datasets/team-a/cli-ds"
    return "team-a/cli-ds"


def test_datasets_upload_and_list_within_the_keys_namespaces(platform, uploaded, tmp_path):
    listed = cli(platform, "ka", "datasets", "list", "--json")
    assert listed.returncode == 0 and "cli-ds" in {d["name"] for d in json.loads(listed.stdout)}
    other = cli(platform, "kb", "datasets", "list", "--json")
    assert other.returncode == 0 and "cli-ds" not in {d["name"] for d in json.loads(other.stdout)}
    plain = cli(platform, "ka", "datasets", "list", "--namespace", "team-a")  # piped: a tab-separated line per dataset
    assert any(line.split("\t")[:2] == ["team-a", "cli-ds"] for line in plain.stdout.splitlines()), plain.stdout

    ds = write_dataset(tmp_path / "ds")
    refused = cli(platform, "ka", "datasets", "upload", "team-b/stolen", str(ds))
    assert refused.returncode == 4 and "customizer: error:" in refused.stderr  # not team-a's namespace
    no_key = cli(platform, None, "datasets", "list")
    assert no_key.returncode == 4 and "CUSTOMIZER_API_KEY" in no_key.stderr
    assert cli(platform, "ka", "datasets", "upload", "no-namespace", str(ds)).returncode == 2  # a usage error
    assert cli(platform, "ka", "datasets", "upload", "team-a/x", str(tmp_path / "missing")).returncode == 2
    down = subprocess.run([sys.executable, "-m", "customizer.cli", "datasets", "list", "--api-url", "http://127.0.0.1:9"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert down.returncode == 4 and "cannot reach the REST API" in down.stderr


def test_jobs_commands_follow_a_job_to_its_end(platform, uploaded, team_a):
    created = team_a.post("/v1/customization/jobs", json={"config": TINY_CONFIG, "dataset": uploaded, "namespace": "team-a",
                                                          "output_model": "team-a/cli-model", "hyperparameters": TINY_HYPERPARAMETERS,
                                                          "evaluation": {"general_benchmarks": ["capitals"], "limit": 8, "max_new_tokens": 4}})
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]

    listed = cli(platform, "ka", "jobs", "list", "--json")
    assert listed.returncode == 0 and job_id in {j["id"] for j in json.loads(listed.stdout)}
    assert job_id not in {j["id"] for j in json.loads(cli(platform, "kb", "jobs", "list", "--json").stdout)}
    assert cli(platform, "kb", "jobs", "status", job_id).returncode == 4  # another namespace's job: not found

    waited = cli(platform, "ka", "jobs", "status", job_id, "--wait", "--interval", "1", "--fail-on", "rejected", "--json")
    final = json.loads(waited.stdout)
    assert final["status"] == "completed", waited.stderr
    output = team_a.get(f"/v1/customization/jobs/{job_id}").json()["output_model"]  # team-a/cli-model@<job id>
    model = team_a.get(f"/v1/models/{output}")
    assert model.status_code == 200, model.text
    decision = model.json()["custom_fields"]["decision"]
    assert waited.returncode == (5 if decision == "reject" else 0), (decision, waited.stderr)
    lenient = cli(platform, "ka", "jobs", "status", job_id, "--wait", "--json")
    assert lenient.returncode == 0  # without --fail-on the decision does not set the status

    logs = cli(platform, "ka", "jobs", "logs", job_id)
    assert logs.returncode == 0 and "Completed" in logs.stdout


def test_a_cancelled_job_is_a_failed_wait(platform, world, team_a):
    created = team_a.post("/v1/customization/jobs", json=world.job_body())
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    cancelled = cli(platform, "ka", "jobs", "cancel", job_id, "--json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] in ("cancelling", "cancelled")
    waited = cli(platform, "ka", "jobs", "status", job_id, "--wait", "--interval", "1")
    assert waited.returncode == 1 and f"job {job_id} cancelled" in waited.stderr
    assert cli(platform, "admin", "jobs", "approve", job_id).returncode == 3  # nothing waits for a reviewer: a 409
