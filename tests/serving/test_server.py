"""serve-models over HTTP (uvicorn on a free port) on the tiny model, with adapters published to a
file store: adapters per request (mixed in batches), vLLM's load/unload routes, the LRU bound,
OpenAI-style errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from core.processes import free_port, stop_processes, wait_until_healthy
from core.settings import Settings
from deploy.store import publish
from tests.conftest import TINY_CONFIG_URN
from tests.serving import TINY_BASE_NAME, make_adapter, reference_chat, running_server

pytestmark = pytest.mark.platform  # serve-models on uvicorn: in this process, and as a command

PROMPT = "Reply with the word ok. Item 7"
FILES = ["adapter_config.json", "adapter_model.safetensors"]
NAMES = ["team/alpha", "team/beta", "team/gamma"]


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_model_dir):
    """Three adapters of the tiny model, published as version 1 to a file store."""
    root = tmp_path_factory.mktemp("serving")
    settings = Settings(data_dir=root / "data", store_uri=(root / "store").as_uri())
    folders = {}
    for seed, name in enumerate(NAMES):
        folders[name] = make_adapter(root / name.replace("/", "-"), tiny_model_dir, seed=seed)
        publish(folders[name], FILES, name, "1", TINY_BASE_NAME, {}, settings)
    return settings, folders


@pytest.fixture(scope="module")
def served(published, tiny_model_dir):
    settings, folders = published
    with running_server(settings, tiny_model_dir, max_adapters=2) as (server, url):
        with httpx.Client(base_url=url, timeout=120) as client:
            yield server, client, folders


@pytest.fixture(scope="module")
def expected(published, tiny_model_dir):
    """Greedy answers of the base and of each adapter alone, straight from transformers + PEFT."""
    _, folders = published
    answers = {TINY_BASE_NAME: reference_chat(tiny_model_dir, None, PROMPT, 8)}
    answers |= {name: reference_chat(tiny_model_dir, folder, PROMPT, 8) for name, folder in folders.items()}
    assert len(set(answers.values())) == len(answers), answers  # every model answers differently
    return answers


def chat(client: httpx.Client, model: str, **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, "temperature": 0} | extra
    return client.post("/v1/chat/completions", json=body)


def answer(client: httpx.Client, model: str) -> str:
    response = chat(client, model)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_two_adapters_of_one_base_are_swapped_per_request(served, expected):
    server, client, _ = served
    models = [TINY_BASE_NAME, "team/alpha@1", "team/beta@1"] * 6
    with ThreadPoolExecutor(4) as pool:  # interleaved, concurrent requests for different adapters
        answers = list(pool.map(lambda m: answer(client, m), models))
    assert answers == [expected[m.partition("@")[0]] for m in models]
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed[TINY_BASE_NAME]["parent"] is None
    assert listed["team/alpha@1"]["parent"] == listed["team/beta@1"]["parent"] == TINY_BASE_NAME


def test_adapters_held_in_memory_are_bounded_least_recently_used_first(served, expected):
    server, client, _ = served
    for model in ["team/alpha@1", "team/beta@1", "team/gamma@1"]:
        assert answer(client, model) == expected[model.partition("@")[0]]
    assert list(server.resident) == ["team/beta@1", "team/gamma@1"]  # alpha, least recently used, went
    assert len(server.peft.peft_config) == 2  # and its weights with it
    loads = server.loads
    assert answer(client, "team/alpha@1") == expected["team/alpha"]  # back from its verified local copy
    assert server.loads == loads + 1 and list(server.resident) == ["team/gamma@1", "team/alpha@1"]
    resident = [m["id"] for m in client.get("/v1/models").json()["data"] if m.get("resident")]
    assert sorted(resident) == ["team/alpha@1", "team/gamma@1"]


def test_load_and_unload_routes_take_vllm_bodies(served, published, expected, tmp_path, tiny_model_dir):
    server, client, folders = served
    settings, _ = published
    load = lambda **body: client.post("/v1/load_lora_adapter", json=body)  # noqa: E731
    unload = lambda **body: client.post("/v1/unload_lora_adapter", json=body)  # noqa: E731

    response = load(lora_name="mine", lora_path=str(folders["team/gamma"]))  # a plain folder, as vLLM takes
    assert response.status_code == 200 and response.text == "Success: LoRA adapter 'mine' added successfully."
    assert answer(client, "mine") == expected["team/gamma"]
    assert load(lora_name="mine", lora_path=str(folders["team/gamma"])).status_code == 200  # the same again: a no-op
    clash = load(lora_name="mine", lora_path=str(folders["team/alpha"]))
    assert clash.status_code == 400 and "has already been loaded" in clash.json()["error"]["message"]
    assert load(lora_name="mine", lora_path=str(folders["team/alpha"]), load_inplace=True).status_code == 200
    assert answer(client, "mine") == expected["team/alpha"]

    # A published version's URI is fetched from the store and verified.
    assert load(lora_name="beta-live", lora_path=f"{settings.publish_uri}/team/beta/1/").status_code == 200
    assert answer(client, "beta-live") == expected["team/beta"]
    assert "mine" in {m["id"] for m in client.get("/v1/models").json()["data"]}

    assert unload(lora_name="mine").status_code == 200
    gone = unload(lora_name="mine")
    assert gone.status_code == 404 and gone.json()["error"]["message"] == "The lora adapter 'mine' cannot be found."
    missing = chat(client, "mine")
    assert missing.status_code == 404 and "team/alpha@1" in missing.json()["error"]["message"]  # lists what is loadable
    assert unload(lora_name="beta-live").status_code == 200

    other = make_adapter(tmp_path / "other", tiny_model_dir)
    (other / "adapter_config.json").write_text(json.dumps(json.loads((other / "adapter_config.json").read_text()) | {"base_model_name_or_path": "other/base"}))
    wrong_base = load(lora_name="other", lora_path=str(other))
    assert wrong_base.status_code == 400 and "trained on other/base" in wrong_base.json()["error"]["message"]
    nowhere = load(lora_name="x", lora_path=str(tmp_path / "nowhere"))
    assert nowhere.status_code == 400 and nowhere.json()["error"]["param"] == "lora_path"
    assert load(lora_name=TINY_BASE_NAME, lora_path=str(other)).status_code == 400
    no_path = client.post("/v1/load_lora_adapter", json={"lora_name": "x"})
    assert no_path.status_code == 400 and no_path.json()["error"]["param"] == "lora_path"


def test_bad_requests_get_openai_errors_naming_the_field(served):
    _, client, _ = served
    unknown = chat(client, "nope")
    error = unknown.json()["error"]
    assert unknown.status_code == 404 and error["param"] == "model" and "team/beta@1" in error["message"]
    unpublished = chat(client, "team/alpha@9")
    assert unpublished.status_code == 404 and "not published" in unpublished.json()["error"]["message"]
    extra = chat(client, TINY_BASE_NAME, bogus=1)
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "bogus"
    no_messages = client.post("/v1/chat/completions", json={"model": TINY_BASE_NAME})
    assert no_messages.status_code == 400 and no_messages.json()["error"]["param"] == "messages"
    broken = client.post("/v1/completions", content=b"{broken", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "JSON" in broken.json()["error"]["message"]
    assert chat(client, TINY_BASE_NAME, n=17).json()["error"]["param"] == "n"
    assert chat(client, TINY_BASE_NAME, n=2, stream=True).json()["error"]["param"] == "n"
    assert chat(client, TINY_BASE_NAME, presence_penalty=3).json()["error"]["param"] == "presence_penalty"
    schemaless = chat(client, TINY_BASE_NAME, response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert schemaless.status_code == 400 and schemaless.json()["error"]["param"] == "response_format.json_schema"
    unfollowable = chat(client, TINY_BASE_NAME, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}})
    assert unfollowable.status_code == 400 and unfollowable.json()["error"]["param"] == "response_format"
    assert "cannot be followed" in unfollowable.json()["error"]["message"]
    too_long = client.post("/v1/completions", json={"model": TINY_BASE_NAME, "prompt": "hi", "max_tokens": 100_000})
    assert too_long.status_code == 400 and "maximum context length is 512" in too_long.json()["error"]["message"]
    bad_ids = client.post("/v1/completions", json={"model": TINY_BASE_NAME, "prompt": [1, 10**9]})
    assert bad_ids.status_code == 400 and bad_ids.json()["error"]["param"] == "prompt"
    nothing = client.get("/v1/nothing")
    assert nothing.status_code == 404 and "error" in nothing.json()
    for response in (unknown, extra, no_messages, broken, too_long, nothing, schemaless, unfollowable):
        assert "Traceback" not in response.text


def test_completions_score_prompts_with_echo_and_logprobs(served, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, client, _ = served
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer("Reply with the word ok", add_special_tokens=False)["input_ids"]
    body = {"model": TINY_BASE_NAME, "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1 and logprobs["token_logprobs"][0] is None
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    direct = [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert logprobs["token_logprobs"][1:len(ids)] == pytest.approx(direct, abs=1e-4)
    greedy_next = int(logp[-1].argmax())
    assert logprobs["top_logprobs"][len(ids)] == {tokenizer.decode([greedy_next]): pytest.approx(float(logp[-1].max()), abs=1e-4)}
    assert choice["text"].startswith(tokenizer.decode(ids))

    batch = client.post("/v1/completions", json={"model": "team/beta@1", "prompt": ["one", "two"], "max_tokens": 3, "temperature": 0}).json()
    assert [c["index"] for c in batch["choices"]] == [0, 1] and batch["usage"]["completion_tokens"] <= 6


def test_streamed_chat_matches_the_whole_answer(served, expected):
    _, client, _ = served
    body = {"model": "team/beta@1", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, "temperature": 0, "stream": True}
    events = []
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == expected["team/beta"] and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_the_serve_models_command_serves_published_adapters(published, expected, tiny_config_dir, tmp_path):
    settings, _ = published
    port = free_port()
    env = os.environ | {"CUSTOMIZER_DATA_DIR": str(settings.data_dir), "CUSTOMIZER_STORE_URI": settings.publish_uri}
    command = [sys.executable, "-m", "customizer.cli", "serve-models", "--config", TINY_CONFIG_URN, "--port", str(port), "--max-adapters", "1"]
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen(command, cwd=Path(__file__).parents[2], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(f"{url}/health", process, 180, tmp_path / "serve.log", what="serve-models")
        with httpx.Client(base_url=url, timeout=60) as client:
            assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [TINY_BASE_NAME]
            assert answer(client, "team/gamma@1") == expected["team/gamma"]
            assert answer(client, TINY_CONFIG_URN) == expected[TINY_BASE_NAME]  # the config URN names the base too
    finally:
        stop_processes(process, grace=30)
        log.close()


def test_base_weights_stay_bit_exact_however_many_swaps(served, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    server, client, _ = served
    for model in ["team/alpha@1", "team/beta@1", "team/gamma@1", "team/alpha@1"] * 3:
        assert chat(client, model).status_code == 200
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    with server.active(None):
        served_weights = {
            name.replace(".base_layer", ""): value for name, value in server.model.state_dict().items() if "lora_" not in name
        }
    assert served_weights.keys() == fresh.keys()
    assert all(torch.equal(served_weights[name], fresh[name]) for name in fresh)


def test_streamed_completions_hold_back_stop_sequences_and_refuse_bad_requests_before_streaming(served):
    _, client, _ = served

    def stream(**body) -> list[str]:
        with client.stream("POST", "/v1/completions", json={"model": "team/alpha@1", "temperature": 0, "stream": True} | body) as response:
            return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]

    whole = client.post("/v1/completions", json={"model": "team/alpha@1", "prompt": "the", "max_tokens": 12, "temperature": 0}).json()
    text = whole["choices"][0]["text"]
    stop = text[3:6]  # a stop sequence that appears in the middle of the answer
    expected = text[: text.find(stop)]
    events = stream(prompt="the", max_tokens=12, stop=[stop])
    pieces = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert "".join(pieces) == expected and stop not in "".join(pieces)
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop" and events[-1] == "[DONE]"

    body = {"model": "team/alpha@1", "prompt": "the", "max_tokens": 100_000, "stream": True}
    refused = client.post("/v1/completions", json=body)  # checked before the stream starts, as vLLM does
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"
