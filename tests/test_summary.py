"""The end-of-job summary shows each forgetting comparison's interval and verdict, bits-per-byte on
its own scale, the power planned before training, and the forgetting_kl of every validation."""

from customizer.summary import render_summary
from evaluation.gate import decide, plan_power
from evaluation.runner import StageScores
from tasks.job import CustomizationResult
from core.specs import PromotionPolicy


def stage(task: float, acc: list[float], bpb: list[float]) -> StageScores:
    return StageScores(
        task={"em": task}, task_metric="em", general={"g": sum(acc) / len(acc), "prose": sum(bpb) / len(bpb)},
        measures={"g": "accuracy", "prose": "bits_per_byte"}, versions={}, counts={"g": len(acc), "prose": len(bpb)},
        per_sample={"g": acc}, per_sample_bpb={"prose": bpb}, per_sample_task=[task] * 40, samples_dir="", seconds=1.0,
    )


def test_the_summary_shows_intervals_verdicts_and_power():
    base = stage(0.0, [1.0] * 300 + [0.0] * 300, [1.0 + 0.001 * i for i in range(50)])
    cand = stage(1.0, [1.0] * 300 + [0.0] * 300, [1.02 * (1.0 + 0.001 * i) for i in range(50)])
    policy = PromotionPolicy()
    decision = decide(base.gate_scores(), cand.gate_scores(), None, policy, "em")
    power = plan_power(base.gate_scores(), base.counts, policy, {"g": 0.05})
    result = CustomizationResult(
        job_id="cust-1", output_model="team/bot", outcome="trained", dataset_sha256="f" * 64, task_metric="em", baseline=base,
        candidate=cand, decision=decision, power=power, forgetting_kl=[(5, 0.012), (10, 0.034)], mlflow_run_id="r", tracking_uri="t",
    )
    text = render_summary(result, 61.0)
    assert decision.action == "promote"
    assert "general g" in text and "[-0.4, +0.4] limit -2.0 passed" in text
    assert "general prose (bits/byte)" in text and "+2.0%" in text and "limit +5.0% passed" in text
    assert "g: with 600 items it can rule out a drop larger than 2.3 points" in text
    assert "forgetting   KL from the base on general prompts: 0.0120, 0.0340 (per validation)" in text


def test_the_summary_shows_the_ladder_table():
    from evaluation.ladder import LadderRow

    base = stage(0.5, [1.0] * 10, [1.0] * 10)
    rows = [LadderRow(rung="zero-shot", kind="zero-shot", metric="em", score=0.5, ci_low=0.37, ci_high=0.63, prompt_tokens=38.0,
                      decision="missed the target"),
            LadderRow(rung="few-shot (k=3)", kind="few-shot", metric="em", score=0.975, ci_low=0.88, ci_high=1.0, prompt_tokens=151.0,
                      decision="met the target")]
    result = CustomizationResult(
        job_id="cust-1", output_model="team/bot", outcome="prompt_sufficient", dataset_sha256="f" * 64, task_metric="em", baseline=base,
        prompt_baseline="few-shot (k=3) reaches em 97.5, lower bound 88.0 >= target 80.0", ladder=rows, mlflow_run_id="r", tracking_uri="t",
    )
    lines = render_summary(result, 5.0).splitlines()
    at = lines.index("ladder (every rung tried, cheapest first; score and interval in points)")
    assert lines[at + 1].split() == ["rung", "score", "interval", "forgetting", "cost", "prompt", "tokens", "decision"]
    assert lines[at + 2].split() == ["zero-shot", "50.0", "[37.0,", "63.0]", "-", "free", "38", "missed", "the", "target"]
    assert lines[at + 3].split() == ["few-shot", "(k=3)", "97.5", "[88.0,", "100.0]", "-", "free", "151", "met", "the", "target"]
    assert lines.index("decision     NO FINE-TUNING NEEDED") > at + 3
