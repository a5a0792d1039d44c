"""``response_format: {"type": "json_schema"}`` on serve-models, driven by the official ``openai``
client: answers that follow the schema (greedy, sampled, on a LoRA adapter, several choices, both
routes, streamed, in one batch with rows under other constraints), a cut-short answer that is a
valid prefix, and 400s naming ``response_format`` for every schema that cannot be followed."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from core.settings import Settings
from serving.constrained import JsonPrefix
from tests.serving import TINY_BASE_NAME, make_adapter, running_server

pytestmark = pytest.mark.platform  # serve-models on uvicorn in this process

ADAPTER = "json-bot"
MESSAGES = [{"role": "user", "content": "File the order for item 7"}]
ORDER = {
    "type": "object",
    "properties": {
        "customer": {"type": "string", "maxLength": 8},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
        "status": {"enum": ["new", "paid", "shipped"]},
        "gift": {"type": "boolean"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1, "maxItems": 2},
        "note": {"anyOf": [{"type": "string", "maxLength": 6}, {"type": "null"}]},
    },
    "required": ["customer", "quantity", "status", "gift", "items", "note"],
    "additionalProperties": False,
    "$defs": {
        "item": {
            "type": "object",
            "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
                           "price": {"type": "integer", "minimum": 0, "maximum": 999}},
            "required": ["sku", "price"],
            "additionalProperties": False,
        },
    },
}
POINT = {"type": "object", "properties": {"x": {"type": "integer", "minimum": -99, "maximum": 99}, "y": {"type": "integer", "maximum": 0}},
         "required": ["x", "y"], "additionalProperties": False}
MAX_TOKENS = 300  # more than the longest answer ORDER allows (escaped characters included)


def schema_format(schema: dict, name: str = "order") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_model_dir):
    """serve-models on the tiny model, with a LoRA adapter of it loaded as ``json-bot``."""
    root = tmp_path_factory.mktemp("json-schema")
    settings = Settings(data_dir=root / "data", store_uri=(root / "store").as_uri())
    adapter = make_adapter(root / "adapter", tiny_model_dir, seed=5)
    with running_server(settings, tiny_model_dir) as (_, url):
        loaded = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": ADAPTER, "lora_path": str(adapter)}, timeout=120)
        assert loaded.status_code == 200, loaded.text
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(api: openai.OpenAI, model: str = TINY_BASE_NAME, schema: dict = ORDER, temperature: float = 0, **extra) -> Any:
    """A chat completion under ``schema``: greedy unless ``temperature`` says otherwise."""
    return api.chat.completions.create(model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=temperature,
                                       response_format=schema_format(schema), **extra)


def follows(text: str, schema: dict = ORDER) -> dict:
    """The answer parsed; fails the test when it is not JSON or does not follow ``schema``."""
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


def test_answers_follow_the_schema_greedy_sampled_and_on_an_adapter(api):
    answers = {}
    for model, temperature, seed in [(TINY_BASE_NAME, 0, None), (ADAPTER, 0, None), (TINY_BASE_NAME, 1.0, 1), (TINY_BASE_NAME, 1.0, 2),
                                     (TINY_BASE_NAME, 1.0, 3), (ADAPTER, 0.9, 4), (ADAPTER, 1.2, 5)]:
        choice = ask(api, model, temperature=temperature, seed=seed).choices[0]
        assert choice.finish_reason == "stop", choice  # complete: the grammar ended the answer
        follows(choice.message.content)
        answers[model, temperature, seed] = choice.message.content
    assert answers[TINY_BASE_NAME, 0, None] != answers[ADAPTER, 0, None]  # the adapter is in effect
    assert len(set(answers.values())) >= 5, answers  # the model chose the values: not one canned answer
    assert ask(api, ADAPTER, temperature=0.9, seed=4).choices[0].message.content == answers[ADAPTER, 0.9, 4]  # a seed repeats

    # The same requests without the schema do not give such JSON: the constraint is what makes it.
    for model in (TINY_BASE_NAME, ADAPTER):
        free = api.chat.completions.create(model=model, messages=MESSAGES, max_tokens=60, temperature=0).choices[0].message.content
        with pytest.raises((json.JSONDecodeError, jsonschema.ValidationError)):
            follows(free)


def test_several_choices_and_the_completions_route_follow_the_schema(api):
    reply = ask(api, temperature=1.0, seed=11, n=3)
    texts = [c.message.content for c in reply.choices]
    for text in texts:
        follows(text)
    assert len(set(texts)) > 1, texts  # each choice draws on its own

    for temperature in (0, 1.0):
        completion = api.completions.create(model=ADAPTER, prompt="Order:", max_tokens=MAX_TOKENS, temperature=temperature, seed=3,
                                            extra_body={"response_format": schema_format(POINT, "point")})
        assert completion.choices[0].finish_reason == "stop"
        follows(completion.choices[0].text, POINT)


def test_streaming_gives_the_text_of_the_same_request_unstreamed(api):
    for model, temperature, seed in [(TINY_BASE_NAME, 0, None), (ADAPTER, 1.0, 9)]:
        whole = ask(api, model, temperature=temperature, seed=seed).choices[0]
        chunks = list(ask(api, model, temperature=temperature, seed=seed, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == whole.message.content
        follows(streamed)
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_rows_in_one_batch_keep_their_own_constraints(api):
    def chat(model: str, **extra) -> str:
        return api.chat.completions.create(model=model, messages=MESSAGES, temperature=0, **extra).choices[0].message.content

    requests = {
        "order": lambda: ask(api).choices[0].message.content,
        "point": lambda: ask(api, ADAPTER, POINT, temperature=1.0, seed=2).choices[0].message.content,
        "object": lambda: chat(ADAPTER, max_tokens=MAX_TOKENS, response_format={"type": "json_object"}),
        "plain": lambda: chat(TINY_BASE_NAME, max_tokens=24),
        "order-sampled": lambda: ask(api, ADAPTER, temperature=1.0, seed=8).choices[0].message.content,
    }
    alone = {name: call() for name, call in requests.items()}
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = {name: pool.submit(call) for name, call in requests.items()}
        together = {name: future.result() for name, future in futures.items()}
    follows(together["order"])
    follows(together["order-sampled"])
    follows(together["point"], POINT)
    assert isinstance(json.loads(together["object"]), dict)
    assert together == alone  # greedy rows equal, seeded rows reproduce: another row's constraint changes nothing


def test_an_answer_cut_short_is_a_valid_prefix(api):
    choice = api.chat.completions.create(model=TINY_BASE_NAME, messages=MESSAGES, max_tokens=6, temperature=0,
                                         response_format=schema_format(ORDER)).choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content.startswith('{"customer":') and JsonPrefix().feed(choice.message.content), choice.message.content


def _refusal(api: openai.OpenAI, response_format: dict) -> dict:
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(model=TINY_BASE_NAME, messages=MESSAGES, max_tokens=4, response_format=response_format)
    assert refused.value.status_code == 400
    body = refused.value.body
    return body.get("error", body) if isinstance(body, dict) else {}


@pytest.mark.parametrize("response_format", [
    {"type": "json_schema"},
    {"type": "json_schema", "json_schema": {"name": "x"}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": "an object"}},
], ids=["no-json_schema", "no-schema", "schema-not-an-object"])
def test_a_missing_schema_is_a_400_naming_json_schema(api, response_format):
    error = _refusal(api, response_format)
    assert error["param"] == "response_format.json_schema" and "`response_format.json_schema.schema` is required" in error["message"]


@pytest.mark.parametrize(("schema", "says"), [
    ({"type": 5}, "type must be a string"),
    ({"type": "string", "pattern": "("}, "regex parse error"),
    ({"$ref": "#/$defs/missing"}, "/$defs/missing"),
    ({"not": {"type": "string"}}, "Unimplemented keys"),
    ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "Unimplemented keys"),
    ({"type": "array", "uniqueItems": True}, "Unimplemented keys"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "Unsatisfiable schema"),
], ids=["bad-type", "bad-pattern", "missing-ref", "not", "if-then", "uniqueItems", "unsatisfiable"])
def test_a_schema_the_library_refuses_is_a_400_with_its_reason(api, schema, says):
    error = _refusal(api, schema_format(schema))
    assert error["param"] == "response_format" and "cannot be followed" in error["message"] and says in error["message"], error
    follows(ask(api, schema=POINT).choices[0].message.content, POINT)  # the server answers on


def test_without_the_library_the_400_names_the_package(api, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)  # as if it were not installed
    error = _refusal(api, schema_format(POINT))
    assert error["param"] == "response_format" and "pip install llguidance" in error["message"], error
    monkeypatch.undo()
    follows(ask(api, schema=POINT).choices[0].message.content, POINT)
