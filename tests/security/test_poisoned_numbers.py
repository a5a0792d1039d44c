"""Numbers and strings no model of the API can hold (huge integers, infinities, NaN, negative seeds, lone
surrogates) and a Data Store commit line over the cap are refused naming the field, never a 500, and
neither leaves the API broken or holding the upload in memory."""

from __future__ import annotations

import json
import threading
import time

import httpx
import psutil
import pytest

from api import limits
from tests.security.conftest import names_field, refused

pytestmark = pytest.mark.platform
LISTS = ["/v1/customization/jobs", "/v1/datasets", "/v1/evaluation/jobs", "/v1/models"]


def _raw(client: httpx.Client, body: dict) -> httpx.Response:
    """POST ``body`` as JSON text as Python writes it: NaN and lone surrogates (as \\ud800) go through unchanged."""
    return client.post("/v1/customization/jobs", content=json.dumps(body, allow_nan=True).encode(), headers={"content-type": "application/json"})


def _cancel(client: httpx.Client, answer: httpx.Response) -> None:
    if answer.status_code == 200:
        client.post(f"/v1/customization/jobs/{answer.json()['id']}/cancel")  # not a test of training: stop it


@pytest.mark.parametrize(("field", "change"), [
    ("seed", {"seed": 2**80}),
    ("alpha", {"lora": {"alpha": 1e30}}),
    ("learning_rate", {"learning_rate": float("nan")}),
    ("learning_rate", {"learning_rate": float("inf")}),
    ("seed", {"seed": -1}),
], ids=["seed-2**80", "alpha-1e30", "learning_rate-NaN", "learning_rate-Infinity", "seed--1"])
def test_poisoned_hyperparameters_are_refused(platform, world, team_a, field, change):
    """Guards the job spec against values no trainer can use: 422 naming the field, never a 500."""
    body = world.job_body()
    body["hyperparameters"] |= change
    answer = _raw(team_a, body)
    _cancel(team_a, answer)
    refused(platform, answer)
    names_field(answer, field)


def test_lone_surrogate_is_refused(platform, world, team_a):
    """Guards storage and logs against text that cannot be encoded: a lone surrogate in `description` is a
    422 naming the field."""
    answer = _raw(team_a, world.job_body(description="\ud800"))
    _cancel(team_a, answer)
    refused(platform, answer)
    names_field(answer, "description")


@pytest.mark.parametrize("path", LISTS)
def test_poisoned_list_parameters_are_refused(platform, world, team_a, path):
    """Guards the list routes: page_size=1e999 and page=-1 are 422s naming the parameter; limit=1e999 is
    no 500; afterwards the job list still answers."""
    names_field(refused(platform, team_a.get(path, params={"page_size": "1e999"})), "page_size")
    names_field(refused(platform, team_a.get(path, params={"page": "-1"})), "page")
    limit = team_a.get(path, params={"limit": "1e999"})
    assert limit.status_code < 500 and "Traceback" not in limit.text, limit.text
    if limit.status_code == 422:
        assert "limit" in limit.text
    assert team_a.get("/v1/customization/jobs").status_code == 200


def _api_process(platform) -> psutil.Process:
    """The REST API's uvicorn process among `customizer up`'s descendants."""
    for child in psutil.Process(platform.process.pid).children(recursive=True):
        try:
            if "api.app:app_from_environment" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("no uvicorn process of the REST API under customizer up")


def _line_cap() -> int:
    """The API's cap on one commit line (64 MiB where it states none)."""
    return getattr(limits, "MAX_COMMIT_LINE_BYTES", 64 << 20)


def test_commit_line_over_the_cap_is_refused_in_bounded_memory(platform, world, team_a):
    """Guards the API's memory: a commit whose single line is a few MiB over the per-line cap is refused
    (4xx, or the connection closed by the server) and the API process never grows by anything near the upload."""
    size = _line_cap() + (4 << 20)
    created = team_a.post("/v1/hf/api/repos/create", json={"name": "big", "organization": "team-a", "type": "dataset"})
    assert created.status_code in (200, 409), created.text
    api = _api_process(platform)
    before = api.memory_info().rss
    peak, stop = [before], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], api.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    def body():
        yield json.dumps({"key": "header", "value": {"summary": "big"}}).encode() + b"\n"
        yield b'{"key": "file", "value": {"path": "big.jsonl", "encoding": "base64", "content": "'
        chunk = b"A" * (1 << 20)
        for _ in range(size // len(chunk)):
            yield chunk
        yield b'"}}\n'

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        answer = team_a.post("/v1/hf/api/datasets/team-a/big/commit/main", content=body(), headers={"content-type": "application/x-ndjson"})
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        answer = None  # the server stopped reading and closed the connection: refused
    finally:
        stop.set()
        watcher.join()
    if answer is not None:
        refused(platform, answer)
    assert api.is_running(), "the API process died"
    assert peak[0] - before < size // 2, f"the API grew by {(peak[0] - before) >> 20} MiB for a {size >> 20} MiB upload"
    assert team_a.get("/v1/customization/jobs").status_code == 200
    tree = team_a.get("/v1/hf/api/datasets/team-a/big/tree/main")
    assert "big.jsonl" not in tree.text
