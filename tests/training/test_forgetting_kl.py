"""forgetting_kl watched while training: KL(base || model) on fixed general prompts at every
validation, streamed to the metric sink; a policy's max_forgetting_kl stops training and keeps the
best checkpoint under it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_CONFIG_URN, canonical_dataset, ok_rows
from core.catalog import get_config
from training.common import Hooks, TrainingError
from training.forgetting import PROMPT_TOKENS, PROMPTS, ForgettingProbe, general_prompts
from training.sft import train_sft
from core.specs import Hyperparameters


def hyperparameters(**overrides) -> Hyperparameters:
    # A high LoRA learning rate, a validation every 2 steps: 18 rows / batch 4 -> 5 steps an epoch.
    values = {"epochs": 2, "batch_size": 4, "learning_rate": 5e-2, "log_every_n_steps": 1, "val_check_interval": 2,
              "lora": {"adapter_dim": 4, "alpha": 8}}
    return Hyperparameters.model_validate(values | overrides)


def dataset(folder: Path):
    return canonical_dataset(folder, ok_rows(18), ok_rows(2, start=100))


def train(folder: Path, tiny_model_dir: Path, hp: Hyperparameters, limit: float | None = None):
    from core.settings import get_settings

    settings = get_settings()
    seen, progress = [], []
    hooks = Hooks(sink=lambda *m: seen.append(m), progress=progress.append, max_forgetting_kl=limit)
    result = train_sft(str(tiny_model_dir), dataset(folder / "data"), get_config(TINY_CONFIG_URN, settings), hp, folder / "job", settings, hooks)
    return result, seen, progress


def reference_kl(base, model, prompts: list[list[int]]) -> float:
    """KL(base || model) per token, from two models in float32 (no cache)."""
    total, positions = 0.0, 0
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            p = torch.log_softmax(base(input_ids=x).logits[0].float(), -1)
            q = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
            total += float(torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum"))
            positions += len(ids)
    return total / positions


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_config_dir, tiny_model_dir):
    """One LoRA run with a high learning rate and no limit: validations at steps 2, 4, 6, 8, 10."""
    return train(tmp_path_factory.mktemp("lora-run"), tiny_model_dir, hyperparameters())


def test_general_prompts_are_fixed_text_from_the_standard_library(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = general_prompts(tokenizer)
    assert len(prompts) == PROMPTS and all(2 <= len(p) <= PROMPT_TOKENS for p in prompts)
    assert prompts == general_prompts(tokenizer) and len({tuple(p) for p in prompts}) == PROMPTS
    assert "Assignment statements are used to" in tokenizer.decode(prompts[0])


def test_lora_forgetting_is_zero_at_initialization(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    probe = ForgettingProbe(tokenizer)
    assert probe.measure(model) == pytest.approx(0.0, abs=1e-7)  # B = 0: the adapter changes nothing yet
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    moved = probe.measure(model)  # the base from the adapter switched off, no second model
    assert moved > 1e-3
    assert moved == pytest.approx(reference_kl(AutoModelForCausalLM.from_pretrained(tiny_model_dir), model.eval(), probe.prompts), rel=1e-4)
    model.train()
    probe.measure(model)
    assert model.training, "the model's mode is restored after measuring"


def test_lora_training_streams_forgetting_kl_at_every_validation_and_it_grows(lora_run):
    result, seen, _ = lora_run
    val_steps = [step for name, _, step in seen if name == "val_loss"]
    forgetting = [(step, value) for name, value, step in seen if name == "forgetting_kl"]
    assert val_steps == [2, 4, 6, 8, 10] and [step for step, _ in forgetting] == val_steps
    assert result.forgetting_kl == forgetting
    values = [value for _, value in forgetting]
    assert 0 < values[0] < 0.2, "a couple of steps away from B = 0: close to the base"
    assert values[-1] > 5 * values[0] and values[1] > values[0], values
    assert result.stop_reason == "completed 2 epoch(s)"


def test_all_weights_cached_base_gives_the_value_of_a_frozen_copy(tmp_path: Path, tiny_config_dir, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    probe = ForgettingProbe(AutoTokenizer.from_pretrained(tiny_model_dir))
    probe.cache_base(base)
    assert probe.measure(base) == pytest.approx(0.0, abs=1e-4)  # float16 cache, re-normalized: ~0 for the base itself

    result, seen, _ = train(tmp_path, tiny_model_dir, hyperparameters(epochs=1, learning_rate=5e-3, finetuning_type="all_weights"))
    assert result.artifact == "model" and [step for step, _ in result.forgetting_kl] == [2, 4, 5]  # and at the end
    assert [(s, v) for n, v, s in seen if n == "forgetting_kl"] == result.forgetting_kl
    # The delivered model is the best checkpoint's: its forgetting_kl from a frozen copy of the base.
    delivered = AutoModelForCausalLM.from_pretrained(result.output_dir).eval()
    logged = dict(result.forgetting_kl)[result.best_step]
    assert logged > 1e-3
    assert reference_kl(base, delivered, probe.prompts) == pytest.approx(logged, rel=2e-3, abs=1e-5)


def test_max_forgetting_kl_stops_training_and_delivers_the_checkpoint_under_it(tmp_path: Path, lora_run, tiny_model_dir):
    unlimited, _, _ = lora_run
    (first_step, first), (second_step, second) = unlimited.forgetting_kl[:2]
    assert second > first
    limit = round((first + second) / 2, 4)
    val = dict(unlimited.val_loss)
    assert val[second_step] < val[first_step], "the rejected validation has the better val_loss: it must still not be kept"

    result, seen, progress = train(tmp_path, tiny_model_dir, hyperparameters(), limit=limit)
    assert result.steps == second_step < 10
    assert result.stop_reason == (
        f"forgetting: forgetting_kl {second:.3g} at step {second_step} exceeded the policy's max_forgetting_kl {limit:g}; "
        f"kept checkpoint-{first_step} (forgetting_kl {first:.3g})"
    )
    assert result.forgetting_kl == [(first_step, pytest.approx(first)), (second_step, pytest.approx(second))]
    assert result.best_step == first_step and result.best_val_loss == pytest.approx(val[first_step])
    assert progress[-1]["best_val_loss"] == pytest.approx(val[first_step])
    assert [s for n, _, s in seen if n == "forgetting_kl"] == [first_step, second_step]  # streamed, the rejected one too

    checkpoints = tmp_path / "job" / "checkpoints"
    assert not (checkpoints / f"checkpoint-{second_step}").exists(), "the validation over the limit is not saved"
    kept = load_file(checkpoints / f"checkpoint-{first_step}" / "adapter_model.safetensors")
    delivered = load_file(Path(result.output_dir) / "adapter_model.safetensors")
    assert kept.keys() == delivered.keys() and all(torch.equal(kept[k], delivered[k]) for k in kept)
    state = json.loads((checkpoints / f"checkpoint-{first_step}" / "trainer_state.json").read_text())
    assert [h["forgetting_kl"] for h in state["log_history"] if "eval_loss" in h] == [pytest.approx(first)]


def test_a_first_validation_over_the_limit_fails_the_training(tmp_path: Path, lora_run, tiny_model_dir):
    unlimited, _, _ = lora_run
    first_step, first = unlimited.forgetting_kl[0]
    with pytest.raises(TrainingError, match=rf"max_forgetting_kl {first / 2:g} at the first validation, so there is no checkpoint under the threshold"):
        train(tmp_path, tiny_model_dir, hyperparameters(), limit=first / 2)
    assert not (tmp_path / "job" / "adapter").exists()
    assert not list((tmp_path / "job" / "checkpoints").glob("checkpoint-*"))


def test_the_request_carries_the_limit_to_training_in_process_and_under_torchrun(tmp_path: Path, monkeypatch, settings):
    from training import launch
    from training.launch import TrainingRequest

    request = TrainingRequest(
        base_model_dir="unused", dataset=dataset(tmp_path), config=get_config(TINY_CONFIG_URN, settings),
        hyperparameters=Hyperparameters(), work_dir=str(tmp_path / "job"), max_forgetting_kl=0.25,
    )
    assert TrainingRequest.model_validate_json(request.model_dump_json()).max_forgetting_kl == 0.25  # the torchrun path
    received = []
    monkeypatch.setattr(launch, "methods", lambda: {"sft": lambda *args: received.append(args[-1]) or "trained"})
    sink = lambda *m: None  # noqa: E731
    assert launch.run(request, settings, Hooks(sink=sink)) == "trained"
    assert received[0].max_forgetting_kl == 0.25 and received[0].sink is sink
    launch.run(request.model_copy(update={"max_forgetting_kl": None}), settings)
    assert received[1].max_forgetting_kl is None


def test_an_evaluation_over_the_limit_can_never_become_the_best_checkpoint():
    """The trainer's order: on_evaluate gets the metrics dict that _determine_best_metric reads next."""
    from types import SimpleNamespace

    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

    from training.forgetting import ForgettingCallback

    class Probe:
        def measure(self, model):
            return 0.5

    args = TrainingArguments(output_dir="unused", metric_for_best_model="eval_loss", greater_is_better=False, use_cpu=True, report_to="none")
    state, control = TrainerState(global_step=4, best_metric=2.0, best_global_step=2), TrainerControl(should_save=True)
    metrics = {"eval_loss": 0.1}  # far better than the best so far
    callback = ForgettingCallback(Probe(), max_kl=0.3)
    control = callback.on_evaluate(args, state, control, metrics=metrics, model=object())
    trainer = SimpleNamespace(args=args, state=state)
    assert not Trainer._determine_best_metric(trainer, metrics=metrics, trial=None)
    assert (state.best_metric, state.best_global_step) == (2.0, 2)
    assert not control.should_save and control.should_training_stop and callback.exceeded == (4, 0.5)

    under = ForgettingCallback(Probe(), max_kl=0.6)
    metrics, control = {"eval_loss": 0.1}, TrainerControl(should_save=True)
    under.on_evaluate(args, state, control, metrics=metrics, model=object())
    assert Trainer._determine_best_metric(trainer, metrics=metrics, trial=None) and state.best_global_step == 4
    assert control.should_save and not control.should_training_stop and under.exceeded is None


def test_dpo_lora_streams_forgetting_kl_at_its_validations(tmp_path: Path, settings, tiny_model_dir):
    from training.dpo import train_dpo

    pairs = [{"prompt": f"Reply with the word ok. Item {i}", "chosen_response": "ok", "rejected_response": "no way"} for i in range(20)]
    data = canonical_dataset(tmp_path / "data", pairs[:16], pairs[16:])
    hp = Hyperparameters.model_validate({"training_type": "dpo", "batch_size": 4, "learning_rate": 5e-2, "val_check_interval": 2, "log_every_n_steps": 1})
    seen = []
    result = train_dpo(str(tiny_model_dir), data, get_config(TINY_CONFIG_URN, settings), hp, tmp_path / "job", settings, Hooks(sink=lambda *m: seen.append(m)))
    assert [s for n, _, s in seen if n == "forgetting_kl"] == [s for s, _ in result.val_loss] == [2, 4]
    assert result.forgetting_kl[-1][1] > 0
