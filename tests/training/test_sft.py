"""SFT on the tiny model: LoRA trains the adapter only, lora_merged and all_weights deliver full
weights; losses, progress and the stop reason are reported."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_CONFIG_URN, changed_by_adapter, ok_rows, write_jsonl
from core.catalog import get_config
from training.common import Hooks, TrainingError
from data.ingest import ingest_dataset
from training.sft import train_sft
from core.specs import Hyperparameters


def hyperparameters(**overrides) -> Hyperparameters:
    values = {"epochs": 2, "batch_size": 4, "learning_rate": 5e-3, "log_every_n_steps": 1, "lora": {"adapter_dim": 4, "alpha": 8}}
    return Hyperparameters.model_validate(values | overrides)


def test_lora_sft_trains_the_adapter_only_and_reports_losses(tmp_path: Path, settings, ok_dataset, tiny_model_dir):
    config = get_config(TINY_CONFIG_URN, settings)
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    base_before = load_file(tiny_model_dir / "model.safetensors")
    seen, progress = [], []
    hooks = Hooks(sink=lambda *m: seen.append(m), progress=progress.append)
    result = train_sft(str(tiny_model_dir), data, config, hyperparameters(), tmp_path / "job", settings, hooks)

    assert result.artifact == "adapter" and result.steps == 10  # 18 training rows / batch 4 -> 5 steps x 2 epochs
    assert len(result.val_loss) == 2 and result.epochs_completed == pytest.approx(2.0)
    assert result.train_loss[-1][1] < result.train_loss[0][1]
    assert result.stop_reason == "completed 2 epoch(s)" and result.best_val_loss == min(v for _, v in result.val_loss)
    assert result.tokens_per_second and result.trainable_parameters < result.total_parameters
    names = [name for name, _, _ in seen]
    assert names.count("train_loss") == 10 and names.count("val_loss") == 2
    assert {"learning_rate", "token_accuracy", "tokens_per_second"} <= set(names)
    assert progress[-1]["steps_completed"] == 10 and progress[-1]["percentage_done"] == 100.0 and progress[-1]["epochs_completed"] == 2

    adapter = Path(result.output_dir)
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "test/tiny-llama"
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"] and adapter_config["r"] == 4
    weights = load_file(adapter / "adapter_model.safetensors")
    assert all("lora_" in k for k in weights), "the adapter file holds adapter weights only"
    # B starts at zero, so a merged adapter changes nothing unless it learned; it must change only its targets.
    changed = changed_by_adapter(tiny_model_dir, adapter)
    assert {k.rsplit(".", 2)[-2] for k in changed} == {"q_proj", "v_proj"}
    assert all(torch.equal(base_before[k], v) for k, v in load_file(tiny_model_dir / "model.safetensors").items())


@pytest.mark.parametrize("finetuning_type", ["all_weights", "lora_merged"])
def test_full_weight_outputs(tmp_path: Path, settings, ok_dataset, tiny_model_dir, finetuning_type):
    config = get_config(TINY_CONFIG_URN, settings)
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    result = train_sft(str(tiny_model_dir), data, config, hyperparameters(epochs=1, finetuning_type=finetuning_type), tmp_path / "job", settings)
    assert result.artifact == "model"
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(Path(result.output_dir) / "model.safetensors")
    assert before.keys() == after.keys(), "the output is a plain model (no adapter keys)"
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if finetuning_type == "all_weights":
        assert result.trainable_parameters == result.total_parameters
        assert "model.embed_tokens.weight" in changed and any("mlp" in k for k in changed)
    else:  # only the adapted projections moved when the adapter was merged in
        assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    assert (Path(result.output_dir) / "tokenizer_config.json").exists()


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


def test_packing_puts_several_examples_in_a_row_without_cross_attention(tmp_path: Path, settings, ok_dataset, tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from data.ingest import read_examples
    from training.sft import _token_rows, sft_config

    config = get_config(TINY_CONFIG_URN, settings)
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = _token_rows(read_examples(data.files["training"]), config, tokenizer, "training")
    hp = hyperparameters(sequence_packing_enabled=True, batch_size=4)
    trainer = SFTTrainer(model=str(tiny_model_dir), args=sft_config(hp, config, tmp_path / "ckpt", len(rows)),
                         train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows[:2]), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    positions = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0]
    assert len(starts) > 1 and batch["input_ids"].shape[0] < 4, "examples were not packed into shared rows"

    # The second example in the row must see exactly what it would see alone.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    first, second = starts[0], starts[1]
    end = starts[2] if len(starts) > 2 else len(positions)
    with torch.no_grad():
        # As in training: no KV cache, no 2-D attention mask, position ids that restart per example.
        packed = model(input_ids=batch["input_ids"][:1], position_ids=batch["position_ids"][:1], use_cache=False).logits[0, second:end]
        alone = model(input_ids=batch["input_ids"][:1, second:end]).logits[0]
    assert torch.allclose(packed, alone, atol=1e-5)

    result = train_sft(str(tiny_model_dir), data, config, hyperparameters(epochs=1, sequence_packing_enabled=True), tmp_path / "job", settings)
    unpacked = train_sft(str(tiny_model_dir), data, config, hyperparameters(epochs=1), tmp_path / "job2", settings)
    assert result.steps < unpacked.steps  # fewer, fuller rows


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
