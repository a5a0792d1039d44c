"""Replay against forgetting (``data.replay``): general examples mixed into the training split.

``ratio`` > 0 adds ``round(ratio x the user's training examples)`` general examples to the
training split written by ingest (never to validation or testing, which stay the user's data),
picked deterministically from the job's seed. ``source`` says where they come from:

- ``self`` (self-rehearsal): the base model's own greedy answers to the shipped general prompts
  (``training/replay_prompts.jsonl``), each prompt rendered exactly as training renders the
  user's examples (``data.prompts.render``: the config's prompt template or chat template).
  Answers are generated in batches, in bfloat16 where the hardware runs it natively, up to
  ``MAX_NEW_TOKENS`` and cut at the end of turn, and cached under
  ``<data root>/cache/replay/<key>``; the key is the base model's digest, the prompts file's
  sha256 and the generation settings; inside it each answer is stored under the sha256 of its
  rendered prompt. A later job on the same base generates only the answers it lacks (a job that
  needs more examples than an earlier one reuses the earlier ones).
- a dataset folder (a path, ``file://`` or ``s3://``): its ``training/*.jsonl`` files, or the
  ``.jsonl`` files of the folder itself when it has no ``training/``, read and validated with
  ingest's functions; every bad line is an error naming its file and line.

Only SFT reads these examples: DPO and GRPO records have other shapes, so a replay ratio above
0 with those methods is refused (``check_method``). Replay records are written in the user's
training format (a split holds one format): prompt/completion, or a chat conversation of a user
turn and the assistant's answer. A replay example longer than ``max_seq_length`` is marked
truncated (training cuts it, as under ``long_examples: truncate``); one whose prompt alone fills
it is left out. The dataset's sha256 and split counts stay the user's data; the replay examples
have a sha256 of their own and are counted in the ingest report (``replay``) and the lineage tags
(``replay_tags``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core import tags as tag
from core.catalog import CustomizationConfig
from core.settings import Settings, get_settings
from core.specs import Replay
from data.canonical import (
    BadLine,
    canonical_bytes,
    has_float,
    parse_exactly,
    parse_line,
)
from data.chunks import BOM, numbered_lines
from data.formats import METHOD_FORMATS, Format, Record, check_record
from data.ingest import DatasetError, IngestedDataset, write_report
from data.layout import LineError, Problems, split_files
from data.prompts import render, stop_sequences, tokenize
from data.report import DataReport, ReplayGeneration, ReplayReport
from data.sources import SourceError, resolve_dataset
from training.base_model import ResolvedModel, file_sha256

log = logging.getLogger("customizer.replay")

PROMPTS_FILE = Path(__file__).with_name("replay_prompts.jsonl")
MAX_NEW_TOKENS = 128
BATCH_SIZE = 8
CACHE_VERSION = 1
_PLACEHOLDER = "(answer)"  # stands in for the answer while a prompt is rendered

# (model folder, rendered prompts, stop token ids, dtype name) -> [(answer, finished)]
Generator = Callable[[str, list[str], list[int], str], list[tuple[str, bool]]]


class ReplayError(ValueError):
    """A replay setting the job cannot use."""


def check_method(training_type: str, replay: Replay) -> None:
    """Refuse replay for methods that do not read SFT records.

    Raises:
        ReplayError: naming ``data.replay`` and the method.
    """
    if replay.ratio > 0 and training_type not in ("sft",):
        reads = " or ".join(METHOD_FORMATS.get(training_type, ()))
        raise ReplayError(
            f"`data.replay` (ratio {replay.ratio}) mixes SFT examples (prompt/completion or chat) into training, "
            f"but training_type {training_type} reads {reads or 'other'} records: set data.replay.ratio to 0 "
            "or train with training_type sft"
        )


def replay_tags(replay: ReplayReport | None) -> dict[str, str]:
    """The lineage tags of a job's replay examples (none when the job has none)."""
    if replay is None:
        return {}
    tags = {tag.REPLAY_SOURCE: replay.source, tag.REPLAY_EXAMPLES: str(replay.examples)}
    if replay.sha256:
        tags[tag.REPLAY_SHA256] = replay.sha256
    if replay.generation:
        tags[tag.REPLAY_PROMPTS_SHA256] = replay.generation.prompts_sha256
    return tags


# --- records in the user's format ------------------------------------------------------------


def as_format(record: Record, found: Format, fmt: str) -> tuple[Record | None, str | None]:
    """A completion or chat record written in ``fmt`` (the user's training format), content only.

    Args:
        record: a valid completion or chat record.
        found: its format, as ``check_record`` found it.
        fmt: the format to write it in.

    Returns:
        ``(record, None)``, or ``(None, reason)`` when the record cannot be written in ``fmt``.
    """
    if found == "chat":
        if fmt == "chat":
            return {k: record[k] for k in ("messages", "tools") if k in record}, None
        messages = record["messages"]
        plain = [m for m in messages if set(m) <= {"role", "content"}]
        if record.get("tools") or len(messages) != 2 or len(plain) != 2 or [m["role"] for m in messages] != ["user", "assistant"]:
            return None, (
                "a chat record with a system message, several turns or tools cannot join prompt/completion "
                "training data: give a user turn and the assistant's answer, or prompt/completion records"
            )
        return {"prompt": messages[0]["content"], "completion": messages[1]["content"]}, None
    if fmt == "chat":
        return {"messages": [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]}, None
    return {"prompt": record["prompt"], "completion": record["completion"]}, None


def _with_answer(prompt: str, answer: str, fmt: str) -> Record:
    return as_format({"prompt": prompt, "completion": answer}, "completion", fmt)[0]


# --- selection -------------------------------------------------------------------------------


def _order(count: int, seed: int) -> list[int]:
    """The order candidates are taken in: a permutation fixed by the job's seed."""
    return np.random.default_rng(seed).permutation(count).tolist()


class _Fit:
    """Whether a record fits the config's max_seq_length as training renders it."""

    def __init__(self, config: CustomizationConfig | None, tokenizer: Any):
        self.config, self.tokenizer = config, tokenizer
        self.truncated = self.dropped = 0

    def __call__(self, record: Record) -> bool | None:
        """False: it fits; True: training cuts it; None: its prompt alone fills the limit (left out)."""
        if self.config is None or self.tokenizer is None:
            return False
        tokens = tokenize(render(record, self.config, self.tokenizer), self.tokenizer)
        limit = self.config.max_seq_length
        if len(tokens.input_ids) <= limit:
            return False
        if tokens.prompt_length >= limit:
            self.dropped += 1
            return None
        self.truncated += 1
        return True


# --- self-rehearsal --------------------------------------------------------------------------


def load_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    """The general prompts (``{"prompt": ..., "source": ...}`` per line), in file order."""
    prompts = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                prompt = json.loads(line)["prompt"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ReplayError(f"{path}:{number}: not a {{\"prompt\": ...}} record ({exc})") from None
            if not isinstance(prompt, str) or not prompt.strip():
                raise ReplayError(f"{path}:{number}: `prompt` must be a non-empty string")
            prompts.append(prompt)
    return prompts


def generation_dtype() -> str:
    """bfloat16 where the hardware runs it natively, else float32 (no config opt-in: generation only)."""
    # delayed: training.common imports torch, transformers and peft at import time (start-up time)
    from training.common import native_bf16

    return "bfloat16" if native_bf16() else "float32"


def generate_answers(model_dir: str, prompts: list[str], stop_ids: list[int], dtype: str) -> list[tuple[str, bool]]:
    """Greedy answers of the model to rendered prompts, a batch at a time (left-padded), each cut
    at the first stop token: ``(answer, finished)``, finished when it stopped before MAX_NEW_TOKENS.
    Prompts are tokenized as training tokenizes them (``data.prompts.tokenize``)."""
    # delayed: torch and transformers are heavy (start-up time)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    stops = set(stop_ids)
    out: list[tuple[str, bool]] = []
    for start in range(0, len(prompts), BATCH_SIZE):
        batch = prompts[start : start + BATCH_SIZE]
        encoded = tokenizer(batch, return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            generated = model.generate(
                **encoded, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=sorted(stops) or None,
                pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None,
            )
        for row in generated[:, encoded["input_ids"].shape[1] :].tolist():
            cut = next((i for i, token in enumerate(row) if token in stops), None)
            out.append((tokenizer.decode(row[:cut], skip_special_tokens=True), cut is not None))
        log.info("replay: generated %d of %d answers", len(out), len(prompts))
    return out


class _AnswerCache:
    """Answers already generated for a base model, prompts file and generation settings: one JSONL
    file of ``{"key": sha256 of the rendered prompt, "answer", "finished"}``, appended to (a torn
    line from an interrupted write is ignored)."""

    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.folder = folder
        self.file = folder / "answers.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        meta_file = folder / "meta.json"
        if not meta_file.exists():
            meta_file.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        self.answers: dict[str, tuple[str, bool]] = {}
        if self.file.exists():
            for line in self.file.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.answers[entry["key"]] = (entry["answer"], bool(entry["finished"]))
                except (ValueError, KeyError, TypeError):
                    continue

    def add(self, items: dict[str, tuple[str, bool]]) -> None:
        lines = "".join(json.dumps({"key": k, "answer": a, "finished": f}, ensure_ascii=False) + "\n" for k, (a, f) in items.items())
        with open(self.file, "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        self.answers.update(items)


def _self_rehearsal(
    wanted: int, fmt: str, seed: int, config: CustomizationConfig, tokenizer: Any, model: ResolvedModel, settings: Settings,
    fit: _Fit, generator: Generator, prompts_file: Path,
) -> tuple[list[tuple[str, Record, bool]], ReplayGeneration, list[str]]:
    prompts = load_prompts(prompts_file)
    dtype = generation_dtype()
    prompts_sha = file_sha256(prompts_file)
    meta = {"version": CACHE_VERSION, "model_digest": model.digest, "prompts_sha256": prompts_sha,
            "max_new_tokens": MAX_NEW_TOKENS, "dtype": dtype, "decoding": "greedy"}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
    cache = _AnswerCache(settings.root / "cache" / "replay" / key, meta)
    info = ReplayGeneration(model_digest=model.digest, prompts_sha256=prompts_sha, max_new_tokens=MAX_NEW_TOKENS, dtype=dtype, cache=str(cache.folder))

    rendered: dict[int, tuple[str, str]] = {}  # prompt index -> (rendered prompt, its cache key)
    stop_ids: list[int] = []

    def prompt_of(index: int) -> tuple[str, str]:
        if index not in rendered:
            sample = render(_with_answer(prompts[index], _PLACEHOLDER, fmt), config, tokenizer)
            rendered[index] = (sample.prompt, hashlib.sha256(sample.prompt.encode()).hexdigest())
            if not stop_ids:
                for stop in stop_sequences(tokenizer, sample):
                    ids = tokenizer(stop, add_special_tokens=False)["input_ids"]
                    if len(ids) == 1:
                        stop_ids.append(ids[0])
                if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop_ids:
                    stop_ids.append(tokenizer.eos_token_id)
        return rendered[index]

    picked: list[tuple[str, Record, bool]] = []
    order, position, empty = _order(len(prompts), seed), 0, 0
    while len(picked) < wanted and position < len(order):
        batch = order[position : position + wanted - len(picked)]
        position += len(batch)
        missing = {key: text for key, text in (prompt_of(i)[::-1] for i in batch) if key not in cache.answers}
        info.cached += len({prompt_of(i)[1] for i in batch}) - len(missing)
        if missing:
            log.info("replay: %d answer(s) needed, %d cached; generating %d with the base model (greedy, %s, max_new_tokens %d)",
                     wanted - len(picked), info.cached, len(missing), dtype, MAX_NEW_TOKENS)
            answers = generator(model.path, list(missing.values()), stop_ids, dtype)
            cache.add(dict(zip(missing, answers)))
            info.generated += len(missing)
        for index in batch:
            answer, finished = cache.answers[prompt_of(index)[1]]
            answer = answer.strip()
            if not answer:
                empty += 1
                continue
            record = _with_answer(prompts[index], answer, fmt)
            cut = fit(record)
            if cut is None:
                continue
            info.unfinished += not finished
            picked.append((f"replay/self:{index + 1}", record, cut))
    warnings = []
    if empty:
        fit.dropped += empty
        warnings.append(f"replay: {empty} empty answer(s) of the base model left out")
    if info.unfinished:
        warnings.append(f"replay: {info.unfinished} answer(s) reached max_new_tokens {MAX_NEW_TOKENS} before the end of turn")
    return picked, info, warnings


# --- a folder of examples --------------------------------------------------------------------


def _folder_files(root: Path, problems: Problems, warnings: list[str]) -> list[tuple[Path, str]]:
    if (root / "training").is_dir():
        return split_files(root, "training", problems, warnings)
    return split_files(root.parent, root.name, problems, warnings)


def read_folder(source: str, download_dir: Path, fmt: str, settings: Settings | None = None) -> tuple[list[tuple[str, Record]], list[str]]:
    """Every record of a replay folder, validated line by line with ingest's functions and written in
    ``fmt``: ``[(file:line, record)]`` in file order, and warnings.

    Raises:
        DatasetError: every bad line, as ``file:line: reason``.
    """
    try:
        root = resolve_dataset(source, download_dir, settings)
    except SourceError as exc:
        raise DatasetError(f"data.replay.source {source}", [LineError(source, 0, str(exc))]) from None
    problems, warnings = Problems(), []
    files = _folder_files(root, problems, warnings)
    if not files and not problems.total:
        problems.add(source, 0, "no .jsonl files (put JSONL records in the folder, or in its training/ folder)")
    records: list[tuple[str, Record]] = []
    for path, display in files:
        for loc, record in _read_file(path, display, fmt, problems, warnings):
            records.append((loc, record))
    if problems.total:
        raise DatasetError(f"data.replay.source {source}", problems.listed, problems.total)
    return records, warnings


def _read_file(path: Path, display: str, fmt: str, problems: Problems, warnings: list[str]) -> Iterator[tuple[str, Record]]:
    file_format, first_line = None, 0
    try:
        fh = open(path, "rb")
    except OSError as exc:
        problems.add(display, 0, f"cannot be read: {exc.strerror}")
        return
    with fh:
        for number, raw in numbered_lines(fh):
            if raw is None:
                problems.add(display, number, "line is too long")
                continue
            if not raw.strip():
                continue
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            try:
                record, exact = parse_line(raw)
            except BadLine as exc:
                problems.add(display, number, str(exc))
                if exc.binary and number == 1:
                    return
                continue
            found, reason = check_record(record, file_format)
            if not reason and not exact and has_float(record):  # as ingest: floats are parsed exactly
                record = parse_exactly(raw)
                found, reason = check_record(record, file_format)
            if reason:
                problems.add(display, number, reason)
                continue
            if file_format is None:
                file_format, first_line = found, number
            elif found != file_format:
                problems.add(display, number, f"record is {found} but the file started as {file_format} (line {first_line}); one format per file")
                continue
            if found not in METHOD_FORMATS["sft"]:
                problems.add(display, number, f"{found} record; replay examples are SFT examples: prompt/completion or chat records")
                continue
            try:
                canonical_bytes(record)
            except UnicodeEncodeError:
                problems.add(display, number, "holds an unpaired surrogate escape (such as \\ud800): not valid Unicode text")
                continue
            except RecursionError:
                problems.add(display, number, "not valid JSON: nested too deeply")
                continue
            written, reason = as_format(record, found, fmt)
            if reason:
                problems.add(display, number, reason)
                continue
            yield f"replay/{display}:{number}", written


# --- the hook --------------------------------------------------------------------------------


def add_replay(
    data: IngestedDataset,
    out_dir: Path,
    replay: Replay,
    seed: int,
    *,
    method: str = "sft",
    config: CustomizationConfig | None = None,
    model: ResolvedModel | None = None,
    settings: Settings | None = None,
    generator: Generator | None = None,
    prompts_file: Path | None = None,
) -> IngestedDataset:
    """Mix the replay examples into an ingested dataset's training split (``out_dir/training.jsonl``),
    count them in its report (``report.json``/``report.html`` rewritten) and return the dataset with
    ``replay`` set and ``counts["training"]`` including them. A ratio of 0 changes nothing.

    Args:
        data: what ``ingest_dataset`` returned for ``out_dir``.
        replay: the job's ``data.replay``.
        seed: the job's seed; it picks the examples.
        method: the job's training type (only sft replays).
        config, model: the job's config and resolved base model: self-rehearsal renders and generates
            with them; a folder's examples are measured against max_seq_length with them (when given).
        generator: generates answers (default ``generate_answers``; tests count its calls).

    Raises:
        ReplayError: a method that cannot replay, or self-rehearsal without a config and base model.
        DatasetError: a replay folder with bad lines, each as ``file:line: reason``.
    """
    if replay.ratio <= 0:
        return data
    check_method(method, replay)
    settings = settings or get_settings()
    fmt = data.formats["training"]
    user_examples = data.counts["training"]
    wanted = round(replay.ratio * user_examples)
    tokenizer = None
    if model is not None:
        from transformers import (
            AutoTokenizer,  # delayed: transformers is heavy (start-up time)
        )

        tokenizer = AutoTokenizer.from_pretrained(model.path)
    fit = _Fit(config, tokenizer)
    warnings: list[str] = []
    generation = None
    picked: list[tuple[str, Record, bool]] = []
    if replay.source == "self":
        if config is None or model is None or tokenizer is None:
            raise ReplayError("`data.replay.source` self needs the job's config and base model to generate the answers")
        if wanted:
            picked, generation, warnings = _self_rehearsal(
                wanted, fmt, seed, config, tokenizer, model, settings, fit, generator or generate_answers, prompts_file or PROMPTS_FILE,
            )
    else:
        pool, warnings = read_folder(replay.source, out_dir / "replay-source", fmt, settings)
        for index in _order(len(pool), seed):
            if len(picked) == wanted:
                break
            loc, record = pool[index]
            cut = fit(record)
            if cut is not None:
                picked.append((loc, record, cut))
    if len(picked) < wanted:
        warnings.append(f"replay: {wanted} example(s) asked (ratio {replay.ratio} of {user_examples}), only {len(picked)} available")
    if not wanted:
        warnings.append(f"replay: ratio {replay.ratio} of {user_examples} training example(s) rounds to 0 examples")

    digest = hashlib.sha256()
    with open(data.files["training"], "ab") as fh:  # after the user's examples: few-shot prompts take the first ones
        for loc, record, cut in picked:
            canonical = canonical_bytes(record)
            digest.update(canonical + b"\n")
            line = {"loc": loc, "record": record} | ({"truncated": True} if cut else {})
            fh.write(json.dumps(line, ensure_ascii=False, sort_keys=False).encode() + b"\n")
    summary = ReplayReport(
        source=replay.source, ratio=replay.ratio, requested=wanted, examples=len(picked), format=fmt,
        sha256=digest.hexdigest() if picked else None, truncated=fit.truncated, dropped=fit.dropped,
        generation=generation, warnings=warnings,
    )
    for warning in warnings:
        log.warning(warning)
    log.info("replay: %d example(s) from %s added to the training split (sha256 %s)", len(picked), replay.source, (summary.sha256 or "-")[:16])
    report_files = data.report_files
    if "json" in report_files and Path(report_files["json"]).is_file():
        report = DataReport.model_validate_json(Path(report_files["json"]).read_text(encoding="utf-8"))
        report_files = write_report(report.model_copy(update={"replay": summary}), out_dir)
    counts = dict(data.counts) | {"training": user_examples + len(picked)}
    return data.model_copy(update={"counts": counts, "replay": summary, "report_files": report_files})
