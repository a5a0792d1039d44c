"""serve-models driven by the official ``openai`` client, as applications use it: listing (trusted
champions included), chat, streaming with usage, the common sampling parameters, JSON output,
echo with logprobs, unknown models, API keys and ``/metrics``."""

from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest

from core import tracking
from core.settings import Settings
from deploy import registry
from deploy.store import publish
from tests.deploy import sign_decision
from tests.serving import TINY_BASE_NAME, make_adapter, reference_chat, running_server

pytestmark = pytest.mark.platform  # serve-models on uvicorn, in this process

PROMPT = "Reply with the word ok. Item 7"
FILES = ["adapter_config.json", "adapter_model.safetensors"]


@pytest.fixture(scope="module")
def platform(tmp_path_factory, tiny_model_dir):
    """A file store with ``team/bot`` v1 and v2 published and registered: v1 the trusted champion
    (a signed promote), and ``team/forged`` whose champion's decision was a reject."""
    root = tmp_path_factory.mktemp("openai")
    settings = Settings(data_dir=root / "data", store_uri=(root / "store").as_uri())
    folders = {}
    for seed, (model, decision) in enumerate([("team/bot", "promote"), ("team/forged", "reject")]):
        folders[model] = make_adapter(root / model.replace("/", "-"), tiny_model_dir, seed=seed)
        publish(folders[model], FILES, model, "1", TINY_BASE_NAME, {}, settings)
        run_id = tracking.start_run(settings, f"cust-{seed}", tags={}, params={})
        version = registry.register_version(settings, model, str(folders[model]), run_id, {}).version
        sign_decision(settings, model, version, decision)
    registry.promote(settings, "team/bot", "1")
    tracking.client(settings).set_registered_model_alias("team.forged", "champion", "1")  # around the platform
    return settings, folders


@pytest.fixture(scope="module")
def client(platform, tiny_model_dir):
    settings, _ = platform
    with running_server(settings, tiny_model_dir) as (server, url):
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120), url


def messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT}]


def test_models_lists_the_base_and_the_trusted_champions(client):
    api, _ = client
    listed = {m.id: m for m in api.models.list().data}
    assert TINY_BASE_NAME in listed and "team/bot" in listed
    assert "team/forged" not in listed  # its champion's decision was a reject: never listed, never served
    assert listed["team/bot"].model_extra["parent"] == TINY_BASE_NAME


def test_chat_with_a_champion_answers_with_its_adapter(client, platform, tiny_model_dir):
    api, _ = client
    _, folders = platform
    reply = api.chat.completions.create(model="team/bot", messages=messages(), max_tokens=8, temperature=0)
    assert reply.choices[0].message.content == reference_chat(tiny_model_dir, folders["team/bot"], PROMPT, 8)
    assert reply.usage.completion_tokens <= 8 and reply.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.APIStatusError) as refused:
        api.chat.completions.create(model="team/forged", messages=messages(), max_tokens=4)
    assert refused.value.status_code == 409


def test_streaming_sends_the_text_then_a_usage_chunk(client):
    api, _ = client
    whole = api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=8, temperature=0)
    chunks = list(api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=8, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == \
        whole.usage.model_dump(include={"prompt_tokens", "completion_tokens"})
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=4, stream=True))
    assert all(c.choices for c in plain)  # no usage chunk unless asked for


def test_common_sampling_parameters_are_accepted(client, caplog):
    api, _ = client
    with caplog.at_level(logging.WARNING, logger="customizer.serving"):
        reply = api.chat.completions.create(
            model=TINY_BASE_NAME, messages=messages(), max_tokens=6, temperature=0.7, top_p=0.9, seed=3, presence_penalty=0.5,
            frequency_penalty=0.5, logit_bias={"5": -100}, user="someone", n=2, stop=["\n\n"],
            extra_body={"top_k": 20, "repetition_penalty": 1.1, "min_tokens": 1},
        )
    assert [c.index for c in reply.choices] == [0, 1]
    assert "ignoring repetition_penalty" in caplog.text
    again = api.chat.completions.create(
        model=TINY_BASE_NAME, messages=messages(), max_tokens=6, temperature=0.7, top_p=0.9, seed=3, presence_penalty=0.5,
        frequency_penalty=0.5, logit_bias={"5": -100}, n=2, extra_body={"top_k": 20, "min_tokens": 1},
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]  # seeded: reproducible

    # logit_bias acts: a token pushed to +100 is all that greedy decoding generates
    biased = api.completions.create(model=TINY_BASE_NAME, prompt="hello", max_tokens=5, temperature=0, logit_bias={"300": 100},
                                    extra_body={"ignore_eos": True})
    assert biased.usage.completion_tokens == 5
    tokens = api.completions.create(model=TINY_BASE_NAME, prompt="hello", max_tokens=5, temperature=0, logit_bias={"300": 100},
                                    logprobs=0, extra_body={"ignore_eos": True}).choices[0].logprobs.tokens
    assert len(set(tokens)) == 1

    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), frequency_penalty=2.5)
    assert bad.value.body["param"] == "frequency_penalty"


def test_json_object_output_parses(client):
    api, _ = client
    for model, temperature in [(TINY_BASE_NAME, 0), ("team/bot", 0.8), (TINY_BASE_NAME, 1.0)]:
        reply = api.chat.completions.create(model=model, messages=messages(), max_tokens=24, temperature=temperature, seed=1,
                                            response_format={"type": "json_object"})
        assert isinstance(json.loads(reply.choices[0].message.content), dict), reply.choices[0].message.content


def test_echo_with_logprobs_scores_the_prompt(client):
    api, _ = client
    reply = api.completions.create(model=TINY_BASE_NAME, prompt="Reply with the word ok", max_tokens=2, temperature=0, echo=True,
                                   logprobs=2)
    choice = reply.choices[0]
    assert choice.text.startswith("Reply with the word ok")
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None and all(v <= 0 for v in logprobs.token_logprobs[1:])
    assert len(logprobs.tokens) == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert all(len(top) == 2 for top in logprobs.top_logprobs[1:])
    chat = api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=3, temperature=0, logprobs=True, top_logprobs=1)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(c.top_logprobs) == 1 for c in content)
    assert content[0].top_logprobs[0].logprob == pytest.approx(content[0].logprob)  # greedy: the chosen token is the top one


def test_an_unknown_model_is_a_404(client):
    api, _ = client
    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="team/nothing@3", messages=messages())
    assert missing.value.body["param"] == "model"


def test_metrics_count_requests_tokens_and_batches(client):
    api, url = client
    api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=3, temperature=0)
    text = httpx.get(f"{url}/metrics").text
    requests = [line for line in text.splitlines() if line.startswith("customizer_serving_requests_total{")]
    assert any(f'model="{TINY_BASE_NAME}"' in line and 'status="200"' in line for line in requests), requests
    assert "customizer_serving_batch_size_count" in text and "customizer_serving_queue_wait_seconds_bucket" in text
    generated = [float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith(f'customizer_serving_generated_tokens_total{{model="{TINY_BASE_NAME}"}}')]
    assert generated and generated[0] >= 3


def test_api_keys_grant_their_namespaces(platform, tiny_model_dir):
    settings, _ = platform
    keyed = settings.model_copy(update={"api_keys": {"team-key": ["team"], "other-key": ["other"], "root-key": ["*"]}})
    with running_server(keyed, tiny_model_dir, max_adapters=2) as (_, url):
        assert httpx.get(f"{url}/health").status_code == 200  # open
        make = lambda key: openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)  # noqa: E731
        with pytest.raises(openai.AuthenticationError):
            make("wrong").models.list()
        assert httpx.get(f"{url}/v1/models").status_code == 401
        team, other = make("team-key"), make("other-key")
        assert team.chat.completions.create(model="team/bot@1", messages=messages(), max_tokens=2).choices
        with pytest.raises(openai.PermissionDeniedError):
            other.chat.completions.create(model="team/bot@1", messages=messages(), max_tokens=2)
        assert other.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=2).choices  # the base is everyone's
        assert "team/bot" in {m.id for m in team.models.list().data}
        assert {m.id for m in other.models.list().data} == {TINY_BASE_NAME}
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer team-key"}).status_code == 403
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer root-key"}).status_code == 200
