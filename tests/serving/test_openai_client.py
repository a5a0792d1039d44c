"""Both serving engines driven by the official ``openai`` client, as applications use it: listing
(trusted champions included), chat, streaming with usage, the common sampling parameters, JSON
output, echo with logprobs, unknown models, concurrent requests and ``/metrics`` — on serve-models
and, where ``make vllm`` installed it, on vLLM started by ``customizer serving start``; API keys on
serve-models."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from core import tracking
from core.settings import Settings
from deploy import registry
from deploy.store import publish
from serving.constrained import JsonPrefix
from tests.deploy import sign_decision
from tests.serving import TINY_BASE_NAME, make_adapter, reference_chat, running_server
from tests.serving.conftest import needs_vllm

pytestmark = pytest.mark.platform  # serve-models on uvicorn in this process; vLLM in its own

PROMPT = "Reply with the word ok. Item 7"
FILES = ["adapter_config.json", "adapter_model.safetensors"]


def publish_models(settings: Settings, base: Path, root: Path, models: list[tuple[str, str]]) -> dict[str, Path]:
    """Publish and register v1 of each ``(model, signed decision)``; a champion alias on each: set by
    the platform for a promote, around it (straight through MLflow) for a reject."""
    folders = {}
    for seed, (model, decision) in enumerate(models):
        folders[model] = make_adapter(root / model.replace("/", "-"), base, seed=seed + 1)
        publish(folders[model], FILES, model, "1", TINY_BASE_NAME, {}, settings)
        run_id = tracking.start_run(settings, f"cust-{model}", tags={}, params={})
        version = registry.register_version(settings, model, str(folders[model]), run_id, {}).version
        sign_decision(settings, model, version, decision)
        if decision == "promote":
            registry.promote(settings, model, version)
        else:
            tracking.client(settings).set_registered_model_alias(model.replace("/", "."), "champion", version)
    return folders


@dataclass
class Engine:
    name: str  # serve-models or vllm
    api: openai.OpenAI
    url: str
    base: Path  # the served base model's folder
    champion: Path  # team/bot v1's adapter folder


def _client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def platform(tmp_path_factory, tiny_model_dir):
    """A file store with ``team/bot`` v1 published and registered as the trusted champion (a signed
    promote), and ``other/forged`` whose champion's decision was a reject."""
    root = tmp_path_factory.mktemp("openai")
    settings = Settings(data_dir=root / "data", store_uri=(root / "store").as_uri())
    return settings, publish_models(settings, tiny_model_dir, root, [("team/bot", "promote"), ("other/forged", "reject")])


@pytest.fixture(scope="module", params=["serve-models", pytest.param("vllm", marks=needs_vllm)])
def engine(request, platform, tiny_model_dir):
    if request.param == "serve-models":
        settings, folders = platform
        with running_server(settings, tiny_model_dir) as (_, url):
            yield Engine("serve-models", _client(url), url, tiny_model_dir, folders["team/bot"])
        return
    world, server = request.getfixturevalue("vllm_world"), request.getfixturevalue("vllm_server")
    # team/bot v1 is the champion `serving start` loaded; a forged champion is added while vLLM runs.
    if not (world["root"] / "other-forged").exists():
        publish_models(world["settings"], world["base"], world["root"], [("other/forged", "reject")])
    yield Engine("vllm", _client(server["url"]), server["url"], world["base"], world["adapters"][1])


def messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT}]


def test_models_lists_the_base_and_the_trusted_champions(engine):
    listed = {m.id: m for m in engine.api.models.list().data}
    assert TINY_BASE_NAME in listed and "team/bot" in listed
    assert "other/forged" not in listed  # its champion's decision was a reject: never listed, never served
    assert listed["team/bot"].model_extra["parent"] == TINY_BASE_NAME


def test_chat_with_a_champion_answers_with_its_adapter(engine):
    def chat(model: str) -> str:
        return engine.api.chat.completions.create(model=model, messages=messages(), max_tokens=8, temperature=0).choices[0].message.content

    reply = engine.api.chat.completions.create(model="team/bot", messages=messages(), max_tokens=8, temperature=0)
    assert reply.usage.completion_tokens <= 8 and reply.choices[0].finish_reason in ("stop", "length")
    text = reply.choices[0].message.content
    assert text == chat("team/bot@1") != chat(TINY_BASE_NAME)  # the champion's adapter, in effect
    if engine.name == "serve-models":  # fp32, as transformers alone computes it (vLLM runs bf16 kernels on a CPU)
        assert text == reference_chat(engine.base, engine.champion, PROMPT, 8)
    with pytest.raises(openai.APIStatusError) as refused:
        engine.api.chat.completions.create(model="other/forged", messages=messages(), max_tokens=4)
    # serve-models says why (409); vLLM's resolver refuses to serve it (404), the reason in its log
    assert refused.value.status_code == {"serve-models": 409, "vllm": 404}[engine.name]


def test_streaming_sends_the_text_then_a_usage_chunk(engine):
    api = engine.api
    whole = api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=8, temperature=0)
    chunks = list(api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=8, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == \
        whole.usage.model_dump(include={"prompt_tokens", "completion_tokens"})
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=4, stream=True))
    assert all(c.choices for c in plain)  # no usage chunk unless asked for


def test_common_sampling_parameters_are_accepted(engine, caplog):
    api = engine.api
    with caplog.at_level(logging.WARNING, logger="customizer.serving"):
        reply = api.chat.completions.create(
            model=TINY_BASE_NAME, messages=messages(), max_tokens=6, temperature=0.7, top_p=0.9, seed=3, presence_penalty=0.5,
            frequency_penalty=0.5, logit_bias={"5": -100}, user="someone", n=2, stop=["\n\n"],
            extra_body={"top_k": 20, "repetition_penalty": 1.1, "min_tokens": 1},
        )
    assert [c.index for c in reply.choices] == [0, 1]
    if engine.name == "serve-models":  # what it does not implement, it accepts with a warning (vLLM implements it)
        assert "ignoring repetition_penalty" in caplog.text
    again = api.chat.completions.create(
        model=TINY_BASE_NAME, messages=messages(), max_tokens=6, temperature=0.7, top_p=0.9, seed=3, presence_penalty=0.5,
        frequency_penalty=0.5, logit_bias={"5": -100}, n=2, extra_body={"top_k": 20, "min_tokens": 1},
    )
    if engine.name == "serve-models":  # seeded: reproducible (vLLM applies repetition_penalty, so the runs differ)
        assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]
    seeded = [api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=6, temperature=0.9, seed=11)
              .choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]

    # logit_bias acts: a token pushed to +100 is all that greedy decoding generates
    biased = api.completions.create(model=TINY_BASE_NAME, prompt="hello", max_tokens=5, temperature=0, logit_bias={"300": 100},
                                    extra_body={"ignore_eos": True})
    assert biased.usage.completion_tokens == 5
    tokens = api.completions.create(model=TINY_BASE_NAME, prompt="hello", max_tokens=5, temperature=0, logit_bias={"300": 100},
                                    logprobs=0, extra_body={"ignore_eos": True}).choices[0].logprobs.tokens
    assert len(tokens) == 5 and len(set(tokens)) == 1

    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), frequency_penalty=2.5)
    assert "frequency_penalty" in str(bad.value.body)


def test_json_object_output_parses(engine):
    for model, temperature in [(TINY_BASE_NAME, 0), ("team/bot", 0.8), (TINY_BASE_NAME, 1.0)]:
        reply = engine.api.chat.completions.create(model=model, messages=messages(), max_tokens=24, temperature=temperature, seed=1,
                                                   response_format={"type": "json_object"})
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        if engine.name == "vllm" and finish == "length":  # vLLM keeps the output JSON but may run out of tokens inside it
            assert JsonPrefix().feed(text) and text.startswith("{"), text
            continue
        assert isinstance(json.loads(text), dict), text  # serve-models closes what is open when the tokens run short


TICKET = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "count": {"type": "integer", "minimum": 0, "maximum": 999},
        "kind": {"enum": ["bug", "question", "praise"]},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
    },
    "required": ["name", "count", "kind", "urgent", "tags"],
    "additionalProperties": False,
}


def test_json_schema_output_follows_the_schema(engine):
    import jsonschema

    response_format = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": TICKET, "strict": True}}
    answers = set()
    for model, temperature, seed in [(TINY_BASE_NAME, 0, None), ("team/bot", 0, None), (TINY_BASE_NAME, 1.0, 1), (TINY_BASE_NAME, 1.0, 2)]:
        reply = engine.api.chat.completions.create(model=model, messages=messages(), max_tokens=160, temperature=temperature, seed=seed,
                                                   response_format=response_format)
        text = reply.choices[0].message.content
        jsonschema.validate(json.loads(text), TICKET)  # raises when it does not follow the schema
        answers.add(text)
    assert len(answers) >= 2  # the model chose the values: not one canned answer
    stream = engine.api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=160, temperature=0,
                                                response_format=response_format, stream=True)
    greedy = engine.api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=160, temperature=0,
                                                response_format=response_format)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == greedy.choices[0].message.content


def test_echo_with_logprobs_scores_the_prompt(engine):
    api = engine.api
    reply = api.completions.create(model=TINY_BASE_NAME, prompt="Reply with the word ok", max_tokens=2, temperature=0, echo=True,
                                   logprobs=2)
    choice = reply.choices[0]
    assert choice.text.startswith("Reply with the word ok")
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None and all(v <= 0 for v in logprobs.token_logprobs[1:])
    assert len(logprobs.tokens) == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert all(len(top) >= 2 for top in logprobs.top_logprobs[1:])  # vLLM adds the chosen token when it is not among them
    chat = api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=3, temperature=0, logprobs=True, top_logprobs=1)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(c.top_logprobs) == 1 for c in content)
    assert content[0].top_logprobs[0].logprob == pytest.approx(content[0].logprob)  # greedy: the chosen token is the top one


def test_an_unknown_model_is_a_404(engine):
    with pytest.raises(openai.NotFoundError) as missing:
        engine.api.chat.completions.create(model="team/nothing@3", messages=messages())
    assert "team/nothing@3" in str(missing.value.body)


def _gauge(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " "))


def _batched(engine: Engine) -> float:
    """serve-models: times requests started or joined a batch of several rows; vLLM: its engine's
    steps (a step advances every request in its batch by a token)."""
    text = httpx.get(f"{engine.url}/metrics").text
    if engine.name == "vllm":
        return _gauge(text, "vllm:iteration_tokens_total_count")
    return _gauge(text, "customizer_serving_batch_size_count") - _gauge(text, 'customizer_serving_batch_size_bucket{le="1.0"}')


def test_concurrent_requests_run_together_and_finish_sooner(engine):
    """Eight requests at once share the engine's batches, by the engine's own metrics, and finish
    sooner than eight in turn; every one still gets its full answer. (By how much, `python -m bench
    --only serving` measures: a shared machine makes wall time here a yes/no, tried up to three times.)"""
    def ask(_: int) -> int:
        return engine.api.completions.create(model="team/bot", prompt=PROMPT, max_tokens=24, temperature=0,
                                             extra_body={"ignore_eos": True}).usage.completion_tokens

    def together() -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(ask, range(8))) == [24] * 8
        return time.perf_counter() - started

    def shared(steps: float) -> bool:
        if engine.name == "vllm":  # one after another would take at least 8 x 24 steps
            return 24 <= steps < 96
        return steps >= 1

    ask(0)  # warm: the adapter resident
    steps = []  # a busy machine can spread the eight arrivals over many steps: tried up to three times
    for _ in range(3):
        before = _batched(engine)
        concurrent = together()
        steps.append(_batched(engine) - before)
        if shared(steps[-1]):
            break
    assert shared(steps[-1]), steps  # engine steps the eight requests took, per try
    timings = []
    for attempt in range(3):
        if attempt:
            concurrent = together()
        started = time.perf_counter()
        assert [ask(i) for i in range(8)] == [24] * 8
        sequential = time.perf_counter() - started
        timings.append((concurrent, sequential))
        if concurrent < sequential:
            break
    assert concurrent < sequential, timings  # (concurrent, sequential) seconds per try


def test_metrics_count_requests_and_tokens(engine):
    engine.api.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=3, temperature=0)
    text = httpx.get(f"{engine.url}/metrics").text
    if engine.name == "vllm":
        assert "vllm:request_success_total" in text and "vllm:generation_tokens_total" in text
        return
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
        with pytest.raises(openai.AuthenticationError):
            _client(url, "wrong").models.list()
        assert httpx.get(f"{url}/v1/models").status_code == 401
        team, other = _client(url, "team-key"), _client(url, "other-key")
        assert team.chat.completions.create(model="team/bot@1", messages=messages(), max_tokens=2).choices
        with pytest.raises(openai.PermissionDeniedError):
            other.chat.completions.create(model="team/bot@1", messages=messages(), max_tokens=2)
        assert other.chat.completions.create(model=TINY_BASE_NAME, messages=messages(), max_tokens=2).choices  # the base is everyone's
        assert "team/bot" in {m.id for m in team.models.list().data}
        assert {m.id for m in other.models.list().data} == {TINY_BASE_NAME}
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer team-key"}).status_code == 403
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer root-key"}).status_code == 200
