"""Logits at answer positions only: the same loss, LoRA gradients and logged metrics as TRL's head
on every position (fp32, packed rows and padded batches), fewer positions projected, and the same
training run through ``train_sft``."""

from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_CONFIG_URN
from core.catalog import get_config
from core.specs import Hyperparameters
from data.ingest import ingest_dataset
from training import answer_logits
from training.answer_logits import keep_answer_logits
from training.sft import sft_config, train_sft


def hyperparameters(**overrides) -> Hyperparameters:
    values = {"epochs": 1, "batch_size": 4, "learning_rate": 5e-3, "log_every_n_steps": 1, "lora": {"adapter_dim": 4, "alpha": 8}}
    return Hyperparameters.model_validate(values | overrides)


def token_rows(count: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Rows like ``training.sft._token_rows`` writes: prompts and answers of varied lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        prompt, answer = int(torch.randint(6, 30, (1,), generator=g)), int(torch.randint(2, 8, (1,), generator=g))
        ids = torch.randint(3, 1000, (prompt + answer,), generator=g).tolist()
        rows.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * answer})
    return rows


def fp32_trainer(tmp_path: Path, settings, tiny_model_dir: Path, hp: Hyperparameters, rows: list[dict]):
    """The trainer ``train_sft`` builds, in fp32, with random (non-zero) LoRA B so every adapter weight gets a gradient."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from training.common import lora_config

    config = get_config(TINY_CONFIG_URN, settings).model_copy(update={"training_precision": "fp32"})
    trainer = SFTTrainer(model=str(tiny_model_dir), args=sft_config(hp, config, tmp_path / "ckpt", len(rows)),
                         train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows[:2]),
                         processing_class=AutoTokenizer.from_pretrained(tiny_model_dir), peft_config=lora_config(hp, config))
    assert keep_answer_logits(trainer.model)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    return trainer


def loss_and_grads(trainer, batch: dict, enabled: bool, monkeypatch, num_items_in_batch=None):
    """Loss, LoRA gradients, the logged metrics and the rows the LM head projected, with the switch set."""
    monkeypatch.setattr(answer_logits, "ENABLED", enabled)
    model = trainer.model.train()
    model.zero_grad()
    projected = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: projected.append(args[0].shape[:-1].numel()))
    try:
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items_in_batch)
    finally:
        hook.remove()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    metrics = {k: trainer._metrics["train"][k][-1] for k in ("entropy", "mean_token_accuracy")}
    return loss.detach(), grads, metrics, projected


def reference_loss(trainer, batch: dict) -> torch.Tensor:
    """Cross-entropy over transformers' full logits (every position), mean over the answer tokens."""
    model = trainer.model
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def assert_same_paths(trainer, batch: dict, monkeypatch, num_items_in_batch=None) -> None:
    answers = int((batch["labels"][:, 1:] != -100).sum())
    loss, grads, metrics, projected = loss_and_grads(trainer, batch, True, monkeypatch, num_items_in_batch)
    full_loss, full_grads, full_metrics, full_projected = loss_and_grads(trainer, batch, False, monkeypatch, num_items_in_batch)

    # The head projected exactly the answer positions, where TRL's CPU head projects every position.
    assert projected == [answers] and full_projected == []  # TRL's head calls the weight directly, not the module
    assert 0 < answers < batch["input_ids"].numel() // 2
    assert torch.allclose(loss, full_loss, rtol=1e-5, atol=1e-6)
    if num_items_in_batch is None:
        assert torch.allclose(loss, reference_loss(trainer, batch), rtol=1e-5, atol=1e-6)
    assert grads.keys() == full_grads.keys() and any("lora_A" in n for n in grads) and any("lora_B" in n for n in grads)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"
        assert torch.allclose(grad, full_grads[name], rtol=1e-4, atol=1e-6), name
    assert metrics == pytest.approx(full_metrics, rel=1e-5)


def test_packed_row_gives_the_same_loss_gradients_and_metrics(tmp_path: Path, settings, tiny_model_dir, monkeypatch):
    rows = token_rows(8)
    trainer = fp32_trainer(tmp_path, settings, tiny_model_dir, hyperparameters(sequence_packing_enabled=True), rows)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and int((batch["position_ids"][0] == 0).sum()) > 1, "several examples in one row"
    assert_same_paths(trainer, batch, monkeypatch)


def test_padded_rows_give_the_same_loss_gradients_and_metrics(tmp_path: Path, settings, tiny_model_dir, monkeypatch):
    rows = token_rows(8, seed=3)
    trainer = fp32_trainer(tmp_path, settings, tiny_model_dir, hyperparameters(batch_size=2), rows)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 and bool((batch["attention_mask"] == 0).any()), "two rows, one padded"
    assert_same_paths(trainer, batch, monkeypatch)
    # Under gradient accumulation the loss is over the answer tokens of every micro-batch of the step.
    assert_same_paths(trainer, batch, monkeypatch, num_items_in_batch=torch.tensor(37))


def test_a_batch_without_answer_tokens_gives_a_zero_loss_that_backpropagates(tmp_path: Path, settings, tiny_model_dir, monkeypatch):
    rows = token_rows(4, seed=5)
    trainer = fp32_trainer(tmp_path, settings, tiny_model_dir, hyperparameters(batch_size=2), rows)
    batch = next(iter(trainer.get_train_dataloader()))
    batch["labels"] = torch.full_like(batch["labels"], -100)
    loss, grads, metrics, projected = loss_and_grads(trainer, batch, True, monkeypatch)
    assert loss.item() == 0.0 and projected == [0] and all(float(g.abs().sum()) == 0 for g in grads.values())
    assert metrics == {"entropy": 0.0, "mean_token_accuracy": 0.0}


def test_generation_and_plain_forwards_are_unchanged(tmp_path: Path, settings, tiny_model_dir):
    trainer = fp32_trainer(tmp_path, settings, tiny_model_dir, hyperparameters(), token_rows(4))
    model = trainer.model.eval()
    ids = torch.tensor([token_rows(1)[0]["input_ids"]])
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)
        assert model.generate(input_ids=ids, max_new_tokens=3, do_sample=False).shape == (1, ids.shape[1] + 3)


@pytest.mark.parametrize("packing", [False, True])
def test_training_reaches_the_same_losses(tmp_path: Path, settings, ok_dataset, tiny_model_dir, monkeypatch, packing):
    config = get_config(TINY_CONFIG_URN, settings).model_copy(update={"training_precision": "fp32"})
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    hp = hyperparameters(epochs=2, sequence_packing_enabled=packing)
    results = {}
    for enabled in (True, False):
        monkeypatch.setattr(answer_logits, "ENABLED", enabled)
        results[enabled] = train_sft(str(tiny_model_dir), data, config, hp, tmp_path / f"job-{enabled}", settings)
    kept, full = results[True], results[False]
    assert [s for s, _ in kept.train_loss] == [s for s, _ in full.train_loss] and len(kept.train_loss) >= 2
    assert [v for _, v in kept.train_loss] == pytest.approx([v for _, v in full.train_loss], rel=1e-4)
    assert [v for _, v in kept.val_loss] == pytest.approx([v for _, v in full.val_loss], rel=1e-4)
    assert min(v for _, v in kept.train_loss[1:]) < kept.train_loss[0][1]  # it learned
