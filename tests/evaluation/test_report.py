from evaluation.gate import decide
from evaluation.report import write_report
from core.specs import PromotionPolicy


def test_report_has_the_decision_charts_and_deltas(tmp_path):
    baseline = {"task": {"em": 0.1}, "general": {"capitals": 0.9}, "per_sample": {"capitals": [1.0] * 9 + [0.0]}}
    candidate = {"task": {"em": 0.7}, "general": {"capitals": 0.8}, "per_sample": {"capitals": [1.0] * 8 + [0.0, 0.0]}}
    decision = decide(baseline, candidate, None, PromotionPolicy(), "em")
    files = write_report(
        tmp_path, title="cust-abc -> team/model", summary={"dataset sha256": "f00", "hyperparameters": {"epochs": 2}},
        baseline=baseline, candidate=candidate, champion={"task": {"em": 0.5}, "general": {"capitals": 0.85}},
        counts={"task": 20, "capitals": 10}, task_metric="em", decision=decision,
        train_loss=[(1, 2.0), (2, 1.5), (3, 1.0)], val_loss=[(2, 1.6), (3, 1.2)],
    )
    for name in ("loss_curves", "scores"):
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = files["html"].read_text()
    assert f"Decision: {decision.action.upper()}" in page and page.count("data:image/png;base64,") == 2
    assert "forgetting capitals: 90.0 -&gt; 80.0" in page  # every reason, escaped
    assert "<td>capitals</td><td>accuracy</td><td>10</td><td>90.0</td><td>80.0</td><td>-10.0</td>" in page
    assert "dataset sha256" in page and "{&quot;epochs&quot;: 2}" in page


def test_confidence_bounds_always_contain_the_score():
    from evaluation.report import wilson_interval

    for n in range(1, 120):
        for k in range(n + 1):
            low, high = wilson_interval(k / n, n)
            assert low <= 100 * k / n <= high, (k, n, low, high)
