"""Hand-off to production serving: make a promoted adapter live on a vLLM / NIM endpoint, and write
the vLLM launch arguments that serve a namespace's champions.

The engine loads adapters by path. ``serving_lora_root`` says where it sees the store (a mounted
bucket, a synced folder); without it the published URI itself is given, which ``customizer
serve-models`` fetches and verifies, and which vLLM reads only through a LoRA resolver that
understands it.

A promoted version is loaded twice over: under its immutable name ``namespace/name@version`` and
under ``namespace/name``, which is replaced in place (``load_inplace``: vLLM and serve-models swap
the adapter behind the name atomically), so clients that ask for the model by name get the new
champion and never a 404 while it changes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel

from core import tags as tag
from core.settings import Settings
from deploy.registry import champions, namespace_champions
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
    """``POST /v1/load_lora_adapter``; with ``replace``, swap what ``name`` serves in place.

    Replacing sends ``load_inplace``, never unload-then-load: between those two calls the name would
    answer 404 to every client asking for it.

    Raises:
        HandOffError: the endpoint is unreachable or answered with an error.
    """
    body = {"lora_name": name, "lora_path": path} | ({"load_inplace": True} if replace else {})
    response = _post(settings, "/v1/load_lora_adapter", body)
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


class ChampionAdapter(BaseModel):
    """A trusted champion's published adapter, as a vLLM launch names it."""

    output_model: str
    version: str
    published_uri: str
    ranks: list[int]  # its ``r`` and every rank in its ``rank_pattern``


def champion_adapters(namespace: str | None, settings: Settings) -> list[ChampionAdapter]:
    """The published adapter of every trusted champion in ``namespace`` (None: every model), by name.

    Raises:
        HandOffError: a champion's published URI names another model or version.
        deploy.trust.UntrustedChampion: a champion's signed decision does not allow it (none is left out silently).
        deploy.store.StoreError: a champion's adapter_config.json cannot be read from the store.
        deploy.registry.RegistryUnavailable: the registry could not be read (no champion is left out for it).
    """
    where = "the registry" if namespace is None else f"namespace {namespace}"
    listed = namespace_champions(settings, namespace) if namespace is not None else [c for c in champions(settings) if c[1]]
    found = []
    for output_model, _, _ in listed:
        champion = trusted_champion(settings, output_model, purpose=f"vllm-args for {where}")
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
        ranks = [int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
        found.append(ChampionAdapter(output_model=output_model, version=version, published_uri=uri, ranks=ranks))
    return found


def lora_arguments(modules: list[str], rank: int, max_loras: int) -> list[str]:
    """vLLM's LoRA arguments: ``--max-lora-rank`` is the smallest vLLM choice that holds ``rank``.

    >>> lora_arguments(["team/bot=/adapters/team/bot/2"], 12, 1)
    ['--enable-lora', '--max-lora-rank', '16', '--max-loras', '1', '--lora-modules', 'team/bot=/adapters/team/bot/2']

    Raises:
        HandOffError: ``rank`` is above vLLM's largest ``--max-lora-rank``.
    """
    max_rank = required_max_lora_rank(rank)
    if max_rank is None:
        raise HandOffError(f"rank {rank} is above vLLM's largest --max-lora-rank")
    return ["--enable-lora", "--max-lora-rank", str(max_rank), "--max-loras", str(max_loras),
            *(["--lora-modules", *modules] if modules else [])]


def vllm_args(namespace: str | None, settings: Settings) -> list[str]:
    """vLLM launch arguments that serve the champion of every model in ``namespace`` (None: every model).

    ``--lora-modules`` names each adapter ``namespace/name`` at its path; ``--max-lora-rank`` is the
    smallest vLLM choice that holds the largest rank; ``--max-loras`` lets them share a batch.

    Raises:
        HandOffError: there is no published champion, a champion's rank is above vLLM's largest, or
            a champion's published URI names another model or version.
        deploy.trust.UntrustedChampion: a champion's signed decision does not allow it (none is left out silently).
        deploy.store.StoreError: a champion's adapter_config.json cannot be read from the store.
        deploy.registry.RegistryUnavailable: the registry could not be read (no champion is left out for it).
    """
    adapters = champion_adapters(namespace, settings)
    where = "the registry" if namespace is None else f"namespace {namespace!r}"
    if not adapters:
        raise HandOffError(f"{where} has no published champion adapters")
    rank = max(r for a in adapters for r in a.ranks)
    if required_max_lora_rank(rank) is None:
        raise HandOffError(f"rank {rank} in {where} is above vLLM's largest --max-lora-rank")
    modules = [f"{a.output_model}={lora_path(a.published_uri, settings)}" for a in adapters]
    return lora_arguments(modules, rank, len(modules))
