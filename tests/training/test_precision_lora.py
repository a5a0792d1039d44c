"""LoRA under bf16 autocast: a delta under half a bf16 ulp of the base output is rounded away by PEFT's
bf16 sum and kept by ``training.precision``'s fp32 sum; training in bf16 takes that path, fp32 does not."""

from pathlib import Path

import pytest
import torch

import training.common as common
import training.precision as precision
from core.catalog import get_config
from core.specs import Hyperparameters
from data.ingest import ingest_dataset
from tests.conftest import TINY_CONFIG_URN
from training.sft import train_sft


def _lora_model(model_dir: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))


def _first_lora_layer(model):
    from peft.tuners.lora.layer import Linear

    return next(m for m in model.modules() if type(m) is Linear)


def _tiny_update(layer, x: torch.Tensor) -> torch.Tensor:
    """Give the layer a LoRA delta ~1e-4 of its base output (as after a first small step: B starts at
    zero) and return that delta, computed in fp32."""
    torch.manual_seed(1)
    with torch.no_grad():
        layer.lora_B["default"].weight.copy_(torch.randn_like(layer.lora_B["default"].weight) * 1e-5)
        return layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]


def test_a_delta_lost_in_the_bf16_sum_is_kept_in_fp32(tiny_model_dir: Path):
    model = _lora_model(tiny_model_dir)
    layer = _first_lora_layer(model)
    x = torch.randn(2, 16, layer.in_features)
    delta = _tiny_update(layer, x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        base = layer.base_layer(x)
        peft_out = layer(x)
    assert base.dtype == peft_out.dtype == torch.bfloat16
    # PEFT's bf16 sum: the update is below half an ulp almost everywhere, so the output is the base output.
    lost = (peft_out == base).float().mean().item()
    assert lost > 0.95, f"only {lost:.0%} of the outputs lost the delta"

    assert precision.lora_sum_in_fp32(model) == 4  # q_proj and v_proj in each of 2 layers
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        kept = layer(x)
    assert kept.dtype == torch.float32
    # The output differs from the base output by the delta (the LoRA matmuls still run in bf16: ~1%).
    torch.testing.assert_close(kept - base.float(), delta, rtol=0.05, atol=0.02 * delta.abs().max().item())


def test_outside_autocast_and_with_adapters_off_the_forward_is_peft_s(tiny_model_dir: Path):
    model = _lora_model(tiny_model_dir)
    layer = _first_lora_layer(model)
    x = torch.randn(2, 16, layer.in_features)
    _tiny_update(layer, x)
    with torch.no_grad():
        before = layer(x)
        assert precision.lora_sum_in_fp32(model) == 4
        assert precision.lora_sum_in_fp32(model) == 0  # already wrapped: applying twice changes nothing
        assert torch.equal(layer(x), before)
        with model.disable_adapter(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(layer(x), layer.base_layer(x))


@pytest.fixture
def forward_calls(monkeypatch) -> list[tuple[bool, bool, torch.dtype]]:
    """Every call of the fp32-sum forward: (autocast on, adapters on, output dtype). The forgetting
    probe calls it with the adapters off for the base's log-probabilities: PEFT's bf16 output then."""
    calls: list[tuple[bool, bool, torch.dtype]] = []
    real = precision._forward_with_fp32_sum

    def spy(self, x, *args, **kwargs):
        out = real(self, x, *args, **kwargs)
        calls.append((torch.is_autocast_enabled("cpu"), not self.disable_adapters, out.dtype))
        return out

    monkeypatch.setattr(precision, "_forward_with_fp32_sum", spy)
    return calls


@pytest.mark.parametrize("asked", ["bf16-mixed", "fp32"])
def test_bf16_training_takes_the_fp32_sum_and_fp32_training_does_not(
    monkeypatch, tmp_path: Path, settings, ok_dataset, tiny_model_dir, forward_calls, asked
):
    monkeypatch.setattr(common, "native_bf16", lambda: True)  # bf16 whatever this CPU runs natively
    config = get_config(TINY_CONFIG_URN, settings).model_copy(update={"training_precision": asked})
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    hp = Hyperparameters(max_steps=2, batch_size=4, log_every_n_steps=1, val_check_interval=2, lora={"adapter_dim": 4, "alpha": 8})
    result = train_sft(str(tiny_model_dir), data, config, hp, tmp_path / "job", settings)
    assert result.steps == 2
    if asked == "fp32":
        assert result.precision == "fp32" and forward_calls == []
    else:
        assert result.precision == "bf16-mixed"
        trained = {dtype for autocast, adapters, dtype in forward_calls if autocast and adapters}
        assert trained == {torch.float32}, forward_calls[:4]

