"""LoRA SFT on the tiny model: the adapter learns, the base does not change, losses are reported."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_CONFIG_URN, ok_rows, write_jsonl
from training.catalog import get_config
from training.data import ingest_dataset
from training.sft import TrainingError, train_sft
from training.specs import Hyperparameters


def test_lora_sft_trains_the_adapter_only_and_reports_losses(tmp_path: Path, settings, ok_dataset, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    hp = Hyperparameters(epochs=2, batch_size=4, learning_rate=5e-3, log_every_n_steps=1, lora={"adapter_dim": 4, "alpha": 8})
    base_before = load_file(tiny_model_dir / "model.safetensors")
    seen = []
    result = train_sft(str(tiny_model_dir), data, config, hp, tmp_path / "job", settings, sink=lambda *m: seen.append(m))

    assert result.steps == 10  # 18 training rows / batch 4 -> 5 steps x 2 epochs
    assert len(result.val_loss) == 2 and result.epochs_completed == pytest.approx(2.0)
    assert result.train_loss[-1][1] < result.train_loss[0][1]
    names = [name for name, _, _ in seen]
    assert names.count("train_loss") == 10 and names.count("val_loss") == 2

    adapter = Path(result.adapter_dir)
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "test/tiny-llama"
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"] and adapter_config["r"] == 4
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: non-zero means it learned
    assert all(torch.equal(base_before[k], v) for k, v in load_file(tiny_model_dir / "model.safetensors").items())

    # A re-run of the same job resumes from its last epoch checkpoint instead of starting over.
    again = train_sft(str(tiny_model_dir), data, config, hp, tmp_path / "job", settings)
    assert again.resumed_from and again.resumed_from.endswith("checkpoint-10")


def test_examples_longer_than_max_seq_length_are_refused_with_their_location(tmp_path: Path, settings, tiny_model_dir):
    root = tmp_path / "long"
    write_jsonl(root / "training" / "t.jsonl", ok_rows(9) + [{"prompt": "word " * 300, "completion": "ok"}])
    write_jsonl(root / "validation" / "v.jsonl", ok_rows(2))
    data = ingest_dataset(str(root), tmp_path / "data", seed=0)
    with pytest.raises(TrainingError, match=r"1 training example\(s\) are longer than .* 128 .*training/t.jsonl:10"):
        train_sft(str(tiny_model_dir), data, get_config(TINY_CONFIG_URN, settings), Hyperparameters(), tmp_path / "job", settings)


def test_batch_size_must_fit_the_micro_batch(tmp_path: Path, settings, ok_dataset, tiny_model_dir):
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    with pytest.raises(TrainingError, match="`batch_size` 6 is not a multiple"):
        train_sft(str(tiny_model_dir), data, get_config(TINY_CONFIG_URN, settings), Hyperparameters(batch_size=6), tmp_path / "job", settings)


def test_a_chat_dataset_ingests_and_trains(tmp_path: Path, settings, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    root = tmp_path / "ds"
    conversations = [
        {"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Reply with the word ok. Item {i}"},
            {"role": "assistant", "content": "ok"},
        ]}
        for i in range(10)
    ]
    write_jsonl(root / "training" / "chat.jsonl", conversations)
    data = ingest_dataset(str(root), tmp_path / "data", seed=0)
    assert data.formats["training"] == "chat" and data.counts == {"training": 9, "validation": 1, "testing": 1}
    hp = Hyperparameters(epochs=1, batch_size=3, learning_rate=5e-3, log_every_n_steps=1, lora={"adapter_dim": 4, "alpha": 8})
    result = train_sft(str(tiny_model_dir), data, config, hp, tmp_path / "job", settings)
    assert result.steps == 3 and len(result.val_loss) == 1
