"""The ladder table: the free rows the baseline gives (each rung judged on the lower bound of its
score, zero- and few-shot included), and the table rendered with training rows after them, as text
and as rows for the report and the API's status."""

import doctest

import evaluation.ladder as ladder_module
from core.specs import PromotionPolicy
from evaluation.gate import decide
from evaluation.ladder import LadderRow, free_rows, ladder_dicts, render_ladder
from evaluation.report import write_report
from evaluation.rungs import RungResult
from evaluation.runner import StageScores


def rung(kind: str, label: str, items: list[float], tokens: float) -> RungResult:
    return RungResult(benchmark=label, kind=kind, label=label, template="{prompt}", per_item=items, prompt_tokens=tokens)


def baseline(zero: list[float], *rungs: RungResult) -> StageScores:
    return StageScores(
        task={"em": sum(zero) / len(zero)}, task_metric="em", general={}, versions={}, counts={}, per_sample={},
        per_sample_task=zero, zero_shot=rung("zero-shot", "zero-shot", zero, 42.0), rungs=list(rungs), samples_dir="", seconds=1.0,
    )


def test_free_rows_judge_zero_and_few_shot_on_their_lower_bound():
    lucky = [1.0] * 9 + [0.0]  # 90 points on 10 items: over an 80 target, its lower bound is not
    sure = [1.0] * 39 + [0.0]  # 97.5 points on 40 items: its lower bound is over 80 too
    rows = free_rows(baseline(lucky, rung("few-shot", "few-shot (k=3)", sure, 180.0)), 80.0, 0.05)
    assert [(r.rung, r.kind, r.decision) for r in rows] == [
        ("zero-shot", "zero-shot", "missed the target"), ("few-shot (k=3)", "few-shot", "met the target")]
    zero, few = rows
    assert zero.score == 0.9 and zero.ci_low < 0.8 < zero.ci_high <= 1.0
    assert few.score == 0.975 and 0.8 <= few.ci_low < few.score
    assert (zero.prompt_tokens, few.prompt_tokens, zero.cost, few.cost) == (42.0, 180.0, "free", "free")
    # A lucky few-shot is not judged met either; with no target no rung is judged.
    assert free_rows(baseline(sure, rung("few-shot", "few-shot (k=3)", lucky, 180.0)), 80.0, 0.05)[1].decision == "missed the target"
    assert {r.decision for r in free_rows(baseline(sure), None, 0.05)} == {"no target set"}


def test_the_free_rows_follow_the_ladder_order_and_a_rung_without_items_is_not_judged():
    rows = free_rows(baseline([1.0] * 40, rung("prompt", "prompt 1", [0.0] * 40, 50.0), rung("retrieval", "retrieval", [], 200.0)), 50.0, 0.05)
    assert [(r.rung, r.decision) for r in rows] == [
        ("zero-shot", "met the target"), ("prompt 1", "missed the target"), ("retrieval", "not judged: no per-item scores")]
    assert rows[2].ci_low is None
    # Scores from before the ladder (no zero-shot rung kept): nothing to judge, no row.
    assert free_rows(baseline([1.0] * 40).model_copy(update={"zero_shot": None}), 50.0, 0.05) == []


def test_the_table_shows_free_and_training_rows():
    free = free_rows(baseline([1.0] * 20 + [0.0] * 20, rung("retrieval", "retrieval few-shot (BM25, k=3)", [1.0] * 30 + [0.0] * 10, 210.4)),
                     90.0, 0.05)
    trained = [
        LadderRow(rung="sft/lora", kind="training", metric="em", score=0.85, ci_low=0.74, ci_high=0.93, forgetting="passed",
                  device_hours=0.5, device="A100-80GB", decision="missed the target"),
        LadderRow(rung="sft/all_weights", kind="training", metric="em", score=0.97, forgetting="undecided", device_hours=2.25,
                  device="A100-80GB", decision="promoted"),
        LadderRow(rung="sft/full", kind="training", metric="em", score=0.0, decision="not reached: budget"),
    ]
    lines = render_ladder(free + trained).splitlines()
    assert lines[0].split() == ["rung", "score", "interval", "forgetting", "cost", "prompt", "tokens", "decision"]
    assert len(lines) == 6
    assert lines[1].split()[:4] == ["zero-shot", "50.0", f"[{100 * free[0].ci_low:.1f},", f"{100 * free[0].ci_high:.1f}]"]
    assert lines[1].endswith("missed the target") and "free" in lines[1] and " 42 " in lines[1]
    assert "retrieval few-shot (BM25, k=3)" in lines[2] and " 210 " in lines[2] and "75.0" in lines[2]
    assert lines[3].split()[:5] == ["sft/lora", "85.0", "[74.0,", "93.0]", "passed"] and "0.5 h on A100-80GB" in lines[3]
    assert "2.25 h on A100-80GB" in lines[4] and lines[4].endswith("promoted") and "undecided" in lines[4]
    assert lines[5].split()[-3:] == ["not", "reached:", "budget"] and " ? " in lines[5]
    # Every column starts at the same place on every line.
    start = lines[0].index("cost")
    assert all(line[start - 2: start] == "  " for line in lines)

    rows = ladder_dicts(free + trained)
    assert [r["cost"] for r in rows] == ["free", "free", "0.5 h on A100-80GB", "2.25 h on A100-80GB", "?"]
    assert rows[2] | {"cost": None} == trained[0].model_dump() | {"cost": None}


def test_the_report_shows_the_ladder(tmp_path):
    scores = {"task": {"em": 0.5}, "general": {}, "measures": {}}
    decision = decide(scores | {"per_sample_task": [1.0, 0.0]}, {"task": {"em": 0.9}, "general": {}, "per_sample_task": [1.0, 1.0]},
                      None, PromotionPolicy(), "em")
    rows = ladder_dicts([LadderRow(rung="few-shot (k=3)", kind="few-shot", metric="em", score=0.6, ci_low=0.5, ci_high=0.7,
                                   prompt_tokens=123.0, decision="missed the target"),
                         LadderRow(rung="sft/lora", kind="training", metric="em", score=0.9, forgetting="passed", device_hours=0.1,
                                   device="CPU", decision="promoted")])
    files = write_report(tmp_path, title="t", summary={}, baseline=scores, candidate=scores, champion=None, counts={"task": 2},
                         task_metric="em", decision=decision, train_loss=[(1, 1.0)], val_loss=[], ladder=rows)
    page = files["html"].read_text()
    assert "<h2>Ladder" in page
    assert ("<tr><td>few-shot (k=3)</td><td>60.0</td><td>[50.0, 70.0]</td><td></td><td>free</td><td>123</td>"
            "<td>missed the target</td></tr>") in page
    assert "<td>sft/lora</td><td>90.0</td><td></td><td>passed</td><td>0.1 h on CPU</td><td></td><td>promoted</td>" in page
    no_ladder = write_report(tmp_path / "plain", title="t", summary={}, baseline=scores, candidate=scores, champion=None,
                             counts={"task": 2}, task_metric="em", decision=decision, train_loss=[(1, 1.0)], val_loss=[])
    assert "<h2>Ladder" not in no_ladder["html"].read_text()


def test_module_doctests_pass():
    failures, tried = doctest.testmod(ladder_module)
    assert tried > 0 and failures == 0
