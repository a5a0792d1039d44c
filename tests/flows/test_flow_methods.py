"""DPO, GRPO and merged LoRA, each end to end through the customize flow: ingest of their record
format, baseline and candidate scored on the method's own task metric, registry and publication."""

import json

import pytest

from core.settings import get_settings
from core import tracking
from deploy.registry import registered_name
from tests.conftest import write_jsonl
from tests.flows.test_customize import OUTPUT, spec_for
from tests.training.test_dpo_grpo import prompts


def version_tags(result) -> dict[str, str]:
    return tracking.client(get_settings()).get_model_version(registered_name(OUTPUT), result.registered.version).tags


def answer_the_base_prefers_less(tiny_model_dir, settings) -> tuple[str, str]:
    """Of "yes" and "no", the answer the tiny base model finds less likely (so DPO has something to learn)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.conftest import TINY_CONFIG_URN
    from core.catalog import get_config
    from data.preference import preference_row

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    row = preference_row({"prompt": "Reply with the word ok. Item 100", "chosen_response": "yes", "rejected_response": "no"},
                         get_config(TINY_CONFIG_URN, settings), tokenizer)

    def loglik(answer: str) -> float:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        full = tokenizer(row["prompt"] + answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = model(torch.tensor([full])).logits.log_softmax(-1)[0]
        return sum(logprobs[i - 1, full[i]].item() for i in range(len(prompt), len(full)))

    return ("yes", "no") if loglik(row["chosen"]) < loglik(row["rejected"]) else ("no", "yes")


def test_dpo_through_the_flow_scores_preference_accuracy(services, tmp_path, tiny_model_dir, settings):
    from flows.customize import customize

    chosen, rejected = answer_the_base_prefers_less(tiny_model_dir, settings)
    rows = [{"prompt": f"Reply with the word ok. Item {i}", "chosen_response": chosen, "rejected_response": rejected} for i in range(128)]
    root = tmp_path / "pairs"
    write_jsonl(root / "training" / "train.jsonl", rows[:20])
    write_jsonl(root / "testing" / "test.jsonl", rows[100:108])
    spec = spec_for(root, {"training_type": "dpo", "epochs": 2, "learning_rate": 5e-3}, operator={"review_methods": []})
    result = customize(spec)
    assert result.baseline.task_metric == "preference_accuracy" and result.baseline.task["preference_accuracy"] < 0.5
    assert result.candidate.task["preference_accuracy"] > result.baseline.task["preference_accuracy"]
    assert result.decision.action == "promote", result.decision.reasons
    tags = version_tags(result)
    assert tags["customizer.training_type"] == "dpo" and tags["customizer.artifact"] == "adapter"
    assert "adapter_model.safetensors" in services.objects(f"{OUTPUT}/{result.registered.version}/")


def test_grpo_through_the_flow_scores_its_rewards(services, tmp_path):
    from flows.customize import customize

    root = tmp_path / "prompts"
    write_jsonl(root / "training" / "train.jsonl", prompts(12))
    write_jsonl(root / "testing" / "test.jsonl", prompts(4))
    grpo = {"rewards": ["exact_answer"], "num_generations_per_prompt": 4, "num_prompts_per_step": 2, "max_new_tokens": 4}
    spec = spec_for(root, {"training_type": "grpo", "epochs": 1, "learning_rate": 1e-2, "grpo": grpo}, operator={"review_methods": []})
    result = customize(spec)
    assert result.baseline.task_metric == "exact_answer"
    assert set(result.candidate.task) == {"exact_answer"} and 0.0 <= result.candidate.task["exact_answer"] <= 1.0
    assert result.decision.reasons[0].startswith("task exact_answer:")
    tags = version_tags(result)
    assert tags["customizer.training_type"] == "grpo" and json.loads(tags["customizer.hyperparameters"])["grpo"]["rewards"] == ["exact_answer"]
    assert services.objects(f"{OUTPUT}/{result.registered.version}/"), "the candidate was published"


@pytest.mark.parametrize("finetuning_type", ["lora_merged"])
def test_merged_lora_through_the_flow_publishes_full_weights(services, ok_dataset, finetuning_type):
    from flows.customize import customize

    result = customize(spec_for(ok_dataset, {"finetuning_type": finetuning_type}))
    assert result.decision.action == "promote", result.decision.reasons
    assert result.candidate.task["exact_match"] > result.baseline.task["exact_match"]
    assert version_tags(result)["customizer.artifact"] == "model"
    objects = services.objects(f"{OUTPUT}/{result.registered.version}/")
    assert "model.safetensors" in objects and not any(name.startswith("adapter_") for name in objects)
