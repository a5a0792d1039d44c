import pytest

from core.settings import Settings
from core.catalog import get_config
from training.guidance import BudgetExceeded, check_budget, estimate, guidance
from core.specs import Hyperparameters

LLAMA = "meta/llama-3.2-1b-instruct@v1.0.0+A100"


def messages(hp: dict, examples: int, urn: str = LLAMA) -> list[str]:
    config = get_config(urn, Settings(config_dirs=[]))
    return [w.message for w in guidance(Hyperparameters.model_validate(hp), config, examples)]


def test_each_risky_setting_gets_a_warning_and_safe_ones_none():
    assert messages({}, 5000) == []
    assert messages({"learning_rate": 1e-3}, 5000) == ["learning_rate 0.001 is high for LoRA"]
    assert messages({"lora": {"adapter_dim": 32}}, 999) == ["lora.adapter_dim 32 on 999 examples"]
    assert messages({"lora": {"adapter_dim": 32}}, 1000) == []
    assert messages({"finetuning_type": "all_weights", "learning_rate": 1e-5}, 1999) == ["full-weight training on 1999 examples"]
    assert messages({"finetuning_type": "all_weights", "learning_rate": 1e-3}, 5000) == []  # the LoRA rule does not apply


def test_preference_and_rl_methods_warn_on_a_base_without_sft(tmp_path):
    (tmp_path / "raw.yaml").write_text(
        "namespace: acme\nname: raw@v1\ntarget: {name: acme/raw, model_uri: /m, instruction_tuned: false}\n"
        "max_seq_length: 64\ntraining_options: [{training_type: dpo, finetuning_type: lora}, {training_type: sft, finetuning_type: lora}]\n"
    )
    config = get_config("acme/raw@v1", Settings(config_dirs=[tmp_path]))
    dpo = guidance(Hyperparameters(training_type="dpo"), config, 5000)
    assert [w.message for w in dpo] == ["dpo on a base without supervised tuning"] and "had no SFT" in dpo[0].explanation
    assert guidance(Hyperparameters(training_type="sft"), config, 5000) == []


def test_estimate_counts_lora_at_four_n_and_full_weights_at_six_n_on_the_configs_devices(tmp_path):
    config = get_config(LLAMA, Settings(config_dirs=[]))
    settings = Settings(config_dirs=[], data_dir=tmp_path)  # an empty registry: the prior utilisation
    lora = estimate(Hyperparameters(epochs=2), config, 10_000, 2_000_000, 1_235_814_400, settings=settings)
    assert lora.training_flops == pytest.approx(4 * 1_235_814_400 * 4_000_000)
    assert lora.devices == 1 and lora.peak_tflops == 312 and lora.peak_source == "the config's gpu_peak_tflops"
    assert lora.device_hours == pytest.approx(lora.training_flops / (312e12 * 0.4) / 3600)
    full = estimate(Hyperparameters(epochs=2, finetuning_type="all_weights"), config, 10_000, 2_000_000, 1_235_814_400, settings=settings)
    assert full.training_flops == pytest.approx(6 * 1_235_814_400 * 4_000_000)
    assert full.devices == 8 and full.device_hours == pytest.approx(lora.device_hours * 1.5)  # device-hours: all 8 devices' time
    assert full.seconds == pytest.approx(full.device_hours * 3600 / 8)  # the wall clock: 8 devices at once
    assert "A100-80GB-hours" in lora.describe() and "typical GPU" in lora.describe()
    assert estimate(Hyperparameters(epochs=2), config, 10_000, 2_000_000, 1_235_814_400, 0.2, settings=settings).device_hours == pytest.approx(2 * lora.device_hours)


def test_a_budget_refuses_an_expensive_job(tmp_path):
    cost = estimate(Hyperparameters(epochs=3), get_config(LLAMA, Settings(config_dirs=[])), 10**5, 10**8, 1_235_814_400,
                    settings=Settings(config_dirs=[], data_dir=tmp_path))
    check_budget(cost, None)
    check_budget(cost, cost.device_hours * 2)
    with pytest.raises(BudgetExceeded, match=r"exceeds the budget of 0.5 .*raise `budget.max_device_hours`"):
        check_budget(cost, 0.5)
