"""vLLM's LoRA resolver for customizer's store: a request for an adapter vLLM has not loaded is served
from the store on first request, as ``customizer serve-models`` does.

- ``namespace/name@version``: that published version, fetched and verified against its manifest;
- ``namespace/name``: the version its trusted champion is (``deploy.trust.trusted_champion``).

It fails closed: an unpublished version, a file that does not match its manifest, an adapter of
another base model, a champion whose signed decision does not allow it, or a registry that cannot
be read means no adapter (vLLM answers 404), with the reason logged. Once resolved, vLLM keeps the
adapter under that name; a new champion reaches ``namespace/name`` through the hand-off
(``serving.handoff.go_live``: ``load_inplace``).

The hand-off names a version by its published URI (``file://`` or ``s3://``, as serve-models takes
it), which vLLM itself cannot read: ``/v1/load_lora_adapter`` given a URI in customizer's own store
loads the same verified local copy the resolver would (any other path goes to vLLM unchanged).

vLLM loads it through its ``vllm.general_plugins`` entry point (customizer's ``pyproject.toml``),
in every vLLM process; the resolver is asked only when ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` is set
(``serving.vllm.launch_command`` sets it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.settings import Settings, get_settings
from deploy.registry import RegistryUnavailable
from deploy.store import StoreError, fetch, parse_published_uri
from deploy.trust import UntrustedChampion, trusted_champion
from serving.schemas import PUBLISHED_NAME, REGISTERED_NAME

log = logging.getLogger("customizer.vllm")

NAME = "customizer"


def _fetched(output_model: str, version: str, settings: Settings) -> Path:
    folder = settings.serving_cache_dir / "vllm" / output_model / version
    manifest = fetch(output_model, version, folder, settings)
    if settings.vllm_base_model and manifest.base_model != settings.vllm_base_model:
        raise StoreError(f"{output_model} v{version} adapts {manifest.base_model}, not the served base model {settings.vllm_base_model}")
    return folder


def store_copy(lora_path: str, settings: Settings) -> Path | None:
    """The verified local copy of a published version named by its URI in this store (None when
    ``lora_path`` is not such a URI: vLLM then loads it as it is).

    >>> store_copy("/adapters/team/bot/3", Settings()) is None
    True

    Raises:
        deploy.store.StoreError: not published, a file that does not match its manifest, or another base's adapter.
    """
    try:
        store_uri, output_model, version = parse_published_uri(lora_path)
    except StoreError:
        return None
    if store_uri.rstrip("/") != settings.publish_uri.rstrip("/"):
        return None  # another store's URI: never fetched on a caller's say-so
    return _fetched(output_model, version, settings)


def resolve(name: str, settings: Settings) -> Path | None:
    """The local folder of the adapter a request's ``model`` names, or None when none is served under it.

    >>> resolve("not a model name", Settings()) is None
    True
    """
    try:
        if match := PUBLISHED_NAME.match(name):
            return _fetched(match["model"], match["version"], settings)
        if REGISTERED_NAME.match(name):
            champion = trusted_champion(settings, name, principal=None, purpose="serving")
            if champion is None:
                log.warning("%s is not served: no published version of it has the champion alias", name)
                return None
            return _fetched(name, champion.version, settings)
    except (StoreError, UntrustedChampion, RegistryUnavailable) as exc:
        log.warning("%s is not served: %s", name, exc)
    return None


def _mend_cpu_prompt_logprobs() -> None:
    """Keep prompt logprobs of an adapter from killing vLLM's CPU engine.

    vLLM 0.32's CPU LoRA path adds the LM head's LoRA term to the logits with one adapter index per
    sampled request; prompt logprobs (``echo`` + ``logprobs``: how lm-eval scores log-likelihood
    through ``local-completions``) give it one row per prompt token instead, and the engine dies on
    the shape mismatch (einsum "subscript b"). customizer's adapters never adapt the LM head
    (``serving.compat`` refuses it unless ``serving_allow_embedding_targets``), so that term is zero:
    it is skipped then, which changes nothing; when it is not zero the original call runs (and fails
    as before).
    """
    try:  # delayed: vLLM is only installed in its own venv
        from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    except ImportError:  # a build without the CPU wrapper: nothing to mend
        return
    original = PunicaWrapperCPU.add_lora_logits
    if getattr(original, "mended", False):
        return

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, **kwargs):
        rows = x.reshape(-1, x.shape[-1]).size(0)
        if rows != self.sampler_indices.size(0) and not lora_b_stacked.any():
            return None  # the LM head has no LoRA: its term is zero
        return original(self, y, x, lora_a_stacked, lora_b_stacked, scale, **kwargs)

    add_lora_logits.mended = True
    PunicaWrapperCPU.add_lora_logits = add_lora_logits


def register() -> None:
    """Register the resolver with vLLM (its ``vllm.general_plugins`` entry point, run in every vLLM
    process), and mend the CPU build's prompt logprobs with adapters (``_mend_cpu_prompt_logprobs``)."""
    import asyncio

    # delayed: vLLM is only installed in its own venv (`make vllm`); this module is imported without it too
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    class StoreResolver(LoRAResolver):
        """Resolves adapter names to folders fetched from customizer's store."""

        async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
            # The store and the registry are read with blocking clients: off the server's event loop.
            folder = await asyncio.to_thread(resolve, lora_name, get_settings())
            if folder is None:
                return None
            return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(folder))  # vLLM assigns its own id

    # vLLM's logging config covers its own loggers only: the resolver's reasons go where vLLM's go.
    ours = logging.getLogger("customizer")
    if not ours.handlers:
        for handler in logging.getLogger("vllm").handlers:
            ours.addHandler(handler)
        ours.setLevel(logging.INFO)
    LoRAResolverRegistry.register_resolver(NAME, StoreResolver())
    _load_from_the_store()
    _mend_cpu_prompt_logprobs()


def _load_from_the_store() -> None:
    """Let ``/v1/load_lora_adapter`` take a published version's URI in customizer's store (``store_copy``)."""
    import asyncio
    from http import HTTPStatus

    # delayed: vLLM is only installed in its own venv
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    from vllm.entrypoints.serve import create_error_response

    original = OpenAIServingModels.load_lora_adapter
    if getattr(original, "mended", False):
        return

    async def load_lora_adapter(self, request, base_model_name=None):
        try:
            folder = await asyncio.to_thread(store_copy, request.lora_path, get_settings())
        except StoreError as exc:
            log.warning("%s is not loaded: %s", request.lora_name, exc)
            return create_error_response(message=f"{request.lora_name} is not loaded: {exc}", err_type="NotFoundError",
                                         status_code=HTTPStatus.NOT_FOUND, param="lora_path")
        if folder is not None:
            request = request.model_copy(update={"lora_path": str(folder)})
        return await original(self, request, base_model_name)

    load_lora_adapter.mended = True
    OpenAIServingModels.load_lora_adapter = load_lora_adapter
