"""Entity Store and Customizer configs/targets through the NeMo SDK: CRUD, names with ``@`` and ``+``,
the list conventions (pages past the end, nested filters, sort), and duplicates."""

from __future__ import annotations

import pytest

from tests.api.conftest import LLAMA_CONFIG


def test_namespaces_projects_and_duplicates(nemo, http):
    from nemo_microservices import ConflictError, NotFoundError

    created = nemo.namespaces.create(id="entity-tests", description="for tests")
    assert created.id == "entity-tests" and created.created_at is not None
    with pytest.raises(ConflictError):
        nemo.namespaces.create(id="entity-tests")
    duplicate = http.post("/v1/namespaces", json={"id": "entity-tests"})
    assert duplicate.status_code == 409 and duplicate.headers["x-should-retry"] == "false"
    assert nemo.namespaces.retrieve("entity-tests").description == "for tests"
    assert nemo.namespaces.update("entity-tests", description="changed").description == "changed"
    project = nemo.projects.create(name="p1", namespace="entity-tests")
    assert project.name == "p1" and nemo.projects.retrieve("p1", namespace="entity-tests").namespace == "entity-tests"
    assert [p.name for p in nemo.projects.list(filter={"namespace": "entity-tests"})] == ["p1"]
    nemo.projects.delete("p1", namespace="entity-tests")
    with pytest.raises(NotFoundError):
        nemo.projects.retrieve("p1", namespace="entity-tests")
    deleted = nemo.namespaces.delete("entity-tests")
    assert deleted.id == "entity-tests"


def test_models_with_at_in_names_filters_and_pages(nemo, http):
    for i in range(3):
        nemo.models.create(name=f"m{i}@cust-abc{i}", namespace="entity-tests-models", base_model="meta/llama-3.2-1b-instruct",
                           peft={"finetuning_type": "lora"} if i else None,
                           artifact={"files_url": f"s3://models/m{i}", "status": "created"})
    model = nemo.models.retrieve("m1@cust-abc1", namespace="entity-tests-models")
    assert model.name == "m1@cust-abc1" and model.peft.finetuning_type == "lora"
    lora = nemo.models.list(filter={"namespace": "entity-tests-models", "peft": {"lora": True}})
    assert sorted(m.name for m in lora) == ["m1@cust-abc1", "m2@cust-abc2"]
    by_base = nemo.models.list(filter={"namespace": "entity-tests-models", "base_model": "meta/llama-3.2-1b-instruct"})
    assert len(list(by_base)) == 3
    page = http.get("/v1/models", params={"filter[namespace]": "entity-tests-models", "page": 2, "page_size": 2, "sort": "-name"}).json()
    assert [m["name"] for m in page["data"]] == ["m0@cust-abc0"]
    assert page["pagination"] == {"page": 2, "page_size": 2, "current_page_size": 1, "total_pages": 2, "total_results": 3}
    past = http.get("/v1/models", params={"filter[namespace]": "entity-tests-models", "page": 9}).json()
    assert past["data"] == [] and past["pagination"]["total_results"] == 3 and past["object"] == "list"
    bad = http.get("/v1/models", params={"filter[colour]": "red"})
    assert bad.status_code == 400 and "colour" in bad.json()["detail"]
    assert http.get("/v1/models", params={"page": 0}).status_code == 422
    updated = nemo.models.update("m0@cust-abc0", namespace="entity-tests-models", description="first")
    assert updated.description == "first"
    nemo.models.delete("m0@cust-abc0", namespace="entity-tests-models")
    assert len(list(nemo.models.list(filter={"namespace": "entity-tests-models"}))) == 2


def test_builtin_configs_are_listed_and_read_with_at_and_plus(nemo, http):
    config = nemo.customization.configs.retrieve("llama-3.2-1b-instruct@v1.0.0+A100", namespace="meta")
    assert config.name == "llama-3.2-1b-instruct@v1.0.0+A100" and config.max_seq_length == 4096
    assert {(o.training_type, o.finetuning_type) for o in config.training_options} >= {("sft", "lora"), ("dpo", "lora")}
    raw = http.get("/v1/customization/configs/meta/llama-3.2-1b-instruct@v1.0.0+A100")
    assert raw.status_code == 200
    # '+' is part of the name, never a space
    assert http.get("/v1/customization/configs/meta/llama-3.2-1b-instruct@v1.0.0 A100").status_code == 404
    urns = {f"{c.namespace}/{c.name}" for c in nemo.customization.configs.list(page_size=5)}
    assert LLAMA_CONFIG in urns and "customizer/tiny-llama@v1.0.0+cpu" in urns
    lora_configs = nemo.customization.configs.list(filter={"finetuning_type": "all_weights", "target_base_model": "customizer/tiny-llama"})
    assert [c.name for c in lora_configs] == ["tiny-llama@v1.0.0+cpu"]
    from nemo_microservices import BadRequestError

    with pytest.raises(BadRequestError):
        nemo.customization.configs.delete("llama-3.2-1b-instruct@v1.0.0+A100", namespace="meta")


def test_targets_and_configs_crud(nemo, http):
    from nemo_microservices import ConflictError, NotFoundError

    target = nemo.customization.targets.create(name="tiny@1.0", namespace="crud-tests", num_parameters=140000, precision="fp32",
                                               model_uri="builtin://tiny-llama", base_model="crud-tests/tiny")
    assert target.id.startswith("customization_target-") and target.name == "tiny@1.0"
    assert nemo.customization.targets.retrieve("tiny@1.0", namespace="crud-tests").base_model == "crud-tests/tiny"
    with pytest.raises(ConflictError):
        nemo.customization.targets.create(name="tiny@1.0", namespace="crud-tests", num_parameters=1, precision="fp32", model_uri="x")
    config = nemo.customization.configs.create(
        name="tiny-chat@v1.0.0+cpu", namespace="crud-tests", target="crud-tests/tiny@1.0", max_seq_length=128,
        training_options=[{"training_type": "sft", "finetuning_type": "lora", "num_gpus": 0, "micro_batch_size": 2}],
    )
    assert config.id.startswith("customization_config-")
    got = nemo.customization.configs.retrieve("tiny-chat@v1.0.0+cpu", namespace="crud-tests")
    assert got.max_seq_length == 128 and got.target == "crud-tests/tiny@1.0"
    with pytest.raises(ConflictError):
        nemo.customization.configs.create(name="tiny-chat@v1.0.0+cpu", namespace="crud-tests", target="crud-tests/tiny@1.0",
                                          max_seq_length=128, training_options=[{"training_type": "sft", "finetuning_type": "lora", "num_gpus": 0, "micro_batch_size": 2}])
    updated = nemo.customization.configs.update(
        "tiny-chat@v1.0.0+cpu", namespace="crud-tests", max_seq_length=256,
        add_training_options=[{"training_type": "dpo", "finetuning_type": "lora", "num_gpus": 0, "micro_batch_size": 2}],
    )
    assert updated.max_seq_length == 256 and len(updated.training_options) == 2
    # The catalog sees the API-created config like any other.
    listed = {f"{c.namespace}/{c.name}" for c in nemo.customization.configs.list(filter={"namespace": "crud-tests"})}
    assert listed == {"crud-tests/tiny-chat@v1.0.0+cpu"}
    in_use = http.delete("/v1/customization/targets/crud-tests/tiny@1.0")
    assert in_use.status_code == 409 and "tiny-chat" in in_use.json()["detail"]
    nemo.customization.configs.delete("tiny-chat@v1.0.0+cpu", namespace="crud-tests")
    with pytest.raises(NotFoundError):
        nemo.customization.configs.retrieve("tiny-chat@v1.0.0+cpu", namespace="crud-tests")
    nemo.customization.targets.delete("tiny@1.0", namespace="crud-tests")
    no_version = http.post("/v1/customization/configs", json={"name": "nover", "namespace": "crud-tests", "target": "crud-tests/x",
                                                              "max_seq_length": 64, "training_options": [{"training_type": "sft", "finetuning_type": "lora", "num_gpus": 0}]})
    assert no_version.status_code == 400 and "missing its version" in no_version.json()["detail"]
