"""Operator policies over REST (``/v1/policies``, ``/v1/policies/{namespace}``) in-process with
authentication on: only admins read and change them, a change writes the layer's file and the audit
trail, bad bodies are 422s naming the field, and a job whose own policy loosens the result is refused
with a 422 naming the field, the value and the bound (nothing is started)."""

from __future__ import annotations


import pytest
from fastapi.testclient import TestClient

from api import orchestrator
from api.app import create_app
from api.principals import PrincipalSpec, store_for
from core import audit
from core.settings import Settings
from evaluation.policy import BUILT_IN, policy_file, read_policy_file
from tests.api.conftest import add_dataset
from tests.conftest import ok_rows

pytestmark = pytest.mark.unit
CONFIG = "customizer/tiny-llama@v1.0.0+cpu"
JOB = {"config": CONFIG, "dataset": "team-a/triage", "namespace": "team-a",
       "hyperparameters": {"training_type": "sft", "finetuning_type": "lora", "epochs": 1, "batch_size": 4}}


@pytest.fixture
def api(tmp_path, monkeypatch):
    """An API with authentication on: a bootstrap key, an admin of every namespace (``ops``), an admin
    of team-a and a submitter of team-a; a Data Store dataset in team-a. Returns (client, settings, keys)."""
    settings = Settings(data_dir=tmp_path / "data", api_keys={"root-key": ["*"]})
    keys = {name: {"Authorization": f"Bearer {store_for(settings).add(PrincipalSpec(name=name, namespaces=ns, roles=roles))[0]}"}
            for name, ns, roles in (("ops", ["*"], ["admin"]), ("team-admin", ["team-a"], ["admin", "submit"]),
                                    ("team-submitter", ["team-a"], ["submit"]))}
    started = []
    monkeypatch.setattr(orchestrator, "start", lambda *args, **kwargs: started.append(args) or "not-started")
    with TestClient(create_app(settings), raise_server_exceptions=False, headers={"Authorization": "Bearer root-key"}) as client:
        add_dataset(client, "team-a", "triage", ok_rows(12))
        yield client, settings, keys
    assert started == []  # no test here starts a job


def test_an_admin_sets_reads_and_removes_the_layers_and_each_change_is_audited(api):
    client, settings, keys = api
    team, glob = str(policy_file(settings, "team-a")), str(policy_file(settings, None))

    put = client.put("/v1/policies/team-a", json={"max_general_drop": 1.0, "review_methods": ["all_weights", "dpo", "grpo", "lora"]},
                     headers=keys["ops"])
    assert put.status_code == 200, put.text
    assert put.json()["policy"] == {"max_general_drop": 1.0, "review_methods": ["all_weights", "dpo", "grpo", "lora"]}
    assert read_policy_file(policy_file(settings, "team-a")).model_fields_set == {"max_general_drop", "review_methods"}
    assert client.put("/v1/policies", json={"min_task_gain": 2.0, "max_general_drop": 5.0}, headers=keys["ops"]).status_code == 200

    layer = client.get("/v1/policies/team-a", headers=keys["ops"]).json()
    assert (layer["namespace"], layer["file"], layer["layers"]) == ("team-a", team, [BUILT_IN, glob, team])
    assert (layer["effective"]["max_general_drop"], layer["effective"]["min_task_gain"], layer["effective"]["max_bpb_increase"]) == (1.0, 2.0, 5.0)
    assert (layer["sources"]["max_general_drop"], layer["sources"]["min_task_gain"], layer["sources"]["max_bpb_increase"]) == (team, glob, BUILT_IN)
    whole = client.get("/v1/policies", headers=keys["ops"]).json()
    assert whole["namespace"] is None and whole["effective"]["max_general_drop"] == 5.0 and whole["layers"] == [BUILT_IN, glob]
    other = client.get("/v1/policies/team-b", headers=keys["ops"]).json()
    assert other["policy"] is None and other["effective"]["max_general_drop"] == 5.0

    again = client.put("/v1/policies/team-a", json={"max_general_drop": 0.5}, headers=keys["ops"])
    assert again.json()["effective"]["review_methods"] == ["all_weights", "dpo", "grpo"]  # the layer was replaced, not merged
    removed = client.delete("/v1/policies/team-a", headers=keys["ops"])
    assert removed.status_code == 200 and removed.json()["policy"] is None and removed.json()["effective"]["max_general_drop"] == 5.0
    assert not policy_file(settings, "team-a").exists()
    gone = client.delete("/v1/policies/team-a", headers=keys["ops"])
    assert gone.status_code == 404 and "<data>/policies/team-a.yaml" in gone.json()["detail"]  # named, not where it lies

    changes = audit.records(settings, action="policy.changed")
    assert [(r["principal"], r["namespace"]) for r in changes] == [("ops", "team-a"), ("ops", None), ("ops", "team-a"), ("ops", "team-a")]
    assert (changes[0]["before"], changes[0]["after"]) == (None, {"max_general_drop": 1.0, "review_methods": ["all_weights", "dpo", "grpo", "lora"]})
    assert (changes[2]["before"], changes[2]["after"]) == (changes[0]["after"], {"max_general_drop": 0.5})
    assert (changes[3]["before"], changes[3]["after"]) == ({"max_general_drop": 0.5}, None)


def test_only_admins_of_the_namespace_and_of_every_namespace_for_the_global_layer(api):
    client, settings, keys = api
    body = {"max_general_drop": 1.0}

    for method in ("get", "put", "delete"):
        denied = client.request(method, "/v1/policies/team-a", json=body if method == "put" else None, headers=keys["team-submitter"])
        assert denied.status_code == 403 and "'admin' role" in denied.json()["detail"], denied.text
    assert client.put("/v1/policies/team-a", json=body, headers=keys["team-admin"]).status_code == 200
    elsewhere = client.put("/v1/policies/team-b", json=body, headers=keys["team-admin"])
    assert elsewhere.status_code == 403 and "team-b" in elsewhere.json()["detail"]
    globally = client.put("/v1/policies", json=body, headers=keys["team-admin"])
    assert globally.status_code == 403 and "every namespace" in globally.json()["detail"]
    assert client.get("/v1/policies", headers={}).status_code == 200  # the bootstrap key: every role
    assert client.get("/v1/policies", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert not policy_file(settings, "team-b").exists() and not policy_file(settings, None).exists()
    assert [r["principal"] for r in audit.records(settings, action="policy.changed")] == ["team-admin"]


@pytest.mark.parametrize(("path", "body", "loc"), [
    ("/v1/policies/team-a", {"max_general_drop": -1}, ["body", "max_general_drop"]),
    ("/v1/policies/team-a", {"diverging_curves": "shrug"}, ["body", "diverging_curves"]),
    ("/v1/policies", {"max_general_dorp": 1.0}, ["body", "max_general_dorp"]),
    ("/v1/policies", [1, 2], ["body"]),
    ("/v1/policies/_global", {"max_general_drop": 1.0}, ["path", "namespace"]),
    ("/v1/policies/Team-A", {"max_general_drop": 1.0}, ["path", "namespace"]),
])
def test_bad_bodies_and_names_are_422s_naming_the_field_and_write_nothing(api, path, body, loc):
    client, settings, keys = api
    answer = client.put(path, json=body, headers=keys["ops"])
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == loc, answer.text
    assert not settings.policies_dir.exists() or list(settings.policies_dir.iterdir()) == []
    assert audit.records(settings, action="policy.changed") == []


def test_a_broken_policy_file_is_a_503_naming_it_and_an_admin_may_replace_it(api):
    client, settings, keys = api
    path = policy_file(settings, None)
    path.parent.mkdir(parents=True)
    path.write_text("max_general_drop: [\n")

    broken = client.get("/v1/policies/team-a", headers=keys["ops"])
    shown = f"<data>/{path.relative_to(settings.root)}"  # errors name the file inside the data folder, not where that lies
    assert broken.status_code == 503 and shown in broken.json()["detail"] and "not valid YAML" in broken.json()["detail"]
    fixed = client.put("/v1/policies", json={"max_general_drop": 1.0}, headers=keys["ops"])
    assert fixed.status_code == 200 and fixed.json()["effective"]["max_general_drop"] == 1.0
    (change,) = audit.records(settings, action="policy.changed")
    assert "not valid YAML" in change["before"]["unreadable"] and change["after"] == {"max_general_drop": 1.0}


def test_a_job_whose_policy_loosens_the_operators_is_refused_with_a_422_naming_field_value_and_bound(api):
    client, settings, keys = api
    # Without an operator file the built-in defaults are the floor.
    defaults = client.post("/v1/customization/jobs", json=JOB | {"policy": {"review_methods": []}}, headers=keys["team-admin"])
    assert defaults.status_code == 422, defaults.text
    assert defaults.json()["detail"] == ('`policy.review_methods`: [] loosens the bound ["all_weights", "dpo", "grpo"] set by '
                                         'built-in default (keep ["all_weights", "dpo", "grpo"]; you may add methods); '
                                         "a job may only tighten its policy")

    assert client.put("/v1/policies/team-a", json={"max_general_drop": 1.0}, headers=keys["ops"]).status_code == 200
    refused = client.post("/v1/customization/jobs", json=JOB | {"policy": {"max_general_drop": 100.0}}, headers=keys["team-admin"])

    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == (f"`policy.max_general_drop`: 100.0 loosens the bound 1.0 set by <data>/policies/team-a.yaml "
                                        "(ask for 1.0 or less); a job may only tighten its policy")
