"""Dataset ingest: read a dataset folder as a stream, validate every line, split, hash, report, and
write canonical splits.

A dataset is a folder (or ``file://``, ``s3://``, see ``data.sources``) with
``training/*.jsonl`` (required), ``validation/*.jsonl`` (optional; else a seeded 10% of training is
held out) and ``testing/*.jsonl`` (optional; the task benchmark; else the validation split). Each
line is one record in one of the formats of ``data.formats``, one format per file. Every bad
line is reported as ``file:line: reason`` (all of them counted, the first ones listed); nothing is
dropped silently. The dataset's identity is a sha256 over the canonical content of every record.

Ingest streams: it holds one chunk of lines (a megabyte) at a time, writes the canonical splits as
it goes, draws the holdout a block of lines at a time (exact count, no index in memory) and finds
duplicates through fixed-size hashes (``data.duplicates``), so memory does not grow with the
dataset. A chunk of plain records is checked and encoded with a few batched calls
(``data.chunks``); any other chunk, line by line (``data.reader``), with the same result. With a
tokenizer (``data.lengths``) it also measures every example as training will see it and applies
the job's long-example policy. Each ingest writes ``report.json`` and ``report.html``.

Where the pieces live: the layout of a dataset folder (``data.layout``), canonical JSON and line
parsing (``data.canonical``), the files as chunks of lines and the batched path (``data.chunks``),
the pass over every file (``data.reader``); this module runs them and returns the result.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel

from core.settings import Settings
from data.canonical import canonical_bytes, canonical_line
from data.chunks import record_lines
from data.duplicates import DuplicateIndex
from data.formats import METHOD_FORMATS, Record
from data.layout import MAX_LISTED_ERRORS, SPLITS, LineError, Problems, Split, layout
from data.lengths import LengthCheck
from data.reader import Holdout, IngestPass
from data.report import DataReport, ReplayReport, SplitReport, render_html
from data.sources import SourceError, resolve_dataset

__all__ = [
    "MAX_LISTED_ERRORS", "DatasetError", "Example", "IngestedDataset", "LineError", "Record", "Split",
    "canonical_bytes", "canonical_line", "ingest_dataset", "iter_examples", "read_examples", "write_report",
]

HOLDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class Example:
    """A validated record and where it came from (``file:line``), so later errors can point at it.

    ``truncated``: ingest accepted it over max_seq_length under the ``truncate`` policy, so training
    cuts it to max_seq_length tokens.
    """

    loc: str
    record: Record
    truncated: bool = False


class DatasetError(ValueError):
    """A dataset that cannot be used; carries every problem found (up to a cap), their count and
    the report of what was read."""

    def __init__(self, source: str, errors: list[LineError], total: int | None = None, report: DataReport | None = None):
        self.source = source
        self.errors = errors[:MAX_LISTED_ERRORS]
        self.total = total if total is not None else len(errors)
        self.report = report
        lines = [f"dataset {source} has {self.total} problem{'s' if self.total != 1 else ''}:"]
        lines += [f"  {e}" for e in self.errors]
        if self.total > len(self.errors):
            lines.append(f"  ... and {self.total - len(self.errors)} more")
        super().__init__("\n".join(lines))

    def __reduce__(self):  # pickled across processes by the orchestrator: rebuild from the fields
        return (DatasetError, (self.source, self.errors, self.total, self.report))


class IngestedDataset(BaseModel):
    """A validated dataset: where its canonical splits and report are, how big they are, its identity."""

    source: str
    sha256: str
    files: dict[Split, str]
    counts: dict[Split, int]
    # The record format of each split (a ``data.formats.Format``), found while reading it: training
    # and evaluation read it here rather than looking at records again.
    formats: dict[Split, str]
    validation_source: Literal["validation", "holdout"]
    testing_source: Literal["testing", "validation"]
    dropped: dict[Split, int] = {}
    truncated: dict[Split, int] = {}
    report_files: dict[str, str] = {}  # "json" / "html" -> path
    warnings: list[str] = []
    # General examples mixed into training (``training.replay``); counts["training"] includes them,
    # sha256 stays the user's data.
    replay: ReplayReport | None = None


def ingest_dataset(
    source: str,
    out_dir: Path,
    seed: int,
    *,
    lengths: LengthCheck | None = None,
    method: str | None = None,
    settings: Settings | None = None,
) -> IngestedDataset:
    """Validate a dataset and write its canonical splits and report to ``out_dir``.

    Args:
        source: dataset folder path, ``file://`` URI or ``s3://bucket/prefix``.
        out_dir: where ``training.jsonl``, ``validation.jsonl``, ``testing.jsonl``, ``report.json``
            and ``report.html`` are written (an S3 dataset is downloaded to ``out_dir/source``).
        seed: seeds the holdout split when the dataset has no ``validation/``.
        lengths: the target model's tokenizer, config and long-example policy; None skips token
            statistics (and leaves the length check to training).
        method: a training type (``sft``, ``dpo``, ``grpo``): the splits must hold the formats it reads.
        settings: the S3 endpoint for ``s3://`` sources.

    Returns:
        The ingested dataset: canonical split files, counts, formats, sha256 and report files.

    Raises:
        DatasetError: with every problem found, each as ``file:line: reason``, and the report.
    """
    for stale in ("report.json", "report.html"):  # a re-run must not leave the last run's report behind
        (out_dir / stale).unlink(missing_ok=True)
    try:
        root = resolve_dataset(source, out_dir / "source", settings)
    except SourceError as exc:
        raise DatasetError(source, [LineError(source, 0, str(exc))]) from None
    partial = out_dir / ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    problems, warnings = Problems(), []
    files = layout(root, problems, warnings)
    lines = {split: sum(record_lines(path) for path, _ in found) for split, found in files.items()}
    holdout = None
    if "training" in files and "validation" not in files and lines["training"] >= 2:
        holdout = Holdout(lines["training"], max(1, round(lines["training"] * HOLDOUT_FRACTION)), np.random.default_rng(seed))
    index = DuplicateIndex(partial / "duplicates", expected=sum(lines.values()))
    state = IngestPass(partial, holdout, lengths, index, problems, warnings)
    state.open_writers(["training", "validation", *(["testing"] if "testing" in files else [])])
    try:
        for split in SPLITS:
            for path, display in files.get(split, []):
                state.read_file(path, display, split)
    finally:
        state.close()
    _check_splits(state, files, holdout, method)
    splits = _split_reports(state, files, holdout, seed)
    report = DataReport(
        source=str(source),
        sha256=None if problems.total else state.digest.hexdigest(),
        ok=not problems.total,
        seed=seed,
        splits=splits,
        blank_lines=state.blank_lines,
        lengths=lengths.report() if lengths else None,
        lengths_skipped=None if lengths else "no config given: token lengths need the target model's tokenizer",
        duplicates=state.index.report(),
        warnings=warnings,
        errors=[str(e) for e in problems.listed],
        error_count=problems.total,
    )
    report_files = write_report(report, out_dir)
    if problems.total:
        shutil.rmtree(partial, ignore_errors=True)
        raise DatasetError(source, problems.listed, problems.total, report)

    paths: dict[Split, str] = {}
    for split in SPLITS:
        target = out_dir / f"{split}.jsonl"
        if split == "testing" and "testing" not in files:
            shutil.copyfile(out_dir / "validation.jsonl", target)
        else:
            (partial / f"{split}.jsonl").replace(target)
        paths[split] = str(target)
    shutil.rmtree(partial, ignore_errors=True)
    return IngestedDataset(
        source=str(source),
        sha256=report.sha256,
        files=paths,
        counts={split: splits[split].examples for split in SPLITS},
        formats={split: splits[split].format for split in SPLITS},
        validation_source="holdout" if holdout else "validation",
        testing_source="testing" if "testing" in files else "validation",
        dropped={split: s.dropped for split, s in splits.items() if s.dropped},
        truncated={split: s.truncated for split, s in splits.items() if s.truncated},
        report_files=report_files,
        warnings=warnings,
    )


def _check_splits(state: IngestPass, files: dict[Split, list], holdout: Holdout | None, method: str | None) -> None:
    """Problems of whole splits: none left, too few to hold out, formats the method does not read."""
    problems = state.problems
    for split, found in files.items():
        if not found or state.examples[split] or any(e.file.startswith(f"{split}/") for e in problems.listed):
            continue  # a folder without files, or whose files have errors, is reported already
        dropped = state.lengths.dropped[split] if state.lengths else 0
        reason = f"every example was dropped ({dropped} longer than max_seq_length)" if dropped else "no records"
        problems.add(f"{split}/", 0, reason)
    if "training" in files and "validation" not in files and holdout is None and not problems.total:
        problems.add("training", 0, "need at least 2 records to hold out a validation split")
    if holdout and not state.examples["validation"] and not problems.total:
        problems.add("validation", 0, "every held-out example was dropped as too long: add a validation/ folder")
    if method in METHOD_FORMATS:
        for split, fmt in state.formats.items():
            if fmt not in METHOD_FORMATS[method]:
                where, line = state.format_at.get(split, (split, 0))  # the record that set the split's format
                problems.add(where, line, f"{split}/ holds {fmt} records; training_type {method} reads {' or '.join(METHOD_FORMATS[method])} records")


def _split_reports(state: IngestPass, files: dict[Split, list], holdout: Holdout | None, seed: int) -> dict[str, SplitReport]:
    def summary(split: str, source: str, fmt: str | None, names: list[str]) -> SplitReport:
        lengths = state.lengths
        return SplitReport(
            source=source,
            format=fmt,
            files=names,
            examples=state.examples[split],
            dropped=lengths.dropped[split] if lengths else 0,
            truncated=lengths.truncated[split] if lengths else 0,
        )

    names = {split: [display for _, display in found] for split, found in files.items()}
    reports = {"training": summary("training", "training/", state.formats.get("training"), names.get("training", []))}
    if holdout:
        fraction = f"{HOLDOUT_FRACTION:.0%}"
        reports["validation"] = summary("validation", f"held out from training/ ({fraction}, seed {seed})", state.formats.get("training"), [])
        state.warnings.append(f"no validation/ folder: held out {state.examples['validation']} of the training records (seed {seed})")
    else:
        reports["validation"] = summary("validation", "validation/", state.formats.get("validation"), names.get("validation", []))
    if "testing" in files:
        reports["testing"] = summary("testing", "testing/", state.formats.get("testing"), names["testing"])
    else:
        reports["testing"] = reports["validation"].model_copy(update={"source": "the validation split (no testing/ folder)"})
        state.warnings.append("no testing/ folder: the task benchmark scores the validation split")
    return reports


def write_report(report: DataReport, out_dir: Path) -> dict[str, str]:
    """Write ``report.json`` and ``report.html`` into ``out_dir``; returns their paths by kind (``json``, ``html``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "html": out_dir / "report.html"}
    paths["json"].write_text(report.model_dump_json(indent=2), encoding="utf-8")
    paths["html"].write_text(render_html(report), encoding="utf-8")
    return {kind: str(path) for kind, path in paths.items()}


def iter_examples(path: str | Path) -> Iterator[Example]:
    """Stream a canonical split file written by ``ingest_dataset``."""
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield Example(**json.loads(line))


def read_examples(path: str | Path) -> list[Example]:
    """Read a canonical split file written by ``ingest_dataset``."""
    return list(iter_examples(path))
