from evaluation.gate import decide, sign_test_p
from training.specs import PromotionPolicy


def reason(decision, prefix: str) -> str:
    (found,) = [r for r in decision.reasons if r.startswith(prefix)]
    return found


def scores(task: float, general: dict[str, float], per_sample: dict[str, list[float]] | None = None) -> dict:
    return {"task": {"em": task}, "general": general, "per_sample": per_sample or {}}


def test_promotes_a_gain_without_forgetting_and_says_why():
    decision = decide(scores(0.1, {"a": 0.9}), scores(0.5, {"a": 0.9}), None, PromotionPolicy(), "em")
    assert decision.action == "promote"
    assert decision.reasons[0].startswith("task em: 10.0 -> 50.0 (+40.0 points") and decision.reasons[0].endswith("passed")
    assert "no champion yet" in decision.reasons[1]
    assert decision.reasons[2].startswith("forgetting a: 90.0 -> 90.0")
    assert decision.reasons[3] == "curves: no validation curve to check"


def test_rejects_no_gain_and_a_gain_below_the_margin():
    assert decide(scores(0.5, {}), scores(0.5, {}), None, PromotionPolicy(), "em").action == "reject"
    decision = decide(scores(0.5, {}), scores(0.52, {}), None, PromotionPolicy(min_task_gain=5), "em")
    assert decision.action == "reject" and "FAILED" in decision.reasons[0]


def test_a_significant_drop_beyond_the_limit_is_forgetting():
    before = [1.0] * 100
    after = [0.0] * 10 + [1.0] * 90  # 10 items lost, none gained: p ~ 0.001
    decision = decide(scores(0.1, {"g": 1.0}, {"g": before}), scores(0.9, {"g": 0.9}, {"g": after}), None, PromotionPolicy(), "em")
    assert decision.action == "reject"
    assert reason(decision, "forgetting g").startswith("forgetting g: 100.0 -> 90.0 (-10.0 points, 95% CI [-15.9, -4.1]; limit -2.0) FAILED (10 items lost, 0 gained")
    (delta,) = decision.deltas
    assert delta.delta == -10.0 and delta.ci_high < 0 and delta.p_value < 0.01


def test_a_drop_within_noise_is_not_forgetting():
    before = [1.0, 1.0] + [0.0] * 78
    after = [0.0, 0.0] + [0.0] * 78  # 2 of 80 items flipped: 2.5 points, p = 0.25
    decision = decide(scores(0.1, {"g": 2 / 80}, {"g": before}), scores(0.9, {"g": 0.0}, {"g": after}), None, PromotionPolicy(), "em")
    assert decision.action == "promote"
    assert "within noise (2 items lost, 0 gained, paired sign test p=0.250" in reason(decision, "forgetting g")
    strict = decide(scores(0.1, {"g": 2 / 80}, {"g": before}), scores(0.9, {"g": 0.0}, {"g": after}), None, PromotionPolicy(forgetting_alpha=1.0), "em")
    assert strict.action == "reject"


def test_without_per_item_results_the_limit_alone_decides():
    decision = decide(scores(0.1, {"g": 0.80}), scores(0.9, {"g": 0.77}), None, PromotionPolicy(), "em")
    assert decision.action == "reject" and reason(decision, "forgetting g").endswith("FAILED")


def test_the_champion_is_a_second_bar():
    champion = {"task": {"em": 0.7}}
    lost = decide(scores(0.1, {}), scores(0.6, {}), champion, PromotionPolicy(), "em")
    assert lost.action == "reject" and lost.reasons[1].startswith("vs champion em: 70.0 -> 60.0 (-10.0 points) FAILED")
    won = decide(scores(0.1, {}), scores(0.8, {}), champion, PromotionPolicy(), "em")
    assert won.action == "promote"


def test_sign_test_is_symmetric_at_chance():
    assert sign_test_p(0, 5) == 1.0
    assert sign_test_p(5, 5) > 0.5
    assert sign_test_p(6, 0) < 0.05


def test_reviewed_methods_are_held_for_a_person_even_when_every_rule_passes():
    good = (scores(0.1, {"g": 0.5}), scores(0.9, {"g": 0.5}), None)
    assert decide(*good, PromotionPolicy(), "em", method=("sft", "lora")).action == "promote"
    for method in [("sft", "all_weights"), ("dpo", "lora"), ("grpo", "lora")]:
        decision = decide(*good, PromotionPolicy(), "em", method=method)
        assert decision.action == "hold" and "needs a reviewer's approval" in decision.reasons[-1]
    assert decide(*good, PromotionPolicy(review_methods=[]), "em", method=("dpo", "lora")).action == "promote"
    # A failed rule is a rejection, review or not.
    assert decide(scores(0.5, {}), scores(0.4, {}), None, PromotionPolicy(), "em", method=("dpo", "lora")).action == "reject"


def test_overfitting_curves_hold_or_reject_as_the_policy_says():
    overfit = {"train_loss": [(1, 3.0), (5, 1.0), (10, 0.2)], "val_loss": [(5, 1.1), (10, 1.9)]}
    healthy = {"train_loss": [(1, 3.0), (5, 1.0), (10, 0.8)], "val_loss": [(5, 1.1), (10, 1.0)]}
    good = (scores(0.1, {}), scores(0.9, {}), None)
    assert decide(*good, PromotionPolicy(), "em", curves=healthy).action == "promote"
    held = decide(*good, PromotionPolicy(), "em", curves=overfit)
    assert held.action == "hold" and "val_loss rose from 1.100 (step 5) to 1.900 (step 10)" in reason(held, "curves")
    assert decide(*good, PromotionPolicy(diverging_curves="reject"), "em", curves=overfit).action == "reject"
    assert decide(*good, PromotionPolicy(diverging_curves="ignore"), "em", curves=overfit).action == "promote"


def test_only_the_benchmarks_the_policy_counts_can_block():
    before, after = scores(0.1, {"a": 0.9, "b": 0.9}), scores(0.9, {"a": 0.9, "b": 0.1})
    assert decide(before, after, None, PromotionPolicy(), "em").action == "reject"
    decision = decide(before, after, None, PromotionPolicy(benchmarks=["a"]), "em")
    assert decision.action == "promote" and "forgetting b: not counted by the policy" in decision.reasons
