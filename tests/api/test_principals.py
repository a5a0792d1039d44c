"""Principals and roles, in-process with the orchestrator replaced by a recorder (the flow's side of an
approval runs through Prefect in tests/flows/test_approvals.py): principals are added and revoked
through the API and take effect without a restart, keys are never listed or stored, each role
guards its actions, an approval is answered in the caller's name and never by the submitter, a
principals file that cannot be read shuts the API, and ``customizer approve`` goes through the API."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import uuid

import pytest
from fastapi.testclient import TestClient

from api import orchestrator
from api.app import create_app
from core import audit
from core.auth import principals_file
from core.settings import Settings
from customizer.cli import main
from tests.api.conftest import over_http
from tests.conftest import ok_rows

pytestmark = pytest.mark.unit
ROOT_KEY = "root-bootstrap-key"
ROOT = {"Authorization": f"Bearer {ROOT_KEY}"}
ROOT_NAME = "key-" + hashlib.sha256(ROOT_KEY.encode()).hexdigest()[:8]
CONFIG = "customizer/tiny-llama@v1.0.0+cpu"
JOB = {"config": CONFIG, "dataset": "team-a/triage", "namespace": "team-a",
       "hyperparameters": {"training_type": "sft", "finetuning_type": "lora", "epochs": 1, "batch_size": 4}}


class Orchestrator:
    """Prefect as the API sees it: runs started and cancelled, answers given."""

    def __init__(self):
        self.cancelled: list[str] = []
        self.answers: list[tuple[str, dict]] = []

    def start(self, deployment: str, parameters: dict, name=None, tags=None) -> str:
        return str(uuid.uuid4())

    def answer(self, flow_run_id: str, run_input: dict) -> None:
        self.answers.append((flow_run_id, run_input))


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """An API whose only key is a bootstrap key for every namespace, with a Data Store dataset in team-a."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), api_keys={ROOT_KEY: ["*"]})
    runs = Orchestrator()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(orchestrator, "start", runs.start)
        patch.setattr(orchestrator, "cancel", runs.cancelled.append)
        patch.setattr(orchestrator, "answer", runs.answer)
        patch.setattr(orchestrator, "states", lambda ids, history=False: {})
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            rows = "".join(json.dumps(r) + "\n" for r in ok_rows(12)).encode()
            created = client.post("/v1/hf/api/repos/create", json={"name": "triage", "organization": "team-a", "type": "dataset"}, headers=ROOT)
            assert created.status_code == 200, created.text
            commit = [{"key": "header", "value": {"summary": "data"}},
                      {"key": "file", "value": {"path": "training/train.jsonl", "content": base64.b64encode(rows).decode(), "encoding": "base64"}}]
            answer = client.post("/v1/hf/api/datasets/team-a/triage/commit/main", content="\n".join(json.dumps(c) for c in commit).encode(), headers=ROOT)
            assert answer.status_code == 200, answer.text
            registered = client.post("/v1/datasets", json={"name": "triage", "namespace": "team-a", "files_url": "hf://datasets/team-a/triage"}, headers=ROOT)
            assert registered.status_code == 200, registered.text
            yield client, runs, settings


def add(client: TestClient, name: str, namespaces: list[str], roles: list[str]) -> dict[str, str]:
    """Add a principal as the bootstrap admin; its Authorization header."""
    response = client.post("/v1/principals", json={"name": name, "namespaces": namespaces, "roles": roles}, headers=ROOT)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['key']}"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_an_added_key_works_at_once_is_never_shown_again_and_stops_at_revocation(secured):
    client, _, settings = secured
    name = unique("alice")
    response = client.post("/v1/principals", json={"name": name, "namespaces": ["team-a"], "roles": ["review", "submit"]}, headers=ROOT)
    assert response.status_code == 201, response.text
    body = response.json()
    key = body["key"]
    assert (body["name"], body["namespaces"], body["roles"]) == (name, ["team-a"], ["submit", "review"])
    headers = {"Authorization": f"Bearer {key}"}

    # The running app takes the new key at its next request, scoped to its namespace.
    assert client.get("/v1/models", headers=headers).status_code == 200
    other = client.post("/v1/models", json={"name": "m", "namespace": "team-b"}, headers=headers)
    assert other.status_code == 403 and "team-b" in other.json()["detail"]

    # Neither the key nor its digest is ever listed; the file keeps the digest only, readable by its owner.
    digest = hashlib.sha256(key.encode()).hexdigest()
    listed = client.get("/v1/principals", headers=ROOT)
    assert listed.status_code == 200
    assert key not in listed.text and digest not in listed.text and "key_sha256" not in listed.text
    entries = {p["name"]: p for p in listed.json()["data"]}
    assert entries[name]["roles"] == ["submit", "review"] and entries[name]["source"] == "file"
    assert entries[ROOT_NAME]["source"] == "setting" and entries[ROOT_NAME]["roles"] == ["submit", "review", "admin"]
    stored = principals_file(settings).read_text()
    assert key not in stored and json.loads(stored)[name]["key_sha256"] == digest
    assert stat.S_IMODE(principals_file(settings).stat().st_mode) == 0o600

    revoked = client.delete(f"/v1/principals/{name}", headers=ROOT)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    refused = client.get("/v1/models", headers=headers)
    assert refused.status_code == 401 and "unknown or revoked" in refused.json()["detail"]
    assert name not in {p["name"] for p in client.get("/v1/principals", headers=ROOT).json()["data"]}

    trail = [(r["action"], r["principal"]) for r in audit.records(settings) if r["action"].startswith("principal.") and name in r["detail"]]
    assert trail == [("principal.added", ROOT_NAME), ("principal.revoked", ROOT_NAME)]


def test_only_an_admin_for_every_namespace_manages_principals_and_bad_input_names_the_field(secured):
    client, _, _ = secured
    submitter = add(client, unique("sub"), ["team-a"], ["submit", "review"])
    denied = client.post("/v1/principals", json={"name": "x", "namespaces": ["*"], "roles": ["admin"]}, headers=submitter)
    assert denied.status_code == 403 and "'admin'" in denied.json()["detail"]
    assert client.get("/v1/principals", headers=submitter).status_code == 403
    team_admin = add(client, unique("team-admin"), ["team-a"], ["admin"])
    limited = client.get("/v1/principals", headers=team_admin)
    assert limited.status_code == 403 and "every namespace" in limited.json()["detail"]
    assert client.get("/v1/principals").status_code == 401

    bad_role = client.post("/v1/principals", json={"name": "x", "namespaces": ["team-a"], "roles": ["boss"]}, headers=ROOT)
    assert bad_role.status_code == 422 and bad_role.json()["detail"][0]["loc"][-2:] == ["roles", 0]
    reserved = client.post("/v1/principals", json={"name": "key-1234", "namespaces": ["*"], "roles": ["submit"]}, headers=ROOT)
    assert reserved.status_code == 422 and "reserved" in reserved.json()["detail"][0]["msg"]
    upper = client.post("/v1/principals", json={"name": "Alice", "namespaces": ["*"], "roles": ["submit"]}, headers=ROOT)
    assert upper.status_code == 422 and "'Alice'" in upper.json()["detail"][0]["msg"]

    name = unique("dup")
    add(client, name, ["team-a"], ["submit"])
    duplicate = client.post("/v1/principals", json={"name": name, "namespaces": ["team-a"], "roles": ["submit"]}, headers=ROOT)
    assert duplicate.status_code == 409 and name in duplicate.json()["detail"]
    assert client.delete("/v1/principals/nobody-here", headers=ROOT).status_code == 404
    bootstrap = client.delete(f"/v1/principals/{ROOT_NAME}", headers=ROOT)
    assert bootstrap.status_code == 409 and "api_keys" in bootstrap.json()["detail"]


def test_creating_and_cancelling_jobs_needs_the_submit_role(secured):
    client, runs, _ = secured
    submitter_name = unique("sub")
    submitter = add(client, submitter_name, ["team-a"], ["submit"])
    reviewer = add(client, unique("rev"), ["team-a"], ["review"])

    refused = client.post("/v1/customization/jobs", json=JOB, headers=reviewer)
    assert refused.status_code == 403 and "'submit'" in refused.json()["detail"] and "team-a" in refused.json()["detail"]
    created = client.post("/v1/customization/jobs", json=JOB, headers=submitter)
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["ownership"]["created_by"] == submitter_name  # the submitter is the caller, whatever the body says

    cancel = client.post(f"/v1/customization/jobs/{job['id']}/cancel", headers=reviewer)
    assert cancel.status_code == 403 and "'submit'" in cancel.json()["detail"]
    assert client.post(f"/v1/customization/jobs/{job['id']}/cancel", headers=submitter).status_code == 200
    assert len(runs.cancelled) == 1
    assert client.get(f"/v1/customization/jobs/{job['id']}", headers=reviewer).status_code == 200  # reading needs no role

    evaluation = {"namespace": "team-a", "config": "team-a/some-config", "target": "team-a/some-target"}
    refused = client.post("/v1/evaluation/jobs", json=evaluation, headers=reviewer)
    assert refused.status_code == 403 and "'submit'" in refused.json()["detail"]


def test_an_approval_is_answered_in_the_callers_name_by_a_reviewer_who_did_not_submit(secured):
    client, runs, _ = secured
    alice, carol = unique("alice"), unique("carol")
    submitter = add(client, alice, ["team-a"], ["submit", "review"])
    reviewer = add(client, carol, ["team-a"], ["review"])
    submit_only = add(client, unique("bob"), ["team-a"], ["submit"])
    elsewhere = add(client, unique("dora"), ["team-b"], ["review"])
    created = client.post("/v1/customization/jobs", json=JOB | {"ownership": {"created_by": carol}}, headers=submitter)
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["ownership"]["created_by"] == alice
    url = f"/v1/customization/jobs/{job['id']}/approval"
    runs.answers.clear()

    own = client.post(url, json={"approved": True}, headers=submitter)
    assert own.status_code == 403 and f"principal {alice!r} submitted" in own.json()["detail"]
    no_role = client.post(url, json={"approved": True}, headers=submit_only)
    assert no_role.status_code == 403 and "'review'" in no_role.json()["detail"]
    assert client.post(url, json={"approved": True}, headers=elsewhere).status_code == 404  # another namespace's job is not there
    someone_else = client.post(url, json={"approved": True, "reviewer": "zed"}, headers=reviewer)
    assert someone_else.status_code == 403 and "`reviewer` 'zed'" in someone_else.json()["detail"]
    assert runs.answers == []  # nothing refused reached the job

    approved = client.post(url, json={"approved": True, "comment": "looks right"}, headers=reviewer)
    assert approved.status_code == 200, approved.text
    assert [answer for _, answer in runs.answers] == [{"approved": True, "reviewer": carol, "comment": "looks right"}]
    assert client.post(url, json={"approved": False, "reviewer": carol}, headers=reviewer).status_code == 200  # its own name may be repeated


def test_with_authentication_off_the_answer_names_its_reviewer(secured, tmp_path):
    client, runs, settings = secured
    alice = unique("alice")
    created = client.post("/v1/customization/jobs", json=JOB, headers=add(client, alice, ["team-a"], ["submit"]))
    assert created.status_code == 200, created.text
    url = f"/v1/customization/jobs/{created.json()['id']}/approval"
    runs.answers.clear()
    # The same jobs, served from a data folder with no principals and no bootstrap key.
    client.app.state.settings = settings.model_copy(update={"api_keys": {}, "data_dir": tmp_path})
    try:
        nameless = client.post(url, json={"approved": True})
        assert nameless.status_code == 422 and "`reviewer` is required" in nameless.json()["detail"]
        # A free-text name proves nothing: the answer reaches the job, whose flow refuses the submitter's name.
        assert client.post(url, json={"approved": True, "reviewer": alice}).status_code == 200
        assert client.post(url, json={"approved": True, "reviewer": " bob "}).status_code == 200
    finally:
        client.app.state.settings = settings
    assert [answer["reviewer"] for _, answer in runs.answers] == [alice, "bob"]


def test_a_principals_file_that_cannot_be_read_shuts_the_api(tmp_path):
    settings = Settings(data_dir=tmp_path)
    path = principals_file(settings)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/v1/models").status_code == 200  # no file: authentication off
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"alice": {"namespaces": ["*"], "roles": ["submit"], "key_sha256": "' + "0" * 64 + '"}}')
        assert client.get("/v1/models").status_code == 401  # a principal in the file turns it on, without a restart
        path.write_text("{not json")
        for headers in ({}, {"Authorization": "Bearer anything"}):
            broken = client.get("/v1/models", headers=headers)
            assert broken.status_code == 503 and "<data>/api/principals.json" in broken.json()["detail"]  # named, not where it lies
        path.unlink()
        path.mkdir()  # exists, but cannot be read as a file
        unreadable = client.get("/v1/models")
        assert unreadable.status_code == 503 and "<data>/api/principals.json" in unreadable.json()["detail"] and "cannot be read" in unreadable.json()["detail"]


@pytest.fixture
def served(secured):
    """The same app over HTTP on a free port, for the command line."""
    client, runs, settings = secured
    with over_http(client.app) as url:
        yield url, client, runs, settings


def test_customizer_approve_goes_through_the_api_with_a_key(served, monkeypatch, capsys):
    url, client, runs, settings = served
    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("CUSTOMIZER_API_KEYS", json.dumps(settings.api_keys))
    monkeypatch.delenv("CUSTOMIZER_API_KEY", raising=False)
    submitter = add(client, unique("alice"), ["team-a"], ["submit"])
    job = client.post("/v1/customization/jobs", json=JOB, headers=submitter).json()
    carol = unique("carol")
    reviewer_key = add(client, carol, ["team-a"], ["review"])["Authorization"].removeprefix("Bearer ")
    runs.answers.clear()

    assert main(["approve", job["id"], "--api-url", url]) == 2
    assert "set CUSTOMIZER_API_KEY" in capsys.readouterr().err and runs.answers == []
    submit_key = submitter["Authorization"].removeprefix("Bearer ")
    assert main(["approve", job["id"], "--api-url", url, "--api-key", submit_key]) == 2
    assert "refused the answer (403)" in (err := capsys.readouterr().err) and "'review'" in err

    monkeypatch.setenv("CUSTOMIZER_API_KEY", reviewer_key)
    assert main(["approve", job["id"], "--api-url", url, "--reject", "--comment", "not yet"]) == 0
    assert f"job {job['id']}: rejected through the REST API at {url}" in capsys.readouterr().out
    assert [answer for _, answer in runs.answers] == [{"approved": False, "reviewer": carol, "comment": "not yet"}]
