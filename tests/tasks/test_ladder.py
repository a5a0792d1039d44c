"""The free rungs at the prompt baseline, through ``.fn()``: a rung whose lower bound reaches the
target ends the job without fine-tuning, names the rung, and keeps its prompt in MLflow's prompt
registry with the job's lineage; one whose estimate alone reaches it does not."""

from __future__ import annotations

import json

import pytest

from core import tags as tag
from core import tracking
from evaluation.rungs import PROMPT_RETRIEVAL, PROMPT_RUN_ID, PROMPT_RUNG, PROMPT_SCORE, RungResult
from tasks.evaluation import check_prompt_baseline
from tests.tasks.conftest import make_job, run_tags, stage

GENERAL = [1.0] * 60 + [0.0] * 40
ZERO_SHOT = [1.0] * 20 + [0.0] * 20  # 50 points
RETRIEVAL = {"k": 3, "library": "bm25s==0.3.16", "method": "bm25", "stopwords": "en", "index": "training split",
             "dataset_sha256": "d" * 64, "dataset": "/data/codes"}


def rung(kind: str, label: str, items: list[float], template: str = "Q: {prompt}") -> RungResult:
    return RungResult(benchmark=f"task_{label.split()[0]}", kind=kind, label=label, template=template, per_item=items,
                      retrieval=RETRIEVAL if kind == "retrieval" else {})


def baseline(*rungs: RungResult, few_shot: float = 0.6):
    scores = stage(sum(ZERO_SHOT) / len(ZERO_SHOT), GENERAL, few_shot=few_shot, task_items=ZERO_SHOT)
    return scores.model_copy(update={"rungs": list(rungs)})


def with_lineage(settings, job):
    client = tracking.client(settings)
    for key, value in {tag.DATASET_SHA256: "d" * 64, tag.DATASET_URI: "/data/codes", tag.BASE_MODEL: "customizer/tiny-llama"}.items():
        client.set_tag(job.run_id, key, value)
    return job


def test_retrieval_few_shot_that_reaches_the_target_ends_the_job_and_keeps_its_prompt(job_settings):
    job = with_lineage(job_settings, make_job(job_settings, output_model="team/codes", evaluation={"target_score": 80.0}))
    scores = baseline(rung("prompt", "prompt 1", [1.0] * 30 + [0.0] * 10), rung("retrieval", "retrieval few-shot (BM25, k=3)", [1.0] * 40,
                      template="{prompt}\n{completion}"))

    reason = check_prompt_baseline.fn(job, scores)  # zero-shot 50 and few-shot 60 fall short of 80

    assert reason.startswith("retrieval few-shot (BM25, k=3) reaches em 100.0, lower bound ")
    assert "prompt registered as team.codes-prompt version 1" in reason
    assert run_tags(job_settings, job)["customizer.decision"] == "no fine-tuning needed"
    assert [p.name for p in tracking.client(job_settings).search_prompts(filter_string="name = 'team.codes-prompt'")] == ["team.codes-prompt"]
    prompt = tracking.client(job_settings).load_prompt("team.codes-prompt", version=1)
    assert prompt.template == "{{prompt}}\n{completion}"
    assert {k: prompt.tags[k] for k in (tag.JOB_ID, PROMPT_RUN_ID, tag.DATASET_SHA256, tag.BASE_MODEL, PROMPT_RUNG)} == {
        tag.JOB_ID: job.job_id, PROMPT_RUN_ID: job.run_id, tag.DATASET_SHA256: "d" * 64, tag.BASE_MODEL: "customizer/tiny-llama",
        PROMPT_RUNG: "retrieval few-shot (BM25, k=3)",
    }
    assert json.loads(prompt.tags[PROMPT_RETRIEVAL]) == RETRIEVAL
    score = json.loads(prompt.tags[PROMPT_SCORE])
    assert score["score"] == 100.0 and 80.0 <= score["ci"][0] < 100.0 and score["items"] == 40
    logged = tracking.client(job_settings).download_artifacts(job.run_id, "rungs.json", str(job.work_dir))
    assert [(r["label"], r["verdict"]) for r in json.loads(open(logged).read())] == [
        ("prompt 1", "FAILED"), ("retrieval few-shot (BM25, k=3)", "passed")]


def test_a_rung_whose_estimate_but_not_its_lower_bound_reaches_the_target_does_not_stop_the_job(job_settings):
    job = with_lineage(job_settings, make_job(job_settings, output_model="team/lucky", evaluation={"target_score": 80.0}))
    lucky = rung("prompt", "prompt 1", [1.0] * 9 + [0.0])  # 90 points on 10 items: the bound is far below 80
    scores = baseline(lucky).model_copy(update={"per_sample_task": [1.0] * 5 + [0.0] * 5})
    assert check_prompt_baseline.fn(job, scores) is None
    assert "customizer.decision" not in run_tags(job_settings, job)
    assert tracking.client(job_settings).search_prompts(filter_string="name = 'team.lucky-prompt'") == []


def test_a_forced_job_trains_and_registers_no_prompt(job_settings):
    job = with_lineage(job_settings, make_job(job_settings, output_model="team/forced",
                                              evaluation={"target_score": 80.0, "force_training": True}))
    assert check_prompt_baseline.fn(job, baseline(rung("prompt", "prompt 1", [1.0] * 40))) is None
    assert tracking.client(job_settings).search_prompts(filter_string="name = 'team.forced-prompt'") == []


def test_a_prompt_without_the_jobs_lineage_is_not_registered(job_settings):
    job = make_job(job_settings, output_model="team/orphan", evaluation={"target_score": 80.0})
    with pytest.raises(RuntimeError, match="lacks the lineage tags customizer.dataset.sha256"):
        check_prompt_baseline.fn(job, baseline(rung("prompt", "prompt 1", [1.0] * 40)))
