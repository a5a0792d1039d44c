import json
from pathlib import Path

import pytest

from tests.conftest import ok_rows, write_jsonl
from training.data import MAX_LISTED_ERRORS, DatasetError, ingest_dataset, read_examples


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
