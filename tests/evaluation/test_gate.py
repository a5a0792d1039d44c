from evaluation.gate import decide, sign_test_p
from training.specs import PromotionPolicy


def scores(task: float, general: dict[str, float], per_sample: dict[str, list[float]] | None = None) -> dict:
    return {"task": {"em": task}, "general": general, "per_sample": per_sample or {}}


def test_promotes_a_gain_without_forgetting_and_says_why():
    decision = decide(scores(0.1, {"a": 0.9}), scores(0.5, {"a": 0.9}), None, PromotionPolicy(), "em")
    assert decision.action == "promote"
    assert decision.reasons[0].startswith("task em: 10.0 -> 50.0 (+40.0 points") and decision.reasons[0].endswith("passed")
    assert "no champion yet" in decision.reasons[1]
    assert decision.reasons[2].startswith("forgetting a: 90.0 -> 90.0")


def test_rejects_no_gain_and_a_gain_below_the_margin():
    assert decide(scores(0.5, {}), scores(0.5, {}), None, PromotionPolicy(), "em").action == "reject"
    decision = decide(scores(0.5, {}), scores(0.52, {}), None, PromotionPolicy(min_task_gain=5), "em")
    assert decision.action == "reject" and "FAILED" in decision.reasons[0]


def test_a_significant_drop_beyond_the_limit_is_forgetting():
    before = [1.0] * 100
    after = [0.0] * 10 + [1.0] * 90  # 10 items lost, none gained: p ~ 0.001
    decision = decide(scores(0.1, {"g": 1.0}, {"g": before}), scores(0.9, {"g": 0.9}, {"g": after}), None, PromotionPolicy(), "em")
    assert decision.action == "reject"
    assert "forgetting g: 100.0 -> 90.0 (-10.0 points; limit -2.0) FAILED (10 items lost, 0 gained" in decision.reasons[-1]


def test_a_drop_within_noise_is_not_forgetting():
    before = [1.0, 1.0] + [0.0] * 78
    after = [0.0, 0.0] + [0.0] * 78  # 2 of 80 items flipped: 2.5 points, p = 0.25
    decision = decide(scores(0.1, {"g": 2 / 80}, {"g": before}), scores(0.9, {"g": 0.0}, {"g": after}), None, PromotionPolicy(), "em")
    assert decision.action == "promote"
    assert "within noise (2 items lost, 0 gained, paired sign test p=0.250" in decision.reasons[-1]
    strict = decide(scores(0.1, {"g": 2 / 80}, {"g": before}), scores(0.9, {"g": 0.0}, {"g": after}), None, PromotionPolicy(forgetting_alpha=1.0), "em")
    assert strict.action == "reject"


def test_without_per_item_results_the_limit_alone_decides():
    decision = decide(scores(0.1, {"g": 0.80}), scores(0.9, {"g": 0.77}), None, PromotionPolicy(), "em")
    assert decision.action == "reject" and decision.reasons[-1].endswith("FAILED")


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
