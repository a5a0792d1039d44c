"""The training ladder's pure parts: the spec's ladder, the rungs it gives, the budget over their sum,
the target judged on the lower bound, and the table's rows."""

import pytest
from pydantic import ValidationError

from core.catalog import CustomizationConfig, Target, TrainingOption
from core.specs import CustomizationSpec, Hyperparameters
from evaluation.climb import (
    NOT_STARTED_BUDGET,
    budget_stop,
    check_options,
    forgetting_verdict,
    rung_name,
    target_check,
    target_decision,
    training_row,
    training_rungs,
)
from evaluation.gate import Decision, Delta
from evaluation.ladder import MISSED
from training.guidance import Estimate

LADDER = [{"finetuning_type": "lora"}, {"finetuning_type": "all_weights", "learning_rate": 1e-5, "epochs": 2}]


def _spec(hp: dict, **evaluation) -> CustomizationSpec:
    return CustomizationSpec.model_validate({"config": "n/m@v1", "dataset": "/data/d", "hyperparameters": hp, "evaluation": evaluation})


def _cost(hours: float, device: str = "A100-80GB") -> Estimate:
    return Estimate(train_examples=10, tokens_per_epoch=100, epochs=1, training_flops=1.0, devices=1, device=device,
                    peak_tflops=312.0, utilisation=0.4, device_hours=hours)


def test_a_ladder_gives_one_rung_per_method_with_its_overrides_and_the_job_s_other_settings():
    spec = _spec({"batch_size": 4, "learning_rate": 3e-4, "ladder": LADDER}, target_score=80.0)
    first, second = training_rungs(spec.hyperparameters)
    assert (rung_name(first), first.learning_rate, first.epochs, first.batch_size) == ("sft/lora", 3e-4, 1, 4)
    assert (rung_name(second), second.learning_rate, second.epochs, second.batch_size) == ("sft/all_weights", 1e-5, 2, 4)
    assert first.ladder == second.ladder == []
    assert spec.hyperparameters.finetuning_type == "lora"  # the job's own method is untouched
    assert [rung_name(r) for r in training_rungs(Hyperparameters())] == ["sft/lora"]  # no ladder: one rung


@pytest.mark.parametrize(
    ("hp", "evaluation", "says"),
    [
        ({"ladder": [{"finetuning_type": "all_weights"}, {"finetuning_type": "lora"}]}, {"target_score": 80.0},
         "`hyperparameters.ladder[0]` (all_weights) must be the job's own method: finetuning_type lora"),
        ({"ladder": [{"finetuning_type": "lora", "learning_rate": 1e-3}]}, {"target_score": 80.0},
         "`hyperparameters.ladder[0]` (lora) must be the job's own method"),
        ({"ladder": [{"finetuning_type": "lora"}, {"finetuning_type": "lora"}]}, {"target_score": 80.0},
         "`hyperparameters.ladder[1]` (lora) repeats an earlier rung's finetuning_type"),
        ({"min_learning_rate": 1e-4, "ladder": [{"finetuning_type": "lora"}, {"finetuning_type": "all_weights", "learning_rate": 1e-5}]},
         {"target_score": 80.0}, "`hyperparameters.ladder[1]` (all_weights): `min_learning_rate` (0.0001) must be below"),
        ({"ladder": LADDER}, {}, "`hyperparameters.ladder` climbs while a candidate misses `evaluation.target_score`: set it"),
        ({"ladder": [{"finetuning_type": "full"}]}, {"target_score": 80.0}, "hyperparameters.ladder.0.finetuning_type"),
    ],
)
def test_a_bad_ladder_is_refused_naming_the_field(hp, evaluation, says):
    with pytest.raises(ValidationError) as refused:
        _spec(hp, **evaluation)
    assert says in str(refused.value)


def test_a_rung_the_config_does_not_offer_is_refused_naming_it():
    config = CustomizationConfig(namespace="n", name="m@v1", target=Target(name="m", model_uri="m"), max_seq_length=64,
                                 training_options=[TrainingOption(training_type="sft", finetuning_type="lora")])
    spec = _spec({"ladder": LADDER}, target_score=80.0)
    with pytest.raises(ValueError, match=r"`hyperparameters.ladder\[1\]` \(sft/all_weights\): config n/m@v1 does not allow"):
        check_options(spec.hyperparameters, config)
    config.training_options.append(TrainingOption(training_type="sft", finetuning_type="all_weights"))
    check_options(spec.hyperparameters, config)  # offered: no error


def test_the_budget_covers_the_sum_of_the_rungs_estimates():
    assert budget_stop("sft/all_weights", 0.4, _cost(0.5), 1.0) is None
    assert budget_stop("sft/all_weights", 0.5, _cost(0.5), 1.0) is None  # exactly the budget fits
    assert budget_stop("sft/all_weights", 0.6, _cost(0.5), None) is None  # no budget, no limit
    stop = budget_stop("sft/all_weights", 0.6, _cost(0.5), 1.0)
    assert stop == "stopped the climb: sft/all_weights would take the estimate to 1.1 A100-80GB-hours, over the budget of 1"


def test_the_target_is_met_on_the_lower_bound_not_the_estimate():
    lucky = target_check([1.0] * 9 + [0.0], 80.0, 0.05)  # 90 points on 10 items
    assert lucky.score == pytest.approx(90.0) and lucky.ci_low < 80.0 < lucky.ci_high and not lucky.met
    shown = target_check([1.0] * 76 + [0.0] * 4, 80.0, 0.05)  # 95 points on 80 items
    assert shown.ci_low >= 80.0 and shown.met
    assert not target_check([1.0] * 80, 100.0, 0.05).met  # a perfect score on finitely many items never shows 100
    assert [target_decision(c) for c in (shown, lucky, None)] == ["met the target", "missed the target", "no target set"]
    continuous = target_check([0.9, 0.95, 0.85, 0.9] * 10, 80.0, 0.05)  # F1-like scores: a t bound
    assert continuous.met and continuous.ci_low < continuous.score
    with pytest.raises(ValueError, match="no per-item task scores"):
        target_check([], 80.0, 0.05)


def _delta(verdict: str) -> Delta:
    return Delta(benchmark="b", items=10, baseline=0.5, candidate=0.5, delta=0.0, ci_low=-1.0, ci_high=1.0, bound=1.0,
                 limit=2.0, verdict=verdict)


def test_rows_carry_score_interval_forgetting_cost_and_decision():
    assert forgetting_verdict(Decision(action="hold", reasons=[], deltas=[_delta("passed"), _delta("undecided")])) == "undecided"
    assert forgetting_verdict(Decision(action="reject", reasons=[], deltas=[_delta("FAILED"), _delta("undecided")])) == "FAILED"
    check = target_check([1.0] * 9 + [0.0], 80.0, 0.05)
    gate = Decision(action="promote", reasons=[], deltas=[_delta("passed")])
    row = training_row("sft/lora", "exact_match", _cost(0.25, "CPU"), MISSED, check, gate)
    assert (row.rung, row.kind, row.metric, row.forgetting, row.device_hours, row.device, row.decision) == (
        "sft/lora", "training", "exact_match", "passed", 0.25, "CPU", "missed the target")
    assert row.score == pytest.approx(0.9) and row.ci_low == pytest.approx(check.ci_low / 100)
    skipped = training_row("sft/all_weights", "exact_match", _cost(0.5), NOT_STARTED_BUDGET)
    assert (skipped.decision, skipped.ci_low, skipped.forgetting, skipped.device_hours) == ("not started: budget", None, None, 0.5)
