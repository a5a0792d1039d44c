"""Evaluation through a served endpoint: lm-eval's API models against serve-models over HTTP give the
same scores as the local evaluation of the same model."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from core.settings import Settings
from deploy.store import publish
from evaluation.remote import evaluate_endpoint
from evaluation.runner import EvaluationError, evaluate_model, task_benchmark
from tests.conftest import TINY_CONFIG_URN
from tests.serving import TINY_BASE_NAME, make_adapter, running_server
from core.catalog import get_config
from data.ingest import ingest_dataset
from core.specs import EvaluationPlan

pytestmark = pytest.mark.platform  # serve-models on uvicorn, started in the test


def _samples(folder, name):
    return [json.loads(line) for line in (folder / "samples" / f"{name}.jsonl").read_text().splitlines()]


def test_a_served_adapter_scores_as_it_does_locally(tmp_path, settings, ok_dataset, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    settings = settings.model_copy(update={"eval_precision": "float32"})  # as the server runs it
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    plan = EvaluationPlan(general_benchmarks=["capitals"], limit=10, max_new_tokens=4, batch_size=4)
    benchmark = task_benchmark(data, config, AutoTokenizer.from_pretrained(tiny_model_dir), plan, tmp_path / "bench")
    adapter = make_adapter(tmp_path / "adapter", tiny_model_dir, seed=3)
    store = Settings(data_dir=tmp_path / "serve", store_uri=(tmp_path / "store").as_uri())
    publish(adapter, ["adapter_config.json", "adapter_model.safetensors"], "team/bot", "2", TINY_BASE_NAME, {}, store)

    local = evaluate_model(str(tiny_model_dir), str(adapter), benchmark, plan, tmp_path / "local", settings)
    with running_server(store, tiny_model_dir) as (_, url):
        remote = evaluate_endpoint(url, "team/bot@2", benchmark, plan, tmp_path / "remote", settings, str(tiny_model_dir))
        chat_plan = plan.model_copy(update={"general_benchmarks": []})
        chat = evaluate_endpoint(url, "team/bot@2", benchmark, chat_plan, tmp_path / "chat", settings, str(tiny_model_dir), api="chat-completions")
        with pytest.raises(EvaluationError, match="scored by log-likelihood"):
            evaluate_endpoint(url, "team/bot@2", benchmark, plan, tmp_path / "x", settings, str(tiny_model_dir), api="chat-completions")

    # Generation (the task benchmark): the same answers, item by item, through either route.
    local_answers = [s["resps"] for s in sorted(_samples(tmp_path / "local", "task"), key=lambda s: s["doc_id"])]
    for route in ("remote", "chat"):
        answers = [s["resps"] for s in sorted(_samples(tmp_path / route, "task"), key=lambda s: s["doc_id"])]
        assert answers == local_answers, route
    assert remote.task == local.task == chat.task
    # Log-likelihood (a general benchmark), from echo + logprobs: the same choices.
    assert remote.per_sample["capitals"] == local.per_sample["capitals"]
    assert remote.general == local.general and remote.counts == local.counts
