"""The end-of-job summary printed by the CLI."""

from __future__ import annotations

from evaluation.ladder import render_ladder
from tasks.job import CustomizationResult


def _points(value: float) -> str:
    return f"{100 * value:6.1f}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _interval(d) -> str:
    """The interval and the limit of a forgetting comparison, in its unit."""
    unit = "%" if d.measure == "bits_per_byte" else ""
    if d.ci_low is None:
        return f"(limit {d.limit:.1f}{unit})"
    sign = "+" if d.measure == "bits_per_byte" else "-"
    return f"[{d.ci_low:+.1f}{unit}, {d.ci_high:+.1f}{unit}] limit {sign}{d.limit:.1f}{unit}"


def render_summary(result: CustomizationResult, elapsed: float) -> str:
    b, c = result.baseline, result.candidate
    task_metric = result.task_metric
    lines = ["", "=" * 78, f"customizer: job {result.job_id} -> {result.output_model}", "=" * 78]
    lines.append(f"dataset      sha256 {result.dataset_sha256[:16]}...")
    if result.train_loss:
        val = ", ".join(f"{v:.3f}" for _, v in result.val_loss) or "n/a"
        lines.append(
            f"training     {result.train_loss[-1][0]} steps; train_loss {result.train_loss[0][1]:.3f} -> "
            f"{result.train_loss[-1][1]:.3f}; val_loss {val}"
        )
    if result.training_time:
        lines.append(f"train time   {result.training_time}")
    if result.forgetting_kl:
        lines.append(f"forgetting   KL from the base on general prompts: {', '.join(f'{v:.4f}' for _, v in result.forgetting_kl)} (per validation)")
    if result.stop_reason:
        lines.append(f"stopped      {result.stop_reason}")
    lines += [f"warning      {w}" for w in result.warnings]
    lines += ["", f"{'score (points, 0-100)':34} {'baseline':>9} {'candidate':>10} {'delta':>8}"]
    for name in b.task:
        mark = "  <- gate metric" if name == task_metric else ""
        gain = result.decision.task if result.decision else None
        if gain is not None and name == task_metric and gain.ci_low is not None:
            mark = f"  [{gain.ci_low:+.1f}, {gain.ci_high:+.1f}] {gain.verdict}; gate metric"
        if c is None:
            lines.append(f"{'task ' + name:34} {_points(b.task[name]):>9}{mark}")
        else:
            lines.append(f"{'task ' + name:34} {_points(b.task[name]):>9} {_points(c.task[name]):>10} {100 * (c.task[name] - b.task[name]):+8.1f}{mark}")
    for name, value in b.few_shot.items():
        lines.append(f"{'task ' + name + ' (few-shot prompt)':34} {_points(value):>9}")
    deltas = {d.benchmark: d for d in (result.decision.deltas if result.decision else [])}
    for name in b.general:
        bpb = b.measures.get(name) == "bits_per_byte"
        label = "general " + name + (" (bits/byte)" if bpb else "")
        if c is None:
            lines.append(f"{label:34} {b.general[name]:>9.3f}" if bpb else f"{label:34} {_points(b.general[name]):>9}")
            continue
        d = deltas.get(name)
        judged = "" if d is None else f"  {_interval(d)} {d.verdict}"
        if bpb:
            change = 100 * (c.general[name] / b.general[name] - 1)
            lines.append(f"{label:34} {b.general[name]:>9.3f} {c.general[name]:>10.3f} {change:+7.1f}%{judged}")
        else:
            lines.append(f"{label:34} {_points(b.general[name]):>9} {_points(c.general[name]):>10} {100 * (c.general[name] - b.general[name]):+8.1f}{judged}")
    pooled = [d for name, d in deltas.items() if name not in b.general]
    for d in pooled:
        lines.append(f"{'general ' + d.benchmark[:26]:34} {d.baseline:>9.1f} {d.candidate:>10.1f} {d.delta:+8.1f}  {_interval(d)} {d.verdict}")
    if result.power:
        lines += ["", "power (planned before training: the drop each comparison can rule out)"]
        lines += [f"  - {p.benchmark}: {p.describe()}" for p in result.power]
    if result.ladder:
        lines += ["", "ladder (every rung tried, cheapest first; score and interval in points)"]
        lines += [f"  {line}" for line in render_ladder(result.ladder).splitlines()]
    if result.outcome == "prompt_sufficient":
        lines += ["", "decision     NO FINE-TUNING NEEDED", f"  - {result.prompt_baseline}"]
    elif result.outcome == "advice":
        lines += ["", "decision     ADVICE ONLY (evaluation.ladder_only)", "  - the free rungs above were scored; none met the target and nothing was trained"]
    else:
        lines += ["", f"decision     {result.decision.action.upper()}"]
        lines += [f"  - {reason}" for reason in result.decision.reasons]
    if result.registered:
        reg = result.registered
        lines += [
            "",
            f"mlflow       registered model {reg.registered_model!r} version {reg.version}, aliases: {', '.join(reg.aliases) or 'none'}",
            f"             run {result.mlflow_run_id}; browse with: mlflow ui --backend-store-uri {result.tracking_uri}",
            f"published    {result.published_uri}  ({', '.join(result.published_files)})",
        ]
    if result.report:
        lines.append(f"report       {result.report}")
    lines += [f"elapsed      {_duration(elapsed)}", "=" * 78]
    return "\n".join(lines)
