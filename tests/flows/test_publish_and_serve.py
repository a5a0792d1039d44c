"""From a job to a served adapter, through the real components: the customize flow (Prefect test
harness, MLflow on SQLite) publishes to S3 over HTTP (moto's S3 app, counting what it receives) and
hands the promoted adapter to a running serve-models server, which answers with it at once."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import httpx
import pytest
from prefect import flow
from prefect.testing.utilities import prefect_test_harness

from core.settings import get_settings
from deploy import registry
from core import tracking
from deploy.registry import registered_name
from deploy.store import Manifest, Published, StoreError, fetch, publish, publishable_files
from tests.conftest import TINY_CONFIG_URN
from tests.deploy import sign_decision
from tests.s3server import counting_s3_server
from tests.serving import TINY_BASE_NAME, running_server
from core.specs import CustomizationSpec, PromotionPolicy
from evaluation.policy import write_policy

OUTPUT = "team/ok-bot"
QUESTION = "Reply with the word ok. Item 100"


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def s3():
    with counting_s3_server() as server:
        yield server


@pytest.fixture
def services(prefect_server, s3, tiny_config_dir, tmp_path, tmp_path_factory, monkeypatch):
    bucket = s3.new_bucket("models")
    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CUSTOMIZER_ALLOWED_FILE_ROOTS", json.dumps([str(tmp_path_factory.getbasetemp())]))
    monkeypatch.setenv("CUSTOMIZER_STORE_URI", f"s3://{bucket}/adapters")
    monkeypatch.setenv("CUSTOMIZER_S3_ENDPOINT_URL", s3.endpoint)
    return bucket


def spec_for(dataset: Path, output_model: str = OUTPUT, **lora) -> CustomizationSpec:
    # The tiny model's general scores are noise: the operator opens the forgetting limit (a job may only tighten it).
    write_policy(get_settings(), None, PromotionPolicy(max_general_drop=100.0))
    return CustomizationSpec.model_validate({
        "config": TINY_CONFIG_URN,
        "dataset": str(dataset),
        "output_model": output_model,
        "hyperparameters": {"epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "lora": {"adapter_dim": 8, "alpha": 16} | lora},
        "evaluation": {"general_benchmarks": ["capitals"], "limit": 8, "max_new_tokens": 4},
    })


def ask(client: httpx.Client, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "temperature": 0}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_a_promoted_adapter_is_served_the_moment_the_job_completes(services, s3, ok_dataset, tiny_model_dir, monkeypatch):
    from flows.customize import customize

    bucket = services
    settings = get_settings()
    with running_server(settings, tiny_model_dir) as (server, url), httpx.Client(base_url=url, timeout=120) as client:
        monkeypatch.setenv("CUSTOMIZER_SERVING_ENDPOINT", url)
        before = ask(client, TINY_BASE_NAME)
        s3.reset()
        result = customize(spec_for(ok_dataset))

        # Published to S3 over HTTP: every file went up, the manifest last.
        assert result.decision.action == "promote", result.decision.reasons
        assert result.published_uri == f"s3://{bucket}/adapters/{OUTPUT}/1/"
        puts = [path for method, path, _ in s3.requests if method == "PUT" and f"/adapters/{OUTPUT}/1/" in path]
        names = [p.rsplit("/", 1)[1] for p in puts]
        assert sorted(names[:-1]) == ["README.md", "adapter_config.json", "adapter_model.safetensors"] and names[-1] == "manifest.json"

        # Live right away, under both names, answering with the adapter: "ok", unlike the base model.
        listed = {m["id"] for m in client.get("/v1/models").json()["data"]}
        assert {f"{OUTPUT}@1", OUTPUT} <= listed
        assert ask(client, OUTPUT) == "ok" and ask(client, f"{OUTPUT}@1") == "ok"
        assert before != "ok" and ask(client, TINY_BASE_NAME) == before
        tags = tracking.client(settings).get_model_version(registered_name(OUTPUT), "1").tags
        assert tags["customizer.serving.live_as"] == f"{OUTPUT}@1, {OUTPUT}" and "customizer.serving.warning" not in tags
        assert tags["customizer.serving_check"].startswith("passed: LoRA r=8 on q_proj, v_proj")

        # The champion alias resolves for a server that was never told about the adapter.
        assert server.unload(OUTPUT) is None and server.unload(f"{OUTPUT}@1") is None
        assert ask(client, OUTPUT) == "ok"

    # Re-publishing identical content sends nothing: no writes and zero bytes reach the store.
    adapter_dir = settings.jobs_dir / result.job_id / "adapter"
    s3.reset()
    files = [*publishable_files(adapter_dir, tiny_model_dir), "README.md"]  # the model card publish_adapter wrote there
    again = publish(adapter_dir, files, OUTPUT, "1", TINY_BASE_NAME, {}, settings)
    assert again.uploaded == [] and again.bytes_uploaded == 0
    assert s3.writes() == [] and s3.bytes_received() == 0

    # A corrupted object is caught on download.
    s3_client = boto3.client("s3", endpoint_url=s3.endpoint)
    key = f"adapters/{OUTPUT}/1/adapter_model.safetensors"
    body = bytearray(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-1] ^= 0x01
    s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    with pytest.raises(StoreError, match="adapter_model.safetensors does not match its manifest"):
        fetch(OUTPUT, "1", settings.root / "download", settings)


def test_an_adapter_no_engine_could_serve_is_not_published(services, s3, ok_dataset):
    from flows.customize import customize

    bucket = services
    with pytest.raises(Exception, match=r"cannot be served: target_modules include the embeddings or LM head \(embed_tokens\)"):
        customize(spec_for(ok_dataset, "team/bad-bot", target_modules=["embed_tokens", "q_proj"]))
    assert boto3.client("s3", endpoint_url=s3.endpoint).list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    settings = get_settings()
    client = tracking.client(settings)
    assert client.get_model_version(registered_name("team/bad-bot"), "1").tags["customizer.serving_check"].startswith("failed:")
    run = client.search_runs([client.get_experiment_by_name(settings.mlflow_experiment).experiment_id])[0]
    assert run.info.status == "FAILED" and "cannot be served" in run.data.tags["customizer.failure"]


def test_a_hand_off_that_fails_leaves_a_warning_on_the_run_and_version(services, monkeypatch):
    from tasks.deploy import go_live
    from tasks.job import Job
    from core.catalog import get_config

    monkeypatch.setenv("CUSTOMIZER_SERVING_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    settings = get_settings()
    run_id = tracking.start_run(settings, "cust-handoff", tags={}, params={})
    registered = registry.register_version(settings, OUTPUT, "s3://x", run_id, {}).version
    sign_decision(settings, OUTPUT, registered)  # the gate's promote decision, as the register task signs it
    version = registry.promote(settings, OUTPUT, registered)
    spec = CustomizationSpec(config=TINY_CONFIG_URN, dataset="/data", output_model=OUTPUT)
    job = Job(job_id="cust-handoff", work_dir="/tmp", run_id=run_id, spec=spec, config=get_config(TINY_CONFIG_URN, settings),
              policy=spec.policy, policy_source="job")
    manifest = Manifest(output_model=OUTPUT, version="1", base_model=TINY_BASE_NAME, files={}, lineage={}, created_at=0)
    published = Published(uri=f"s3://{services}/adapters/{OUTPUT}/1/", manifest=manifest, uploaded=[], unchanged=[])

    @flow
    def hand_off():
        return go_live(job, version, published)

    result = hand_off()
    assert result.loaded == [] and "not live on http://127.0.0.1:9" in result.warning
    client = tracking.client(settings)
    assert "cannot reach" in client.get_model_version(registered_name(OUTPUT), "1").tags["customizer.serving.warning"]
    assert "cannot reach" in client.get_run(run_id).data.tags["customizer.serving.warning"]
