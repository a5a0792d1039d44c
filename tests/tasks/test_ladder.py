"""The free rungs at the prompt baseline, through ``.fn()``: a rung (zero-shot, a candidate prompt,
few-shot, retrieval few-shot) whose lower bound reaches the target ends the job without fine-tuning,
names the rung, and keeps its prompt in MLflow's prompt registry with the job's lineage; one whose
estimate alone reaches it does not. The ladder's free rows are kept on the run."""

from __future__ import annotations

import json

import pytest

from core import tags as tag
from core import tracking
from evaluation.ladder import LADDER_TAG
from evaluation.rungs import PROMPT_RETRIEVAL, PROMPT_RUN_ID, PROMPT_RUNG, PROMPT_SCORE, PROMPT_SHOTS, RungResult
from tasks.evaluation import check_prompt_baseline
from tests.tasks.conftest import make_job, run_tags, stage

GENERAL = [1.0] * 60 + [0.0] * 40
ZERO_SHOT = [1.0] * 20 + [0.0] * 20  # 50 points
SHOTS = {"k": 3, "examples": "the first of the training split", "dataset_sha256": "d" * 64, "dataset": "/data/codes"}
RETRIEVAL = {"k": 3, "library": "bm25s==0.3.16", "method": "bm25", "stopwords": "en", "index": "training split",
             "dataset_sha256": "d" * 64, "dataset": "/data/codes"}


def rung(kind: str, label: str, items: list[float], template: str = "Q: {prompt}") -> RungResult:
    return RungResult(benchmark=f"task_{label.split()[0]}", kind=kind, label=label, template=template, per_item=items,
                      retrieval=RETRIEVAL if kind == "retrieval" else {}, shots=SHOTS if kind == "few-shot" else {},
                      prompt_tokens=40.0 if kind == "zero-shot" else 160.0)


def baseline(*rungs: RungResult, few_shot: float = 0.6, zero_shot: list[float] = ZERO_SHOT):
    scores = stage(sum(zero_shot) / len(zero_shot), GENERAL, few_shot=few_shot, task_items=zero_shot)
    return scores.model_copy(update={"zero_shot": rung("zero-shot", "zero-shot", zero_shot, "{prompt}\n{completion}"),
                                     "rungs": list(rungs)})


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
        ("zero-shot", "FAILED"), ("prompt 1", "FAILED"), ("retrieval few-shot (BM25, k=3)", "passed")]
    ladder = json.loads(run_tags(job_settings, job)[LADDER_TAG])  # the free rows, as the API's status shows them
    assert [(r["rung"], r["kind"], r["cost"], r["prompt_tokens"], r["decision"]) for r in ladder] == [
        ("zero-shot", "zero-shot", "free", 40.0, "missed the target"), ("prompt 1", "prompt", "free", 160.0, "missed the target"),
        ("retrieval few-shot (BM25, k=3)", "retrieval", "free", 160.0, "met the target")]
    assert ladder[2]["score"] == 1.0 and 0.8 <= ladder[2]["ci_low"] < 1.0 and ladder[2]["ci_high"] == 1.0


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


def test_few_shot_that_reaches_the_target_on_its_lower_bound_keeps_its_template_and_shots(job_settings):
    job = with_lineage(job_settings, make_job(job_settings, output_model="team/shots", evaluation={"target_score": 80.0}))
    scores = baseline(rung("few-shot", "few-shot (k=3)", [1.0] * 39 + [0.0], template="{prompt}\n{completion}"))

    reason = check_prompt_baseline.fn(job, scores)

    assert reason.startswith("few-shot (k=3) reaches em 97.5, lower bound ")
    assert reason.endswith("prompt registered as team.shots-prompt version 1")
    prompt = tracking.client(job_settings).load_prompt("team.shots-prompt", version=1)
    assert prompt.template == "{{prompt}}\n{completion}"
    assert (prompt.tags[PROMPT_RUNG], prompt.tags[tag.JOB_ID], prompt.tags[tag.DATASET_SHA256]) == ("few-shot (k=3)", job.job_id, "d" * 64)
    assert json.loads(prompt.tags[PROMPT_SHOTS]) == SHOTS and PROMPT_RETRIEVAL not in prompt.tags


def test_zero_shot_that_reaches_the_target_on_its_lower_bound_keeps_the_training_prompt(job_settings):
    job = with_lineage(job_settings, make_job(job_settings, output_model="team/zero", evaluation={"target_score": 80.0}))
    reason = check_prompt_baseline.fn(job, baseline(zero_shot=[1.0] * 40))
    assert reason.startswith("zero-shot reaches em 100.0, lower bound ")
    prompt = tracking.client(job_settings).load_prompt("team.zero-prompt", version=1)
    assert (prompt.template, prompt.tags[PROMPT_RUNG]) == ("{{prompt}}\n{completion}", "zero-shot")


@pytest.mark.parametrize("kind", ["zero-shot", "few-shot"])
def test_zero_and_few_shot_are_judged_on_their_lower_bound_not_their_estimate(job_settings, kind):
    # 9 of 10 items: the estimate, 90, is over the target; its lower bound is far below it.
    job = with_lineage(job_settings, make_job(job_settings, output_model=f"team/{kind}", evaluation={"target_score": 80.0}))
    lucky = [1.0] * 9 + [0.0]
    scores = baseline(zero_shot=lucky) if kind == "zero-shot" else baseline(rung("few-shot", "few-shot (k=3)", lucky), few_shot=0.9)
    assert check_prompt_baseline.fn(job, scores) is None
    assert "customizer.decision" not in run_tags(job_settings, job)
    assert tracking.client(job_settings).search_prompts(filter_string=f"name = 'team.{kind}-prompt'") == []
    decisions = {r["rung"]: r["decision"] for r in json.loads(run_tags(job_settings, job)[LADDER_TAG])}
    assert decisions[kind if kind == "zero-shot" else "few-shot (k=3)"] == "missed the target"
