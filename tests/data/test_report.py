"""The dataset report: token lengths and the long-example policy (with the tiny model's tokenizer),
duplicates and leakage, the loss preview, and the JSON and HTML files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import data.duplicates as duplicates_module
from tests.conftest import TINY_CONFIG_URN, ok_rows, write_jsonl
from core.catalog import get_config
from data.ingest import DatasetError, ingest_dataset, read_examples
from data.report import DataReport, render_text
from data.lengths import LengthCheck
from training.sft import _token_rows

LONG_PROMPT = {"prompt": "word " * 300, "completion": "ok"}  # ~300 tokens, max_seq_length is 128
LONG_ANSWER = {"prompt": "Reply with many words.", "completion": "word " * 300}


@pytest.fixture
def lengths(settings, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return lambda policy="error": LengthCheck(config, tokenizer, policy)


@pytest.fixture
def long_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "long"
    write_jsonl(root / "training" / "t.jsonl", ok_rows(6) + [LONG_ANSWER, LONG_PROMPT])
    write_jsonl(root / "validation" / "v.jsonl", ok_rows(2, start=50) + [LONG_ANSWER])
    write_jsonl(root / "testing" / "t.jsonl", ok_rows(2, start=90) + [LONG_PROMPT])
    return root


def test_long_examples_are_errors_by_default(tmp_path: Path, long_dataset: Path, lengths):
    with pytest.raises(DatasetError) as info:
        ingest_dataset(str(long_dataset), tmp_path / "out", seed=0, lengths=lengths())
    errors = [str(e) for e in info.value.errors]
    assert len(errors) == 3
    assert errors[0].startswith("training/t.jsonl:7: ") and errors[1].startswith("training/t.jsonl:8: ") and errors[2].startswith("validation/v.jsonl:3: ")
    assert all("tokens, longer than the config's max_seq_length 128 (set data.long_examples to drop or truncate to accept it)" in e for e in errors)
    # The testing split is scored from the whole prompt: its long example is reported, not refused.
    report = info.value.report
    assert [(x.loc, x.action) for x in report.lengths.long_examples] == [("testing/t.jsonl:3", "kept whole")]


def test_drop_leaves_long_examples_out_and_lists_each(tmp_path: Path, long_dataset: Path, lengths):
    data = ingest_dataset(str(long_dataset), tmp_path / "out", seed=0, lengths=lengths("drop"))
    assert data.counts == {"training": 6, "validation": 2, "testing": 3}
    assert data.dropped == {"training": 2, "validation": 1} and data.truncated == {}
    assert all(len(e.record["prompt"]) < 100 for e in read_examples(data.files["training"]))
    report = DataReport.model_validate_json(Path(data.report_files["json"]).read_text())
    listed = [(x.loc, x.action) for x in report.lengths.long_examples]
    assert listed == [("training/t.jsonl:7", "dropped"), ("training/t.jsonl:8", "dropped"), ("validation/v.jsonl:3", "dropped"), ("testing/t.jsonl:3", "kept whole")]
    assert report.lengths.dropped == 3 and report.splits["training"].dropped == 2
    stats = report.lengths.splits["training"]
    assert stats.examples == 8 and stats.over_max_seq_length == 2 and stats.max > 128 > stats.p50


def test_truncate_keeps_the_start_and_training_cuts_exactly_there(tmp_path: Path, long_dataset: Path, lengths, settings, tiny_model_dir):
    check = lengths("truncate")
    data = ingest_dataset(str(long_dataset), tmp_path / "out", seed=0, lengths=check)
    # The long answer is truncated; the long prompt would keep no answer token, so it is dropped.
    assert data.truncated == {"training": 1, "validation": 1} and data.dropped == {"training": 1}
    listed = {x.loc: (x.action, x.detail) for x in check.report().long_examples}
    assert listed["training/t.jsonl:7"][0] == "truncated" and "answer tokens kept" in listed["training/t.jsonl:7"][1]
    assert listed["training/t.jsonl:8"][0] == "dropped" and "no answer token would remain" in listed["training/t.jsonl:8"][1]
    examples = read_examples(data.files["training"])
    assert [e.truncated for e in examples] == [False] * 6 + [True]
    rows = _token_rows(examples, check.config, check.tokenizer, "training")
    assert len(rows[-1]["input_ids"]) == 128 and 0 < sum(rows[-1]["completion_mask"]) < 128
    assert all(len(r["input_ids"]) == len(r["completion_mask"]) for r in rows)


def test_the_preview_shows_which_tokens_carry_the_loss(tmp_path: Path, lengths):
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "t.jsonl", ok_rows(5))
    write_jsonl(root / "validation" / "v.jsonl", ok_rows(1, start=9))
    check = lengths()
    data = ingest_dataset(str(root), tmp_path / "out", seed=0, lengths=check)
    report = DataReport.model_validate_json(Path(data.report_files["json"]).read_text())
    preview = report.lengths.preview
    assert [p.loc for p in preview] == ["training/t.jsonl:1", "training/t.jsonl:2", "training/t.jsonl:3"]
    first = preview[0]
    answer = "".join(t.text for t in first.tokens if t.loss)
    prompt = "".join(t.text for t in first.tokens if not t.loss)
    assert answer == "ok<|im_end|>" and prompt == "<|im_start|>user\nReply with the word ok. Item 0<|im_end|>\n<|im_start|>assistant\n"
    assert report.lengths.splits["training"].answer_tokens == sum(1 for t in first.tokens if t.loss) * 5
    html = Path(data.report_files["html"]).read_text()
    assert "<span class=loss>ok</span>" in html and "&lt;|im_start|&gt;" in html


def test_exact_and_near_duplicates_and_leakage(tmp_path: Path):
    root = tmp_path / "ds"
    write_jsonl(
        root / "training" / "t.jsonl",
        [
            {"prompt": "What is 2+2?", "completion": "4", "id": 1},
            {"prompt": "Capital of France?", "completion": "Paris"},
            {"prompt": "What is 2+2?", "completion": "4", "id": 2},  # an exact copy (ids are not content)
            {"prompt": "capital of  france", "completion": "Paris."},  # a near copy of line 2
            {"prompt": "Unique one", "completion": "x"},
            {"prompt": "Seen in testing", "completion": "y"},
        ],
    )
    write_jsonl(root / "validation" / "v.jsonl", [{"prompt": "unique ONE!", "completion": "x"}, {"prompt": "fresh", "completion": "z"}])
    write_jsonl(root / "testing" / "t.jsonl", [{"prompt": "Seen in testing", "completion": "y"}, {"prompt": "new", "completion": "w"}])
    data = ingest_dataset(str(root), tmp_path / "out", seed=0)
    found = DataReport.model_validate_json(Path(data.report_files["json"]).read_text()).duplicates
    assert found.exact_copies == {"training": 1} and found.near_copies == {"training": 1}
    assert found.leaked == {"validation": 1, "testing": 1}
    assert [(g.kind, g.locs) for g in found.groups] == [
        ("exact", ["training/t.jsonl:1", "training/t.jsonl:3"]),
        ("near", ["training/t.jsonl:2", "training/t.jsonl:4"]),
    ]
    assert [(x.kind, x.split, x.locs, x.training) for x in found.leaks] == [
        ("near", "validation", ["validation/v.jsonl:1"], ["training/t.jsonl:5"]),
        ("exact", "testing", ["testing/t.jsonl:1"], ["training/t.jsonl:6"]),
    ]
    text = render_text(DataReport.model_validate_json(Path(data.report_files["json"]).read_text()))
    assert "duplicates: 1 exact copy in training" in text and "leakage: 1 example of testing also in training" in text


def test_duplicates_spilled_to_disk_are_the_same_as_in_memory(tmp_path: Path, monkeypatch):
    root = tmp_path / "ds"
    rows = ok_rows(300) + ok_rows(40, start=10) + [{"prompt": f"REPLY with the word ok item {i}!", "completion": "ok"} for i in range(20, 30)]
    write_jsonl(root / "training" / "t.jsonl", rows)
    write_jsonl(root / "validation" / "v.jsonl", ok_rows(5, start=2000))
    write_jsonl(root / "testing" / "t.jsonl", ok_rows(5, start=295) + ok_rows(5, start=1000))
    in_memory = ingest_dataset(str(root), tmp_path / "a", seed=0)
    monkeypatch.setattr(duplicates_module, "HASH_BATCH", 8)
    monkeypatch.setattr(duplicates_module, "BUFFER_EXAMPLES", 16)  # spill every 16 examples, to many partitions
    spilled = ingest_dataset(str(root), tmp_path / "b", seed=0)

    def duplicates(data):
        return json.loads(Path(data.report_files["json"]).read_text())["duplicates"]

    assert duplicates(spilled) == duplicates(in_memory)
    found = duplicates(in_memory)
    # Items 10-49 are repeated exactly; items 20-29 also once more in capitals and punctuation.
    assert found["exact_copies"] == {"training": 40} and found["near_copies"] == {"training": 10}
    assert found["leaked"] == {"testing": 5} and len(found["groups"]) == 20
    assert not (tmp_path / "b" / ".partial").exists()  # spill files are removed


def test_the_report_is_written_for_valid_and_refused_datasets(tmp_path: Path):
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "<b>odd name</b>.jsonl", ok_rows(10) + ["{broken"])
    with pytest.raises(DatasetError):
        ingest_dataset(str(root), tmp_path / "out", seed=0)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["ok"] is False and report["sha256"] is None and report["error_count"] == 1
    assert report["errors"] == ["training/<b>odd name</b>.jsonl:11: not valid JSON: Expecting property name enclosed in double quotes (column 2)"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<b>odd name</b>" not in html and "&lt;b&gt;odd name&lt;/b&gt;.jsonl:11" in html
    assert "Not measured: no config given" in html

    (root / "training" / "<b>odd name</b>.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ok_rows(10)))
    data = ingest_dataset(str(root), tmp_path / "out", seed=0)
    report = json.loads(Path(data.report_files["json"]).read_text())
    assert report["ok"] is True and report["sha256"] == data.sha256
    assert report["splits"]["validation"]["source"] == "held out from training/ (10%, seed 0)"
    assert report["splits"]["testing"]["examples"] == 1 and report["lengths"] is None
    assert "no testing/ folder: the task benchmark scores the validation split" in report["warnings"]
