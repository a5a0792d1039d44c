"""Secrets sent with a job: sealed before they are stored or handed to Prefect, unsealed into the
training environment only while training runs."""

import os

import pytest
from pydantic import ValidationError

from core.secrets import seal, unseal, unsealed_environment
from core.settings import Settings
from core.specs import CustomizationSpec


def test_a_sealed_secret_is_in_the_environment_only_while_the_block_runs(tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    token = seal(settings, "key-123")
    assert "key-123" not in token and unseal(settings, token) == "key-123"
    with unsealed_environment(settings, {"wandb-api-key": token}) as variables:
        assert variables == ["WANDB_API_KEY"] and os.environ["WANDB_API_KEY"] == "key-123"
    assert "WANDB_API_KEY" not in os.environ
    monkeypatch.setenv("WANDB_API_KEY", "the worker's own")
    with unsealed_environment(settings, {"wandb-api-key": token}):
        assert os.environ["WANDB_API_KEY"] == "key-123"
    assert os.environ["WANDB_API_KEY"] == "the worker's own"
    with unsealed_environment(settings, {}) as variables:
        assert variables == []


def test_another_platform_key_cannot_unseal_it(tmp_path):
    from cryptography.fernet import InvalidToken

    token = seal(Settings(data_dir=tmp_path / "a"), "key-123")
    with pytest.raises(InvalidToken):
        unseal(Settings(data_dir=tmp_path / "b"), token)


def test_a_spec_names_only_known_secrets():
    with pytest.raises(ValidationError, match="secrets"):
        CustomizationSpec(config="test/tiny-llama@v1.0.0+cpu", dataset="/d", output_model="a/b", secrets={"aws-key": "x"})
