"""The dataset report written by every ingest: one pydantic model, rendered as text (the console)
and as a self-contained HTML page (logged with the job in MLflow next to the JSON)."""

from __future__ import annotations

from html import escape

from pydantic import BaseModel

from training.duplicates import DuplicateReport
from training.lengths import LengthReport


class SplitReport(BaseModel):
    """One split as training and evaluation will read it."""

    source: str  # where its examples come from, e.g. "validation/" or "held out from training/ (10%, seed 42)"
    format: str | None
    files: list[str]
    examples: int
    dropped: int = 0
    truncated: int = 0


class DataReport(BaseModel):
    """Everything ingest found: splits, token lengths, duplicates, leakage, warnings and errors."""

    source: str
    sha256: str | None  # None when the dataset has errors
    ok: bool
    seed: int
    splits: dict[str, SplitReport]
    blank_lines: int = 0
    lengths: LengthReport | None = None
    lengths_skipped: str | None = None  # why there are no token statistics
    duplicates: DuplicateReport | None = None
    warnings: list[str] = []
    errors: list[str] = []  # the first errors, as `file:line: reason`
    error_count: int = 0


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def render_text(report: DataReport) -> str:
    """A console summary: splits, lengths, duplicates and leakage, warnings (errors are printed apart)."""
    lines = [f"dataset {report.source}" + (f"  sha256 {report.sha256[:16]}..." if report.sha256 else "")]
    lines.append(f"  {'split':<11}{'format':<12}{'examples':>9}{'dropped':>9}{'truncated':>10}  source")
    for name, split in report.splits.items():
        lines.append(
            f"  {name:<11}{split.format or '-':<12}{split.examples:>9}{split.dropped:>9}{split.truncated:>10}  {split.source}"
        )
    if report.lengths:
        lengths = report.lengths
        lines.append(f"tokens (max_seq_length {lengths.max_seq_length}, long examples: {lengths.policy})")
        for name, stats in lengths.splits.items():
            lines.append(
                f"  {name:<11}min {stats.min}  p50 {stats.p50}  p90 {stats.p90}  p99 {stats.p99}  max {stats.max}  "
                f"over the limit {stats.over_max_seq_length}  answer tokens {stats.answer_tokens}"
            )
        for long in lengths.long_examples[:10]:
            lines.append(f"  {long.loc}: {long.tokens} tokens, {long.action} ({long.detail})")
        more = lengths.dropped + lengths.truncated - min(len(lengths.long_examples), 10)
        if lengths.long_examples and more > 0:
            lines.append(f"  ... {more} more long examples in the report")
    else:
        lines.append(f"tokens: not measured ({report.lengths_skipped})")
    duplicates = report.duplicates
    if duplicates:
        for kind, copies in (("exact", duplicates.exact_copies), ("near", duplicates.near_copies)):
            for name, count in copies.items():
                lines.append(f"duplicates: {count} {kind} {'copy' if count == 1 else 'copies'} in {name}")
        for group in duplicates.groups[:5]:
            lines.append(f"  {group.kind}: {', '.join(group.locs)}")
        for name, count in duplicates.leaked.items():
            lines.append(f"leakage: {_plural(count, 'example')} of {name} also in training")
        for leak in duplicates.leaks[:5]:
            lines.append(f"  {leak.kind}: {leak.split} {', '.join(leak.locs)} is in training at {', '.join(leak.training)}")
        if not (duplicates.exact_copies or duplicates.near_copies or duplicates.leaked):
            lines.append("duplicates: none; leakage: none")
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: .25em .8em; border-bottom: 1px solid #eee; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #166534; } .bad { color: #b91c1c; } .muted { color: #666; }
code, .tokens { font-family: ui-monospace, monospace; font-size: 12.5px; }
.tokens { white-space: pre-wrap; word-break: break-all; background: #fafafa; padding: .6em; border: 1px solid #eee; }
.tokens span { border-right: 1px solid #ddd; }
.tokens .loss { background: #bbf7d0; } .tokens .gap { color: #999; }
"""


def _table(head: list[str], rows: list[list[object]], numeric: set[int] = frozenset()) -> str:
    cell = lambda i, tag, v: f"<{tag}{' class=n' if i in numeric else ''}>{escape(str(v))}</{tag}>"  # noqa: E731
    out = ["<table><tr>" + "".join(cell(i, "th", h) for i, h in enumerate(head)) + "</tr>"]
    out += ["<tr>" + "".join(cell(i, "td", v) for i, v in enumerate(row)) + "</tr>" for row in rows]
    return "".join(out) + "</table>"


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li><code>{escape(item)}</code></li>" for item in items) + "</ul>"


def render_html(report: DataReport) -> str:
    """The report as one HTML page with no external resources."""
    status = '<span class="ok">valid</span>' if report.ok else f'<span class="bad">{_plural(report.error_count, "error")}</span>'
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Dataset report</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Dataset report: {escape(report.source)}</h1>",
        f"<p>{status}" + (f" &middot; sha256 <code>{escape(report.sha256)}</code>" if report.sha256 else "") + f" &middot; seed {report.seed}</p>",
        "<h2>Splits</h2>",
        _table(
            ["split", "format", "examples", "dropped", "truncated", "source", "files"],
            [[n, s.format or "-", s.examples, s.dropped, s.truncated, s.source, ", ".join(s.files)] for n, s in report.splits.items()],
            numeric={2, 3, 4},
        ),
    ]
    if report.blank_lines:
        parts.append(f"<p class=muted>{_plural(report.blank_lines, 'blank line')} skipped (they hold no example).</p>")
    if report.errors:
        parts.append(f"<h2 class=bad>Errors ({report.error_count})</h2>" + _list(report.errors))
        if report.error_count > len(report.errors):
            parts.append(f"<p class=muted>... and {report.error_count - len(report.errors)} more.</p>")
    if report.warnings:
        parts.append("<h2>Warnings</h2>" + _list(report.warnings))
    parts.append("<h2>Token lengths</h2>")
    lengths = report.lengths
    if lengths is None:
        parts.append(f"<p class=muted>Not measured: {escape(report.lengths_skipped or '')}.</p>")
    else:
        parts.append(
            f"<p>Tokenizer <code>{escape(lengths.tokenizer)}</code>, max_seq_length {lengths.max_seq_length}, "
            f"long examples: <b>{lengths.policy}</b> &middot; dropped {lengths.dropped}, truncated {lengths.truncated}.</p>"
        )
        parts.append(
            _table(
                ["split", "examples", "min", "mean", "p50", "p90", "p99", "max", "over max_seq_length", "answer tokens"],
                [[n, s.examples, s.min, s.mean, s.p50, s.p90, s.p99, s.max, s.over_max_seq_length, s.answer_tokens] for n, s in lengths.splits.items()],
                numeric=set(range(1, 10)),
            )
        )
        if lengths.long_examples:
            parts.append("<h2>Long examples</h2>")
            parts.append(_table(["example", "split", "tokens", "action", "detail"], [[x.loc, x.split, x.tokens, x.action, x.detail] for x in lengths.long_examples], numeric={2}))
        if lengths.preview:
            parts.append("<h2>Preview: what training sees</h2><p class=muted>Tokens on a green background carry the loss (the answer); the rest is the prompt.</p>")
            for preview in lengths.preview:
                spans = []
                for i, token in enumerate(preview.tokens):
                    if preview.elided and i == len(preview.tokens) // 2:
                        spans.append(f"<span class=gap>[... {preview.elided} tokens ...]</span>")
                    spans.append(f"<span{' class=loss' if token.loss else ''}>{escape(token.text)}</span>")
                note = " (truncated)" if preview.truncated else ""
                parts.append(f"<p><code>{escape(preview.loc)}</code>: {preview.total_tokens} tokens{note}</p><div class=tokens>{''.join(spans)}</div>")
    duplicates = report.duplicates
    if duplicates is not None:
        parts.append("<h2>Duplicates and leakage</h2>")
        parts.append(f"<p class=muted>{escape(duplicates.method)}.</p>")
        rows = [[n, duplicates.exact_copies.get(n, 0), duplicates.near_copies.get(n, 0), duplicates.leaked.get(n, "-")] for n in report.splits]
        parts.append(_table(["split", "exact copies", "near copies", "also in training"], rows, numeric={1, 2, 3}))
        if duplicates.groups:
            parts.append(_table(["kind", "split", "examples"], [[g.kind, g.split, ", ".join(g.locs)] for g in duplicates.groups]))
        if duplicates.leaks:
            parts.append("<p>Leaked examples:</p>")
            parts.append(_table(["kind", "split", "examples", "in training"], [[x.kind, x.split, ", ".join(x.locs), ", ".join(x.training)] for x in duplicates.leaks]))
    parts.append("</body></html>")
    return "\n".join(parts)
