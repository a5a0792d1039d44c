"""serve-models matches a published adapter that names its base by the Hub id: the version's
manifest (fetched and verified) records the catalog name and the Hub id of its base, and either is
accepted; a plain folder naming a Hub id the server does not know stays refused."""

from __future__ import annotations

import json

import httpx
import pytest

from core.settings import Settings
from deploy.store import publish
from tests.serving import TINY_BASE_NAME, make_adapter, running_server

FILES = ["adapter_config.json", "adapter_model.safetensors"]
HUB_ID = "Org/Tiny-Llama-Hub"


def name_base(folder, name: str):
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": name}))
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("hub-ids")
    settings = Settings(data_dir=root / "data", store_uri=(root / "store").as_uri())
    hub = name_base(make_adapter(root / "hub", tiny_model_dir, seed=3), HUB_ID)
    publish(hub, FILES, "team/hub", "1", TINY_BASE_NAME, {"base_model_hub_id": HUB_ID}, settings)
    # Published for this base, but its adapter names a Hub id the manifest does not record.
    stray = name_base(make_adapter(root / "stray", tiny_model_dir, seed=4), "other/model")
    publish(stray, FILES, "team/stray", "1", TINY_BASE_NAME, {"base_model_hub_id": HUB_ID}, settings)
    with running_server(settings, tiny_model_dir) as (_, url):
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client, settings, hub


def load(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/load_lora_adapter", json=body)


def test_a_published_adapter_naming_its_base_by_hub_id_is_served(served):
    client, settings, _ = served
    assert load(client, lora_name="hub", lora_path=f"{settings.publish_uri}/team/hub/1/").status_code == 200
    answer = client.post("/v1/chat/completions", json={"model": "hub", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert answer.status_code == 200, answer.text


def test_other_bases_stay_refused(served):
    client, settings, hub = served
    stray = load(client, lora_name="stray", lora_path=f"{settings.publish_uri}/team/stray/1/")
    assert stray.status_code == 400 and "trained on other/model" in stray.json()["error"]["message"]
    # Without a manifest the server knows its base by its own names only.
    plain = load(client, lora_name="plain", lora_path=str(hub))
    assert plain.status_code == 400 and f"trained on {HUB_ID}" in plain.json()["error"]["message"]
