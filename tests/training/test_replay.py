"""Replay against forgetting (``data.replay``): self-rehearsal on the tiny model, a folder of
examples, the methods that cannot replay, and the report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer

import training.replay as replay_module
from core.settings import Settings
from tests.conftest import TINY_CONFIG_URN, ok_rows, write_jsonl
from training.base_model import ResolvedModel
from core.catalog import get_config
from data.ingest import DatasetError, ingest_dataset, read_examples
from data.report import DataReport, render_html, render_text
from data.prompts import render
from training.replay import ReplayError, add_replay, check_method, replay_tags
from core.specs import CustomizationSpec, Replay


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """20 training and 4 validation rows (no holdout: all 20 stay in training)."""
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "t.jsonl", ok_rows(20))
    write_jsonl(root / "validation" / "v.jsonl", ok_rows(4, start=50))
    return root


@pytest.fixture
def job(settings, tiny_model_dir, tmp_path):
    """What a job hands replay: its config, its base model and a data root of the test's own."""
    return {
        "config": get_config(TINY_CONFIG_URN, settings),
        "model": ResolvedModel(path=str(tiny_model_dir), digest="tiny-" + tmp_path.name, source="test"),
        "settings": Settings(data_dir=tmp_path / "root"),
    }


@pytest.fixture
def counting(monkeypatch):
    """Generation in float32 (so the test's own greedy decoding matches), counting prompts generated."""
    monkeypatch.setattr(replay_module, "generation_dtype", lambda: "float32")
    calls: list[int] = []

    def generator(model_dir, prompts, stop_ids, dtype):
        calls.append(len(prompts))
        return replay_module.generate_answers(model_dir, prompts, stop_ids, dtype)

    generator.calls = calls
    return generator


def _ingest(dataset: Path, out: Path, seed: int = 42):
    return ingest_dataset(str(dataset), out, seed=seed)


def _greedy(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """The model's greedy answer to one rendered prompt, alone (no batch, no padding), cut at EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    row = out[0, ids["input_ids"].shape[1]:].tolist()
    if tokenizer.eos_token_id in row:
        row = row[: row.index(tokenizer.eos_token_id)]
    return tokenizer.decode(row, skip_special_tokens=True).strip()


def test_self_rehearsal_adds_the_base_models_own_answers_to_training_only(dataset, tmp_path, job, counting, tiny_model_dir):
    data = _ingest(dataset, tmp_path / "out")
    validation_before = Path(data.files["validation"]).read_bytes()
    mixed = add_replay(data, tmp_path / "out", Replay(ratio=0.25), 42, generator=counting, **job)

    assert mixed.counts == {"training": 25, "validation": 4, "testing": 4} and mixed.sha256 == data.sha256
    assert Path(mixed.files["validation"]).read_bytes() == validation_before
    assert Path(mixed.files["testing"]).read_bytes() == validation_before
    examples = read_examples(mixed.files["training"])
    assert [e.loc for e in examples[:20]] == [f"training/t.jsonl:{i}" for i in range(1, 21)]  # the user's first
    replayed = examples[20:]
    assert len(replayed) == 5 and all(e.loc.startswith("replay/self:") for e in replayed)
    assert sum(counting.calls) == 5  # only the answers needed were generated

    # Written in the user's format, the answers are what the base model says to those prompts.
    prompts = replay_module.load_prompts()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for example in replayed:
        assert set(example.record) == {"prompt", "completion"}
        assert example.record["prompt"] == prompts[int(example.loc.rpartition(":")[2]) - 1]
        rendered = render(example.record, job["config"], tokenizer)
        assert example.record["completion"] == _greedy(tiny_model_dir, rendered.prompt, replay_module.MAX_NEW_TOKENS)

    # Counted in the report with its own digest (the dataset's stays the user's data).
    report = DataReport.model_validate_json(Path(mixed.report_files["json"]).read_text())
    assert report.sha256 == data.sha256 and report.splits["training"].examples == 20
    digest = hashlib.sha256(b"".join(json.dumps(e.record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for e in replayed))
    assert report.replay == mixed.replay and report.replay.examples == 5 and report.replay.sha256 == digest.hexdigest()
    assert report.replay.source == "self" and report.replay.generation.generated == 5 and report.replay.generation.cached == 0
    assert "Replay" in Path(mixed.report_files["html"]).read_text() and "replay: 5 examples from self-rehearsal" in render_text(report)
    assert replay_tags(mixed.replay) == {
        "customizer.replay.source": "self", "customizer.replay.examples": "5", "customizer.replay.sha256": digest.hexdigest(),
        "customizer.replay.prompts_sha256": report.replay.generation.prompts_sha256,
    }

    # A second job on the same base generates nothing: the answers are cached, the examples the same.
    counting.calls.clear()
    again = add_replay(_ingest(dataset, tmp_path / "again"), tmp_path / "again", Replay(ratio=0.25), 42, generator=counting, **job)
    assert counting.calls == [] and again.replay.sha256 == mixed.replay.sha256
    assert again.replay.generation.cached == 5 and again.replay.generation.generated == 0
    assert list((job["settings"].root / "cache" / "replay").glob("*/answers.jsonl"))

    # Another seed picks other prompts (generating only those not cached yet).
    other = add_replay(_ingest(dataset, tmp_path / "other"), tmp_path / "other", Replay(ratio=0.25), 7, generator=counting, **job)
    assert [e.loc for e in read_examples(other.files["training"])[20:]] != [e.loc for e in replayed]


def test_self_rehearsal_is_deterministic_for_a_seed(dataset, tmp_path, job, monkeypatch):
    monkeypatch.setattr(replay_module, "generation_dtype", lambda: "float32")
    fake = lambda model_dir, prompts, stop_ids, dtype: [(f"answer {len(p)}", True) for p in prompts]  # noqa: E731
    runs = []
    for name in ("a", "b"):
        settings = Settings(data_dir=tmp_path / f"root-{name}")  # no shared cache
        data = add_replay(_ingest(dataset, tmp_path / name), tmp_path / name, Replay(ratio=0.5), 3, generator=fake, **(job | {"settings": settings}))
        runs.append([(e.loc, e.record) for e in read_examples(data.files["training"])[20:]])
    assert len(runs[0]) == 10 and runs[0] == runs[1]


def test_chat_data_gets_chat_replay_records(tmp_path, job, monkeypatch):
    monkeypatch.setattr(replay_module, "generation_dtype", lambda: "float32")
    root = tmp_path / "chat"
    chat = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]} for r in ok_rows(10)]
    write_jsonl(root / "training" / "t.jsonl", chat)
    write_jsonl(root / "validation" / "v.jsonl", chat[:2])
    fake = lambda model_dir, prompts, stop_ids, dtype: [("Paris.", True) for _ in prompts]  # noqa: E731
    data = add_replay(_ingest(root, tmp_path / "out"), tmp_path / "out", Replay(ratio=0.3), 0, generator=fake, **job)
    replayed = read_examples(data.files["training"])[10:]
    assert len(replayed) == 3 and data.replay.format == "chat"
    assert all([m["role"] for m in e.record["messages"]] == ["user", "assistant"] and e.record["messages"][1]["content"] == "Paris." for e in replayed)


def _folder_rows(count: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"General question {i}?"}, {"role": "assistant", "content": f"General answer {i}."}]}
            for i in range(count)]


def test_a_folder_source_mixes_its_examples_in_the_users_format(dataset, tmp_path, job):
    general = tmp_path / "general"
    write_jsonl(general / "training" / "a.jsonl", _folder_rows(15))
    write_jsonl(general / "training" / "b.jsonl", [{"prompt": f"Other question {i}?", "completion": f"Other answer {i}."} for i in range(15)])
    data = add_replay(_ingest(dataset, tmp_path / "out"), tmp_path / "out", Replay(ratio=0.5, source=str(general)), 42, **job)
    replayed = read_examples(data.files["training"])[20:]
    assert data.counts["training"] == 30 and len(replayed) == 10 and data.replay.source == str(general)
    assert data.replay.generation is None and data.replay.sha256
    folder = {f"General question {i}?": f"General answer {i}." for i in range(15)} | {f"Other question {i}?": f"Other answer {i}." for i in range(15)}
    for example in replayed:  # chat records become prompt/completion, like the user's
        assert folder[example.record["prompt"]] == example.record["completion"]
        assert example.loc.startswith(("replay/training/a.jsonl:", "replay/training/b.jsonl:"))
    again = add_replay(_ingest(dataset, tmp_path / "again"), tmp_path / "again", Replay(ratio=0.5, source=str(general)), 42, **job)
    assert again.replay.sha256 == data.replay.sha256

    # A folder of JSONL files without training/ works too; fewer examples than asked is a warning.
    flat = tmp_path / "flat"
    write_jsonl(flat / "g.jsonl", _folder_rows(3))
    data = add_replay(_ingest(dataset, tmp_path / "flat-out"), tmp_path / "flat-out", Replay(ratio=0.5, source=str(flat)), 42, **job)
    assert data.replay.examples == 3 and data.replay.requested == 10 and "only 3 available" in data.replay.warnings[0]


def test_a_bad_line_in_a_replay_folder_is_reported_with_file_and_line(dataset, tmp_path, job):
    general = tmp_path / "general"
    rows = _folder_rows(4)
    rows[1] = '{"messages": [{"role": "robot", "content": "x"}]}'
    rows[2] = "not json"
    write_jsonl(general / "training" / "a.jsonl", rows)
    write_jsonl(general / "training" / "b.jsonl", [{"prompt": "q", "chosen_response": "a", "rejected_response": "b"}])
    with pytest.raises(DatasetError) as info:
        add_replay(_ingest(dataset, tmp_path / "out"), tmp_path / "out", Replay(ratio=0.5, source=str(general)), 42, **job)
    errors = [str(e) for e in info.value.errors]
    assert len(errors) == 3 and "data.replay.source" in str(info.value)
    assert errors[0].startswith("training/a.jsonl:2: ") and "robot" in errors[0]
    assert errors[1].startswith("training/a.jsonl:3: not valid JSON")
    assert errors[2].startswith("training/b.jsonl:1: ") and "preference record" in errors[2]


def test_a_multi_turn_chat_folder_cannot_join_completion_data(dataset, tmp_path, job):
    general = tmp_path / "general"
    write_jsonl(general / "g.jsonl", [{"messages": [{"role": "system", "content": "Be brief."}, *_folder_rows(1)[0]["messages"]]}])
    with pytest.raises(DatasetError, match=r"general/g.jsonl:1: a chat record with a system message"):
        add_replay(_ingest(dataset, tmp_path / "out"), tmp_path / "out", Replay(ratio=0.5, source=str(general)), 42, **job)


@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_preference_and_reward_methods_cannot_replay(method, dataset, tmp_path, job):
    with pytest.raises(ReplayError, match=rf"`data.replay` \(ratio 0.1\).*training_type {method}"):
        check_method(method, Replay(ratio=0.1))
    with pytest.raises(ReplayError, match=r"`data.replay`"):
        add_replay(_ingest(dataset, tmp_path / "out"), tmp_path / "out", Replay(ratio=0.1), 42, method=method, **job)
    check_method(method, Replay())  # no replay: nothing to refuse
    # The spec itself refuses it, so the REST API, the CLI and Prefect refuse the job when it is created.
    with pytest.raises(ValidationError, match=rf"`data.replay` \(ratio 0.1\).*training_type {method}"):
        CustomizationSpec(config=TINY_CONFIG_URN, dataset="/d", hyperparameters={"training_type": method}, data={"replay": {"ratio": 0.1}})


def test_no_replay_changes_nothing(dataset, tmp_path, job):
    data = _ingest(dataset, tmp_path / "out")
    assert add_replay(data, tmp_path / "out", Replay(), 42, **job) is data
    assert replay_tags(None) == {}
    report = DataReport.model_validate_json(Path(data.report_files["json"]).read_text())
    assert report.replay is None and "Replay" not in render_html(report)
