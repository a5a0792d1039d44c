"""Test setup: an isolated, offline environment and a tiny model built once per session.

Everything runs offline: hub access is off and a socket audit hook fails any connection that
leaves the machine. Services (Prefect, MLflow, S3) are real and local.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

SESSION_DIR = Path(tempfile.mkdtemp(prefix="customizer-tests-"))
os.environ.update(
    {
        "CUSTOMIZER_DATA_DIR": str(SESSION_DIR / "data"),
        "CUSTOMIZER_TORCH_THREADS": "2",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PREFECT_HOME": str(SESSION_DIR / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # Hypothesis keeps its files here, not in a .hypothesis folder of the checkout (which may be read-only).
        "HYPOTHESIS_STORAGE_DIRECTORY": str(SESSION_DIR / "hypothesis"),
    }
)
for leaked in ("CUSTOMIZER_STORE_URI", "CUSTOMIZER_MLFLOW_TRACKING_URI", "CUSTOMIZER_S3_ENDPOINT_URL", "PREFECT_API_URL"):
    os.environ.pop(leaked, None)

from core.settings import apply_environment, get_settings  # noqa: E402

apply_environment(get_settings())

_LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost", "0.0.0.0", None, ""}


def _no_network(event: str, args: tuple) -> None:
    """Fail any connection or name lookup that is not for this machine."""
    if event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL_HOSTS:
            raise RuntimeError(f"test tried to reach the network: {address}")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode()
        if host not in _LOCAL_HOSTS and not str(host).endswith(".localhost"):
            raise RuntimeError(f"test tried to resolve a remote host: {host}")


sys.addaudithook(_no_network)

TINY_CONFIG_URN = "test/tiny-llama@v1.0.0+cpu"

@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from training.tiny import build_tiny_model

    return build_tiny_model(SESSION_DIR / "tiny-model")


@pytest.fixture(scope="session")
def tiny_config_dir(tiny_model_dir: Path) -> Path:
    """A config folder with the tiny model's config, added to the catalog for the whole session."""
    folder = SESSION_DIR / "configs"
    folder.mkdir(exist_ok=True)
    (folder / "tiny-llama.yaml").write_text(
        "namespace: test\n"
        "name: tiny-llama@v1.0.0+cpu\n"
        "target:\n"
        "  name: test/tiny-llama\n"
        f"  model_uri: {tiny_model_dir}\n"
        "max_seq_length: 128\n"
        "prompt_format: chat\n"
        "lora_target_modules: [q_proj, v_proj]\n"
        "training_options:\n"
        + "".join(
            f"  - {{training_type: {t}, finetuning_type: {f}, num_gpus: 0, micro_batch_size: 4}}\n"
            for t, f in [("sft", "lora"), ("sft", "lora_merged"), ("sft", "all_weights"), ("dpo", "lora"),
                         ("dpo", "all_weights"), ("grpo", "lora"), ("grpo", "all_weights")]
        )
    )
    os.environ["CUSTOMIZER_CONFIG_DIRS"] = json.dumps([str(folder)])
    return folder


def add_config(folder: Path, monkeypatch, urn: str, model_dir: Path, **options) -> str:
    """A config ``urn`` on the model in ``model_dir`` (``training.tiny.write_tiny_config``'s ``options``),
    written into ``folder`` and added to the catalog's folders for the test; returns ``urn``."""
    from training.tiny import write_tiny_config

    folder.mkdir(exist_ok=True)
    write_tiny_config(folder, urn, urn.split("@")[0], model_dir, **options)
    monkeypatch.setenv("CUSTOMIZER_CONFIG_DIRS", json.dumps([*json.loads(os.environ["CUSTOMIZER_CONFIG_DIRS"]), str(folder)]))
    return urn


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def ok_rows(count: int, start: int = 0) -> list[dict]:
    """A task a tiny model learns in a few steps: always answer "ok"."""
    return [{"prompt": f"Reply with the word ok. Item {i}", "completion": "ok"} for i in range(start, start + count)]


def canonical_dataset(folder: Path, training: list[dict], validation: list[dict], testing: list[dict] | None = None):
    """An ingested dataset written directly (for training tests that do not exercise ingest)."""
    from data.formats import detect_format
    from data.ingest import IngestedDataset

    files, counts, formats = {}, {}, {}
    for split, rows in (("training", training), ("validation", validation), ("testing", testing or validation)):
        path = write_jsonl(folder / f"{split}.jsonl", [{"loc": f"{split}/data.jsonl:{i + 1}", "record": r} for i, r in enumerate(rows)])
        files[split], counts[split], formats[split] = str(path), len(rows), detect_format(rows[0])
    return IngestedDataset(
        source=str(folder), sha256="0" * 64, files=files, counts=counts, formats=formats,
        validation_source="validation", testing_source="testing",
    )


def changed_by_adapter(base_dir: Path, adapter_dir: Path) -> set[str]:
    """Base weights that an adapter changes once merged: exactly its target modules, if it is sound."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(base_dir).state_dict().items()}
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).merge_and_unload().state_dict()
    assert merged.keys() == base.keys()
    return {k for k in base if not torch.equal(base[k], merged[k])}


@pytest.fixture
def ok_dataset(tmp_path: Path) -> Path:
    """20 training rows, 8 testing rows, no validation/ (so 10% is held out)."""
    root = tmp_path / "ok-dataset"
    write_jsonl(root / "training" / "train.jsonl", ok_rows(20))
    write_jsonl(root / "testing" / "test.jsonl", ok_rows(8, start=100))
    return root


@pytest.fixture
def settings(tiny_config_dir: Path):
    return get_settings()


# --- test kinds ------------------------------------------------------------------------------------
# Every test carries exactly one kind, so `pytest -m unit` (make test-fast) runs in minutes and the
# rest can be run by what they need. A test or module marked explicitly keeps its mark; otherwise
# the kind follows from its folder, then from the fixtures it uses.

KINDS = ("unit", "flow", "platform", "faults", "browser")
TESTS_DIR = Path(__file__).resolve().parent
# Fixtures that start a real service: the whole platform (`customizer up`) and what drives it, moto's
# S3 server, an MLflow server, serve-models on uvicorn, a Prefect server.
SERVICE_FIXTURES = frozenset({
    "platform", "nemo", "http", "hf_api", "email_dataset", "example_jobs",
    "s3_endpoint", "counted_s3", "s3_store", "s3", "held_s3", "mlflow_server", "served",
    "prefect_server", "services", "faulty", "faulty_settings",
})


def _kind(item: pytest.Item) -> str:
    """The kind a test gets from where it lives and what it uses, when it is not marked itself."""
    path = Path(item.path).resolve()
    folder = path.relative_to(TESTS_DIR).parts[0] if path.is_relative_to(TESTS_DIR) else ""
    if folder == "faults":
        return "faults"
    if path.name == "test_prefect_ui.py":
        return "browser"
    if folder == "flows":
        return "flow"
    if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return "platform"
    return "unit"


@pytest.fixture(autouse=True)
def _no_prefect_server_for_unit_tests(request: pytest.FixtureRequest):
    """A unit test starts no service: where it would reach Prefect without a server to talk to,
    Prefect fails saying no API URL is set instead of starting a temporary server (which would
    then run, and take CPU from every later test, until the session ends)."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    # delayed: Prefect is heavy (start-up time), and only unit tests need this
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    with temporary_settings({PREFECT_SERVER_EPHEMERAL_ENABLED: False}):
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test exactly one kind; a test marked with two is a collection error naming both."""
    for item in items:
        marked = sorted({mark.name for mark in item.iter_markers() if mark.name in KINDS})
        if len(marked) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked with more than one kind: {', '.join(marked)}")
        if not marked:
            item.add_marker(getattr(pytest.mark, _kind(item)))
