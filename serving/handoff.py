"""Hand-off to production serving: make a promoted adapter live on a vLLM / NIM endpoint, and write
the vLLM launch arguments that serve a namespace's champions.

The engine loads adapters by path. ``serving_lora_root`` says where it sees the store (a mounted
bucket, a synced folder); without it the published URI itself is given, which ``customizer
serve-models`` fetches and verifies, and which vLLM reads only through a LoRA resolver that
understands it.

A promoted version is loaded twice over: under its immutable name ``namespace/name@version`` and
under ``namespace/name``, which is moved to it (unload, then load), so clients that ask for the
model by name get the new champion.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel

from core import tags as tag
from core.settings import Settings
from deploy.registry import namespace_champions
from deploy.store import parse_published_uri, read_published_file
from deploy.trust import trusted_champion
from serving.compat import required_max_lora_rank

log = logging.getLogger("customizer.handoff")


class HandOffError(RuntimeError):
    """The serving endpoint refused or could not be reached."""


class HandOff(BaseModel):
    """What the hand-off did: the names now live on the endpoint, or why not."""

    endpoint: str
    loaded: list[str]
    warning: str | None = None


def lora_path(published_uri: str, settings: Settings) -> str:
    """The path a serving engine loads a published version from.

    >>> lora_path("s3://models/adapters/team/bot/3/", Settings(serving_lora_root="/mnt/adapters"))
    '/mnt/adapters/team/bot/3'
    """
    if not settings.serving_lora_root:
        return published_uri
    _, output_model, version = parse_published_uri(published_uri)
    return f"{settings.serving_lora_root.rstrip('/')}/{output_model}/{version}"


def _post(settings: Settings, route: str, body: dict[str, Any]) -> Any:
    import httpx  # delayed: httpx is only needed for a hand-off (start-up time)

    headers = {"Authorization": f"Bearer {settings.serving_api_key.get_secret_value()}"} if settings.serving_api_key else {}
    url = f"{settings.serving_endpoint.rstrip('/')}{route}"
    try:
        return httpx.post(url, json=body, headers=headers, timeout=settings.serving_timeout_s)
    except httpx.HTTPError as exc:
        raise HandOffError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from exc


def _reason(response: Any) -> str:
    try:
        return str(response.json().get("error", {}).get("message") or response.text)
    except (json.JSONDecodeError, AttributeError):
        return response.text


def load_adapter(settings: Settings, name: str, path: str, replace: bool = False) -> None:
    """``POST /v1/load_lora_adapter``; with ``replace``, unload ``name`` first.

    Raises:
        HandOffError: the endpoint is unreachable or answered with an error.
    """
    if replace:
        response = _post(settings, "/v1/unload_lora_adapter", {"lora_name": name})
        if response.status_code not in (200, 404) and "cannot be found" not in _reason(response):
            raise HandOffError(f"unloading {name} answered {response.status_code}: {_reason(response)}")
    response = _post(settings, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
    if response.status_code == 200:
        return
    reason = _reason(response)
    if not replace and "already been loaded" in reason:  # an immutable name: it is live already
        return
    raise HandOffError(f"loading {name} from {path} answered {response.status_code}: {reason}")


def go_live(output_model: str, version: str, published_uri: str, settings: Settings) -> HandOff:
    """Load a promoted version into ``serving_endpoint`` under its versioned and its plain name.

    Never raises: a failure comes back as ``warning``, for the caller to record.
    """
    endpoint = settings.serving_endpoint or ""
    loaded: list[str] = []
    try:
        path = lora_path(published_uri, settings)
        load_adapter(settings, f"{output_model}@{version}", path)
        loaded.append(f"{output_model}@{version}")
        load_adapter(settings, output_model, path, replace=True)
        loaded.append(output_model)
    except (HandOffError, ValueError) as exc:
        warning = f"{output_model} v{version} is published but not live on {endpoint}: {exc}"
        log.warning(warning)
        return HandOff(endpoint=endpoint, loaded=loaded, warning=warning)
    log.info("%s v%s is live on %s as %s", output_model, version, endpoint, ", ".join(loaded))
    return HandOff(endpoint=endpoint, loaded=loaded)


def vllm_args(namespace: str, settings: Settings) -> list[str]:
    """vLLM launch arguments that serve the champion of every model in ``namespace``.

    ``--lora-modules`` names each adapter ``namespace/name`` at its path; ``--max-lora-rank`` is the
    smallest vLLM choice that holds the largest rank; ``--max-loras`` lets them share a batch.

    Raises:
        HandOffError: the namespace has no published champion, or a champion's published URI names
            another model or version.
        deploy.trust.UntrustedChampion: a champion's signed decision does not allow it (none is left out silently).
        deploy.store.StoreError: a champion's adapter_config.json cannot be read from the store.
        deploy.registry.RegistryUnavailable: the registry could not be read (no champion is left out for it).
    """
    modules, ranks = [], []
    for output_model, _, _ in namespace_champions(settings, namespace):
        champion = trusted_champion(settings, output_model, purpose=f"vllm-args for namespace {namespace}")
        if champion is None:  # its alias was removed meanwhile
            continue
        version, uri = champion.version, champion.tags.get(tag.PUBLISHED_URI)
        if not uri:
            log.warning("%s v%s is the champion but was never published; left out", output_model, version)
            continue
        store_uri, model, stored_version = parse_published_uri(uri)
        if (model, stored_version) != (output_model, version):  # the tag is not signed: it must name the champion itself
            raise HandOffError(f"{output_model} v{version}: its `{tag.PUBLISHED_URI}` tag points at {model} v{stored_version}; "
                               "refusing to serve another version under the champion's name")
        config = json.loads(read_published_file(model, stored_version, "adapter_config.json", settings, store_uri=store_uri))
        ranks += [int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
        modules.append(f"{output_model}={lora_path(uri, settings)}")
    if not modules:
        raise HandOffError(f"namespace {namespace!r} has no published champion adapters")
    max_rank = required_max_lora_rank(max(ranks))
    if max_rank is None:
        raise HandOffError(f"rank {max(ranks)} in namespace {namespace!r} is above vLLM's largest --max-lora-rank")
    return ["--enable-lora", "--max-lora-rank", str(max_rank), "--max-loras", str(len(modules)), "--lora-modules", *modules]
