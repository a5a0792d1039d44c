"""A corpus of broken datasets: each defect yields its exact ``file:line: reason``, and no input
(binary, huge, deeply nested, badly encoded, linked) crashes the validator."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

import data.chunks as chunks_module
from data.canonical import canonical_bytes
from data.formats import CONTENT_FIELDS, check_record, plain_canonical_lines
from data.ingest import DatasetError, ingest_dataset

OK = b'{"prompt": "Reply ok.", "completion": "ok"}'
USER = {"role": "user", "content": "What is the weather?"}
ANSWER = {"role": "assistant", "content": "Sunny."}
CALL = {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": "{}"}}]}
TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]


def line(value) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def jsonl(*values) -> bytes:
    return b"".join(line(v) + b"\n" for v in values)


# Each case: {path inside the dataset: file bytes}, and the exact errors ingest reports.
# The file under test sits between valid lines, so the line numbers are checked too.
CASES: dict[str, tuple[dict[str, bytes], list[str]]] = {
    "not-json": ({"training/t.jsonl": jsonl(OK, b'{"prompt": "a" "completion": "b"}', OK)}, ["training/t.jsonl:2: not valid JSON: Expecting ',' delimiter (column 16)"]),
    "truncated-line": ({"training/t.jsonl": jsonl(OK, OK, b'{"prompt": "cut off')}, ["training/t.jsonl:3: not valid JSON: Unterminated string starting at (column 12)"]),
    "array-not-object": ({"training/t.jsonl": jsonl(OK, ["prompt", "completion"])}, ["training/t.jsonl:2: expected a JSON object, got array"]),
    "string-not-object": ({"training/t.jsonl": jsonl(OK, "just text")}, ["training/t.jsonl:2: expected a JSON object, got string"]),
    "null-line": ({"training/t.jsonl": jsonl(OK, b"null")}, ["training/t.jsonl:2: expected a JSON object, got null"]),
    "missing-field": ({"training/t.jsonl": jsonl(OK, {"prompt": "no answer"})}, ["training/t.jsonl:2: missing field `completion`"]),
    "empty-field": ({"training/t.jsonl": jsonl(OK, {"prompt": "", "completion": "x"})}, ["training/t.jsonl:2: `prompt` is empty"]),
    "blank-field": ({"training/t.jsonl": jsonl(OK, {"prompt": "q", "completion": " \n\t"})}, ["training/t.jsonl:2: `completion` is empty"]),
    "wrong-type": ({"training/t.jsonl": jsonl(OK, {"prompt": 42, "completion": "x"})}, ["training/t.jsonl:2: `prompt` must be a string, got number"]),
    "unknown-format": (
        {"training/t.jsonl": jsonl(OK, {"text": "free text"})},
        ["training/t.jsonl:2: unknown record format (keys: text); expected prompt/completion, messages, "
         "prompt/chosen_response/rejected_response (preference) or prompt with an answer field (reward)"],
    ),
    "mixed-formats": (
        {"training/t.jsonl": jsonl(OK, {"messages": [USER, ANSWER]})},
        ["training/t.jsonl:2: record is chat but the file started as completion (line 1); one format per file"],
    ),
    "both-formats-in-a-record": (
        {"training/t.jsonl": jsonl({"messages": [USER, ANSWER], "prompt": "q"})},
        ["training/t.jsonl:1: a record has `messages` or `prompt`, not both"],
    ),
    "unknown-role": (
        {"training/t.jsonl": jsonl({"messages": [{"role": "robot", "content": "beep"}, ANSWER]})},
        ["training/t.jsonl:1: `messages[0].role` is 'robot'; expected one of system, user, assistant, tool"],
    ),
    "role-not-text": (
        {"training/t.jsonl": jsonl({"messages": [{"role": ["user"], "content": "hi"}, ANSWER]})},
        ["training/t.jsonl:1: `messages[0].role` is ['user']; expected one of system, user, assistant, tool"],
    ),
    "missing-role": (
        {"training/t.jsonl": jsonl({"messages": [{"content": "hi"}, ANSWER]})},
        ["training/t.jsonl:1: missing field `messages[0].role`"],
    ),
    "last-turn-not-assistant": (
        {"training/t.jsonl": jsonl({"messages": [USER, ANSWER, USER]})},
        ["training/t.jsonl:1: the last message must be from the assistant (it is what the model learns to say), got 'user'"],
    ),
    "two-users-in-a-row": (
        {"training/t.jsonl": jsonl({"messages": [USER, USER, ANSWER]})},
        ["training/t.jsonl:1: `messages[1].role` is 'user' after 'user'; expected assistant"],
    ),
    "system-not-first": (
        {"training/t.jsonl": jsonl({"messages": [USER, {"role": "system", "content": "Be brief."}, ANSWER]})},
        ["training/t.jsonl:1: `messages[1].role` is 'system' after 'user'; expected assistant"],
    ),
    "assistant-first": (
        {"training/t.jsonl": jsonl({"messages": [ANSWER, USER, ANSWER]})},
        ["training/t.jsonl:1: `messages[0].role` is 'assistant' as the first message; expected system or user"],
    ),
    "empty-messages": ({"training/t.jsonl": jsonl({"messages": []})}, ["training/t.jsonl:1: `messages` must be a non-empty list of messages, got an empty one"]),
    "content-not-text": (
        {"training/t.jsonl": jsonl({"messages": [{"role": "user", "content": ["hi"]}, ANSWER]})},
        ["training/t.jsonl:1: `messages[0].content` must be a string, got array"],
    ),
    "empty-answer": (
        {"training/t.jsonl": jsonl({"messages": [USER, {"role": "assistant", "content": ""}]})},
        ["training/t.jsonl:1: `messages[1].content` is empty"],
    ),
    "tool-result-without-call": (
        {"training/t.jsonl": jsonl({"messages": [USER, ANSWER, {"role": "tool", "content": "{}"}, ANSWER]})},
        ["training/t.jsonl:1: `messages[2].role` is 'tool' after 'assistant'; expected user"],
    ),
    "tool-calls-on-user": (
        {"training/t.jsonl": jsonl({"messages": [USER | {"tool_calls": CALL["tool_calls"]}, ANSWER]})},
        ["training/t.jsonl:1: `messages[0].tool_calls` is only allowed on assistant messages"],
    ),
    "call-to-undeclared-tool": (
        {"training/t.jsonl": jsonl({"tools": TOOLS, "messages": [USER, CALL | {"tool_calls": [{"function": {"name": "weather"}}]}, {"role": "tool", "content": "sun"}, ANSWER]})},
        ["training/t.jsonl:1: `messages[1].tool_calls[0]` calls 'weather', which is not in `tools` (search)"],
    ),
    "tools-not-a-list": (
        {"training/t.jsonl": jsonl({"tools": {"name": "search"}, "messages": [USER, ANSWER]})},
        ["training/t.jsonl:1: `tools` must be a list of tool definitions, got object"],
    ),
    "conversation-ends-on-a-tool-call": (
        {"training/t.jsonl": jsonl({"tools": TOOLS, "messages": [USER, CALL]})},
        ["training/t.jsonl:1: the last (assistant) message only calls tools: it must end with the assistant's text answer"],
    ),
    "preference-identical-responses": (
        {"training/t.jsonl": jsonl({"prompt": "q", "chosen_response": "same", "rejected_response": "same "})},
        ["training/t.jsonl:1: `chosen_response` and `rejected_response` are identical: the pair prefers nothing"],
    ),
    "preference-field-names": (
        {"training/t.jsonl": jsonl({"prompt": "q", "chosen": "a", "rejected": "b"})},
        ["training/t.jsonl:1: `chosen` is not a preference field: name it `chosen_response`"],
    ),
    "preference-missing-rejected": (
        {"training/t.jsonl": jsonl({"prompt": "q", "chosen_response": "a"})},
        ["training/t.jsonl:1: missing field `rejected_response`"],
    ),
    "preference-prompt-ends-with-assistant": (
        {"training/t.jsonl": jsonl({"prompt": [USER, ANSWER], "chosen_response": "a", "rejected_response": "b"})},
        ["training/t.jsonl:1: the last message of `prompt` must be from the user (the responses answer it), got 'assistant'"],
    ),
    "prompt-alone": (
        {"training/t.jsonl": jsonl({"prompt": "a question with nothing to learn"})},
        ["training/t.jsonl:1: `prompt` alone is not an example: add `completion` (completion record), `chosen_response` and "
         "`rejected_response` (preference record) or an answer field (reward record: answer, solution, ground_truth, or choices with label)"],
    ),
    "reward-label-without-choices": ({"training/t.jsonl": jsonl({"prompt": "2+2?", "label": 1})}, ["training/t.jsonl:1: `label` needs `choices` to point into"]),
    "reward-label-out-of-range": (
        {"training/t.jsonl": jsonl({"prompt": "2+2?", "choices": ["3", "4"], "label": 2})},
        ["training/t.jsonl:1: `label` 2 is out of range for 2 choices"],
    ),
    "reward-empty-answer": ({"training/t.jsonl": jsonl({"prompt": "2+2?", "answer": " "})}, ["training/t.jsonl:1: `answer` is empty"]),
    "reward-answer-wrong-type": ({"training/t.jsonl": jsonl({"prompt": "2+2?", "answer": [4]})}, ["training/t.jsonl:1: `answer` must be a string or a number, got array"]),
    "nan": ({"training/t.jsonl": jsonl(OK, b'{"prompt": "q", "completion": "a", "score": NaN}')}, ["training/t.jsonl:2: not valid JSON: NaN is not a JSON value"]),
    "float-overflow": ({"training/t.jsonl": jsonl(OK, b'{"prompt": "q", "completion": "a", "score": 1e999}')}, ["training/t.jsonl:2: not valid JSON: the number 1e999 is too large for a float"]),
    "invalid-utf8": ({"training/t.jsonl": jsonl(OK, b'{"prompt": "caf\xe9", "completion": "a"}')}, ["training/t.jsonl:2: not UTF-8 text (invalid continuation byte at byte 16 of the line)"]),
    "unpaired-surrogate": (
        {"training/t.jsonl": jsonl(OK, b'{"prompt": "\\ud800", "completion": "a"}')},
        ["training/t.jsonl:2: holds an unpaired surrogate escape (such as \\ud800): not valid Unicode text"],
    ),
    "deeply-nested": ({"training/t.jsonl": jsonl(OK, b"[" * 100_000 + b"]" * 100_000)}, ["training/t.jsonl:2: not valid JSON: nested too deeply"]),
    "deeply-nested-field": (
        {"training/t.jsonl": jsonl(OK, b'{"prompt": "q", "completion": "a", "meta": ' + b"[" * 1500 + b"]" * 1500 + b"}")},
        ["training/t.jsonl:2: not valid JSON: nested too deeply"],
    ),
    "binary-file": (
        {"training/t.jsonl": jsonl(OK), "training/u.jsonl": b"PK\x03\x04\x00\x00\x08\x00" + bytes(range(256)) * 64},
        ["training/u.jsonl:1: binary data (NUL bytes), not JSON text: the file is not JSON Lines text (compressed? UTF-16?); the rest of it was not read"],
    ),
    "utf16-file": (
        {"training/t.jsonl": "\ufeff".encode("utf-16-le") + OK.decode().encode("utf-16-le") + "\n".encode("utf-16-le")},
        ["training/t.jsonl:1: binary data (NUL bytes), not JSON text: the file is not JSON Lines text (compressed? UTF-16?); the rest of it was not read"],
    ),
    "files-at-the-root": (
        {"data.jsonl": jsonl(OK), "training/t.jsonl": jsonl(OK, OK)},
        ["{root}: data files at the dataset root (data.jsonl): move them into training/ (or validation/, testing/)"],
    ),
    "misnamed-training-folder": (
        {"train/t.jsonl": jsonl(OK, OK)},
        ["{root}: no training/ folder: put the training JSONL files in training/ (the dataset has train/; rename the training one)"],
    ),
    "json-not-jsonl": ({"training/t.jsonl": jsonl(OK, OK), "training/extra.json": b"[]"}, ["training/extra.json: a .json file is not read: write one JSON object per line in a .jsonl file"]),
    "no-jsonl-files": ({"training/notes.txt": b"hello"}, ["{name}/training: folder has no .jsonl files"]),
    "empty-file": ({"training/t.jsonl": b""}, ["training/: no records"]),
    "blank-lines-only": ({"training/t.jsonl": b"\n \n\r\n"}, ["training/: no records"]),
    "training-is-a-file": ({"training": jsonl(OK)}, ["{name}/training: is a file; it must be a folder of .jsonl files"]),
    "formats-differ-between-files": (
        {"training/a.jsonl": jsonl(OK, OK), "training/b.jsonl": jsonl({"messages": [USER, ANSWER]})},
        ["training/b.jsonl: chat records, but training/ already holds completion records"],
    ),
    "too-few-to-hold-out": ({"training/t.jsonl": jsonl(OK)}, ["training: need at least 2 records to hold out a validation split"]),
    "nul-byte-in-a-line": ({"training/t.jsonl": jsonl(OK, b'{"prompt": "a\x00b", "completion": "c"}', OK)}, ["training/t.jsonl:2: binary data (NUL bytes), not JSON text"]),
    "bad-line-in-testing": (
        {"training/t.jsonl": jsonl(OK, OK), "testing/t.jsonl": jsonl(OK, {"prompt": "q", "completion": None})},
        ["testing/t.jsonl:2: `completion` must be a string, got null"],
    ),
}


def build(root: Path, files: dict[str, bytes]) -> Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_defect_is_reported_at_its_line(case: str, tmp_path: Path):
    files, expected = CASES[case]
    root = build(tmp_path / "ds", files)
    with pytest.raises(DatasetError) as info:
        ingest_dataset(str(root), tmp_path / "out", seed=0)
    expected = [e.format(root=root, name=root.name) for e in expected]
    assert [str(e) for e in info.value.errors] == expected
    assert info.value.total == len(expected)
    assert info.value.report is not None and info.value.report.errors == expected
    assert not (tmp_path / "out" / "training.jsonl").exists()  # nothing half-written for a refused dataset


def test_the_corpus_covers_at_least_25_distinct_defects():
    reasons = {e.split(": ", 1)[1].split("`")[0][:25] for _, errors in CASES.values() for e in errors}
    assert len(CASES) >= 25 and len(reasons) >= 25


def test_a_line_longer_than_the_limit_is_skipped_without_being_held(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(chunks_module, "MAX_LINE_BYTES", 1000)
    long_line = b'{"prompt": "' + b"x" * 5000 + b'", "completion": "a"}'
    root = build(tmp_path / "ds", {"training/t.jsonl": jsonl(OK, long_line, OK, OK)})
    with pytest.raises(DatasetError) as info:
        ingest_dataset(str(root), tmp_path / "out", seed=0)
    assert [str(e) for e in info.value.errors] == ["training/t.jsonl:2: line is longer than 1,000 bytes; no example is that long"]
    # Long lines across read chunks, and at the end of a file without a newline, count as one line each.
    with open(root / "training" / "t.jsonl", "rb") as fh:
        assert [(n, raw is None) for n, raw in chunks_module.numbered_lines(fh, chunk_size=64)] == [(1, False), (2, True), (3, False), (4, False)]
    (root / "training" / "t.jsonl").write_bytes(jsonl(OK, OK) + long_line)
    with open(root / "training" / "t.jsonl", "rb") as fh:
        assert [(n, raw is None) for n, raw in chunks_module.numbered_lines(fh, chunk_size=64)] == [(1, False), (2, False), (3, True)]


def test_links_are_followed_to_files_but_not_to_folders(tmp_path: Path):
    outside = build(tmp_path / "elsewhere", {"more.jsonl": jsonl(OK, OK), "sub/x.jsonl": jsonl(OK)})
    root = build(tmp_path / "ds", {"training/t.jsonl": jsonl(OK, OK)})
    os.symlink(outside / "more.jsonl", root / "training" / "linked.jsonl")
    assert ingest_dataset(str(root), tmp_path / "out", seed=0).counts["training"] + 1 == 4
    os.symlink(outside / "sub", root / "training" / "folder")
    os.symlink(tmp_path / "missing.jsonl", root / "training" / "broken.jsonl")
    with pytest.raises(DatasetError) as info:
        ingest_dataset(str(root), tmp_path / "out2", seed=0)
    assert [str(e) for e in info.value.errors] == [
        "training/folder: is a link to a folder; links to folders are not followed: copy the files in",
        "training/broken.jsonl: is a broken link",
    ]


def test_references_that_are_not_dataset_folders(tmp_path: Path):
    (tmp_path / "file.jsonl").write_bytes(jsonl(OK))
    for source, reason in [
        (str(tmp_path / "file.jsonl"), "is a file: a dataset is a folder with training/ (and optional validation/, testing/)"),
        (str(tmp_path / "nowhere"), "dataset folder does not exist"),
        ("ftp://host/ds", "unsupported dataset scheme 'ftp'; use a folder, file://, or s3://"),
        ("hf://datasets/team/tickets", "the Data Store has no files there (upload them with HfApi first)"),
        ("hf://models/team/tickets", "an hf:// dataset is named hf://datasets/<namespace>/<name>"),
    ]:
        with pytest.raises(DatasetError) as info:
            ingest_dataset(source, tmp_path / "out", seed=0)
        assert [str(e) for e in info.value.errors] == [f"{source}: {reason}"]


def test_a_data_store_dataset_ingests_like_its_folder(tmp_path: Path, monkeypatch):
    from core.settings import get_settings
    from data.datastore import open_files

    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(tmp_path / "data"))
    root = build(tmp_path / "ds", {"training/t.jsonl": jsonl(*[OK] * 5), "validation/v.jsonl": jsonl(OK)})
    files = open_files(get_settings())
    for path in ("training/t.jsonl", "validation/v.jsonl"):
        files.put(f"datasets/team/tickets/{path}", (root / path).read_bytes())
    local = ingest_dataset(str(root), tmp_path / "out-local", seed=0)
    stored = ingest_dataset("hf://datasets/team/tickets", tmp_path / "out-hf", seed=0, settings=get_settings())
    assert stored.sha256 == local.sha256 and stored.counts == local.counts and stored.source == "hf://datasets/team/tickets"


def test_the_training_method_must_read_the_dataset_format(tmp_path: Path):
    root = build(tmp_path / "ds", {"training/t.jsonl": jsonl(*[{"prompt": f"q{i}", "chosen_response": "a", "rejected_response": "b"} for i in range(3)])})
    with pytest.raises(DatasetError) as info:
        ingest_dataset(str(root), tmp_path / "out", seed=0, method="sft")
    assert [str(e) for e in info.value.errors] == ["training/t.jsonl:1: training/ holds preference records; training_type sft reads completion or chat records"]
    assert ingest_dataset(str(root), tmp_path / "out", seed=0, method="dpo").formats["training"] == "preference"


def test_a_byte_order_mark_and_windows_line_ends_are_accepted(tmp_path: Path):
    root = build(tmp_path / "ds", {"training/t.jsonl": b"\xef\xbb\xbf" + OK + b"\r\n" + OK + b"\r\n\r\n" + OK})
    data = ingest_dataset(str(root), tmp_path / "out", seed=0)
    assert data.counts["training"] + data.counts["validation"] == 3
    assert "training/t.jsonl: starts with a UTF-8 byte-order mark (ignored)" in data.warnings


def test_errors_from_many_files_are_all_counted(tmp_path: Path):
    files = {f"training/f{i}.jsonl": jsonl(OK, b"{oops", OK) for i in range(30)}
    root = build(tmp_path / "ds", files)
    with pytest.raises(DatasetError) as info:
        ingest_dataset(str(root), tmp_path / "out", seed=0)
    assert info.value.total == 30 and len(info.value.errors) == 30
    assert str(info.value.errors[0]) == "training/f0.jsonl:2: not valid JSON: Expecting property name enclosed in double quotes (column 2)"


MUTATIONS = [
    lambda b, r: b[: r.randrange(len(b))],  # cut
    lambda b, r: b.replace(b'"', b"", 1),
    lambda b, r: bytes(r.randrange(256) for _ in range(r.randrange(1, 40))),  # noise
    lambda b, r: b[:5] + bytes([r.randrange(256)]) + b[6:],  # one byte flipped
    lambda b, r: b.replace(b"ok", b"\\u" + bytes(r.choice(b"d8fz0") for _ in range(4)), 1),
    lambda b, r: b"[" * r.randrange(500, 3000) + b,
    lambda b, r: b.replace(b'"ok"', r.choice([b"1e400", b"-Infinity", b"123456789012345678901234567890", b"[]", b"{}", b"null", b"true", b"0.5"])),
    lambda b, r: b.replace(b"Reply", "R\u00e9ply\u2028\u0085".encode()),
]


def test_no_input_crashes_the_validator(tmp_path: Path):
    """Seeded random mutations of valid lines: ingest either accepts the line or names it; it never
    raises anything but a DatasetError."""
    rng = random.Random(7)
    lines = []
    for _ in range(600):
        base = OK if rng.random() < 0.7 else line({"messages": [USER, ANSWER]})
        lines.append(rng.choice(MUTATIONS)(base, rng).replace(b"\n", b" "))
    root = build(tmp_path / "ds", {"training/fuzz.jsonl": b"\n".join(lines) + b"\n"})
    with pytest.raises(DatasetError) as info:
        ingest_dataset(str(root), tmp_path / "out", seed=0)
    report = info.value.report
    numbers = [e.line for e in info.value.errors]
    assert numbers == sorted(numbers) and all(1 <= n <= 600 for n in numbers)
    # Nothing is lost: every line is an example of a split, a counted error, or blank.
    examples = report.splits["training"].examples + report.splits["validation"].examples
    assert info.value.total > 50 and examples > 50
    assert examples + info.value.total + report.blank_lines == 600


def test_the_batch_check_never_accepts_a_record_the_full_check_refuses():
    """``plain_records`` proves a whole chunk valid at once; whatever it accepts, record by record
    ``check_record`` must accept too, holding only the format's own fields."""
    from data.formats import CONTENT_FIELDS, check_record, plain_records

    rng = random.Random(3)
    accepted = 0
    for _ in range(3000):
        base, fmt = (OK, "completion") if rng.random() < 0.5 else (line({"messages": [USER, ANSWER]}), "chat")
        mutated = rng.choice(MUTATIONS)(base, rng)
        try:
            record = json.loads(mutated)
        except (ValueError, RecursionError):
            continue
        if plain_records([json.loads(OK) if fmt == "completion" else {"messages": [USER, ANSWER]}, record], fmt):
            accepted += 1
            assert check_record(record, fmt) == (fmt, None), mutated
            assert set(record) <= set(CONTENT_FIELDS[fmt]), mutated
    assert accepted > 100


@pytest.mark.parametrize("record", [
    {"messages": []},
    {"messages": [USER]},
    {"messages": [ANSWER, USER]},
    {"messages": [{"role": "robot", "content": "hi"}, ANSWER]},
    {"messages": [USER, {"role": "assistant", "content": " \n"}]},
    {"messages": [USER, {"role": "assistant", "content": ["Sunny."]}]},
    {"messages": [USER, {"role": ["assistant"], "content": "Sunny."}]},
    {"messages": [USER, ANSWER], "prompt": "p"},
    {"messages": {"role": "user"}},
    {"prompt": "p", "completion": ""},
    {"prompt": "p", "completion": 1},
    {"prompt": "p", "completion": "c", "messages": [USER, ANSWER]},
])
def test_the_batch_check_leaves_each_defect_to_the_full_check(record):
    from data.formats import check_record, plain_records

    fmt = "chat" if "messages" in record and "completion" not in record else "completion"
    assert not plain_records([record], fmt)
    assert check_record(record, fmt)[1]


def test_the_typed_path_writes_what_the_dict_path_writes():
    """``plain_canonical_lines`` decodes plain records into typed structs and encodes them back; for
    every line it accepts, the parsed record is valid, plain, and its canonical JSON is the same
    bytes (so a dataset's sha256 does not depend on which path read it)."""
    import orjson

    rng = random.Random(11)
    texts = ["Reply ok.", "ok", "caf\u00e9 \u2028 \U0001F600", "\\u00e9", "tab\tnew\nline", "\x00\x1f\x7f", "q\"uote\\", "  padded  ", "\ud83d\ude00"]
    chat = lambda: line({"messages": [{"content": rng.choice(texts), "role": role} for role in rng.choice([["user", "assistant"], ["system", "user", "assistant"]])]})
    accepted = 0
    for _ in range(3000):
        base, fmt = (OK, "completion") if rng.random() < 0.5 else (chat(), "chat")
        raw = base if rng.random() < 0.3 else rng.choice(MUTATIONS)(base, rng)
        found = plain_canonical_lines([raw], fmt)
        if found is None:
            continue
        accepted += 1
        record = orjson.loads(raw)
        assert check_record(record, fmt) == (fmt, None), raw
        assert set(record) <= set(CONTENT_FIELDS[fmt]), raw
        assert found == [canonical_bytes(record)], raw
    assert accepted > 500
    # A line the typed path cannot prove plain leaves the whole list to the other checks.
    assert plain_canonical_lines([OK, b'{"prompt": "q", "completion": "a", "id": 1}'], "completion") is None
    assert plain_canonical_lines([line({"messages": [ANSWER, USER]})], "chat") is None
    assert plain_canonical_lines([OK, None], "completion") is None
