"""The benchmark table: one row per ratio (metric, ours, baseline, ratio, goal, verdict), built from
the JSON each benchmark writes, rendered as Markdown and as JSON.

A ratio is always ours / baseline in the metric's own unit, so its goal reads the same way as the
metric: ``>= 1.30`` for a throughput that should be higher, ``<= 1.10`` for a time that should be
lower. A benchmark that failed gets one row saying why, and the others still count.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass
from typing import Any, Literal

Op = Literal[">=", "<="]
_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Row:
    benchmark: str
    metric: str
    ours: str
    baseline: str
    ratio: float | None
    goal: str
    verdict: str  # "met", "missed", "info" (no goal) or "FAILED"


def verdict(value: float | None, op: Op, threshold: float) -> str:
    """``met`` or ``missed`` for ``value op threshold``; ``missed`` when there is no value.

    >>> verdict(1.4, ">=", 1.3), verdict(1.2, "<=", 1.1), verdict(None, ">=", 1.0)
    ('met', 'missed', 'missed')
    """
    if value is None:
        return "missed"
    return "met" if _OPS[op](value, threshold) else "missed"


def ratio_row(benchmark: str, metric: str, ours: float, baseline: float, unit: str, op: Op, threshold: float,
              fmt: str = ".1f", note: str = "") -> Row:
    """A row whose ratio is ``ours / baseline`` and whose goal is on that ratio."""
    ratio = ours / baseline if baseline else None
    return Row(benchmark, metric, f"{ours:{fmt}} {unit}", f"{baseline:{fmt}} {unit}", ratio, f"{op} {threshold:.2f}x{note}",
               verdict(ratio, op, threshold))


def failed_row(benchmark: str, reason: str) -> Row:
    return Row(benchmark, "(benchmark failed)", "-", "-", None, "-", f"FAILED: {reason}")


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms"


def train_rows(data: dict[str, Any]) -> list[Row]:
    """Training tokens/s vs bare TRL and vs TRL with its best switches (at a final loss no worse than 2% above theirs);
    the loss parity of ``auto`` precision against fp32; MFU where a GPU trained."""
    device = data["device"]
    rates = data["tokens_per_second"]
    threshold = 2.0  # >= 2x bare TRL, on a GPU and on a CPU with native bf16 alike
    where = f"{data['model']}, LoRA SFT, batch {data['batch_size']}, {device['name']}"
    repeats = f", medians of {data['repeats']}" if data.get("repeats", 1) > 1 else ""
    rows = []
    for side, name, goal in (("trl", "bare TRL", threshold), ("trl-best", "TRL with its best switches", 1.15)):
        if side not in rates:
            continue
        same = data.get("same_loss", {}).get(side, True)
        row = ratio_row("train", f"training tokens/s vs {name}, final loss no worse than 2% above it ({where}{repeats})", rates["customizer"],
                        rates[side], "tok/s", ">=", goal)
        rows.append(row if same else Row(**(asdict(row) | {"verdict": "missed (final loss worse)"})))
    if "parity" in data:
        parity = data["parity"]
        ratio = parity["auto_loss"] / parity["fp32_loss"] if parity["fp32_loss"] else None
        rows.append(Row("train", f"final training loss, auto precision ({parity['auto_precision']} here) vs fp32 ({where})",
                        f"{parity['auto_loss']:.4f}", f"{parity['fp32_loss']:.4f}", ratio, "within ±2%",
                        "met" if parity["within"] else "missed"))
    for side, mfu in data.get("mfu", {}).items():
        rows.append(Row("train", f"MFU, {side} (6·N·tok/s / {device['peak_tflops']:.0f} TFLOP/s bf16 dense)",
                        f"{100 * mfu['6N']:.2f}% (4N: {100 * mfu['4N']:.2f}%)", "-", mfu["6N"], ">= 0.35 (floor)",
                        verdict(mfu["6N"], ">=", 0.35)))
    return rows


def customize_rows(data: dict[str, Any]) -> list[Row]:
    """Wall time of the whole customize flow vs its training + evaluation tasks."""
    work = data["totals"]["train"] + data["totals"]["evaluate"]
    metric = f"customize flow wall vs train + evaluate tasks ({data['model']}, {data['epochs']} epoch(s))"
    return [ratio_row("customize", metric, data["wall"], work, "s", "<=", data["goal"])]


def eval_rows(data: dict[str, Any]) -> list[Row]:
    """Evaluation stage time vs the lm_eval CLI; scores must agree for the row to count."""
    rows = []
    for run in data["runs"]:
        row = ratio_row("eval", f"evaluation time vs lm_eval CLI ({data['model']}, {run['label']})", run["customizer_seconds"],
                        run["lm_eval_seconds"], "s", "<=", 1.0, note="" if run["same_scores"] else ", same scores")
        if not run["same_scores"]:
            row = Row(**(asdict(row) | {"verdict": "missed (scores differ)"}))
        rows.append(row)
    return rows


def gate_power_rows(data: dict[str, Any]) -> list[Row]:
    """The gate's promotion rates: of candidates that forgot (goal <= 5%) and of one that did not (goal >= 80%)."""

    def row(metric: str, rate: float, op: Op, goal: float) -> Row:
        return Row("gate_power", metric, f"{rate:.1%} promoted", f"{data['trials']} trials", None, f"{op} {goal:.0%}",
                   verdict(rate, op, goal))

    rows = [row(f"true drop {r['true_drop']:.0f} points (limit + 1), one benchmark of {r['items']} items", r["promoted"], "<=", 0.05)
            for r in data["single"]]
    worst = max(data["one_dropped"], key=lambda r: r["promoted"])
    rows.append(row(f"one shipped benchmark losing 3x its limit (worst: {worst['benchmark']})", worst["promoted"], "<=", 0.05))
    rows.append(row("shipped suite, no true drop (observed sizes and flip rates)", data["no_drop"]["promoted"], ">=", 0.80))
    return rows


def publish_rows(data: dict[str, Any]) -> list[Row]:
    metric = f"publication MiB/s vs plain boto3 ({data['files']} files, {data['mib']:.0f} MiB, moto S3)"
    return [ratio_row("publish", metric, data["ours_mib_s"], data["plain_mib_s"], "MiB/s", ">=", 0.9)]


def ingest_rows(data: dict[str, Any]) -> list[Row]:
    """Ingest time vs a plain json.loads loop per size, and how its peak heap grows with the size."""
    rows = []
    for size in data["sizes"]:
        rows.append(ratio_row("ingest", f"ingest time vs plain json.loads loop ({size['lines']:,} lines)", size["ingest_seconds"],
                              size["plain_seconds"], "s", "<=", 2.0, fmt=".2f"))
    small, large = data["sizes"][0], data["sizes"][-1]
    if large["lines"] > small["lines"]:
        mib = 2**20
        rows.append(Row(
            "ingest", f"ingest peak heap, {large['lines']:,} vs {small['lines']:,} lines",
            f"{large['ingest_heap'] / mib:.1f} MiB (RSS {large['ingest_rss'] / mib:.0f} MiB)",
            f"{small['ingest_heap'] / mib:.1f} MiB (RSS {small['ingest_rss'] / mib:.0f} MiB)",
            large["ingest_heap"] / small["ingest_heap"], "<= 1.50x (flat in size)",
            verdict(large["ingest_heap"] / small["ingest_heap"], "<=", 1.5),
        ))
    return rows


def api_rows(data: dict[str, Any]) -> list[Row]:
    """Per loaded phase: latency per endpoint against one client's, error rate, and the training slowdown."""
    rows = []
    unloaded = data["phases"]["unloaded"]
    for label, phase in data["phases"].items():
        if label == "unloaded":
            continue
        for name, loaded in phase["latency"].items():
            alone = unloaded["latency"].get(name)
            ours = f"p50 {_ms(loaded['p50'])}, p99 {_ms(loaded['p99'])}, errors {100 * loaded['error_rate']:.1f}% ({loaded['count']} req)"
            baseline = f"p50 {_ms(alone['p50'])}, p99 {_ms(alone['p99'])} (1 client)" if alone else "-"
            ratio = loaded["p99"] / alone["p99"] if alone and alone["p99"] else None
            ok = loaded["error_rate"] == 0 and loaded["p99"] <= data["p99_goal"]
            rows.append(Row("api_load", f"{name}, {phase['clients']} clients during training ({label})", ours, baseline, ratio,
                            f"p99 <= {_ms(data['p99_goal'])}, 0 errors", "met" if ok else "missed"))
        machine = ""
        if "load_average" in phase and "load_average" in unloaded:  # what else ran on the machine meanwhile
            machine = f"; load average {max(phase['load_average']):.1f} vs {max(unloaded['load_average']):.1f}"
        rows.append(ratio_row("api_load", f"training tokens/s with {phase['clients']} API clients vs without ({data['model']}, {label}{machine})",
                              phase["tokens_per_second"], unloaded["tokens_per_second"], "tok/s", ">=", 0.9))
    return rows


def serving_rows(data: dict[str, Any]) -> list[Row]:
    """serve-models' two goals, then vLLM beside serve-models at each point (where vLLM ran)."""
    mixed = f"{data['adapters']} adapters, 16 clients"
    by_engine = data.get("tokens_per_second_by_engine", {"serve-models": data["tokens_per_second"]})
    rows = []
    if "serve-models" in by_engine:
        rates = by_engine["serve-models"]
        rows += [
            ratio_row("serving", f"serve-models tokens/s, 16 clients vs one at a time, one adapter ({data['model']})",
                      rates["one adapter, 16 clients"], rates["one adapter, 1 clients"], "tok/s", ">=", 3.0),
            ratio_row("serving", f"serve-models tokens/s at 16 clients, {data['adapters']} mixed adapters vs one adapter ({data['model']})",
                      rates[mixed], rates["one adapter, 16 clients"], "tok/s", ">=", 0.8),
        ]
    if "vllm" in by_engine:
        vllm = by_engine["vllm"]
        rows.append(_info_row("serving", f"vLLM tokens/s, 16 clients vs one at a time, one adapter ({data['model']})",
                              vllm["one adapter, 16 clients"], vllm["one adapter, 1 clients"], "tok/s"))
        if "serve-models" in by_engine:
            for key, rate in vllm.items():
                rows.append(_info_row("serving", f"vLLM vs serve-models tokens/s, {key} ({data['model']})",
                                      rate, by_engine["serve-models"][key], "tok/s"))
    return rows


def _info_row(benchmark: str, metric: str, ours: float, baseline: float, unit: str) -> Row:
    """A ratio reported for comparison, with no goal on it."""
    return Row(benchmark, metric, f"{ours:.1f} {unit}", f"{baseline:.1f} {unit}", ours / baseline if baseline else None, "-", "info")


def hotload_rows(data: dict[str, Any]) -> list[Row]:
    cold, warm = data["p50"]["first request, unseen version"], data["p50"]["in memory (baseline)"]
    return [Row("hotload", f"adapter hot-load, first request p50 vs in memory ({data['model']}, {data['store']} store)",
                _ms(cold), _ms(warm), cold / warm if warm else None, "p50 <= 200 ms", verdict(cold, "<=", 0.2))]


def golive_rows(data: dict[str, Any]) -> list[Row]:
    seconds = data["seconds"]
    return [Row("vllm_golive", f"seconds from a job's Completed to its adapter answering through vLLM ({data['model']}; "
                f"hand-off inside the job {data['go_live_task']:.2f} s)", f"{seconds:.2f} s", "-", None,
                f"<= {data['goal']:.1f} s", verdict(seconds, "<=", data["goal"]))]


COLUMNS = ("metric", "ours", "baseline", "ratio", "goal", "verdict")


def markdown(rows: list[Row], title: str, notes: list[str]) -> str:
    """The table as Markdown, with the notes (what ran, where) above it."""
    lines = [f"# {title}", "", *(f"- {note}" for note in notes), "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        cells = [row.metric, row.ours, row.baseline, ratio, row.goal, row.verdict]
        lines.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def as_json(rows: list[Row], meta: dict[str, Any]) -> dict[str, Any]:
    return meta | {"rows": [asdict(row) for row in rows]}
