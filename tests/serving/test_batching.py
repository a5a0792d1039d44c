"""Batching in serve-models: requests that arrive together run as one batch, adapters mixed, and
each answer is what the request gets alone (greedy: equal; seeded sampling: reproducible); many
clients are served faster together than one after another."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from core.settings import Settings
from serving.generation import Options
from tests.serving import TINY_BASE_NAME, make_adapter, reference_chat, running_server

pytestmark = pytest.mark.platform  # serve-models on uvicorn, in this process

PROMPT = "Reply with the word ok. Item 7"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("batching")
    settings = Settings(data_dir=root / "data")
    folders = {f"a{i}": make_adapter(root / f"a{i}", tiny_model_dir, seed=10 + i) for i in range(3)}
    with running_server(settings, tiny_model_dir, max_adapters=4) as (server, url):
        for name, folder in folders.items():
            server.load(name, str(folder))
        yield server, url, folders


def batches(server) -> tuple[float, float]:
    """(batches run, requests in them) so far."""
    sample = server.metrics.registry.get_sample_value
    return sample("customizer_serving_batch_size_count") or 0.0, sample("customizer_serving_batch_size_sum") or 0.0


def run_together(server, requests: list[tuple[str | None, str, Options]]) -> list:
    """Submit every request within one batching window; their answers, in order."""
    window, server.scheduler.window = server.scheduler.window, 1.0
    try:
        before = batches(server)
        jobs = [server.submit(server.acquire(model) if model else None, prompt, options) for model, prompt, options in requests]
        results = [job.wait() for job in jobs]
        after = batches(server)
    finally:
        server.scheduler.window = window
    assert after[0] - before[0] == 1 and after[1] - before[1] == len(requests)  # one batch held them all
    return results


def test_greedy_answers_in_a_mixed_batch_equal_the_answers_alone(served, tiny_model_dir):
    server, _, folders = served
    chat = server.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    greedy = Options(max_tokens=8, temperature=0)
    requests = [(model, chat, greedy) for model in [None, "a0", "a1", "a2", "a1", None]]
    requests += [(None, "hi", Options(max_tokens=12, temperature=0)),  # a short prompt: the most padding
                 ("a2", "what is the capital of the word ok item hello yes", Options(max_tokens=3, temperature=0))]
    together = run_together(server, requests)
    alone = [server.generate(server.acquire(m) if m else None, p, o) for m, p, o in requests]
    assert [r.output_ids for r in together] == [r.output_ids for r in alone]
    expected = {None: reference_chat(tiny_model_dir, None, PROMPT, 8)} | {
        name: reference_chat(tiny_model_dir, folder, PROMPT, 8) for name, folder in folders.items()}
    assert len(set(expected.values())) == 4  # every adapter answers differently
    assert [r.text for r in together[:6]] == [expected[m] for m, _, _ in requests[:6]]
    assert [len(r.output_ids) for r in together[6:]] == [12, 3]  # each row stops at its own max_tokens


def test_each_row_keeps_its_own_options(served):
    server, _, _ = served
    first = server.generate(None, "hello", Options(max_tokens=10, temperature=0, ignore_eos=True)).text
    stop = first[2:4]
    seeded = Options(max_tokens=10, temperature=1.0, seed=7)
    alone = server.generate(None, "hello", seeded)
    results = run_together(server, [
        (None, "hello", Options(max_tokens=10, temperature=1.0)),  # unseeded neighbours draw from their own generators
        (None, "hello", seeded),
        (None, "hello", Options(max_tokens=10, temperature=0, ignore_eos=True, stop=[stop])),
        ("a0", "hello", Options(max_tokens=10, temperature=1.0, seed=8)),
    ])
    assert results[1].output_ids == alone.output_ids  # a seeded request gives the same tokens in any batch
    assert results[2].text == first[:first.find(stop)] and results[2].finish_reason == "stop"


def test_concurrent_requests_are_served_faster_than_sequential_ones(served):
    server, url, _ = served
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

    def ask(model: str) -> int:
        reply = api.completions.create(model=model, prompt="hello", max_tokens=48, temperature=0, extra_body={"ignore_eos": True})
        return reply.usage.completion_tokens

    models = [TINY_BASE_NAME, "a0", "a1", "a2"] * 2
    ask(TINY_BASE_NAME)  # warm
    started = time.perf_counter()
    assert [ask(m) for m in models] == [48] * 8
    sequential = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(len(models)) as pool:
        assert list(pool.map(ask, models)) == [48] * 8
    concurrent = time.perf_counter() - started
    assert concurrent < 0.8 * sequential, (concurrent, sequential)


def test_requests_join_a_running_batch_and_answer_as_alone(served):
    import queue

    server, _, _ = served
    requests = [(None, "hi", Options(max_tokens=6, temperature=0)),  # shorter than the running row's cache
                ("a1", "what is the capital of the word ok item hello yes no answer question support ticket " * 3,
                 Options(max_tokens=5, temperature=0)),  # longer than it
                ("a2", "hello", Options(max_tokens=4, temperature=0.8, seed=11))]
    alone = [server.generate(server.acquire(m) if m else None, p, o) for m, p, o in requests]
    running = server.submit(server.acquire("a0"), "hello there", Options(max_tokens=400, temperature=0, ignore_eos=True), stream=queue.Queue())
    assert running.stream.get(timeout=60)  # it is generating
    joined = [server.submit(server.acquire(m) if m else None, p, o) for m, p, o in requests]
    results = [job.wait() for job in joined]
    assert not running.done.is_set()  # they were answered while it ran: they joined its batch
    assert [r.output_ids for r in results] == [r.output_ids for r in alone]
    assert len(running.wait().output_ids) == 400


def test_a_failing_batch_fails_its_requests_and_the_server_goes_on(served, monkeypatch):
    import serving.batching

    server, _, _ = served

    def broken(rows, last):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(serving.batching, "_step", broken)
    jobs = [server.submit(None, "hello", Options(max_tokens=4, temperature=0)) for _ in range(3)]
    for job in jobs:
        with pytest.raises(RuntimeError, match="the model broke"):
            job.wait()
    monkeypatch.undo()
    assert len(server.generate(None, "hello", Options(max_tokens=4, temperature=0, ignore_eos=True)).output_ids) == 4
