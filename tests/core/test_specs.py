import pytest
from pydantic import ValidationError

from core.specs import CustomizationSpec

BASE = {"config": "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu", "dataset": "/data/x", "output_model": "default/m"}


def test_defaults_are_filled_with_nemo_names():
    spec = CustomizationSpec.model_validate(BASE)
    hp = spec.hyperparameters.model_dump()
    assert hp["training_type"] == "sft" and hp["finetuning_type"] == "lora"
    assert {"epochs", "batch_size", "learning_rate"} <= hp.keys()
    assert hp["lora"] == {"adapter_dim": 8, "alpha": 16, "adapter_dropout": 0.0, "target_modules": None}
    assert spec.policy.max_general_drop == 2.0


def _error(raw: dict) -> str:
    with pytest.raises(ValidationError) as info:
        CustomizationSpec.model_validate(raw)
    return str(info.value)


def test_config_without_version_is_refused():
    assert "missing its version" in _error(BASE | {"config": "huggingfacetb/smollm2-135m-instruct"})


def test_adapter_dim_must_be_a_power_of_two():
    message = _error(BASE | {"hyperparameters": {"lora": {"adapter_dim": 12}}})
    assert "adapter_dim" in message and "power of 2" in message


def test_unknown_fields_are_refused_not_ignored():
    assert "epoch" in _error(BASE | {"hyperparameters": {"epoch": 3}})


@pytest.mark.parametrize("name", ["noslash", "Upper/case", "a/b/c", "/x"])
def test_output_model_must_be_namespace_slash_name(name):
    assert "output_model" in _error(BASE | {"output_model": name})


def test_spec_round_trips_through_json():
    spec = CustomizationSpec.model_validate(BASE | {"hyperparameters": {"epochs": 3, "lora": {"adapter_dim": 16}}})
    assert CustomizationSpec.model_validate_json(spec.model_dump_json()) == spec


def test_the_long_example_policy_defaults_to_error_and_takes_three_values():
    assert CustomizationSpec.model_validate(BASE).data.long_examples == "error"
    assert CustomizationSpec.model_validate(BASE | {"data": {"long_examples": "truncate"}}).data.long_examples == "truncate"
    message = _error(BASE | {"data": {"long_examples": "cut"}})
    assert "data.long_examples" in message and "'error', 'drop' or 'truncate'" in message
    assert "max_length" in _error(BASE | {"data": {"max_length": 10}})


def test_a_dataset_and_a_config_are_enough():
    spec = CustomizationSpec.model_validate({"config": "meta/llama-3.2-1b-instruct@v1.0.0+A100", "dataset": "/data/x"})
    assert spec.output_model == "default/llama-3.2-1b-instruct-x-lora"  # <config name>-<dataset>-<method>
    assert spec.hyperparameters.finetuning_type == "lora" and spec.policy.max_general_drop == 2.0
    assert list(CustomizationSpec.model_json_schema()["required"]) == ["config", "dataset"]
