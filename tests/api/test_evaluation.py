"""Evaluator through the NeMo SDK: a custom benchmark (completion and chat-completion tasks scored
with em, f1, bleu, rouge and string-check) on the adapter a customization job published, and an
lm-eval benchmark on a base model; configs that cannot run are refused naming the field."""

from __future__ import annotations

import time

import pytest

from tests.api.conftest import TINY_CONFIG, upload_dataset, wait_for

ROWS = [{"Question": f"Reply with the word ok. Item {i}", "Answer": "ok"} for i in range(6)]
SCORES = {"em": {"em"}, "f1": {"f1"}, "bleu": {"bleu_score"}, "rouge": {"rouge_1_score", "rouge_2_score", "rouge_3_score", "rouge_L_score"},
          "check": {"string-check"}}


def _custom_config(files_url: str) -> dict:
    metrics = {
        "em": {"type": "em", "params": {"ground_truth": "{{item.answer}}"}},
        "f1": {"type": "f1", "params": {"ground_truth": "{{item.answer}}"}},
        "bleu": {"type": "bleu", "params": {"references": ["{{item.answer}}"]}},
        "rouge": {"type": "rouge", "params": {"ground_truth": "{{item.answer}}"}},
        "check": {"type": "string-check", "params": {"check": ["{{sample.output_text}}", "contains", "{{item.answer}}"]}},
    }
    return {
        "type": "custom", "name": "ok-benchmark", "namespace": "eval-tests", "params": {"max_tokens": 4, "temperature": 0.0},
        "tasks": {
            "ok-completion": {"type": "completion", "dataset": {"files_url": files_url}, "params": {"template": "{{item.question}} Answer:"}, "metrics": metrics},
            "ok-chat": {"type": "chat-completion", "dataset": {"files_url": files_url},
                        "params": {"template": {"messages": [{"role": "user", "content": "{{item.question}}"}]}}, "metrics": metrics},
        },
    }


def _wait(nemo, job_id: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while (job := nemo.evaluation.jobs.retrieve(job_id)).status not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"{job_id} still {job.status}"
        time.sleep(2)
    return job


def test_custom_and_lm_eval_benchmarks(nemo, hf_api, example_jobs):
    upload_dataset(hf_api, nemo, "eval-tests", "ok-qa", {"ok.jsonl": ROWS})
    config = nemo.evaluation.configs.create(**_custom_config("hf://datasets/eval-tests/ok-qa/ok.jsonl"))
    assert config.id.startswith("eval-config-") and config.type == "custom"

    # The adapter the tiny customization job published, through its Entity Store model.
    tiny_id = example_jobs[1].json()["id"]
    assert wait_for(nemo, tiny_id, {"completed", "failed", "cancelled"}, timeout=900).status == "completed"
    target = nemo.evaluation.targets.create(type="model", name="tiny-tuned", namespace="eval-tests", model=f"default/tiny-llama-email-assist-dataset-lora@{tiny_id}")
    # The base model alone, through a model entry that names its config.
    nemo.models.create(name="tiny-base", namespace="eval-tests", custom_fields={"config": TINY_CONFIG})
    custom_job = nemo.evaluation.jobs.create(config="eval-tests/ok-benchmark", target="eval-tests/tiny-tuned", namespace="eval-tests")
    lm_eval_job = nemo.evaluation.jobs.create(
        namespace="eval-tests", config={"type": "capitals", "params": {"limit_samples": 8}},
        target={"type": "model", "model": "eval-tests/tiny-base"},
    )
    assert custom_job.id.startswith("eval-") and custom_job.config.type == "custom" and custom_job.target.name == "tiny-tuned"

    done = _wait(nemo, custom_job.id)
    assert done.status == "completed", done.status_details
    status = nemo.evaluation.jobs.status(custom_job.id)
    assert status.progress == 100.0 and status.task_status == {"ok-completion": "completed", "ok-chat": "completed"}
    results = nemo.evaluation.jobs.results(custom_job.id)
    assert results.job == custom_job.id and set(results.tasks) == {"ok-completion", "ok-chat"}
    for task in results.tasks.values():
        assert {name: set(metric.scores) for name, metric in task.metrics.items()} == SCORES
        for name, metric in task.metrics.items():
            for score in metric.scores.values():
                assert 0.0 <= score.value <= (100.0 if name == "bleu" else 1.0)
    assert "string-check" in results.tasks["ok-chat"].metrics["check"].scores

    done = _wait(nemo, lm_eval_job.id)
    assert done.status == "completed", done.status_details
    capitals = nemo.evaluation.jobs.results(lm_eval_job.id).tasks["capitals"]
    accuracy = next(iter(capitals.metrics["acc"].scores.values())).value
    assert 0.0 <= accuracy <= 1.0

    listed = [j.id for j in nemo.evaluation.jobs.list(filter={"namespace": "eval-tests", "status": "completed"})]
    assert sorted(listed) == sorted([custom_job.id, lm_eval_job.id])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metrics": {"judge": {"type": "llm-judge"}}}, "tasks.t.metrics.judge.type"),
        ({"type": "ranking"}, "tasks.t.type"),
        ({"params": {}}, "tasks.t.params.template"),
        ({"metrics": {"c": {"type": "string-check", "params": {"check": ["a", "resembles", "b"]}}}}, "tasks.t.metrics.c.params.check"),
    ],
)
def test_configs_that_cannot_run_are_refused_naming_the_field(http, change, field):
    task = {"type": "completion", "dataset": "eval-tests/ok-qa", "params": {"template": "{{item.question}}"},
            "metrics": {"em": {"type": "em"}}} | change
    response = http.post("/v1/evaluation/configs", json={"type": "custom", "namespace": "eval-tests", "tasks": {"t": task}})
    assert response.status_code == 400, response.text
    assert field in response.json()["detail"]


def test_evaluation_job_cancel_and_missing_references(nemo, http):
    from nemo_microservices import NotFoundError

    with pytest.raises(NotFoundError):
        nemo.evaluation.jobs.create(config="eval-tests/nope", target={"type": "model", "model": "eval-tests/tiny-base"})
    nemo.models.create(name="cancel-me", namespace="eval-cancel", custom_fields={"config": TINY_CONFIG})
    job = nemo.evaluation.jobs.create(namespace="eval-cancel", config={"type": "capitals"}, target={"type": "model", "model": "eval-cancel/cancel-me"})
    nemo.evaluation.jobs.cancel(job.id)
    # Reported cancelled once it can no longer start: a run the worker has picked up ends when the busy
    # worker gets to it (minutes in the full suite, where the worker is busy with other jobs).
    assert _wait(nemo, job.id, timeout=600).status == "cancelled"
    early = http.get(f"/v1/evaluation/jobs/{job.id}/results")
    assert early.status_code == 409 and "cancelled" in early.json()["detail"]
