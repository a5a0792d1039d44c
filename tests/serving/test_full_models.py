"""serve-models serves full-weight versions (a full fine-tune's published folder) by the same names,
routes and rules as adapters, driven by the official ``openai`` client: a version by number and a
trusted champion answer with their own weights (and own tokenizer when they ship one), a file
changed in the store after publication is refused, another architecture is refused, at most
``max_full_models`` stay in memory, and concurrent requests batch together."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from core import tags as tag
from core import tracking
from core.settings import Settings
from deploy import registry
from deploy.store import publish, publishable_files
from tests.deploy import sign_decision
from tests.serving import TINY_BASE_NAME, running_server

pytestmark = pytest.mark.platform  # serve-models on uvicorn in this process

PROMPT = "Reply with the word ok. Item 7"
# A system turn the ChatML template of ``team/talk``'s own tokenizer adds: its prompts differ from the base's.
OWN_TEMPLATE = (
    "{{ '<|im_start|>system\\nwhat is the answer<|im_end|>\\n' }}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def make_full_model(folder: Path, base_dir: Path, seed: int, template: str | None = None) -> Path:
    """The tiny model with every weight moved by seeded noise, saved as a full fine-tune saves it
    (no tokenizer unless ``template`` gives it its own chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(folder)
    if template is not None:
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        tokenizer.chat_template = template
        tokenizer.save_pretrained(folder)
    return folder


def reference(model_dir: Path, tokenizer_dir: Path, content: str, max_tokens: int, chat: bool = True) -> str:
    """Greedy decoding with transformers directly on ``model_dir`` (fp32, as serve-models runs on a CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True) \
        if chat else content
    ids = tokenizer(prompt, add_special_tokens=not chat, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def publish_full(settings: Settings, folder: Path, model: str, version: str) -> str:
    return publish(folder, publishable_files(folder), model, version, TINY_BASE_NAME, {}, settings).uri


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """A file store with full-weight versions of the tiny model: ``team/full`` v1 (the trusted
    champion, registered as a full fine-tune is) and v2 (published only), ``team/talk`` v1 with its
    own tokenizer, ``team/odd`` v1 of another architecture, and ``team/tampered`` v1 whose weights
    were changed in the store after publication."""
    root = tmp_path_factory.mktemp("full")
    settings = Settings(data_dir=root / "data", store_uri=(root / "store").as_uri())
    folders = {name: make_full_model(root / name.replace("/", "-").replace("@", "-"), tiny_model_dir, seed)
               for seed, name in enumerate(["team/full@1", "team/full@2", "team/odd@1", "team/tampered@1"], start=1)}
    folders["team/talk@1"] = make_full_model(root / "team-talk-1", tiny_model_dir, 5, template=OWN_TEMPLATE)

    run_id = tracking.start_run(settings, "cust-team-full", tags={}, params={})
    version = registry.register_version(settings, "team/full", str(folders["team/full@1"]), run_id,
                                        {tag.ARTIFACT: "model", tag.BASE_MODEL: TINY_BASE_NAME}).version
    assert version == "1"
    uri = publish_full(settings, folders["team/full@1"], "team/full", version)
    registry.set_version_tags(settings, "team/full", version, {"customizer.published_uri": uri})
    sign_decision(settings, "team/full", version)
    registry.promote(settings, "team/full", version)

    publish_full(settings, folders["team/full@2"], "team/full", "2")
    publish_full(settings, folders["team/talk@1"], "team/talk", "1")
    config = json.loads((folders["team/odd@1"] / "config.json").read_text())
    (folders["team/odd@1"] / "config.json").write_text(json.dumps(config | {"architectures": ["MistralForCausalLM"]}))
    publish_full(settings, folders["team/odd@1"], "team/odd", "1")
    stored = Path(publish_full(settings, folders["team/tampered@1"], "team/tampered", "1").removeprefix("file://")) / "model.safetensors"
    data = bytearray(stored.read_bytes())
    data[-100] ^= 0xFF  # one byte of the weights, after the manifest recorded their sha256
    stored.write_bytes(bytes(data))
    return settings, folders


@pytest.fixture(scope="module")
def served(world, tiny_model_dir):
    settings, _ = world
    with running_server(settings, tiny_model_dir) as (server, url):
        yield server, url, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def chat(api: openai.OpenAI, model: str, content: str = PROMPT, max_tokens: int = 8) -> str:
    reply = api.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0)
    return reply.choices[0].message.content


def test_a_full_weight_version_answers_with_its_own_weights(world, served, tiny_model_dir):
    _, folders = world
    server, _, api = served
    base = chat(api, TINY_BASE_NAME)
    full = chat(api, "team/full@1")
    assert full == reference(folders["team/full@1"], tiny_model_dir, PROMPT, 8) != base  # its weights, the base's tokenizer
    completion = api.completions.create(model="team/full@1", prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
    assert completion == reference(folders["team/full@1"], tiny_model_dir, PROMPT, 8, chat=False)
    chunks = api.chat.completions.create(model="team/full@1", messages=[{"role": "user", "content": PROMPT}], max_tokens=8,
                                         temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full
    assert chat(api, TINY_BASE_NAME) == base  # the base is untouched
    assert server.full.get("team/full@1").model.dtype == server.model.dtype


def test_a_version_with_its_own_tokenizer_uses_it(world, served, tiny_model_dir):
    _, folders = world
    _, _, api = served
    own = reference(folders["team/talk@1"], folders["team/talk@1"], PROMPT, 8)
    assert chat(api, "team/talk@1") == own != reference(folders["team/talk@1"], tiny_model_dir, PROMPT, 8)


def test_the_trusted_champion_answers_and_is_listed(world, served, tiny_model_dir):
    _, folders = world
    _, _, api = served
    assert chat(api, "team/full") == reference(folders["team/full@1"], tiny_model_dir, PROMPT, 8)
    listed = {m.id: m for m in api.models.list().data}
    assert listed["team/full"].model_extra["root"] == "team/full@1"
    assert listed["team/full"].model_extra["parent"] == TINY_BASE_NAME
    assert "team/full@1" in listed  # known once used, as adapters are


def test_a_file_changed_after_publication_is_refused(served):
    server, _, api = served
    for _ in range(2):  # refused each time, never served from what was downloaded
        with pytest.raises(openai.ConflictError) as refused:
            chat(api, "team/tampered@1")
        assert "does not match its manifest" in str(refused.value.body) and "team/tampered@1" in str(refused.value.body)
    assert server.full.get("team/tampered@1") is None


def test_another_architecture_is_refused_naming_the_model(served):
    server, _, api = served
    with pytest.raises(openai.BadRequestError) as refused:
        chat(api, "team/odd@1")
    body = str(refused.value.body)
    assert "team/odd@1" in body and "MistralForCausalLM" in body and refused.value.body["param"] == "model"
    assert server.full.get("team/odd@1") is None


def test_full_weights_are_not_loaded_as_an_adapter(world, served):
    settings, _ = world
    _, url, _ = served
    uri = f"{settings.publish_uri.rstrip('/')}/team/full/2/"
    answer = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "full-as-lora", "lora_path": uri})
    assert answer.status_code == 400 and "adapter_config.json" in answer.json()["error"]["message"]


def test_one_full_model_in_memory_evicts_and_reloads(world, tiny_model_dir):
    settings, folders = world
    expected = {name: reference(folders[name], tiny_model_dir, PROMPT, 6) for name in ("team/full@1", "team/full@2")}
    assert expected["team/full@1"] != expected["team/full@2"]
    with running_server(settings, tiny_model_dir) as (server, url):
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        for name in ["team/full@1", "team/full@2", "team/full@1", "team/full@2", "team/full@2"]:
            assert chat(api, name, max_tokens=6) == expected[name]
            assert list(server.full.resident) == [name]  # the other one was evicted
        assert server.full.get("team/full@1").model is None
        assert (server.full.get("team/full@1").loads, server.full.get("team/full@2").loads) == (2, 2)
        resident = {m.id: m.model_extra.get("resident") for m in api.models.list().data}
        assert resident["team/full@1"] is False and resident["team/full@2"] is True

        # Both asked for at once: each batch waits for the other's to end, then evicts it.
        names = ["team/full@1", "team/full@2"] * 4
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda name: chat(api, name, max_tokens=6), names))
        assert answers == [expected[name] for name in names]
        assert len(server.full.resident) == 1


def test_concurrent_requests_to_one_full_model_all_succeed(world, served, tiny_model_dir):
    _, folders = world
    server, _, api = served
    prompts = [f"Reply with the word ok. Item {i}" for i in range(8)]
    alone = [reference(folders["team/full@2"], tiny_model_dir, p, 10) for p in prompts]
    chat(api, "team/full@2", max_tokens=1)  # resident before the burst

    def shared_batches() -> float:  # batches that started or grew to more than one row
        sample = server.metrics.registry.get_sample_value
        return sample("customizer_serving_batch_size_count") - sample("customizer_serving_batch_size_bucket", {"le": "1.0"})

    before = shared_batches()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: chat(api, "team/full@2", p, max_tokens=10), prompts))
    assert answers == alone  # each answer as if alone
    assert shared_batches() > before  # batched together


def test_an_unknown_full_version_is_a_404(served):
    _, _, api = served
    with pytest.raises(openai.NotFoundError):
        chat(api, "team/full@9")


def test_preload_loads_a_full_version_before_any_request(served):
    server, _, _ = served
    server.full.preload(server.acquire("team/full@2"))
    full = server.acquire("team/talk@1")
    loads = full.loads
    server.full.preload(full)  # what `serve-models --preload team/talk@1` does
    assert list(server.full.resident) == ["team/talk@1"] and full.model is not None and full.loads == loads + 1
