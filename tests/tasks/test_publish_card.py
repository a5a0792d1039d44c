"""Publication of a real LoRA adapter on the tiny model through ``publish_adapter.fn``: the folder in
the store names its base by the Hub id (or, for a locally built base, its folder), carries the
model card in its manifest, keeps a signed digest of what it holds, and loads with
``AutoPeftModelForCausalLM.from_pretrained`` on the published folder itself."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from core import tracking
from deploy.store import StoreError, fetch, verify_published
from deploy.trust import files_digest, trusted_champion
from evaluation.gate import Decision
from tasks.deploy import promote, publish_adapter, register
from tests.tasks.conftest import make_job, stage
from tests.tasks.test_deploy import DATA
from training.base_model import ResolvedModel
from training.common import TrainResult, name_base_model

PROMOTE = Decision(action="promote", reasons=["task em: passed"])


def lora_adapter(base_dir: Path, folder: Path) -> Path:
    """A LoRA adapter on the tiny model as PEFT saves it (with PEFT's own README), with non-zero B weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)
    model.save_pretrained(str(folder))
    return folder


def publish_job(settings, tiny_model_dir: Path, tmp_path: Path, hub_id: str | None = None):
    """Register and publish an adapter of the shipped tiny config (``hub_id``: set on its target)."""
    job = make_job(settings, output_model=f"team/card-{uuid.uuid4().hex[:8]}")
    if hub_id is not None:
        target = job.config.target.model_copy(update={"hub_id": hub_id})
        job = job.model_copy(update={"config": job.config.model_copy(update={"target": target})})
    folder = lora_adapter(tiny_model_dir, tmp_path / "adapter")
    name_base_model(folder, job.config)  # what training does once the adapter is saved
    trained = TrainResult(artifact="adapter", output_dir=str(folder), steps=2, epochs_completed=1.0, train_loss=[(1, 2.0)],
                          val_loss=[], best_val_loss=None, best_step=None, stop_reason="completed", train_seconds=1.0,
                          tokens_per_second=None, trainable_parameters=1, total_parameters=2)
    base = ResolvedModel(path=str(tiny_model_dir), digest="b" * 64, source="builtin://tiny-llama")
    version = register.fn(job, base, DATA, trained, stage(0.2, [1.0, 0.0]), stage(0.6, [1.0, 0.0]), PROMOTE, [])
    published = publish_adapter.fn(job, base, DATA, trained, version)
    return job, version, published, settings.root / "store" / job.spec.output_model / version.version


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_the_published_folder_names_the_hub_id_and_carries_a_verified_model_card(job_settings, tiny_model_dir, tmp_path):
    job, version, published, stored = publish_job(job_settings, tiny_model_dir, tmp_path, hub_id="HuggingFaceTB/SmolLM2-135M-Instruct")

    assert json.loads((stored / "adapter_config.json").read_text())["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # The catalog name stays the manifest's base model (what serving matches); the Hub id is in its lineage.
    manifest = verify_published(job.spec.output_model, version.version, job_settings)
    assert manifest.base_model == "customizer/tiny-llama"
    assert manifest.lineage["base_model_hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "README.md" in manifest.files

    card = (stored / "README.md").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["library_name"] == "peft"
    assert {"lora", "sft"} <= set(meta["tags"])
    for fact in (job.job_id, DATA.sha256, job.spec.config, job.run_id, f"`{version.registered_model}` version `{version.version}`",
                 "Gate decision: `promote`", "Task score (em): 0.6"):
        assert fact in card, fact

    # The card is verified like every file: an edited card no longer matches the manifest.
    (stored / "README.md").write_text(card.replace("promote", "reject"))
    with pytest.raises(StoreError, match="does not match its manifest"):
        fetch(job.spec.output_model, version.version, tmp_path / "fetched", job_settings)


def test_the_signed_digest_covers_the_card_and_the_champion_stays_trusted(job_settings, tiny_model_dir, tmp_path):
    job, version, published, _ = publish_job(job_settings, tiny_model_dir, tmp_path)
    promote.fn(job, version, published, PROMOTE)
    champion = trusted_champion(job_settings, job.spec.output_model)
    assert champion.tags["customizer.artifact.sha256"] == files_digest({n: e.sha256 for n, e in published.manifest.files.items()})

    # Publishing again (a retried task) writes nothing and signs nothing new.
    tags_before = tracking.client(job_settings).get_model_version(version.registered_model, version.version).tags
    trained = TrainResult(artifact="adapter", output_dir=str(tmp_path / "adapter"), steps=2, epochs_completed=1.0, train_loss=[(1, 2.0)],
                          val_loss=[], best_val_loss=None, best_step=None, stop_reason="completed", train_seconds=1.0,
                          tokens_per_second=None, trainable_parameters=1, total_parameters=2)
    base = ResolvedModel(path=str(tiny_model_dir), digest="b" * 64, source="builtin://tiny-llama")
    again = publish_adapter.fn(job, base, DATA, trained, version)
    assert again.uploaded == [] and again.manifest == published.manifest
    tags_after = tracking.client(job_settings).get_model_version(version.registered_model, version.version).tags
    assert tags_after["customizer.decision.signature"] == tags_before["customizer.decision.signature"]


def test_auto_peft_loads_the_published_folder_of_a_locally_built_base(job_settings, tiny_model_dir, tmp_path):
    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    _, _, _, stored = publish_job(job_settings, tiny_model_dir, tmp_path)
    # The shipped tiny config's base is built on this machine: the adapter names the folder it loads from.
    assert json.loads((stored / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)

    model = AutoPeftModelForCausalLM.from_pretrained(str(stored))
    assert isinstance(model, PeftModel)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        adapted = model(ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))(ids).logits
    assert not torch.allclose(adapted, base)  # the adapter's weights are applied, not just the base
