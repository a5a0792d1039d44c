"""Hand-off to a serving endpoint (a real serve-models process answering vLLM's routes) and vLLM's
launch arguments for a namespace's champions."""

from __future__ import annotations

import json

import httpx
import pytest

from customizer.cli import main
from core.settings import Settings
from deploy import registry
from core import tracking
from serving.handoff import HandOffError, go_live, lora_path, vllm_args
from deploy.store import publish
from deploy.trust import UntrustedChampion
from tests.deploy import sign_decision
from tests.serving import TINY_BASE_NAME, make_adapter, reference_chat, running_server

FILES = ["adapter_config.json", "adapter_model.safetensors"]
PROMPT = "Reply with the word ok. Item 7"


@pytest.mark.platform  # starts a service in the test itself
def test_a_promoted_version_goes_live_under_both_names(tmp_path, tiny_model_dir):
    settings = Settings(data_dir=tmp_path, store_uri=(tmp_path / "store").as_uri())
    first = make_adapter(tmp_path / "v1", tiny_model_dir, seed=1)
    second = make_adapter(tmp_path / "v2", tiny_model_dir, seed=2)
    uri1 = publish(first, FILES, "team/bot", "1", TINY_BASE_NAME, {}, settings).uri
    uri2 = publish(second, FILES, "team/bot", "2", TINY_BASE_NAME, {}, settings).uri
    with running_server(settings, tiny_model_dir) as (server, url):
        endpoint = settings.model_copy(update={"serving_endpoint": url})
        assert go_live("team/bot", "1", uri1, endpoint).loaded == ["team/bot@1", "team/bot"]
        assert go_live("team/bot", "1", uri1, endpoint).warning is None  # again: already live, fine
        assert go_live("team/bot", "2", uri2, endpoint).loaded == ["team/bot@2", "team/bot"]
        assert {a.name: a.source for a in server.adapters.values()} == {"team/bot@1": uri1, "team/bot@2": uri2, "team/bot": uri2}
        body = {"model": "team/bot", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, "temperature": 0}
        content = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]["content"]
        assert content == reference_chat(tiny_model_dir, second, PROMPT, 8)  # the plain name follows the new champion

    down = settings.model_copy(update={"serving_endpoint": url})  # the server is gone now
    result = go_live("team/bot", "3", uri2, down)
    assert result.loaded == [] and "is published but not live on" in result.warning and "cannot reach" in result.warning


def test_a_new_champion_replaces_the_plain_name_in_place(monkeypatch):
    """One load with ``load_inplace`` and never an unload: between the two the name would answer 404."""
    sent = []

    def post(url, json, headers, timeout):
        sent.append((url.rsplit("/", 1)[1], json))
        return httpx.Response(200, text="Success")

    monkeypatch.setattr(httpx, "post", post)
    result = go_live("team/bot", "4", "s3://models/team/bot/4/", Settings(serving_endpoint="http://vllm:8000"))
    assert result.warning is None and result.loaded == ["team/bot@4", "team/bot"]
    assert sent == [
        ("load_lora_adapter", {"lora_name": "team/bot@4", "lora_path": "s3://models/team/bot/4/"}),
        ("load_lora_adapter", {"lora_name": "team/bot", "lora_path": "s3://models/team/bot/4/", "load_inplace": True}),
    ]


def test_lora_paths_follow_where_the_engine_sees_the_store():
    uri = "s3://models/adapters/team/bot/3/"
    assert lora_path(uri, Settings()) == uri
    assert lora_path(uri, Settings(serving_lora_root="/mnt/adapters/")) == "/mnt/adapters/team/bot/3"


def test_vllm_launch_arguments_name_the_champions_of_a_namespace(tmp_path, tiny_model_dir, monkeypatch, capsys):
    settings = Settings(data_dir=tmp_path, store_uri=(tmp_path / "store").as_uri(), serving_lora_root="/adapters")
    for name, rank in (("team/small", 4), ("team/large", 16), ("other/bot", 64)):
        adapter = make_adapter(tmp_path / name.replace("/", "-"), tiny_model_dir, r=rank)
        run_id = tracking.start_run(settings, f"cust-{name}", tags={}, params={})
        version = registry.register_version(settings, name, str(adapter), run_id, {})
        published = publish(adapter, FILES, name, version.version, TINY_BASE_NAME, {}, settings)
        registry.set_version_tags(settings, name, version.version, {"customizer.published_uri": published.uri})
        sign_decision(settings, name, version.version)
        registry.promote(settings, name, version.version)
    run_id = tracking.start_run(settings, "cust-unpromoted", tags={}, params={})
    registry.register_version(settings, "team/candidate-only", str(tmp_path), run_id, {})

    assert vllm_args("team", settings) == [
        "--enable-lora", "--max-lora-rank", "16", "--max-loras", "2",
        "--lora-modules", "team/large=/adapters/team/large/1", "team/small=/adapters/team/small/1",
    ]
    with pytest.raises(HandOffError, match="no published champion"):
        vllm_args("nobody", settings)

    for key, value in {"CUSTOMIZER_DATA_DIR": str(tmp_path), "CUSTOMIZER_STORE_URI": settings.publish_uri, "CUSTOMIZER_SERVING_LORA_ROOT": "/adapters"}.items():
        monkeypatch.setenv(key, value)
    assert main(["serving", "vllm-args", "other"]) == 0
    assert capsys.readouterr().out.split() == ["--enable-lora", "--max-lora-rank", "64", "--max-loras", "1", "--lora-modules", "other/bot=/adapters/other/bot/1"]
    assert main(["serving", "vllm-args", "nobody"]) == 2
    assert "no published champion" in capsys.readouterr().err
    assert json.loads((tmp_path / "store" / "team" / "large" / "1" / "adapter_config.json").read_text())["r"] == 16

    # A champion whose decision was edited after it was signed leaves no namespace argument list silently short.
    tracking.client(settings).set_model_version_tag("team.small", "1", "customizer.decision.reasons", "[]")
    assert vllm_args("team", settings)[-2:] == ["team/large=/adapters/team/large/1", "team/small=/adapters/team/small/1"]
    tracking.client(settings).set_model_version_tag("team.small", "1", "customizer.artifact.sha256", "0" * 64)
    with pytest.raises(UntrustedChampion, match="team/small: the champion alias points at version 1, which is not trusted"):
        vllm_args("team", settings)
    assert main(["serving", "vllm-args", "team"]) == 2
    assert "changed after the platform signed them" in capsys.readouterr().err
    # Its published URI is not signed: it must name the champion itself.
    sign_decision(settings, "team/small", "1")
    tracking.client(settings).set_model_version_tag("team.small", "1", "customizer.published_uri",
                                                    registry.client(settings).get_model_version("team.large", "1").tags["customizer.published_uri"])
    with pytest.raises(HandOffError, match="team/small v1: its `customizer.published_uri` tag points at team/large v1"):
        vllm_args("team", settings)
