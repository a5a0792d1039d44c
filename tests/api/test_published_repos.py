"""Published versions as Data Store model repos, through the API over HTTP with
``huggingface_hub.snapshot_download``: a version number is a revision, the files are the manifest's,
verified as they are read, and another namespace's key is refused."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.settings import Settings
from deploy.store import publish
from tests.api.conftest import over_http

FILES = {
    "adapter_config.json": json.dumps({"r": 4, "peft_type": "LORA", "base_model_name_or_path": "org/base"}).encode(),
    "adapter_model.safetensors": b"weights of version one",
    "README.md": b"---\nbase_model: org/base\nlibrary_name: peft\n---\n# team-a/bot\n",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The API on a free port, with a key per namespace and one published version of team-a/bot."""
    root = tmp_path_factory.mktemp("published-repos")
    settings = Settings(data_dir=root, api_keys={"key-a": ["team-a"], "key-b": ["team-b"]})
    folder = root / "adapter"
    folder.mkdir()
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    publish(folder, sorted(FILES), "team-a/bot", "1", "customizer/tiny-llama", {"base_model_hub_id": "org/base"}, settings)
    with TestClient(create_app(settings)) as client, over_http(client.app) as url:
        yield f"{url}/v1/hf", settings


@pytest.fixture(autouse=True)
def online_to_our_endpoint(monkeypatch):
    """The session runs with HF_HUB_OFFLINE=1; our own endpoint on loopback is the one huggingface_hub may reach."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_snapshot_download_fetches_a_published_version(served, tmp_path):
    from huggingface_hub import HfApi, snapshot_download

    endpoint, _ = served
    folder = snapshot_download(repo_id="team-a/bot", revision="1", repo_type="model", endpoint=endpoint, token="key-a",
                               cache_dir=tmp_path / "cache")
    for name, data in FILES.items():
        assert (tmp_path / "cache").exists() and open(f"{folder}/{name}", "rb").read() == data
    info = HfApi(endpoint=endpoint, token="key-a").model_info("team-a/bot", revision="1")
    assert {s.rfilename for s in info.siblings} == set(FILES) and len(info.sha) == 40


def test_another_namespace_key_and_unknown_revisions_are_refused(served, tmp_path):
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    endpoint, _ = served
    with pytest.raises((HfHubHTTPError, LocalEntryNotFoundError)):
        snapshot_download(repo_id="team-a/bot", revision="1", endpoint=endpoint, token="key-b", cache_dir=tmp_path / "b")
    assert not list(tmp_path.rglob("adapter_model.safetensors"))
    with pytest.raises(HfHubHTTPError) as refused:
        HfApi(endpoint=endpoint, token="key-b").model_info("team-a/bot", revision="1")
    assert refused.value.response.status_code == 403
    for revision, why in (("7", "published versions: 1"), ("main", "has no champion")):
        with pytest.raises(HfHubHTTPError) as missing:
            HfApi(endpoint=endpoint, token="key-a").model_info("team-a/bot", revision=revision)
        assert missing.value.response.status_code == 404 and why in missing.value.response.text


def test_a_file_that_no_longer_matches_its_manifest_is_not_served(served, tmp_path):
    import httpx

    endpoint, settings = served
    stored = settings.root / "store" / "team-a" / "bot" / "1" / "adapter_model.safetensors"
    original = stored.read_bytes()
    stored.write_bytes(b"tampered weights!!!!!!")
    try:
        answer = httpx.get(f"{endpoint}/team-a/bot/resolve/1/adapter_model.safetensors", headers={"Authorization": "Bearer key-a"})
        assert answer.status_code == 502 and "does not match its manifest" in answer.text
    finally:
        stored.write_bytes(original)


def test_a_model_repo_url_names_the_published_version_for_an_evaluation(served):
    """An Entity Store model's files_url ``hf://models/<ns>/<name>@<version>`` is read from the version's
    store folder, verified; only by a caller who may use the namespace."""
    from fastapi.exceptions import RequestValidationError

    from api.deps import Caller
    from api.errors import NotFound
    from api.evaluation import _published_folder

    _, settings = served
    folder = _published_folder(settings, Caller(namespaces=frozenset({"team-a"})), "hf://models/team-a/bot@1")
    assert folder == (settings.root / "store" / "team-a" / "bot" / "1").as_uri() + "/"
    with pytest.raises(RequestValidationError, match="namespace 'team-a', which the caller may not use"):
        _published_folder(settings, Caller(namespaces=frozenset({"team-b"})), "hf://models/team-a/bot@1")
    with pytest.raises(RequestValidationError, match="is not a Data Store model repo"):
        _published_folder(settings, Caller(namespaces=None), "hf://models/team-a")
    with pytest.raises(NotFound, match="published versions: 1"):
        _published_folder(settings, Caller(namespaces=None), "hf://models/team-a/bot@9")
    with pytest.raises(NotFound, match="has no champion"):
        _published_folder(settings, Caller(namespaces=None), "hf://models/team-a/bot")
