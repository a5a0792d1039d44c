import doctest
import hashlib
import json
import random
from pathlib import Path

import pytest

import data.canonical as canonical_module
import data.chunks as chunks_module
import data.formats as formats_module
from data.canonical import canonical_bytes, canonical_line
from data.ingest import DatasetError, ingest_dataset, read_examples
from data.layout import MAX_LISTED_ERRORS
from data.reader import IngestPass
from tests.conftest import ok_rows, write_jsonl


def chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def test_ingest_writes_canonical_splits_with_a_seeded_holdout(tmp_path: Path):
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "a.jsonl", ok_rows(30))
    write_jsonl(root / "testing" / "t.jsonl", ok_rows(5, start=100))
    data = ingest_dataset(str(root), tmp_path / "out", seed=1)
    assert data.counts == {"training": 27, "validation": 3, "testing": 5}
    assert data.validation_source == "holdout" and any("held out 3" in w for w in data.warnings)
    again = ingest_dataset(root.as_uri(), tmp_path / "out2", seed=1)
    assert [e.record for e in read_examples(again.files["validation"])] == [e.record for e in read_examples(data.files["validation"])]
    other_seed = ingest_dataset(str(root), tmp_path / "out3", seed=2)
    assert [e.loc for e in read_examples(other_seed.files["validation"])] != [e.loc for e in read_examples(data.files["validation"])]
    first = read_examples(data.files["testing"])[0]
    assert first.loc == "testing/t.jsonl:1" and first.record["completion"] == "ok"


def test_chat_records_and_given_validation_split(tmp_path: Path):
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "chat.jsonl", [chat(f"q{i}", f"a{i}") for i in range(4)])
    write_jsonl(root / "validation" / "v.jsonl", [chat("qv", "av")])
    data = ingest_dataset(str(root), tmp_path / "out", seed=0)
    assert data.formats == {"training": "chat", "validation": "chat", "testing": "chat"}
    assert data.validation_source == "validation" and data.testing_source == "validation"
    assert data.counts["testing"] == 1


def test_every_bad_line_is_reported_with_file_and_line(tmp_path: Path):
    root = tmp_path / "ds"
    write_jsonl(
        root / "training" / "bad.jsonl",
        [
            {"prompt": "fine", "completion": "ok"},
            "{not json",
            {"prompt": "no completion"},
            {"prompt": "", "completion": "x"},
            {"prompt": 3, "completion": "x"},
            ["a", "list"],
            {"text": "unknown format"},
            chat("mixed", "formats"),
            {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
            {"messages": [{"role": "user", "content": "hi"}]},
        ],
    )
    with pytest.raises(DatasetError) as info:
        ingest_dataset(str(root), tmp_path / "out", seed=0)
    message = str(info.value)
    expected = {
        2: "not valid JSON",
        3: "missing field `completion`",
        4: "`prompt` is empty",
        5: "`prompt` must be a string",
        6: "expected a JSON object",
        7: "unknown record format",
        8: "record is chat but the file started as completion (line 1)",
        9: "`messages[0].role` is 'robot'",
        10: "the last message must be from the assistant",
    }
    for line, reason in expected.items():
        assert f"training/bad.jsonl:{line}: {reason}" in message, (line, message)
    assert info.value.total == len(expected)


def test_files_at_the_root_are_refused_with_a_hint(tmp_path: Path):
    root = tmp_path / "ds"
    write_jsonl(root / "data.jsonl", ok_rows(3))
    with pytest.raises(DatasetError, match=r"data files at the dataset root \(data.jsonl\): move them into training/"):
        ingest_dataset(str(root), tmp_path / "out", seed=0)


def test_missing_folder_and_missing_training(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        ingest_dataset(str(tmp_path / "nowhere"), tmp_path / "out", seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no training/ folder"):
        ingest_dataset(str(tmp_path / "empty"), tmp_path / "out", seed=0)
    with pytest.raises(DatasetError, match="unsupported dataset scheme 'ftp'"):
        ingest_dataset("ftp://host/ds", tmp_path / "out", seed=0)


def test_error_list_is_capped_but_counts_everything(tmp_path: Path):
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "bad.jsonl", ["nope"] * (MAX_LISTED_ERRORS + 7))
    with pytest.raises(DatasetError) as info:
        ingest_dataset(str(root), tmp_path / "out", seed=0)
    assert info.value.total == MAX_LISTED_ERRORS + 7
    assert len(info.value.errors) == MAX_LISTED_ERRORS
    assert "... and 7 more" in str(info.value)


def test_sha256_follows_content_not_formatting(tmp_path: Path):
    rows = ok_rows(10)

    def sha(name: str, lines: list[str]) -> str:
        root = tmp_path / name
        write_jsonl(root / "training" / "a.jsonl", lines)
        return ingest_dataset(str(root), tmp_path / f"{name}-out", seed=0).sha256

    compact = sha("compact", [json.dumps(r, separators=(",", ":")) for r in rows])
    reordered = sha("reordered", [json.dumps(dict(reversed(list(r.items()))), indent=None) for r in rows] + [""])
    changed = sha("changed", [json.dumps(r) for r in rows[:-1]] + [json.dumps(rows[-1] | {"completion": "no"})])
    assert compact == reordered
    assert compact != changed


def test_valid_datasets_in_all_four_formats_ingest(tmp_path: Path):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}]
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": {"id": "42"}}}]}
    formats = {
        "completion": ok_rows(6),
        "chat": [chat(f"q{i}", f"a{i}") for i in range(3)]
        + [{"tools": tools, "messages": [{"role": "user", "content": "order 42?"}, call, {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'}, {"role": "assistant", "content": "It shipped."}]}],
        "preference": [
            {"prompt": "Say hi", "chosen_response": "Hi!", "rejected_response": "No."},
            {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Say hi"}], "chosen_response": "Hello!", "rejected_response": "Go away."},
            {"prompt": "Say bye", "chosen_response": "Bye!", "rejected_response": "...", "margin": 0.5},
        ],
        "reward": [
            {"prompt": "2+2?", "answer": "4"},
            {"prompt": "3*3?", "answer": 9},
            {"prompt": [{"role": "user", "content": "Solve x+1=2"}], "solution": "x = 1"},
            {"prompt": "Capital of France?", "choices": ["Paris", "Rome"], "label": 0},
            {"prompt": "Capital of Italy?", "choices": ["Paris", "Rome"], "label": "Rome", "ground_truth": "Rome", "difficulty": 1e-5},
        ],
    }
    for fmt, rows in formats.items():
        root = tmp_path / fmt
        write_jsonl(root / "training" / "train.jsonl", rows)
        write_jsonl(root / "validation" / "val.jsonl", rows[:1])
        data = ingest_dataset(str(root), tmp_path / f"{fmt}-out", seed=0)
        assert data.formats == {"training": fmt, "validation": fmt, "testing": fmt}, fmt
        assert data.counts == {"training": len(rows), "validation": 1, "testing": 1}
        assert [e.record for e in read_examples(data.files["training"])] == rows  # content kept as given, floats included
        assert json.loads(Path(data.report_files["json"]).read_text())["splits"]["training"]["format"] == fmt


def test_holdout_picks_exactly_ten_percent_whatever_the_blank_lines(tmp_path: Path):
    root = tmp_path / "ds"
    lines = [json.dumps(r) for r in ok_rows(200)]
    write_jsonl(root / "training" / "a.jsonl", lines[:100] + ["", "", "\r"])
    write_jsonl(root / "training" / "b.jsonl", lines[100:])
    data = ingest_dataset(str(root), tmp_path / "out", seed=3)
    assert data.counts["validation"] == 20 and data.counts["training"] == 180
    held = {e.loc for e in read_examples(data.files["validation"])}
    kept = {e.loc for e in read_examples(data.files["training"])}
    assert not held & kept and len(held | kept) == 200
    assert {e.loc for e in read_examples(ingest_dataset(str(root), tmp_path / "again", seed=3).files["validation"])} == held


def test_sha256_is_the_canonical_content_of_every_file(tmp_path: Path):
    """The identity is sha256 over each file's path and its records' canonical JSON (sorted keys,
    no spaces, UTF-8), computed here independently of ingest."""
    rows = [
        {"prompt": "caf\u00e9 \U0001f600 \"q\" \\ \t", "completion": "a", "meta": {"b": [1, 2.5, 1e-05, 1.5e-07, -0.0, 1e16, True, None], "a": 12345678901234567890123}},
        {"completion": "b", "prompt": "x\u2028y\u0085z"},
        {"prompt": "p", "completion": "c", "n": 123456789012345678901234567890},  # beyond 64 bits, no float
    ]
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "a.jsonl", [json.dumps(r, ensure_ascii=False) for r in rows])
    write_jsonl(root / "validation" / "v.jsonl", [json.dumps(rows[1])])
    expected = hashlib.sha256()
    for name, records in (("training/a.jsonl", rows), ("validation/v.jsonl", rows[1:2])):
        expected.update(f"{name}\n".encode())
        for record in records:
            expected.update(json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    assert ingest_dataset(str(root), tmp_path / "out", seed=0).sha256 == expected.hexdigest()


def test_the_fast_canonical_encoding_is_the_standard_one():
    rng = random.Random(11)
    alphabet = [chr(c) for c in [*range(0, 0x80), 0xA0, 0xE9, 0x2028, 0x2029, 0xFEFF, 0x1F600, 0x4E2D]]

    def value(depth: int):
        kind = rng.randrange(7 if depth < 4 else 4)
        if kind == 0:
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
        if kind == 1:
            return rng.choice([0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**70, rng.randrange(-10**6, 10**6)])
        if kind == 2:
            return rng.choice([True, False, None])
        if kind == 3:
            return rng.choice([0.1, 1e-05, 2.5e-07, 1e16, 1e22, -0.0, 123.456, rng.random() * 10 ** rng.randrange(-12, 20)])
        if kind in (4, 5):
            return {"".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 5))): value(depth + 1) for _ in range(rng.randrange(4))}
        return [value(depth + 1) for _ in range(rng.randrange(4))]

    for _ in range(3000):
        record = {"prompt": value(1), "completion": value(1), "x": value(1)}
        assert canonical_bytes(record) == canonical_line(record).encode(), record


def test_the_batched_path_and_the_line_by_line_path_agree(tmp_path: Path, monkeypatch):
    """Plain chunks are read in batches; any chunk with something to look at closely, line by
    line. Both must write the same splits, identity and report."""
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "a.jsonl", ok_rows(3000) + ok_rows(20))  # with duplicates, and a holdout
    write_jsonl(root / "training" / "b.jsonl", [r | {"id": i} for i, r in enumerate(ok_rows(40))] + ["", {"prompt": "p", "completion": "c", "score": 1e-05}])
    write_jsonl(root / "testing" / "t.jsonl", [chat(f"Reply with the word ok. Item {i}", "ok") for i in range(2990, 3020)])
    def outputs(out: Path):
        data = ingest_dataset(str(root), out, seed=5)
        files = {split: Path(path).read_bytes() for split, path in data.files.items()}
        return data.sha256, files, json.loads(Path(data.report_files["json"]).read_text())

    batched = outputs(tmp_path / "batched")
    monkeypatch.setattr(IngestPass, "_read_plain_chunk", lambda *args: False)
    line_by_line = outputs(tmp_path / "lines")
    assert batched == line_by_line
    report = batched[2]
    assert report["splits"]["validation"]["examples"] == 306 and report["blank_lines"] == 1
    copies = sum(report["duplicates"]["exact_copies"].values()) + report["duplicates"]["leaked"].get("validation", 0)
    assert copies >= 60  # items 0-19 three times, 20-39 twice (an id does not make a copy different)


def test_module_doctests_pass():
    for module in (canonical_module, chunks_module, formats_module):
        failures, tried = doctest.testmod(module)
        assert tried > 0 and failures == 0, module.__name__
