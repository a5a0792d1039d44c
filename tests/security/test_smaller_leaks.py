"""Smaller ways around namespace isolation and hygiene: model URIs that climb out of their package,
another team's config named through a model, error texts that list other teams' items, a job whose
files_url contradicts its dataset, Data Store names that hide or spoof, world-readable data files,
unlimited key guessing. Every refusal's body is checked for stack traces and server paths."""

from __future__ import annotations

import os
import stat
import time
import uuid

import httpx
import pytest

from tests.security.conftest import refused

pytestmark = pytest.mark.platform
OPTIONS = [{"training_type": "sft", "finetuning_type": "lora", "num_gpus": 0, "micro_batch_size": 1}]
BAD_MODEL_URIS = ["pkg://customizer/../../etc/passwd", "builtin://../x"]


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


def _chain_refused(platform, client, steps) -> None:
    """Run ``steps`` (callables returning a response) until one is refused; one must be, with 4xx. A job
    created anyway is cancelled."""
    for step in steps:
        answer = step()
        if answer.status_code != 200:
            refused(platform, answer)
            return
        created = answer.json()
        if str(created.get("id", "")).startswith("cust-"):
            client.post(f"/v1/customization/jobs/{created['id']}/cancel")
        elif str(created.get("id", "")).startswith("eval-") and "config" in created:
            client.delete(f"/v1/evaluation/jobs/{created['id']}")
    raise AssertionError(f"every step was accepted; the last answered {answer.text[:1000]}")


@pytest.fixture(scope="module")
def b_config(team_b) -> str:
    """A customization config of team-b's, with a name nobody else would print by chance."""
    name = f"bsecret-{_suffix()}"
    target = team_b.post("/v1/customization/targets", json={"name": f"{name}-t@1", "namespace": "team-b", "num_parameters": 1,
                                                           "precision": "fp32", "model_uri": "builtin://tiny-llama"})
    assert target.status_code == 200, target.text
    config = team_b.post("/v1/customization/configs", json={"name": f"{name}@v1", "namespace": "team-b", "target": f"team-b/{name}-t@1",
                                                           "max_seq_length": 128, "training_options": OPTIONS})
    assert config.status_code == 200, config.text
    return f"team-b/{name}@v1"


@pytest.mark.parametrize("uri", BAD_MODEL_URIS)
def test_climbing_model_uri_in_a_customization_job(platform, world, team_a, uri):
    """Guards the base model's source: a customization target with a model URI that climbs out of its
    package never becomes a job (4xx at the target, the config or the job)."""
    name = f"climb-{_suffix()}"
    _chain_refused(platform, team_a, [
        lambda: team_a.post("/v1/customization/targets", json={"name": f"{name}@1", "namespace": "team-a", "num_parameters": 1,
                                                               "precision": "fp32", "model_uri": uri}),
        lambda: team_a.post("/v1/customization/configs", json={"name": f"{name}@v1", "namespace": "team-a", "target": f"team-a/{name}@1",
                                                               "max_seq_length": 128, "training_options": OPTIONS}),
        lambda: team_a.post("/v1/customization/jobs", json=world.job_body(config=f"team-a/{name}@v1")),
    ])


@pytest.mark.parametrize("uri", BAD_MODEL_URIS)
def test_climbing_model_uri_in_an_evaluation(platform, world, team_a, uri):
    """Guards the evaluated model's source: a model entry whose files_url climbs out of its package never
    becomes an evaluation job (4xx at the model, the target or the job)."""
    name = f"climb-{_suffix()}"
    _chain_refused(platform, team_a, [
        lambda: team_a.post("/v1/models", json={"name": name, "namespace": "team-a", "artifact": {"files_url": uri, "status": "upload_completed"}}),
        lambda: team_a.post("/v1/evaluation/targets", json={"type": "model", "name": name, "namespace": "team-a", "model": f"team-a/{name}"}),
        lambda: team_a.post("/v1/evaluation/jobs", json={"namespace": "team-a", "config": {"type": "capitals"}, "target": f"team-a/{name}"}),
    ])


def test_other_teams_config_through_a_model(platform, team_a, b_config):
    """Guards configs across namespaces: a model whose custom_fields.config names team-b's config never
    becomes an evaluation job for ka (4xx at the model, the target or the job)."""
    name = f"borrow-{_suffix()}"
    steps = [
        lambda: team_a.post("/v1/models", json={"name": name, "namespace": "team-a", "custom_fields": {"config": b_config}}),
        lambda: team_a.post("/v1/evaluation/targets", json={"type": "model", "name": name, "namespace": "team-a", "model": f"team-a/{name}"}),
        lambda: team_a.post("/v1/evaluation/jobs", json={"namespace": "team-a", "config": {"type": "capitals"}, "target": f"team-a/{name}"}),
    ]
    _chain_refused(platform, team_a, steps)


def test_unknown_config_names_no_other_teams_config(platform, world, team_a, b_config):
    """Guards against listing other teams' items in errors: an unknown config answers 404 (4xx for a job
    naming it) whose text names no team-b config."""
    secret = b_config.split("/")[1].split("@")[0]
    guessed = f"team-a/{secret}@v1"  # team-b's config name guessed in team-a: echoed back, it tells nothing
    for answer in (team_a.get("/v1/customization/configs/team-a/nope@v1"),
                   team_a.post("/v1/customization/jobs", json=world.job_body(config="team-a/nope@v1")),
                   team_a.post("/v1/customization/jobs", json=world.job_body(config=guessed))):
        if answer.request.method == "GET":
            refused(platform, answer, 404)
        else:
            refused(platform, answer)
        shown = answer.text.replace(guessed, "")
        assert secret not in shown and "team-b" not in shown, answer.text


def test_files_url_contradicting_its_dataset(platform, world, team_a):
    """Guards what a job trains on: a dataset reference whose files_url is not its named dataset's is a 422."""
    for files_url in ("hf://datasets/team-a/other", "hf://datasets/team-b/secret"):
        answer = team_a.post("/v1/customization/jobs", json=world.job_body(dataset={"name": "d", "namespace": "team-a", "files_url": files_url}))
        if answer.status_code == 200:
            team_a.post(f"/v1/customization/jobs/{answer.json()['id']}/cancel")
        refused(platform, answer, 422)


@pytest.mark.parametrize("name", ["evil\u202etxt.jsonl", ".tmp-hidden", "x\u200bhidden"])
def test_spoofing_datastore_names(platform, world, team_a, name):
    """Guards the Data Store's listings: repo (and namespace) names with a bidi override, a zero-width
    character or the store's temporary prefix are refused."""
    refused(platform, team_a.post("/v1/hf/api/repos/create", json={"name": name, "organization": "team-a", "type": "dataset"}))
    refused(platform, team_a.post("/v1/datastore/namespaces", data={"namespace": name}))


def test_data_folder_is_private(platform, world):
    """Guards keys, databases and uploads on a shared machine: the data folder is 0700 and nothing under it
    has group or other permission bits (links excepted: their own bits mean nothing)."""
    root = platform.data_dir
    mode = stat.S_IMODE(root.stat().st_mode)
    open_to_others = [] if mode == 0o700 else [f"{oct(mode)} . (the data folder itself must be 0700)"]
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if name == platform.output.name:  # this suite's own log of `customizer up`'s output
                continue
            info = os.lstat(path)
            if not stat.S_ISLNK(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077:
                open_to_others.append(f"{oct(stat.S_IMODE(info.st_mode))} {os.path.relpath(path, root)}")
    assert not open_to_others, "\n".join(open_to_others[:50])


def test_key_guessing_is_slowed(platform, team_a):
    """Guards API keys against guessing: 12 requests with wrong keys from one client meet at least one 429;
    every answer is 401 or 429 and shows nothing of the server."""
    statuses = []
    with httpx.Client(base_url=platform.api, timeout=30) as guesser:
        for attempt in range(12):
            answer = guesser.get("/v1/customization/jobs", headers={"Authorization": f"Bearer guess-{attempt}-{_suffix()}"})
            refused(platform, answer, 401, 429)
            statuses.append(answer.status_code)
    assert 429 in statuses, statuses
    deadline = time.monotonic() + 90  # let the limit pass so that nothing after this is slowed by it
    while team_a.get("/v1/customization/jobs").status_code == 429 and time.monotonic() < deadline:
        time.sleep(3)
