from evaluation.gate import decide
from core.specs import PromotionPolicy


def reason(decision, prefix: str) -> str:
    (found,) = [r for r in decision.reasons if r.startswith(prefix)]
    return found


def scores(task: float, general: dict[str, float], per_sample: dict[str, list[float]] | None = None) -> dict:
    return {"task": {"em": task}, "general": general, "per_sample": per_sample or {}}


def test_promotes_a_gain_without_forgetting_and_says_why():
    same = [1.0] * 900 + [0.0] * 100
    decision = decide(scores(0.1, {"a": 0.9}, {"a": same}), scores(0.5, {"a": 0.9}, {"a": list(same)}), None, PromotionPolicy(), "em")
    assert decision.action == "promote"
    assert decision.reasons[0].startswith("task em: 10.0 -> 50.0 (+40.0 points") and decision.reasons[0].endswith("passed")
    assert "no champion yet" in decision.reasons[1]
    assert decision.reasons[2].startswith("forgetting a: 90.0 -> 90.0")
    assert decision.reasons[3] == "curves: no validation curve to check"


def test_rejects_no_gain_and_a_gain_below_the_margin():
    assert decide(scores(0.5, {}), scores(0.5, {}), None, PromotionPolicy(), "em").action == "reject"
    decision = decide(scores(0.5, {}), scores(0.52, {}), None, PromotionPolicy(min_task_gain=5), "em")
    assert decision.action == "reject" and "FAILED" in decision.reasons[0]


def items(right: int, n: int) -> list[float]:
    return [1.0] * right + [0.0] * (n - right)


def test_a_drop_shown_beyond_the_limit_rejects():
    before, after = items(100, 100), items(90, 100)  # 10 of 100 items lost, none gained
    decision = decide(scores(0.1, {"g": 1.0}, {"g": before}), scores(0.9, {"g": 0.9}, {"g": after}), None, PromotionPolicy(), "em")
    assert decision.action == "reject"
    assert reason(decision, "forgetting g").startswith(
        "forgetting g: 100.0 -> 90.0 (-10.0 points, 90% CI [-16.0, -6.1]; 100 items, 10 lost, 0 gained; limit -2.0) FAILED"
    )
    (delta,) = decision.deltas
    assert delta.delta == -10.0 and delta.verdict == "FAILED" and delta.ci_high < -2


def test_a_benchmark_too_small_to_rule_out_the_limit_holds_and_says_what_it_can_rule_out():
    # 80 unchanged items: nothing was lost, but 80 items cannot rule out a 2-point drop.
    before = items(48, 80)
    decision = decide(scores(0.1, {"g": 0.6}, {"g": before}), scores(0.9, {"g": 0.6}, {"g": list(before)}), None, PromotionPolicy(), "em")
    assert decision.action == "hold"
    assert "undecided: with 80 items this benchmark can only rule out a drop larger than 3.3 points" in reason(decision, "forgetting g")
    # The same result on 600 items shows it.
    big = items(360, 600)
    assert decide(scores(0.1, {"g": 0.6}, {"g": big}), scores(0.9, {"g": 0.6}, {"g": list(big)}), None, PromotionPolicy(), "em").action == "promote"


def test_a_within_noise_drop_no_longer_passes_unless_the_data_rules_out_the_limit():
    # The old rule passed 2.5 points lost on 80 items as "within noise"; now the candidate must show it stayed within 2.
    before, after = [1.0, 1.0] + [0.0] * 78, [0.0] * 80
    decision = decide(scores(0.1, {"g": 2 / 80}, {"g": before}), scores(0.9, {"g": 0.0}, {"g": after}), None, PromotionPolicy(), "em")
    assert decision.action == "hold" and "undecided" in reason(decision, "forgetting g")


def test_without_per_item_results_nothing_can_be_shown():
    assert decide(scores(0.1, {"g": 0.80}), scores(0.9, {"g": 0.77}), None, PromotionPolicy(), "em").action == "reject"
    held = decide(scores(0.1, {"g": 0.80}), scores(0.9, {"g": 0.80}), None, PromotionPolicy(), "em")
    assert held.action == "hold" and "no per-item results" in reason(held, "forgetting g")


def test_pooling_decides_the_limit_and_a_large_drop_on_one_benchmark_still_blocks():
    same = {name: items(300, 500) for name in ("a", "b", "c")}
    general = {name: 0.6 for name in same}
    fine = decide(scores(0.1, general, same), scores(0.9, general, {k: list(v) for k, v in same.items()}), None, PromotionPolicy(), "em")
    assert fine.action == "promote"
    assert reason(fine, "forgetting pooled (a, b, c)").startswith("forgetting pooled (a, b, c): 60.0 -> 60.0 (+0.0 points")
    assert "limit -6.0" in reason(fine, "forgetting a:")  # one benchmark alone is judged at 3x the limit
    # b loses 10 points; the pool loses 3.3: b alone fails (beyond 6 points) and the pool cannot show 2.
    hurt = {k: list(v) for k, v in same.items()} | {"b": items(250, 500)}
    decision = decide(scores(0.1, general, same), scores(0.9, general, hurt), None, PromotionPolicy(), "em")
    assert decision.action == "reject" and "FAILED" in reason(decision, "forgetting b:")


def test_bits_per_byte_of_prose_is_judged_as_a_relative_rise():
    base = {"task": {"em": 0.1}, "general": {"prose": 1.0}, "measures": {"prose": "bits_per_byte"},
            "per_sample_bpb": {"prose": [1.0 + 0.01 * i for i in range(40)]}}
    small = base | {"task": {"em": 0.9}, "per_sample_bpb": {"prose": [1.016 * (1.0 + 0.01 * i) + 0.001 * (i % 3) for i in range(40)]}}
    large = base | {"task": {"em": 0.9}, "per_sample_bpb": {"prose": [1.216 * (1.0 + 0.01 * i) + 0.001 * (i % 3) for i in range(40)]}}
    assert decide(base, small, None, PromotionPolicy(), "em").action == "promote"
    rejected = decide(base, large, None, PromotionPolicy(), "em")
    assert rejected.action == "reject"
    assert "bits-per-byte" in reason(rejected, "forgetting prose") and "FAILED: the rise is beyond the limit" in reason(rejected, "forgetting prose")


def test_the_task_gain_is_judged_on_its_lower_bound():
    base = {"task": {"em": 0.5}, "general": {}, "per_sample_task": items(10, 20)}
    slight = {"task": {"em": 0.55}, "general": {}, "per_sample_task": items(11, 20)}
    decision = decide(base, slight, None, PromotionPolicy(), "em")
    assert decision.action == "hold" and "the gain is not shown with 20 items" in decision.reasons[0]
    clear = {"task": {"em": 0.95}, "general": {}, "per_sample_task": items(19, 20)}
    assert decide(base, clear, None, PromotionPolicy(), "em").action == "promote"
    assert decision.task.ci_low < 0 < decision.task.ci_high


def test_the_champion_is_a_second_bar():
    champion = {"task": {"em": 0.7}}
    lost = decide(scores(0.1, {}), scores(0.6, {}), champion, PromotionPolicy(), "em")
    assert lost.action == "reject" and lost.reasons[1].startswith("vs champion em: 70.0 -> 60.0 (-10.0 points) FAILED")
    won = decide(scores(0.1, {}), scores(0.8, {}), champion, PromotionPolicy(), "em")
    assert won.action == "promote"


def test_reviewed_methods_are_held_for_a_person_even_when_every_rule_passes():
    same = [1.0] * 500 + [0.0] * 500
    good = (scores(0.1, {"g": 0.5}, {"g": same}), scores(0.9, {"g": 0.5}, {"g": same}), None)
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
    same = [1.0] * 900 + [0.0] * 100
    before = scores(0.1, {"a": 0.9, "b": 0.9}, {"a": same, "b": same})
    after = scores(0.9, {"a": 0.9, "b": 0.1}, {"a": same, "b": [1.0] * 100 + [0.0] * 900})
    assert decide(before, after, None, PromotionPolicy(), "em").action == "reject"
    decision = decide(before, after, None, PromotionPolicy(benchmarks=["a"]), "em")
    assert decision.action == "promote" and "forgetting b: not counted by the policy" in decision.reasons
