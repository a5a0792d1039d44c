"""Customization jobs through the official NeMo SDK (and curl-style raw requests) against a running
platform: NeMo's documented example, a job that trains and reports metrics, validation up front,
cancel, logs, and secrets that are never echoed."""

from __future__ import annotations

import copy
import json
import sqlite3
import time

import pytest

from tests.api.conftest import LLAMA_CONFIG, NEMO_EXAMPLE, TINY_CONFIG, wait_for
from tests.conftest import ok_rows


def test_nemo_example_is_accepted_as_it_stands(nemo, example_jobs):
    response, _ = example_jobs
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["id"].startswith("cust-") and job["status"] == "created"
    assert job["config"] == LLAMA_CONFIG and job["dataset"] == "default/email-assist-dataset"
    hp = job["hyperparameters"]
    assert (hp["epochs"], hp["batch_size"], hp["learning_rate"]) == (10, 16, 0.0001)
    # defaults filled
    assert hp["lora"] == {"adapter_dim": 8, "adapter_dropout": 0.1, "alpha": 16, "target_modules": None}
    assert hp["warmup_steps"] == 2 and hp["seed"] == 42 and hp["sequence_packing_enabled"] is False
    assert job["output_model"] == f"default/llama-3.2-1b-instruct-email-assist-dataset-lora@{job['id']}"
    assert job["config_snapshot"]["base_model"] == "meta/llama-3.2-1b-instruct"
    assert job["config_snapshot"]["training_option"]["num_gpus"] == 1
    assert job["status_details"]["status_logs"] == [{"updated_at": job["created_at"], "message": "created"}]
    assert isinstance(job["warnings"], list)
    assert "T" in job["created_at"] and "+" not in job["created_at"] and not job["created_at"].endswith("Z")
    assert not any(key.startswith("_") for key in job)
    # The output model's Entity Store entry exists from creation, before anything is published.
    model = nemo.models.retrieve(f"llama-3.2-1b-instruct-email-assist-dataset-lora@{job['id']}", namespace="default")
    assert model.base_model == "meta/llama-3.2-1b-instruct" and model.artifact.status in ("created", "upload_failed")


def test_llama_job_fails_saying_the_base_model_cannot_be_fetched(nemo, example_jobs):
    job_id = example_jobs[0].json()["id"]
    status = wait_for(nemo, job_id, {"failed", "completed", "cancelled"}, timeout=420)
    assert status.status == "failed"
    detail = [log.detail for log in status.status_logs if log.detail][-1]
    assert "base model meta-llama/Llama-3.2-1B-Instruct" in detail and "Hugging Face cache" in detail
    deadline = time.monotonic() + 60  # Prefect ships log lines in batches: the last ones can trail the final state
    while True:
        logs = nemo.customization.jobs.container_logs(job_id)
        entry = logs.entries[job_id]
        if any("BaseModelError" in line for line in entry.logs["customize"]) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert any("BaseModelError" in line for line in entry.logs["customize"]), entry.logs["customize"][-20:]
    assert logs.error.message == detail
    # The output model entry existed from creation; it records that nothing was uploaded.
    model = nemo.models.retrieve(f"llama-3.2-1b-instruct-email-assist-dataset-lora@{job_id}", namespace="default")
    assert model.artifact.status == "upload_failed"


def test_tiny_job_completes_and_reports_metrics(nemo, http, example_jobs):
    response = example_jobs[1]
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    status = wait_for(nemo, job_id, {"completed", "failed", "cancelled"}, timeout=900)
    assert status.status == "completed", status.status_logs
    train = status.metrics.metrics.train_loss
    val = status.metrics.metrics.val_loss
    assert len(train) >= 3 and all(p.step > 0 and p.timestamp for p in train)
    assert len(val) == 10  # one validation per epoch
    assert status.steps_completed == train[-1].step or status.steps_completed >= train[-1].step
    assert status.epochs_completed == 10 and status.percentage_done == 100.0
    assert status.val_loss == min(p.value for p in val)
    # forgetting_kl (KL from the base on general prompts) at every validation, from MLflow, in the same shape.
    raw = http.get(f"/v1/customization/jobs/{job_id}/status").json()["metrics"]
    forgetting = raw["metrics"]["forgetting_kl"]
    assert "forgetting_kl" in raw["keys"] and [p["step"] for p in forgetting] == [p.step for p in val]
    assert all(p["value"] >= 0 and p["timestamp"] for p in forgetting) and forgetting[-1]["value"] > 0
    # The power planned before training and, after the gate, every forgetting comparison with its verdict.
    details = http.get(f"/v1/customization/jobs/{job_id}/status").json()
    assert {p["benchmark"] for p in details["power"]} >= {"mmlu_dev", "ifeval_lite", "pydoc_prose"}
    assert all(p["detectable"] > 0 and isinstance(p["can_decide"], bool) and p["describe"].startswith("with ") for p in details["power"])
    assert {f["verdict"] for f in details["forgetting"]} <= {"passed", "undecided", "FAILED"}
    assert any(f["benchmark"].startswith("pooled (") for f in details["forgetting"])
    assert [log.message for log in status.status_logs][0] == "created" and status.status_logs[-1].message == "Completed"

    job = nemo.customization.jobs.retrieve(job_id)
    assert job.status == "completed" and job.output_model == f"default/tiny-llama-email-assist-dataset-lora@{job_id}"
    # The output model was published: its Entity Store entry says where.
    model = nemo.models.retrieve(f"tiny-llama-email-assist-dataset-lora@{job_id}", namespace="default")
    assert model.artifact.status == "upload_completed"
    assert model.artifact.files_url == "hf://models/default/tiny-llama-email-assist-dataset-lora@1"
    assert model.custom_fields["published_uri"].startswith("file://")
    assert model.custom_fields["published_uri"].endswith("/default/tiny-llama-email-assist-dataset-lora/1/")
    assert model.base_model == "customizer/tiny-llama" and model.peft.finetuning_type == "lora"

    # The SDK's auto-pagination walks pages until an empty one: every job comes back once.
    listed = [j.id for j in nemo.customization.jobs.list(page_size=1)]
    assert job_id in listed and len(listed) == len(set(listed))
    completed = nemo.customization.jobs.list(filter={"status": "completed"}).data
    assert [j.id for j in completed] == [job_id]


def test_a_config_without_version_is_a_400_that_says_so(nemo, email_dataset):
    from nemo_microservices import BadRequestError

    with pytest.raises(BadRequestError) as raised:
        nemo.customization.jobs.create(**(NEMO_EXAMPLE | {"config": "meta/llama-3.2-1b-instruct"}))
    assert "missing its version" in str(raised.value.body["detail"])


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"config": "meta/no-such-model@v1"}, 404, ["not in the catalog"]),
        ({"hyperparameters": {"finetuning_type": "lora", "epochs": 0}}, 422, ["epochs"]),
        ({"hyperparameters": {"finetuning_type": "lora", "lora": {"adapter_dim": 12}}}, 422, ["adapter_dim", "power of 2"]),
        ({"hyperparameters": {"finetuning_type": "p_tuning"}}, 422, ["finetuning_type"]),
        ({"dataset": "default/no-such-dataset"}, 404, ["no-such-dataset", "does not exist"]),
        ({"hyperparameters": {"finetuning_type": "lora"}, "surprise": 1}, 422, ["surprise"]),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(http, email_dataset, change, status, words):
    body = copy.deepcopy(NEMO_EXAMPLE) | {"config": TINY_CONFIG} | change
    response = http.post("/v1/customization/jobs", json=body)
    assert response.status_code == status, response.text
    assert response.headers["x-should-retry"] == "false"
    text = response.text
    assert all(word in text for word in words), text


def test_method_not_allowed_by_the_config_names_the_allowed_pairs(http, email_dataset, platform):
    created = http.post("/v1/customization/targets", json={"name": "tiny-sft-only", "namespace": "api-tests", "num_parameters": 140000,
                                                           "precision": "fp32", "model_uri": "builtin://tiny-llama"})
    assert created.status_code == 200, created.text
    config = http.post("/v1/customization/configs", json={
        "name": "tiny-sft-only@v1", "namespace": "api-tests", "target": "api-tests/tiny-sft-only", "max_seq_length": 128,
        "training_options": [{"training_type": "sft", "finetuning_type": "lora", "num_gpus": 0, "micro_batch_size": 4}],
    })
    assert config.status_code == 200, config.text
    body = NEMO_EXAMPLE | {"config": "api-tests/tiny-sft-only@v1", "hyperparameters": {"training_type": "dpo", "finetuning_type": "lora"}}
    response = http.post("/v1/customization/jobs", json=body)
    assert response.status_code == 400
    assert "does not allow training_type='dpo'" in response.json()["detail"] and "(sft, lora)" in response.json()["detail"]


def test_a_dataset_with_bad_lines_is_refused_with_file_and_line(http, hf_api, nemo):
    from tests.api.conftest import upload_dataset

    upload_dataset(hf_api, nemo, "api-tests", "broken", {"training/train.jsonl": ok_rows(3) + ["{not json", {"prompt": "x"}]})
    response = http.post("/v1/customization/jobs", json=NEMO_EXAMPLE | {"config": TINY_CONFIG, "dataset": "api-tests/broken"})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "training/train.jsonl:4: not valid JSON" in detail and "training/train.jsonl:5: missing field `completion`" in detail


def test_a_dataset_that_does_not_fit_the_job_is_a_422_at_creation(nemo, hf_api, email_dataset):
    """The job's pre-flight runs at creation: a DPO job on SFT records, and examples longer than the
    config's max_seq_length (data.long_examples: error), are refused before any run starts."""
    from nemo_microservices import UnprocessableEntityError

    from tests.api.conftest import upload_dataset

    upload_dataset(hf_api, nemo, "api-tests", "too-long", {"training/train.jsonl": ok_rows(9) + [{"prompt": "word " * 600, "completion": "ok"}]})
    jobs_before = {j.id for j in nemo.customization.jobs.list()}
    with pytest.raises(UnprocessableEntityError) as raised:
        nemo.customization.jobs.create(**(NEMO_EXAMPLE | {"config": TINY_CONFIG, "dataset": "api-tests/too-long"}))
    detail = str(raised.value.body["detail"])
    assert "training/train.jsonl:10: " in detail and "longer than the config's max_seq_length 256" in detail
    with pytest.raises(UnprocessableEntityError) as raised:
        nemo.customization.jobs.create(**(NEMO_EXAMPLE | {"config": TINY_CONFIG, "dataset": "email-assist-dataset",
                                                          "hyperparameters": {"training_type": "dpo", "finetuning_type": "lora"}}))
    assert "training_type dpo reads preference records" in str(raised.value.body["detail"])
    assert {j.id for j in nemo.customization.jobs.list()} == jobs_before  # nothing was recorded or started


def test_cancel_and_secrets_never_echoed(nemo, email_dataset, platform):
    secret = "wandb-secret-3f9a7c"
    job = nemo.customization.jobs.create(**(NEMO_EXAMPLE | {"config": TINY_CONFIG}), wandb_api_key=secret,
                                         integrations=[{"type": "wandb", "wandb": {"project": "p"}}])
    assert secret not in job.model_dump_json()
    cancelled = nemo.customization.jobs.cancel(job.id)
    assert cancelled.status in ("cancelling", "cancelled")
    final = wait_for(nemo, job.id, {"cancelled", "failed", "completed"}, timeout=300)
    assert final.status == "cancelled"
    assert secret not in nemo.customization.jobs.retrieve(job.id).model_dump_json()
    from nemo_microservices import ConflictError

    with pytest.raises(ConflictError):
        nemo.customization.jobs.cancel(job.id)
    # Stored sealed, never in plain text; never logged.
    database = platform.data_dir / "api" / "api.db"
    with sqlite3.connect(database) as conn:
        rows = conn.execute("select data from entities where id = ?", (job.id,)).fetchall()
    assert rows and secret not in rows[0][0] and "wandb-api-key" in rows[0][0]
    assert all(secret not in p.read_text(errors="replace") for p in (platform.data_dir / "logs").glob("*.log"))
    # Passed to the run sealed: the flow run's parameters hold a token that unseals to the key.
    import httpx

    from core.ids import uuid_from_id
    from core.secrets import unseal
    from core.settings import Settings

    parameters = httpx.get(f"{platform.prefect_api}/flow_runs/{uuid_from_id(job.id)}", auth=platform.services_auth, timeout=30).json()["parameters"]
    sealed = parameters["spec"]["secrets"]["wandb-api-key"]
    assert secret not in json.dumps(parameters) and unseal(Settings(data_dir=platform.data_dir), sealed) == secret


def test_a_reviewed_job_waits_for_an_approval_given_through_the_api(nemo, http, email_dataset):
    """Full-weight SFT needs a reviewer before training and before promotion (the default policy):
    the job waits, says how to answer, and goes on when the answer arrives through the API."""
    body = NEMO_EXAMPLE | {
        "config": TINY_CONFIG, "output_model": "default/reviewed-bot",
        "hyperparameters": {"training_type": "sft", "finetuning_type": "all_weights", "epochs": 3, "batch_size": 4, "learning_rate": 1e-3},
        "ownership": {"created_by": "alice"},
    }
    job_id = http.post("/v1/customization/jobs", json=body).json()["id"]
    answered, seen = [], set()
    deadline = time.monotonic() + 600
    while (status := nemo.customization.jobs.status(job_id)).status not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, status.status_logs
        pause = len(status.status_logs)  # each pause is a new entry in the status history
        if status.status_logs[-1].message in ("Suspended", "Paused") and pause not in seen:
            assert f"/v1/customization/jobs/{job_id}/approval" in status.status_logs[-1].detail
            reviewer = "alice" if not answered else "bob"  # the submitter's own answer is not accepted
            response = http.post(f"/v1/customization/jobs/{job_id}/approval", json={"approved": True, "reviewer": reviewer, "comment": "ok"})
            assert response.status_code == 200, response.text
            answered.append(reviewer)
            seen.add(pause)
        time.sleep(1)
    assert status.status == "completed", status.status_logs
    lines = nemo.customization.jobs.container_logs(job_id).entries[job_id].logs["customize"]
    assert any("alice submitted this job and cannot also approve it" in line for line in lines)
    assert answered == ["alice", "bob", "bob"], lines  # training (alice refused, then bob), promotion (bob)
    # The job's whole story, in order, with who acted: the API's records and the flow's, joined by the run.
    trail = http.get("/v1/audit", params={"filter[job]": job_id, "page_size": 100}).json()["data"]
    actions = [r["action"] for r in trail]
    assert actions[0] == "job.created" and trail[0]["principal"] == "alice", trail
    assert [(r["action"], r["principal"]) for r in trail if r["action"].startswith("approval.")] == [("approval.approved", "bob")] * 2
    assert actions.index("gate.decided") < actions.index("model.registered") < actions.index("model.promoted"), actions
    assert "alias.moved" in actions and all(r["principal"] for r in trail)
    assert [r["at"] for r in trail] == sorted(r["at"] for r in trail)
    refused = http.post(f"/v1/customization/jobs/{job_id}/approval", json={"approved": True, "reviewer": "bob"})
    assert refused.status_code == 409 and "not waiting for an approval" in refused.text
    bad = http.post(f"/v1/customization/jobs/{job_id}/approval", json={"approved": True})
    assert bad.status_code == 422 and "reviewer" in bad.text


def test_customizer_extensions_ride_on_the_sdks_extra_body(nemo, email_dataset, platform):
    """NeMo's SDK does not know customizer's `evaluation`, `budget` and `policy`: it sends them as plain
    JSON with `extra_body`, and they reach the flow run's spec; the answer carries the estimate."""
    import httpx
    from nemo_microservices import UnprocessableEntityError

    from core.ids import uuid_from_id

    extensions = {"evaluation": {"target_score": 75.0, "few_shot": 1}, "budget": {"max_device_hours": 3.0}, "policy": {"min_task_gain": 0.5}}
    job = nemo.customization.jobs.create(**(NEMO_EXAMPLE | {"config": TINY_CONFIG}), extra_body=extensions)
    nemo.customization.jobs.cancel(job.id)  # what was asked is all this test reads
    spec = httpx.get(f"{platform.prefect_api}/flow_runs/{uuid_from_id(job.id)}", auth=platform.services_auth, timeout=30).json()["parameters"]["spec"]
    assert (spec["evaluation"]["target_score"], spec["evaluation"]["few_shot"]) == (75.0, 1)
    assert spec["budget"]["max_device_hours"] == 3.0 and spec["policy"]["min_task_gain"] == 0.5
    assert spec["dataset_source"] == "hf://datasets/default/email-assist-dataset"
    answer = job.model_dump()
    assert answer["estimate"]["device_hours"] > 0 and answer["budget"] == {"max_device_hours": 3.0}  # utilisation unset: calibrated
    with pytest.raises(UnprocessableEntityError) as raised:
        nemo.customization.jobs.create(**(NEMO_EXAMPLE | {"config": TINY_CONFIG}), extra_body={"budget": {"max_device_hours": -1}})
    assert ["body", "budget", "max_device_hours"] in [e["loc"] for e in raised.value.body["detail"]]
