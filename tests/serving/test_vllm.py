"""vLLM as the serving engine: `customizer serving start` on a tiny Llama, the store's LoRA resolver, the
hand-off replacing an adapter in place, and lm-eval through the endpoint.

The server tests run a real vLLM from its own venv (``make vllm``), the session's one server
(tests/serving/conftest.py); they are skipped where that venv is not installed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from core import tracking
from core.settings import Settings
from customizer.cli import main
from deploy.store import publish
from serving.handoff import go_live, vllm_args
from serving.vllm import VllmNotInstalled, launch_command, on_gpu, vllm_python
from tests.serving import TINY_BASE_NAME, make_adapter
from tests.serving.conftest import needs_vllm, register_champion

FILES = ["adapter_config.json", "adapter_model.safetensors"]


def _complete(url: str, model: str, prompt: str = "Reply with the word ok. Item 7") -> httpx.Response:
    body = {"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 1}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120)


def _text(url: str, model: str) -> str:
    response = _complete(url, model)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def _samples(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples" / f"{name}.jsonl").read_text().splitlines()]


def _models(url: str) -> dict[str, str]:
    return {m["id"]: m["root"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}


# --- without a server --------------------------------------------------------------------------------


def test_without_vllm_the_start_command_says_how_to_install_it(tmp_path, monkeypatch, capsys, settings):
    missing = tmp_path / "no-venv" / "bin" / "python"
    with pytest.raises(VllmNotInstalled, match=r"vLLM is not installed: .*no-venv/bin/python does not exist; run `make vllm`"):
        launch_command(Settings(data_dir=tmp_path, vllm_python=missing), "/base", ["test/tiny-llama"], None, "127.0.0.1", 1)
    monkeypatch.setenv("CUSTOMIZER_VLLM_PYTHON", str(missing))
    assert main(["serving", "start", "--config", "test/tiny-llama@v1.0.0+cpu"]) == 2
    assert "run `make vllm`" in capsys.readouterr().err


def test_up_starts_vllm_only_where_it_is_installed(tmp_path, capsys):
    from customizer.up import _vllm_wanted

    assert not _vllm_wanted(Settings(data_dir=tmp_path), asked=False)
    assert not _vllm_wanted(Settings(data_dir=tmp_path, vllm_python=tmp_path / "none"), asked=True)
    assert "not starting vLLM: vLLM is not installed" in capsys.readouterr().err
    assert _vllm_wanted(Settings(data_dir=tmp_path, vllm_python=Path(sys.executable)), asked=True)


def test_the_launch_command_loads_the_champions_fetched_and_verified(tmp_path, tiny_model_dir):
    settings = Settings(data_dir=tmp_path, vllm_python=Path(sys.executable), vllm_max_lora_rank=8, vllm_max_loras=2)
    uri = register_champion(settings, "team/large", make_adapter(tmp_path / "large", tiny_model_dir, r=32))
    register_champion(settings, "other/bot", make_adapter(tmp_path / "other", tiny_model_dir, r=4))

    launch = launch_command(settings, "/models/base", ["test/tiny-llama", "test/tiny-llama@v1.0.0+cpu"], "team", "127.0.0.1", 8123)
    cached = settings.serving_cache_dir / "vllm" / "team" / "large" / "1"
    assert launch.command[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    args = launch.command[3:]
    assert args[:9] == ["--model", "/models/base", "--served-model-name", "test/tiny-llama", "test/tiny-llama@v1.0.0+cpu",
                        "--host", "127.0.0.1", "--port", "8123"]
    # The rank the champion needs wins over the setting; the store's copy is fetched (and verified) for vLLM to read.
    assert args[9:16] == ["--enable-lora", "--max-lora-rank", "32", "--max-loras", "2", "--lora-modules", f"team/large={cached}"]
    assert json.loads((cached / "manifest.json").read_text())["files"].keys() == set(FILES)
    assert ("--dtype" in args) != on_gpu()
    assert launch.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and launch.env["CUSTOMIZER_VLLM_BASE_MODEL"] == "test/tiny-llama"
    assert launch.url == "http://127.0.0.1:8123" and uri.endswith("/team/large/1/")
    # Every namespace: both champions, and room for more adapters than the setting when they need it.
    everything = launch_command(settings, "/models/base", ["b"], None, "127.0.0.1", 1).command
    assert [a for a in everything if "=" in a] == [f"other/bot={settings.serving_cache_dir}/vllm/other/bot/1", f"team/large={cached}"]
    # Where vLLM sees the store itself, the paths are the store's, as `serving vllm-args` prints them.
    rooted = settings.model_copy(update={"serving_lora_root": "/adapters"})
    modules = [a for a in launch_command(rooted, "/b", ["b"], "team", "h", 1).command if "=" in a]
    assert modules == [a for a in vllm_args("team", rooted) if "=" in a] == ["team/large=/adapters/team/large/1"]


# --- a real vLLM ----------------------------------------------------------------------------------------


@needs_vllm
@pytest.mark.platform
def test_serving_start_runs_vllm_with_the_vllm_args_champions(vllm_server, vllm_world, monkeypatch, capsys):
    for key, value in vllm_world["env"].items():
        monkeypatch.setenv(key, value)
    assert main(["serving", "vllm-args", "team"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-1] == f"team/bot={vllm_world['settings'].serving_lora_root}/team/bot/1"
    started = vllm_server["log"].read_text()
    assert printed[:4] == ["--enable-lora", "--max-lora-rank", "8", "--max-loras"]
    assert f" {' '.join(printed)} " in started.split("starting vLLM: ", 1)[1].splitlines()[0]  # the same arguments, verbatim
    assert f"vLLM is serving {TINY_BASE_NAME} and its adapters at {vllm_server['url']}" in started

    url = vllm_server["url"]
    assert _models(url)["team/bot"] == printed[-1].split("=", 1)[1]
    base, champion = _text(url, TINY_BASE_NAME), _text(url, "team/bot")
    assert champion != base  # the adapter is in effect
    assert _complete(url, "team/nobody").status_code == 404


@needs_vllm
@pytest.mark.platform
def test_the_resolver_serves_a_published_version_on_first_request(vllm_server, vllm_world):
    url, settings = vllm_server["url"], vllm_world["settings"]
    assert "team/bot@2" not in _models(url)
    assert _complete(url, "team/bot@2").status_code == 200  # resolved from the store on this request
    cached = settings.serving_cache_dir / "vllm" / "team" / "bot" / "2"
    assert _models(url)["team/bot@2"] == str(cached) and (cached / "manifest.json").is_file()
    assert _text(url, "team/bot@2") != _text(url, "team/bot")  # another adapter's weights

    # A registered model's name: the version its trusted champion is, on first request too.
    register_champion(settings, "team/solo", vllm_world["adapters"][3])
    assert _text(url, "team/solo") == _text(url, "team/bot@3")
    assert _models(url)["team/solo"] == str(settings.serving_cache_dir / "vllm" / "team" / "solo" / "1")

    # Fail closed, with the reason in vLLM's log: never published, a file that does not match its
    # manifest, an adapter of another base model, a champion whose signed decision was edited.
    publish(vllm_world["adapters"][3], FILES, "team/bot", "8", TINY_BASE_NAME, {}, settings)
    stored = settings.root / "store" / "team" / "bot" / "8" / "adapter_model.safetensors"
    stored.write_bytes(stored.read_bytes()[:-8] + b"\0" * 8)
    publish(vllm_world["adapters"][3], FILES, "team/elsewhere", "1", "other/base", {}, settings)
    register_champion(settings, "team/edited", vllm_world["adapters"][2])
    tracking.client(settings).set_model_version_tag("team.edited", "1", "customizer.artifact.sha256", "0" * 64)
    for name in ("team/bot@7", "team/bot@8", "team/elsewhere@1", "team/edited"):
        response = _complete(url, name)
        assert response.status_code == 404 and response.json()["error"]["code"] == 404, name
    log = vllm_server["log"].read_text()
    assert "team/bot@7 is not served" in log
    assert "team/bot@8 is not served" in log and "does not match its manifest" in log
    assert "team/elsewhere@1 is not served: team/elsewhere v1 adapts other/base, not the served base model" in log
    assert "team/edited is not served: team/edited: the champion alias points at version 1, which is not trusted" in log


@needs_vllm
@pytest.mark.platform
def test_the_handoff_replaces_the_plain_name_in_place_without_a_404(vllm_server, vllm_world):
    url, settings = vllm_server["url"], vllm_world["settings"]
    uri2, uri3 = (f"{settings.publish_uri.rstrip('/')}/team/bot/{v}/" for v in (2, 3))
    endpoint = settings.model_copy(update={"serving_endpoint": url})
    answers = {v: _text(url, f"team/bot@{v}") for v in ("1", "2")}

    statuses: list[int] = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            statuses.append(_complete(url, "team/bot").status_code)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        # Swap versions until the poller has asked at least 8 times during the swaps. A short pause between
        # swaps leaves the engine room to schedule: back-to-back swaps every ~60 ms can keep a request
        # waiting on a busy machine, which is not what a hand-off (one per promotion) does.
        results, deadline = [], time.monotonic() + 180
        while len(results) < 8 or len(statuses) < 8:
            results += [go_live("team/bot", v, u, endpoint) for v, u in (("3", uri3), ("2", uri2))]
            assert time.monotonic() < deadline, f"the poller got {len(statuses)} answers during {len(results)} swaps in 180 s"
            time.sleep(0.1)
    finally:
        stop.set()
        poller.join()
    assert {r.warning for r in results} == {None}
    assert results[0].loaded == ["team/bot@3", "team/bot"]
    assert set(statuses) == {200}, statuses  # the name answered throughout, never 404
    assert _text(url, "team/bot") == answers["2"] != answers["1"]  # the plain name follows the last champion
    assert _models(url)["team/bot"] == f"{settings.serving_lora_root}/team/bot/2"


@needs_vllm
@pytest.mark.platform
def test_the_handoff_by_published_uri_loads_the_verified_copy(vllm_server, vllm_world):
    """Where vLLM does not see the store as a folder (no serving_lora_root), the hand-off sends the
    published URI, as to serve-models: customizer's plugin in vLLM fetches and verifies it."""
    url, settings = vllm_server["url"], vllm_world["settings"]
    endpoint = settings.model_copy(update={"serving_endpoint": url, "serving_lora_root": None})
    uri = publish(vllm_world["adapters"][2], FILES, "team/byuri", "1", TINY_BASE_NAME, {}, settings).uri
    assert uri.startswith("file://")
    live = go_live("team/byuri", "1", uri, endpoint)
    assert live.warning is None and live.loaded == ["team/byuri@1", "team/byuri"]
    assert _text(url, "team/byuri") == _text(url, "team/bot@2")  # the same weights as adapter 2
    assert _models(url)["team/byuri"] == str(settings.serving_cache_dir / "vllm" / "team" / "byuri" / "1")

    tampered = publish(vllm_world["adapters"][3], FILES, "team/byuri", "2", TINY_BASE_NAME, {}, settings).uri
    stored = settings.root / "store" / "team" / "byuri" / "2" / "adapter_model.safetensors"
    stored.write_bytes(stored.read_bytes()[:-8] + b"\0" * 8)
    refused = go_live("team/byuri", "2", tampered, endpoint)
    assert refused.loaded == [] and "does not match its manifest" in refused.warning
    assert _text(url, "team/byuri") == _text(url, "team/bot@2")  # still the version before


@needs_vllm
@pytest.mark.platform
def test_lm_eval_through_vllm_scores_as_the_local_evaluation(vllm_server, vllm_world, settings, ok_dataset, tmp_path):
    from transformers import AutoTokenizer

    from core.catalog import get_config
    from core.specs import EvaluationPlan
    from data.ingest import ingest_dataset
    from evaluation.remote import evaluate_endpoint
    from evaluation.runner import evaluate_model, task_benchmark
    from tests.conftest import TINY_CONFIG_URN

    base, adapter = vllm_world["base"], vllm_world["adapters"][2]
    local_settings = settings.model_copy(update={"eval_precision": "bfloat16"})  # as vLLM runs it on a CPU
    data = ingest_dataset(str(ok_dataset), tmp_path / "data", seed=0)
    plan = EvaluationPlan(general_benchmarks=["capitals"], limit=10, max_new_tokens=4, batch_size=4)
    benchmark = task_benchmark(data, get_config(TINY_CONFIG_URN, settings), AutoTokenizer.from_pretrained(base), plan, tmp_path / "bench")

    local = evaluate_model(str(base), str(adapter), benchmark, plan, tmp_path / "local", local_settings)
    remote = evaluate_endpoint(vllm_server["url"], "team/bot@2", benchmark, plan, tmp_path / "remote", local_settings, str(base))

    chat_plan = plan.model_copy(update={"general_benchmarks": []})  # local-chat-completions: generative items only
    chat = evaluate_endpoint(vllm_server["url"], "team/bot@2", benchmark, chat_plan, tmp_path / "chat", local_settings, str(base),
                             api="chat-completions")

    # bf16 in two engines (vLLM's CPU kernels, transformers): the same scores within rounding, item by item.
    assert remote.counts == local.counts and remote.counts["capitals"] == 10
    assert remote.task == pytest.approx(local.task, abs=0.2)
    assert chat.counts["task"] == local.counts["task"] and chat.task == pytest.approx(local.task, abs=0.2)
    assert remote.general == pytest.approx(local.general, abs=0.2)
    # Summed over an answer's tokens, bf16 rounding (about 0.4% a logit) adds up: a few percent of log p.
    assert remote.per_sample_loglik["capitals"] == pytest.approx(local.per_sample_loglik["capitals"], rel=0.05, abs=0.01)
    # Greedy answers (the task benchmark): the same text for most items; bf16 can flip a near tie.
    answers = {run: [s["resps"] for s in sorted(_samples(tmp_path / run, "task"), key=lambda s: s["doc_id"])]
               for run in ("local", "remote", "chat")}
    for run in ("remote", "chat"):  # the chat route: the same prompt, rendered by vLLM with the model's chat template
        same = sum(a == b for a, b in zip(answers["local"], answers[run], strict=True))
        assert len(answers["local"]) == remote.counts["task"] and same >= len(answers["local"]) - 1, (run, answers)
