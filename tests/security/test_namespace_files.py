"""A tenant cannot read another namespace's files through an evaluation task's ``dataset.files_url``:
not by naming a folder that spans namespaces, not through a symlink in a folder of its own."""

from __future__ import annotations

import uuid

import pytest

from tests.security.conftest import refused

pytestmark = pytest.mark.platform


def _job(world, files_url: str) -> dict:
    task = {"type": "completion", "dataset": {"files_url": files_url}, "params": {"template": "{{item.prompt}}"},
            "metrics": {"em": {"type": "em", "params": {"ground_truth": "{{item.completion}}"}}}}
    return {"namespace": "team-a", "config": {"type": "custom", "tasks": {"t": task}, "params": {"max_tokens": 2}},
            "target": {"type": "model", "model": world.a_model}}


def _cancel(client, answer) -> None:
    if answer.status_code == 200:
        client.delete(f"/v1/evaluation/jobs/{answer.json()['id']}")  # no need to let it run


@pytest.fixture(scope="module")
def linked_folder(world):
    """A folder in team-a's own Data Store space holding only a symlink to team-b's file."""
    folder = world.a_repo_dir.parent / f"links-{uuid.uuid4().hex[:8]}"
    folder.mkdir(mode=0o700)
    (folder / "data.jsonl").symlink_to(world.b_file)
    return folder


def test_own_dataset_is_accepted(world, team_a):
    """The request the refusals below vary is valid: with team-a's own Data Store file it is accepted."""
    answer = team_a.post("/v1/evaluation/jobs", json=_job(world, "hf://datasets/team-a/d/training/train.jsonl"))
    _cancel(team_a, answer)
    assert answer.status_code == 200, answer.text


def test_other_namespaces_files_are_refused(platform, world, team_a, linked_folder):
    """Guards namespace isolation of task data: the Data Store's datasets/ folder, the data folder, a
    folder whose symlink leads to team-b's file, team-b's file itself (by path or hf://) are refused for ka."""
    data = platform.data_dir
    for files_url in ((data / "datastore" / "datasets").as_uri(), data.as_uri(), linked_folder.as_uri(),
                      (linked_folder / "data.jsonl").as_uri(), world.b_file.as_uri(), "hf://datasets/team-b/secret/training/train.jsonl"):
        answer = team_a.post("/v1/evaluation/jobs", json=_job(world, files_url))
        _cancel(team_a, answer)
        refused(platform, answer)
        assert "team-b secret" not in answer.text


def test_admin_on_spanning_roots_gets_an_answer(platform, world, admin):
    """An admin key naming a namespace-spanning folder gets an answer the product decides, never a 500."""
    for files_url in ((platform.data_dir / "datastore" / "datasets").as_uri(), platform.data_dir.as_uri()):
        answer = admin.post("/v1/evaluation/jobs", json=_job(world, files_url))
        _cancel(admin, answer)
        assert answer.status_code < 500, answer.text
        assert "Traceback" not in answer.text
