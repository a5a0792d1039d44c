"""The benchmark table: rows built from each benchmark's JSON, verdicts against the goals, the
Markdown and JSON it is written as, and why a failed benchmark failed."""

from __future__ import annotations

import json

import pytest

from bench import report
from bench.__main__ import failure_reason
from bench.common import gpu_peak_tflops
from bench.customize_overhead import split_work


def test_verdict_reads_the_goal_in_the_metric_direction():
    assert report.verdict(1.3, ">=", 1.3) == "met"
    assert report.verdict(1.29, ">=", 1.3) == "missed"
    assert report.verdict(1.1, "<=", 1.1) == "met"
    assert report.verdict(1.11, "<=", 1.1) == "missed"
    assert report.verdict(None, "<=", 1.1) == "missed"


def test_training_rows_on_cpu_and_with_mfu_on_gpu():
    cpu = {"model": "tiny model", "batch_size": 8, "device": {"kind": "cpu", "name": "cpu"},
           "tokens_per_second": {"customizer": 3900.0, "trl": 3000.0}}
    (row,) = report.train_rows(cpu)
    assert (row.ours, row.baseline, row.goal, row.verdict) == ("3900.0 tok/s", "3000.0 tok/s", ">= 2.00x", "missed")
    assert row.ratio == pytest.approx(1.3)
    (row,) = report.train_rows(cpu | {"tokens_per_second": {"customizer": 6000.0, "trl": 3000.0}})
    assert row.verdict == "met"  # 2.0x, on a CPU as on a GPU

    gpu = cpu | {"device": {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "peak_tflops": 989.0},
                 "mfu": {"customizer": {"6N": 0.4, "4N": 0.27}, "trl": {"6N": 0.2, "4N": 0.13}}}
    ratio, ours_mfu, trl_mfu = report.train_rows(gpu)
    assert ratio.goal == ">= 2.00x" and ratio.verdict == "missed"  # 1.3x is not enough
    assert ours_mfu.ours.startswith("40.00%") and ours_mfu.verdict == "met"
    assert trl_mfu.verdict == "missed" and "989" in trl_mfu.metric


def test_customize_rows_compare_wall_time_with_training_and_evaluation():
    data = {"model": "tiny", "epochs": 1, "wall": 120.0, "goal": 1.1, "totals": {"train": 60.0, "evaluate": 40.0, "other tasks": 5.0}}
    (row,) = report.customize_rows(data)
    assert row.ratio == pytest.approx(1.2) and row.verdict == "missed"
    assert (row.ours, row.baseline) == ("120.0 s", "100.0 s")


def test_eval_row_does_not_count_when_scores_differ():
    data = {"model": "tiny", "runs": [
        {"label": "base model", "customizer_seconds": 10.0, "lm_eval_seconds": 12.0, "same_scores": True},
        {"label": "base + LoRA", "customizer_seconds": 10.0, "lm_eval_seconds": 12.0, "same_scores": False},
    ]}
    same, different = report.eval_rows(data)
    assert same.verdict == "met" and same.ratio == pytest.approx(10 / 12)
    assert different.verdict == "missed (scores differ)"


def test_ingest_rows_per_size_and_heap_growth():
    size = {"plain_seconds": 1.0, "ingest_seconds": 1.5, "plain_heap": 1 << 20, "plain_rss": 50 << 20, "ingest_rss": 80 << 20}
    data = {"sizes": [size | {"lines": 5000, "ingest_heap": 10 << 20}, size | {"lines": 50000, "ingest_heap": 30 << 20}]}
    small, large, heap = report.ingest_rows(data)
    assert "5,000 lines" in small.metric and small.verdict == "met"
    assert heap.ratio == pytest.approx(3.0) and heap.verdict == "missed"
    assert heap.ours.startswith("30.0 MiB")


def test_api_rows_per_loaded_phase():
    latency = {"GET /v1/customization/jobs": {"count": 10, "p50": 0.01, "p99": 0.05, "error_rate": 0.0}}
    data = {"model": "tiny", "p99_goal": 1.0, "phases": {
        "unloaded": {"clients": 1, "latency": latency, "tokens_per_second": 1000.0},
        "loaded": {"clients": 50, "latency": {"GET /v1/customization/jobs": {"count": 500, "p50": 0.2, "p99": 1.5, "error_rate": 0.01}},
                   "tokens_per_second": 950.0},
    }}
    latency_row, training_row = report.api_rows(data)
    assert latency_row.verdict == "missed" and latency_row.ratio == pytest.approx(30.0)
    assert "errors 1.0%" in latency_row.ours and "(1 client)" in latency_row.baseline
    assert training_row.ratio == pytest.approx(0.95) and training_row.verdict == "met"


def test_markdown_and_json_hold_every_row_and_escape_pipes(tmp_path):
    rows = [report.ratio_row("publish", "a | b", 90.0, 100.0, "MiB/s", ">=", 0.9), report.failed_row("eval", "exit status 1: boom")]
    text = report.markdown(rows, "customizer benchmarks", ["quick run"])
    lines = text.splitlines()
    assert lines[0] == "# customizer benchmarks" and "- quick run" in lines
    assert lines[lines.index("| metric | ours | baseline | ratio | goal | verdict |") + 2] == (
        "| a \\| b | 90.0 MiB/s | 100.0 MiB/s | 0.90x | >= 0.90x | met |"
    )
    assert lines[-1] == "| (benchmark failed) | - | - | - | - | FAILED: exit status 1: boom |"
    written = json.loads(json.dumps(report.as_json(rows, {"mode": "quick"})))
    assert written["mode"] == "quick" and [r["benchmark"] for r in written["rows"]] == ["publish", "eval"]


def test_failure_reason_names_the_error_line(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("step 1\nTraceback (most recent call last):\n  File x\nRuntimeError: moto did not start\nshutting down\n")
    assert failure_reason(log, 1, 60) == "exit status 1: RuntimeError: moto did not start"
    assert failure_reason(log, None, 60) == "timed out after 60 s; last output: shutting down"
    log.write_text("")
    assert failure_reason(log, 2, 60) == "exit status 2: no output"


def test_gpu_peaks_from_the_table_or_the_override():
    assert gpu_peak_tflops("NVIDIA H200") == (989.0, "H200 dense bf16")
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert gpu_peak_tflops("NVIDIA L4", "121") == (121.0, "CUSTOMIZER_BENCH_PEAK_TFLOPS")
    with pytest.raises(ValueError, match="CUSTOMIZER_BENCH_PEAK_TFLOPS"):
        gpu_peak_tflops("NVIDIA L4")
    with pytest.raises(ValueError, match="positive number"):
        gpu_peak_tflops("NVIDIA H100", "fast")


def test_split_work_counts_train_and_evaluate_tasks():
    durations = [("open-job-1", 2.0), ("evaluate-baseline", 4.0), ("plan-training-2", 1.0), ("train-3", 10.0), ("evaluate-candidate", 5.0)]
    assert split_work(durations) == {"train": 10.0, "evaluate": 9.0, "other tasks": 3.0}


def test_gate_power_rows_hold_the_three_goals():
    data = {"trials": 2000, "limit": 2.0,
            "single": [{"items": n, "true_drop": 3.0, "flip_rate": 0.1, "promoted": p} for n, p in ((80, 0.029), (300, 0.011), (1000, 0.06))],
            "one_dropped": [{"benchmark": "a", "true_drop": 6.0, "promoted": 0.02}, {"benchmark": "b", "true_drop": 6.0, "promoted": 0.033}],
            "no_drop": {"promoted": 0.886, "suite": []}}
    rows = report.gate_power_rows(data)
    assert [r.verdict for r in rows] == ["met", "met", "missed", "met", "met"]
    assert rows[0].metric == "true drop 3 points (limit + 1), one benchmark of 80 items" and rows[0].goal == "<= 5%"
    assert "(worst: b)" in rows[3].metric and rows[3].ours == "3.3% promoted"
    assert rows[4].goal == ">= 80%" and rows[4].ours == "88.6% promoted"


def test_serving_rows_hold_serve_models_goals_and_vllm_beside_it():
    keys = [f"{label}, {clients} clients" for clients in (1, 8, 16) for label in ("one adapter", "8 adapters")]
    serve = dict(zip(keys, [50.0, 48.0, 200.0, 190.0, 300.0, 210.0], strict=True))
    vllm = {key: 2 * rate for key, rate in serve.items()}
    data = {"model": "tiny", "adapters": 8, "tokens_per_second": serve, "tokens_per_second_by_engine": {"serve-models": serve, "vllm": vllm}}
    clients, mixed, vllm_scaling, *versus = report.serving_rows(data)
    assert clients.ratio == pytest.approx(6.0) and clients.verdict == "met"
    assert mixed.ratio == pytest.approx(0.7) and mixed.verdict == "missed"
    assert "vLLM tokens/s, 16 clients" in vllm_scaling.metric and vllm_scaling.verdict == "info"
    assert len(versus) == 6 and {row.ratio for row in versus} == {2.0}
    # Before vLLM was measured: serve-models' rows only.
    assert len(report.serving_rows({"model": "tiny", "adapters": 8, "tokens_per_second": serve})) == 2


def test_golive_row_reads_seconds_against_the_goal():
    row, = report.golive_rows({"model": "tiny", "seconds": 1.2, "go_live_task": 0.3, "goal": 2.0})
    assert row.verdict == "met" and row.ours == "1.20 s" and "hand-off inside the job 0.30 s" in row.metric
    row, = report.golive_rows({"model": "tiny", "seconds": 2.5, "go_live_task": 0.3, "goal": 2.0})
    assert row.verdict == "missed"
