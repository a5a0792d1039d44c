"""The forgetting check end to end: on a tiny base model that knows some facts, the gate rejects a
deliberately over-trained full-weight candidate for forgetting them, and promotes a LoRA candidate
trained on the same data; the promoted version then loads back from MLflow and generates."""

import json
import random
from pathlib import Path

import pytest

from core.settings import get_settings
from tests.conftest import write_jsonl
from tests.flows.test_customize import OUTPUT, spec_for

COLORS = ["red", "blue", "green", "yellow"]
FACTS = 48


def facts() -> list[tuple[str, int]]:
    rng = random.Random(7)
    return [(f"Question: What color is item {k}?\nAnswer:", rng.randrange(len(COLORS))) for k in range(FACTS)]


def knowledgeable_base(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model trained (plain next-token loss) until it knows every fact: a base with general
    knowledge to lose."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    texts = [f"{question} {COLORS[label]}" for question, label in facts()]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def knowledge(tmp_path, tiny_model_dir, monkeypatch):
    """A config over the knowledgeable base and a general benchmark of its facts (lm-eval YAML in an operator folder)."""
    import os

    base = knowledgeable_base(tiny_model_dir, tmp_path / "knowing-base")
    bench = tmp_path / "benchmarks"
    write_jsonl(bench / "colors.jsonl", [{"question": q, "choices": COLORS, "label": label} for q, label in facts()])
    (bench / "colors.yaml").write_text(
        "task: colors\ndataset_path: json\ndataset_kwargs: {data_files: {test: colors.jsonl}}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "target_delimiter: ' '\nmetric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]\nmetadata: {version: 1.0}\n"
    )
    configs = tmp_path / "configs"
    (configs / "knowing.yaml").parent.mkdir()
    (configs / "knowing.yaml").write_text(
        f"namespace: test\nname: knowing@v1\ntarget: {{name: test/knowing, model_uri: {base}}}\n"
        "max_seq_length: 128\nlora_target_modules: [q_proj, v_proj]\n"
        "training_options: [{training_type: sft, finetuning_type: lora, num_gpus: 0, micro_batch_size: 4},"
        " {training_type: sft, finetuning_type: all_weights, num_gpus: 0, micro_batch_size: 4}]\n"
    )
    # The tiny model tells its colours apart by small margins that bfloat16 rounding can flip: float32 here.
    monkeypatch.setenv("CUSTOMIZER_EVAL_PRECISION", "float32")
    monkeypatch.setenv("CUSTOMIZER_CONFIG_DIRS", json.dumps([*json.loads(os.environ["CUSTOMIZER_CONFIG_DIRS"]), str(configs)]))
    monkeypatch.setenv("CUSTOMIZER_BENCHMARK_DIRS", json.dumps([str(bench)]))  # the operator's benchmark, named by jobs
    return "colors"


def knowing_spec(dataset: Path, benchmark: str, hyperparameters: dict):
    # 48 facts can rule out drops of about 5 points at best (none lost), ~20 with five lost (what this LoRA
    # loses): the limit fits the data; the over-trained candidate loses most of them.
    spec = spec_for(dataset, hyperparameters, operator={"review_methods": []}, max_general_drop=25.0)
    spec.evaluation.general_benchmarks = [benchmark]
    spec.evaluation.limit = None
    return spec.model_copy(update={"config": "test/knowing@v1"})


def test_over_trained_full_sft_is_rejected_for_forgetting_while_lora_is_promoted(services, ok_dataset, knowledge, capsys):
    from deploy.registry import load_version
    from flows.customize import customize
    from core.catalog import get_config
    from data.prompts import render

    lora = customize(knowing_spec(ok_dataset, knowledge, {"epochs": 6, "lora": {"adapter_dim": 8, "alpha": 8}}))
    assert lora.baseline.general["colors"] >= 0.9, "the base model knows its facts"
    assert lora.decision.action == "promote", lora.decision.reasons
    assert lora.candidate.task["exact_match"] > lora.baseline.task["exact_match"]
    assert "FAILED" not in next(r for r in lora.decision.reasons if r.startswith("forgetting colors"))

    overtrained = customize(knowing_spec(ok_dataset, knowledge, {"finetuning_type": "all_weights", "learning_rate": 1e-2, "epochs": 12}))
    assert overtrained.candidate.task["exact_match"] > overtrained.baseline.task["exact_match"], "it did learn the task"
    assert overtrained.decision.action == "reject"
    reason = next(r for r in overtrained.decision.reasons if r.startswith("forgetting colors"))
    assert "FAILED: the drop is beyond the limit" in reason and "90% CI" in reason and "limit -25.0" in reason, reason
    assert overtrained.registered.aliases == ["candidate"]  # the LoRA version stays champion

    # The promoted version loads back from the registry and answers a test item as it did when scored.
    model, tokenizer, version = load_version(get_settings(), OUTPUT, "champion")
    assert version.version == lora.registered.version and "champion" in version.aliases
    config = get_config("test/knowing@v1", get_settings())
    prompt = render({"prompt": "Reply with the word ok. Item 101", "completion": "ok"}, config, tokenizer).prompt
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip().startswith("ok")
    from customizer.cli import main

    assert main(["generate", OUTPUT, "Reply with the word ok. Item 102", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip().startswith("ok")
    assert main(["generate", OUTPUT, "hi", "--version", "7"]) == 2
    assert "no version or alias '7'" in capsys.readouterr().err
