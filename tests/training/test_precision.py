"""Training precision: ``auto`` is bf16 autocast where the hardware runs bf16 natively and fp32
elsewhere; the catalog accepts it, the embedded config uses it, and training reports what it ran in."""

import logging
from pathlib import Path

import pytest
import yaml

import training.common as common
from core.catalog import BUILTIN_DIR, CatalogError, CustomizationConfig, _read_config_file, get_config
from core.settings import Settings
from core.specs import Hyperparameters
from data.ingest import ingest_dataset
from tests.conftest import TINY_CONFIG_URN
from training.sft import train_sft


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("asked", ["fp32", "bf16-mixed", "auto"])
def test_precision_follows_the_config_and_the_hardware(monkeypatch, settings, asked, native):
    monkeypatch.setattr(common, "native_bf16", lambda: native)
    config = get_config(TINY_CONFIG_URN, settings).model_copy(update={"training_precision": asked})
    bf16 = asked != "fp32" and native  # emulated bf16 is never chosen, whatever the config asks
    assert common.use_bf16(config) is bf16
    assert common.training_precision(config) == ("bf16-mixed" if bf16 else "fp32")


def test_the_catalog_accepts_auto_and_names_the_field_of_a_bad_value(tmp_path: Path):
    base = yaml.safe_load((BUILTIN_DIR / "smollm2-135m-instruct.yaml").read_text())
    assert CustomizationConfig.model_validate(base).training_precision == "auto"  # the embedded config
    assert CustomizationConfig.model_validate(base | {"training_precision": "fp32"}).training_precision == "fp32"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(base | {"training_precision": "bf8"}))
    with pytest.raises(CatalogError, match=r"bad.yaml: invalid config: training_precision: Input should be 'fp32', 'bf16-mixed' or 'auto'"):
        _read_config_file(bad)
    assert get_config("huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu", Settings(config_dirs=[])).training_precision == "auto"


@pytest.mark.skipif(not common.native_bf16(), reason="this machine has no native bf16")
def test_auto_trains_in_bf16_on_hardware_with_native_bf16(tmp_path: Path, settings, ok_dataset, tiny_model_dir, caplog):
    config = get_config(TINY_CONFIG_URN, settings).model_copy(update={"training_precision": "auto"})
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    hp = Hyperparameters(max_steps=2, batch_size=4, log_every_n_steps=1, val_check_interval=2, lora={"adapter_dim": 4, "alpha": 8})
    with caplog.at_level(logging.INFO, logger="customizer.training"):
        result = train_sft(str(tiny_model_dir), data, config, hp, tmp_path / "job", settings)
    assert result.precision == "bf16-mixed" and result.steps == 2
    assert "Training precision: bf16-mixed (the config asks auto; this hardware runs bf16 natively)" in caplog.text
