"""The job report: one self-contained HTML page with charts, plus a PNG of each chart.

Charts: the loss curves, and each benchmark's score for the baseline, the candidate and (when there
is one) the champion, with 95% confidence intervals. Below them: the decision with every reason,
the forgetting deltas with their intervals and tests, the dataset, the hyperparameters and the
training estimate. Everything needed to review a job sits in one page.
"""

from __future__ import annotations

import base64
import html
import json
from math import sqrt
from pathlib import Path
from typing import Any

from core.tracking import ACTUAL_SECONDS, ESTIMATE_RATIO, ESTIMATE_SECONDS
from evaluation.gate import Decision

Z95 = 1.96


def wilson_interval(score: float, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion (points).

    >>> tuple(round(x, 1) for x in wilson_interval(0.5, 100))
    (40.4, 59.6)
    """
    if n <= 0:
        return 100 * score, 100 * score
    denominator = 1 + Z95**2 / n
    centre = (score + Z95**2 / (2 * n)) / denominator
    half = Z95 * sqrt(score * (1 - score) / n + Z95**2 / (4 * n * n)) / denominator
    # min/max with the score: at 0 and 1 the bounds meet it exactly (no rounding error past it).
    return 100 * max(0.0, min(score, centre - half)), 100 * min(1.0, max(score, centre + half))


def training_time(metrics: dict[str, float]) -> str | None:
    """Training's actual time against its estimate, from the job run's metrics (written after training
    by ``tasks.training.record_throughput``); None before training recorded them.

    >>> training_time({"training.actual_seconds": 210.0, "training.estimate_seconds": 240.0, "training.estimate_ratio": 240 / 210})
    '210 s (estimate 240 s, estimate / actual 1.14)'
    """
    actual, planned = metrics.get(ACTUAL_SECONDS), metrics.get(ESTIMATE_SECONDS)
    if actual is None:
        return None
    if planned is None:
        return f"{actual:.0f} s (no estimate)"
    return f"{actual:.0f} s (estimate {planned:.0f} s, estimate / actual {metrics.get(ESTIMATE_RATIO, planned / actual):.2f})"


def _loss_chart(path: Path, train: list[tuple[int, float]], val: list[tuple[int, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#3b6ea8")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="#d9822b")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Loss curves")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _scores_chart(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in ("baseline", "candidate", "champion") if any(m in r for r in rows)]
    colours = {"baseline": "#9aa5b1", "candidate": "#3b6ea8", "champion": "#2e8b57"}
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 3.8), dpi=110)
    for i, model in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(rows))]
        values = [r.get(model, {}).get("score", 0.0) for r in rows]
        # max(0, ...): a bound equal to the score can land a rounding error on the wrong side of it.
        lows = [max(0.0, v - r.get(model, {}).get("ci", (v, v))[0]) for v, r in zip(values, rows)]
        highs = [max(0.0, r.get(model, {}).get("ci", (v, v))[1] - v) for v, r in zip(values, rows)]
        ax.bar(xs, values, width, yerr=[lows, highs], capsize=3, label=model, color=colours[model])
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=15)
    ax.set_ylabel("score (points)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    ax.set_title("Baseline vs candidate per benchmark (95% CI)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _score_rows(baseline: dict, candidate: dict, champion: dict | None, counts: dict[str, int], task_metric: str) -> list[dict[str, Any]]:
    rows = []
    # Accuracy-like scores only; bits-per-byte (another scale) is in the forgetting table.
    accuracy = [b for b in sorted(baseline["general"]) if baseline.get("measures", {}).get(b, "accuracy") == "accuracy"]
    names = [("task", task_metric)] + [("general", b) for b in accuracy]
    for kind, name in names:
        n = counts.get("task" if kind == "task" else name, 0)
        row: dict[str, Any] = {"name": f"task: {name}" if kind == "task" else name}
        for model, scores in (("baseline", baseline), ("candidate", candidate), ("champion", champion)):
            if scores and name in scores.get(kind, {}):
                value = scores[kind][name]
                row[model] = {"score": 100 * value, "ci": wilson_interval(value, n)}
        rows.append(row)
    return rows


def _ladder_row(row: dict[str, Any]) -> str:
    """One rung of the ladder (``evaluation.ladder.ladder_dicts``) as a table row, in points."""
    def points(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.1f}"

    interval = f"[{points(row['ci_low'])}, {points(row['ci_high'])}]" if row.get("ci_low") is not None else ""
    tokens = "" if row.get("prompt_tokens") is None else f"{row['prompt_tokens']:.0f}"
    cells = [row["rung"], points(row["score"]), interval, row.get("forgetting") or "", row.get("cost", ""), tokens, row.get("decision", "")]
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def write_report(
    out_dir: Path,
    *,
    title: str,
    summary: dict[str, Any],
    baseline: dict[str, Any],
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    counts: dict[str, int],
    task_metric: str,
    decision: Decision,
    train_loss: list[tuple[int, float]],
    val_loss: list[tuple[int, float]],
    ladder: list[dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``report.html``, ``loss_curves.png`` and ``scores.png`` into ``out_dir``.

    Args:
        out_dir: destination folder.
        title: the page title (job id and output model).
        summary: facts shown as a table (dataset, method, hyperparameters, estimate, stop reason ...).
        baseline, candidate, champion: ``{"task": {...}, "general": {...}}`` score dicts in [0, 1].
        counts: items scored per benchmark (``task`` for the task benchmark), for the intervals.
        task_metric: the metric the gate used.
        decision: the gate's decision (reasons and deltas).
        train_loss, val_loss: the curves as ``(step, value)``.
        ladder: the rungs tried, cheapest first (``evaluation.ladder.ladder_dicts``), shown as a table.

    Returns:
        The written files by name.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"loss_curves": out_dir / "loss_curves.png", "scores": out_dir / "scores.png"}
    _loss_chart(files["loss_curves"], train_loss, val_loss)
    _scores_chart(files["scores"], _score_rows(baseline, candidate, champion, counts, task_metric))

    def image(path: Path) -> str:
        return f'<img alt="{path.stem}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'

    esc = html.escape
    facts = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(v if isinstance(v, str) else json.dumps(v))}</td></tr>" for k, v in summary.items())
    reasons = "".join(f"<li>{esc(r)}</li>" for r in decision.reasons)
    def change(d) -> str:
        unit = "%" if d.measure == "bits_per_byte" else ""
        ci = "" if d.ci_low is None else f"[{d.ci_low:+.1f}{unit}, {d.ci_high:+.1f}{unit}]"
        bound = "" if d.bound is None else f"{d.bound:.1f}{unit} (limit {d.limit:.1f}{unit})"
        loglik = "" if d.loglik_delta is None else f"{d.loglik_delta:+.3f} [{d.loglik_ci[0]:+.3f}, {d.loglik_ci[1]:+.3f}]"
        fmt = ".3f" if d.measure == "bits_per_byte" else ".1f"
        return (
            f"<tr><td>{esc(d.benchmark)}</td><td>{esc(d.measure)}</td><td>{d.items}</td><td>{d.baseline:{fmt}}</td><td>{d.candidate:{fmt}}</td>"
            f"<td>{d.delta:+.1f}{unit}</td><td>{ci}</td><td>{bound}</td>"
            f"<td>{'' if d.items_lost is None else f'{d.items_lost} / {d.items_gained}'}</td><td>{loglik}</td><td>{d.verdict}</td></tr>"
        )

    deltas = "".join(change(d) for d in decision.deltas)
    rungs = "".join(_ladder_row(r) for r in ladder or [])
    power = "".join(
        f"<tr><td>{esc(p['benchmark'])}</td><td>{p['items']}</td><td>{esc(p['describe'])}</td></tr>" for p in summary.get("power", [])
    ) if isinstance(summary.get("power"), list) else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}}
.decision{{font-size:1.3em;font-weight:600}} .promote{{color:#2e8b57}} .hold{{color:#d9822b}} .reject{{color:#b03a2e}}</style></head>
<body><h1>{esc(title)}</h1>
<p class="decision {decision.action}">Decision: {decision.action.upper()}</p><ul>{reasons}</ul>
{"<h2>Ladder (every rung tried, cheapest first; score and interval in points)</h2><table><tr><th>rung</th><th>score</th><th>interval</th><th>forgetting</th><th>cost</th><th>prompt tokens</th><th>decision</th></tr>" + rungs + "</table>" if rungs else ""}
<h2>Scores</h2>{image(files["scores"])}
<h2>Forgetting (general benchmarks, candidate minus baseline: points, or percent of bits-per-byte)</h2>
<p>The candidate must show, item by item, that it lost less than the limit: the bound is the worst change the data cannot rule out.</p>
<table><tr><th>benchmark</th><th>measure</th><th>items</th><th>baseline</th><th>candidate</th><th>delta</th><th>interval</th><th>bound</th><th>items lost / gained</th><th>log p(gold) change</th><th>verdict</th></tr>{deltas}</table>
{"<h2>Power (planned before training)</h2><table><tr><th>benchmark</th><th>items</th><th>what it can rule out</th></tr>" + power + "</table>" if power else ""}
<h2>Training</h2>{image(files["loss_curves"])}
<h2>Job</h2><table>{facts}</table>
</body></html>"""
    files["html"] = out_dir / "report.html"
    files["html"].write_text(page, encoding="utf-8")
    return files
