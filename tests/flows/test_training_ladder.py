"""Climbing the training ladder through the customize flow on the tiny model: a LoRA candidate that
misses the target moves the job to full SFT, which waits for its own approval first; a budget that
cannot cover the next rung stops the climb, saying why, and the last candidate goes to the gate.

The target is 100 points: the lower bound of a score on finitely many items never reaches it, so
every trained rung misses it, whatever the tiny model learns."""

import json

import pytest

from core import tracking
from core.settings import get_settings
from core.specs import CustomizationSpec
from deploy.registry import registered_name
from evaluation.climb import training_rungs
from tasks.check import _parameters, check
from tests.flows.test_approvals import answer, paused_run, start, wait_resumed
from tests.flows.test_customize import OUTPUT, spec_for
from training.guidance import estimate

LADDER = [{"finetuning_type": "lora"}, {"finetuning_type": "all_weights", "learning_rate": 1e-3, "epochs": 2}]


def ladder_spec(dataset, **budget) -> CustomizationSpec:
    raw = spec_for(dataset).model_dump(mode="json")
    raw["hyperparameters"]["ladder"] = LADDER
    raw["evaluation"]["target_score"] = 100.0
    raw["budget"] |= budget
    return CustomizationSpec.model_validate(raw)


@pytest.fixture
def fast_approvals(monkeypatch):
    monkeypatch.setenv("CUSTOMIZER_APPROVAL_POLL_SECONDS", "1")


def test_a_missed_target_climbs_to_full_sft_only_after_its_approval(services, ok_dataset, fast_approvals):
    thread, outcome = start(ladder_spec(ok_dataset).model_copy(update={"submitted_by": "alice"}))

    # LoRA is self-service: it trained, missed the target, and full SFT (reviewed) now waits.
    waiting = paused_run(thread, outcome)
    assert waiting.state.state_details.pause_key == "rung1-training-approval-0"
    jobs = get_settings().jobs_dir
    assert len(list(jobs.glob("*/adapter"))) == 1, "the LoRA rung trained before the climb"
    assert not any(jobs.glob("*/rungs/all_weights/checkpoints")), "full SFT started before its approval"
    answer(waiting, approved=True, reviewer="bob", comment="LoRA fell short")
    wait_resumed(waiting.id)

    # Full SFT missed too; it is the candidate the gate judges, and a reviewed method's promotion waits.
    promotion = paused_run(thread, outcome)
    assert promotion.state.state_details.pause_key == "promotion-approval-0"
    assert any(jobs.glob("*/rungs/all_weights/model"))
    answer(promotion, approved=True, reviewer="carol", comment="ok")
    thread.join(timeout=300)

    result = outcome["result"]
    assert [(r.rung, r.kind, r.decision) for r in result.ladder] == [  # the free rungs first, then the training rungs
        ("zero-shot", "zero-shot", "missed the target"), ("few-shot (k=3)", "few-shot", "missed the target"),
        ("sft/lora", "training", "missed the target"), ("sft/all_weights", "training", "missed the target")]
    trained = [r for r in result.ladder if r.kind == "training"]
    assert all(r.ci_low is not None and r.ci_low <= r.score <= r.ci_high and r.device_hours > 0 for r in trained)
    assert trained[1].forgetting is not None
    assert result.climb == "no training rung met the target 100: no rung is left"
    assert [(a.stage, a.reviewer) for a in result.approvals] == [("training", "bob"), ("promotion", "carol")]
    tags = tracking.client(get_settings()).get_model_version(registered_name(OUTPUT), result.registered.version).tags
    assert tags["customizer.finetuning_type"] == "all_weights" and tags["customizer.artifact"] == "model"
    assert json.loads(tags["customizer.hyperparameters"])["learning_rate"] == 1e-3
    assert result.candidate.task["exact_match"] == pytest.approx(trained[1].score)


def test_a_budget_that_cannot_cover_the_next_rung_stops_the_climb_and_says_why(services, ok_dataset, tmp_path):
    from flows.customize import customize

    # The two rungs' estimates as the flow makes them; the budget covers LoRA and half of full SFT.
    settings = get_settings()
    checked = check(ladder_spec(ok_dataset), settings, tmp_path / "pre")
    lora = checked.estimate
    full = estimate(training_rungs(checked.spec.hyperparameters)[1], checked.config, checked.train_examples,
                    checked.tokens_per_epoch, _parameters(checked.config, checked.base), checked.spec.budget.utilisation,
                    settings=settings)
    budget = lora.device_hours + full.device_hours / 2

    result = customize(ladder_spec(ok_dataset, max_device_hours=budget))

    total = lora.device_hours + full.device_hours
    assert result.climb == (f"no training rung met the target 100: stopped the climb: sft/all_weights would take the estimate "
                            f"to {total:.3g} CPU-hours, over the budget of {budget:g}")
    assert [(r.rung, r.decision, r.device_hours) for r in result.ladder if r.kind == "training"] == [
        ("sft/lora", "missed the target", pytest.approx(lora.device_hours)),
        ("sft/all_weights", "not started: budget", pytest.approx(full.device_hours))]
    assert not any(settings.jobs_dir.glob("*/rungs")), "full SFT never started"
    # The LoRA candidate, the last tried, went through the gate as any candidate does.
    assert result.decision is not None and result.registered is not None
    tags = tracking.client(settings).get_model_version(registered_name(OUTPUT), result.registered.version).tags
    assert tags["customizer.finetuning_type"] == "lora"
