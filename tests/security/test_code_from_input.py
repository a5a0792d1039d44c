"""A tenant cannot make the platform run code it uploaded: an lm-eval task YAML in its own Data Store
repo, named as an evaluation job's benchmark, is refused before any flow run exists."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import SESSION_DIR
from tests.security.conftest import commit, count_runs, deployment_id, refused

pytestmark = pytest.mark.platform


def _evil_task(marker, data_file) -> bytes:
    """An lm-eval task whose prompt template, once rendered, creates ``marker``."""
    return (
        "task: owned\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data_file}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        f"doc_to_text: \"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}\"\n"
        "doc_to_target: \"{{completion}}\"\n"
        "metric_list:\n  - metric: exact_match\n"
    ).encode()


def test_uploaded_benchmark_yaml_is_never_loaded(platform, world, team_a, prefect, platform_settings):
    """Guards against code execution from user input: a benchmark given as the server path (or URL, or
    file name) of an uploaded YAML is refused with 4xx, no evaluate run is created and its template never runs."""
    marker = SESSION_DIR / f"security-marker-{uuid.uuid4().hex}"
    assert commit(team_a, "team-a/d", {"tasks/owned.yaml": _evil_task(marker, world.a_repo_dir / "training" / "train.jsonl")}).status_code == 200
    uploaded = world.a_repo_dir / "tasks" / "owned.yaml"
    assert uploaded.is_file()  # the server path the attack names
    evaluate = deployment_id(prefect, platform_settings.evaluate_deployment)
    runs_before = count_runs(prefect, evaluate)

    names = (str(uploaded), uploaded.as_uri(), str(uploaded.parent), "owned.yaml", "tasks/owned.yaml", "hf://datasets/team-a/d/tasks/owned.yaml")
    for benchmark in names:
        job = team_a.post("/v1/evaluation/jobs", json={"namespace": "team-a", "config": {"type": benchmark},
                                                       "target": {"type": "model", "model": world.a_model}})
        refused(platform, job)
        stored = team_a.post("/v1/evaluation/configs", json={"namespace": "team-a", "name": f"owned-{uuid.uuid4().hex[:8]}", "type": benchmark})
        refused(platform, stored)

    time.sleep(5)  # a run started anyway would have been picked up by the worker (it polls every second)
    assert not marker.exists(), "an uploaded template was rendered with access to the server"
    assert count_runs(prefect, evaluate) == runs_before, "an evaluate run was created for an uploaded benchmark file"
