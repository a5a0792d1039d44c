"""``customizer serve-models``: an OpenAI-compatible server over transformers + PEFT.

One base model (a config's target) is loaded once; any number of LoRA adapters of that base are
served by name and swapped per request. Routes, with the request bodies vLLM uses:

    GET  /health                   200 when the model is loaded
    GET  /v1/models                the base model and the adapters this server knows
    POST /v1/completions           prompt (text or token ids) -> text; ``echo`` + ``logprobs`` score a prompt
    POST /v1/chat/completions      messages, rendered with the tokenizer's chat template
    POST /v1/load_lora_adapter     {"lora_name": ..., "lora_path": ...}
    POST /v1/unload_lora_adapter   {"lora_name": ...}

A request's ``model`` names what answers it:
- the base model's name (the config's target name, or the config URN): the base, adapters off;
- a name loaded through ``/v1/load_lora_adapter``;
- ``namespace/name@version``: that published version, fetched from the store on first use (every
  file verified against its manifest) and kept on local disk;
- ``namespace/name``: the version the MLflow ``champion`` alias points at.

At most ``serve_max_adapters`` adapters are held in memory; using another evicts the least recently
used one, which comes back from its verified local copy when asked for again.

One lock guards the model: a request merges its adapter into the weights (the base weights are
restored from a kept copy before another one goes in, so they stay bit-exact), generates and
releases, so requests for different adapters never see each other's weights and each runs at the
base model's speed. Downloads happen outside the lock. Errors are OpenAI-style JSON (``{"error": {...}}``) with a 4xx
status that names the problem; nothing answers with a stack trace.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.settings import Settings

log = logging.getLogger("customizer.serving")

_PUBLISHED = re.compile(r"^(?P<model>[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*)@(?P<version>[A-Za-z0-9._-]+)$")
_REGISTERED = re.compile(r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$")


# --- request bodies ---------------------------------------------------------------------------------


class CompletionRequest(BaseModel):
    """``POST /v1/completions`` (OpenAI's fields plus vLLM's ``ignore_eos``, ``min_tokens``, ``add_special_tokens``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]] = Field(description="Text or token ids, one or a batch.")
    max_tokens: int | None = Field(default=16, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per prompt.")
    stop: str | list[str] | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    add_special_tokens: bool = True


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="Only one choice.")
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)


class LoadLoraRequest(BaseModel):
    """vLLM's ``POST /v1/load_lora_adapter`` body."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1, description="A local adapter folder, or a published version's file:// or s3:// URI.")
    load_inplace: bool = Field(default=False, description="Replace an adapter already loaded under this name.")


class UnloadLoraRequest(BaseModel):
    """vLLM's ``POST /v1/unload_lora_adapter`` body."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None


# --- the model and its adapters ---------------------------------------------------------------------


class ServingError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


@dataclass
class Adapter:
    """An adapter the server knows: where it comes from and, once fetched, where it lies on disk."""

    name: str
    source: str  # a local folder, or a published version's URI
    local_dir: Path | None = None
    peft_name: str | None = None  # set while resident in memory
    tokenizer: Any = None  # its own tokenizer, when it ships one
    explicit: bool = False  # loaded through /v1/load_lora_adapter (kept known until unloaded)
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Generated:
    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    finish_reason: str
    logprobs: dict[str, Any] | None = None


class ModelServer:
    """The base model, its adapters (at most ``max_adapters`` in memory) and the lock that guards them."""

    def __init__(
        self, settings: Settings, base_model_dir: Path, base_name: str, aliases: tuple[str, ...] = (), max_adapters: int | None = None
    ):
        """Load the base model.

        Args:
            settings: store, registry and serving settings.
            base_model_dir: local Hugging Face folder of the base model.
            base_name: the name it is served under (a config's target name; adapters name it too).
            aliases: more names for the base (e.g. the config URN).
            max_adapters: adapters held in memory; default the ``serve_max_adapters`` setting.
        """
        import warnings

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        self.base_name = base_name
        self.base_names = {base_name, *aliases}
        self.base_dir = Path(base_model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=dtype).to(self.device).eval()
        self.max_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        self.max_adapters = max_adapters or settings.serve_max_adapters
        self.peft: Any = None  # the PeftModel, once the first adapter is loaded
        self.merged: str | None = None  # the PEFT adapter whose weights are in the base weights now
        self._pristine: dict[str, Any] = {}  # module name -> its base weight before any merge
        self._merged_layers: list[str] = []
        self.adapters: dict[str, Adapter] = {}
        self.resident: OrderedDict[str, Adapter] = OrderedDict()  # least recently used first
        self.lock = threading.RLock()
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._counter = 0
        self.loads = 0  # adapters loaded into memory so far (evicted ones that return count again)
        self.created = int(time.time())
        # Evicting the active adapter is routine here: the next request activates its own.
        warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted")
        log.info("Serving %s from %s on %s (at most %d adapters in memory)", base_name, base_model_dir, self.device, self.max_adapters)

    # names -------------------------------------------------------------------------------------------

    def is_base(self, name: str) -> bool:
        return name in self.base_names

    def loadable_names(self) -> list[str]:
        """What a request may name: the base, known adapters, and every published version."""
        from deploy.store import StoreError, list_published

        names = sorted(self.base_names) + sorted(self.adapters)
        try:
            published = list_published(self.settings)
        except StoreError as exc:
            log.warning("Cannot list the store: %s", exc)
            published = []
        return list(dict.fromkeys(names + published))

    def _unknown(self, name: str, why: str = "") -> ServingError:
        shown = self.loadable_names()
        more = f" and {len(shown) - 50} more" if len(shown) > 50 else ""
        return ServingError(
            404,
            f"The model `{name}` does not exist{why}. Loadable models: {', '.join(shown[:50])}{more}",
            kind="NotFoundError", param="model",
        )

    def lookup(self, name: str) -> Adapter | None:
        """The adapter a request's ``model`` names (None for the base), known but maybe not fetched yet.

        Raises:
            ServingError: 404 when the name is neither the base, a loaded name, a published version,
                nor a registered model with a champion; 503 when the registry cannot be read.
        """
        if self.is_base(name):
            return None
        with self.lock:
            known = self.adapters.get(name)
        if known is not None:
            return known
        match = _PUBLISHED.match(name)
        if match:
            return Adapter(name=name, source=f"{self.settings.publish_uri.rstrip('/')}/{match['model']}/{match['version']}/")
        if _REGISTERED.match(name):
            from deploy.registry import RegistryUnavailable, champion_version

            try:
                version = champion_version(self.settings, name)
            except RegistryUnavailable as exc:  # an outage is not "no such model": the client may retry
                log.warning("Cannot resolve %s to its champion: %s", name, exc)
                raise ServingError(503, f"cannot resolve `{name}` to its champion now: the model registry is unavailable; try again",
                                   kind="registry_unavailable", param="model") from exc
            if version is None:
                raise self._unknown(name, " (no published version of it has the champion alias)")
            return self.lookup(f"{name}@{version}")
        raise self._unknown(name)

    # fetching and loading ----------------------------------------------------------------------------

    def _fetch(self, adapter: Adapter) -> None:
        """Put the adapter's files on local disk (verified against the manifest when it is published)."""
        from deploy.store import StoreError, fetch, parse_published_uri

        if adapter.local_dir is not None and (adapter.local_dir / "adapter_config.json").is_file():
            return
        source = adapter.source
        local = Path(source.removeprefix("file://")) if not source.startswith("s3://") else None
        if local is not None and local.is_dir() and not (local / "manifest.json").is_file():
            adapter.local_dir = local  # a plain folder, as vLLM loads them
        else:
            try:
                store_uri, output_model, version = parse_published_uri(source)
            except StoreError as exc:
                raise ServingError(400, f"lora_path {source!r} is neither an adapter folder nor a published version: {exc}", param="lora_path") from exc
            dest = self.settings.serving_cache_dir / "adapters" / output_model / version
            with self._fetch_lock(str(dest)):
                try:
                    manifest = fetch(output_model, version, dest, self.settings, store_uri=store_uri)
                except StoreError as exc:
                    if "no readable manifest" in str(exc):
                        raise self._unknown(adapter.name, f" ({output_model} v{version} is not published in {store_uri})") from exc
                    raise ServingError(502, f"cannot fetch {adapter.name}: {exc}", kind="store_error") from exc
            if manifest.base_model.lower() != self.base_name.lower():
                raise ServingError(400, f"{adapter.name} was trained on {manifest.base_model}, this server serves {self.base_name}", param="model")
            adapter.local_dir = dest
        self._check_adapter_folder(adapter)

    def _fetch_lock(self, key: str) -> threading.Lock:
        with self.lock:
            return self._fetch_locks.setdefault(key, threading.Lock())

    def _check_adapter_folder(self, adapter: Adapter) -> None:
        from transformers import AutoTokenizer

        from deploy.store import TOKENIZER_FILES

        folder = adapter.local_dir
        assert folder is not None
        config_path = folder / "adapter_config.json"
        if not config_path.is_file():
            raise ServingError(400, f"{adapter.name}: {folder} holds no adapter_config.json (only LoRA adapters are served)", param="lora_path")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ServingError(400, f"{adapter.name}: adapter_config.json is not valid JSON: {exc}", param="lora_path") from exc
        if config.get("use_dora") or config.get("peft_type", "LORA") != "LORA":
            raise ServingError(400, f"{adapter.name}: only plain LoRA adapters are served (no DoRA)", param="lora_path")
        named = str(config.get("base_model_name_or_path") or "")
        if named and named.lower() not in {n.lower() for n in self.base_names} | {str(self.base_dir).lower()}:
            raise ServingError(400, f"{adapter.name} was trained on {named}, this server serves {self.base_name}", param="lora_path")
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            adapter.tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def _make_resident(self, adapter: Adapter) -> None:
        """Load a fetched adapter into the model, evicting the least recently used one if full. Holds the lock."""
        from peft import PeftModel

        if adapter.peft_name is not None:
            self.resident.move_to_end(adapter.name)
            return
        self._restore()  # PEFT changes layers below: the base weights must be the base's first
        while len(self.resident) >= self.max_adapters:
            _, evicted = self.resident.popitem(last=False)
            self.peft.delete_adapter(evicted.peft_name)
            log.info("Evicted adapter %s (least recently used)", evicted.name)
            evicted.peft_name = None
            if not evicted.explicit and self.adapters.get(evicted.name) is evicted:
                del self.adapters[evicted.name]
        self._counter += 1
        peft_name = f"adapter_{self._counter}"  # PEFT keys modules by adapter name: no '/', '@' or '.'
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, str(adapter.local_dir), adapter_name=peft_name)
                self.peft.eval()
            else:
                self.peft.load_adapter(str(adapter.local_dir), adapter_name=peft_name)
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise ServingError(400, f"{adapter.name} does not load on {self.base_name}: {str(exc).splitlines()[0]}", param="model") from exc
        # The LoRA branches stay off: an adapter runs merged into the weights (see _merge).
        self.peft.base_model.disable_adapter_layers()
        adapter.peft_name = peft_name
        self.resident[adapter.name] = adapter
        self.adapters.setdefault(adapter.name, adapter)
        self.loads += 1

    def acquire(self, name: str) -> Adapter | None:
        """Resolve ``name`` and fetch its files; the caller then activates it under the lock."""
        adapter = self.lookup(name)
        if adapter is not None:
            self._fetch(adapter)
        return adapter

    @contextmanager
    def active(self, adapter: Adapter | None) -> Iterator[Any]:
        """Hold the model with ``adapter`` in effect (or the base alone); yields the tokenizer to use."""
        with self.lock:
            if adapter is None:
                self._restore()
                yield self.tokenizer
                return
            registered = self.adapters.get(adapter.name)
            if registered is not None and registered is not adapter:
                adapter = registered  # another request registered it meanwhile
            self._make_resident(adapter)
            self._merge(adapter.peft_name)
            yield adapter.tokenizer or self.tokenizer

    def _lora_layers(self) -> list[tuple[str, Any]]:
        from peft.tuners.lora import LoraLayer

        return [(name, module) for name, module in self.model.named_modules() if isinstance(module, LoraLayer)]

    def _merge(self, peft_name: str) -> None:
        """Put one adapter's weights into the base weights: W = W_base + B A * scale.

        A request then runs at the base model's speed (no LoRA branch per layer and token); a swap
        costs one small matrix product per adapted layer. The base weights are restored from a
        kept copy, never by subtraction, so they stay bit-exact however many swaps happen, and the
        merged weights are the very ones the job's candidate evaluation scored (PEFT's merge).
        """
        import torch

        if self.merged == peft_name:
            return
        self._restore()
        with torch.no_grad():
            for name, layer in self._lora_layers():
                if peft_name not in layer.lora_A:
                    continue
                weight = layer.get_base_layer().weight
                if name not in self._pristine:
                    self._pristine[name] = weight.detach().clone()
                weight.data += layer.get_delta_weight(peft_name).to(weight.dtype)
                self._merged_layers.append(name)
        self.merged = peft_name

    def _restore(self) -> None:
        """Give every merged layer its base weights back."""
        if self.merged is None:
            return
        modules = dict(self.model.named_modules())
        for name in self._merged_layers:
            modules[name].get_base_layer().weight.data.copy_(self._pristine[name])
        self._merged_layers, self.merged = [], None

    def load(self, name: str, path: str, replace: bool = False) -> Adapter:
        """``/v1/load_lora_adapter``: fetch and load ``path`` under ``name`` (loading the same again is a no-op)."""
        if self.is_base(name):
            raise ServingError(400, f"`lora_name` {name!r} is the base model's name", param="lora_name")
        with self.lock:
            existing = self.adapters.get(name)
        if existing is not None and existing.explicit and not replace:
            if existing.source.rstrip("/") == path.rstrip("/"):
                return existing
            raise ServingError(400, f"The lora adapter '{name}' has already been loaded (from {existing.source}); unload it first", param="lora_name")
        adapter = Adapter(name=name, source=path, explicit=True)
        self._fetch(adapter)
        with self.lock:
            if existing is not None:
                self._drop(existing)
            self.adapters[name] = adapter
            self._make_resident(adapter)
        log.info("Loaded adapter %s from %s", name, path)
        return adapter

    def _drop(self, adapter: Adapter) -> None:
        if adapter.peft_name is not None:
            self._restore()
            self.peft.delete_adapter(adapter.peft_name)
            self.resident.pop(adapter.name, None)
            adapter.peft_name = None
        if self.adapters.get(adapter.name) is adapter:
            del self.adapters[adapter.name]

    def unload(self, name: str) -> None:
        """``/v1/unload_lora_adapter``: forget ``name`` and free its memory."""
        with self.lock:
            adapter = self.adapters.get(name)
            if adapter is None:
                raise ServingError(404, f"The lora adapter '{name}' cannot be found.", kind="NotFoundError", param="lora_name")
            self._drop(adapter)
        log.info("Unloaded adapter %s", name)

    # generation --------------------------------------------------------------------------------------

    def generate(
        self,
        adapter: Adapter | None,
        prompt: str | list[int],
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str],
        seed: int | None,
        ignore_eos: bool = False,
        min_tokens: int = 0,
        logprobs: int | None = None,
        echo: bool = False,
        add_special_tokens: bool = True,
        streamer: Any = None,
    ) -> Generated:
        """Generate from one prompt with ``adapter`` active (None: the base).

        Raises:
            ServingError: the prompt and ``max_tokens`` do not fit the model's context.
        """
        import torch

        with self.active(adapter) as tokenizer:
            ids = list(prompt) if isinstance(prompt, list) else tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
            if not ids:
                raise ServingError(400, "`prompt` is empty", param="prompt")
            vocab = len(tokenizer)
            if any(not 0 <= i < max(vocab, self.model.config.vocab_size) for i in ids):
                raise ServingError(400, f"`prompt` holds token ids outside the vocabulary (0..{vocab - 1})", param="prompt")
            if len(ids) + max_tokens > self.max_length:
                raise ServingError(
                    400,
                    f"This model's maximum context length is {self.max_length} tokens; the prompt has {len(ids)} "
                    f"and max_tokens asks for {max_tokens} more",
                    param="max_tokens",
                )
            model = self.model  # PEFT wraps layers in place: this is the model with the active adapter merged
            output: list[int] = []
            finish = "length"
            if max_tokens > 0:
                output, finish = self._decode(model, tokenizer, ids, max_tokens, temperature, top_p, stop, seed, ignore_eos, min_tokens, streamer)
            text = tokenizer.decode(output, skip_special_tokens=True)
            cut = _first_stop(text, stop)
            if cut is not None:
                text, finish = text[:cut], "stop"
            scored = None
            if logprobs is not None:
                with torch.no_grad():
                    scored = self._logprobs(model, tokenizer, ids if echo else [], ids + output, logprobs, len(ids))
        return Generated(prompt_ids=ids, output_ids=output, text=text, finish_reason=finish, logprobs=scored)

    def _decode(self, model, tokenizer, ids, max_tokens, temperature, top_p, stop, seed, ignore_eos, min_tokens, streamer) -> tuple[list[int], str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        prompt_len = len(ids)

        class StopOnText(StoppingCriteria):
            """Stop once the generated text holds a stop sequence (checked on the decoded tail)."""

            def __call__(self, input_ids, scores, **kwargs):
                tail = tokenizer.decode(input_ids[0, prompt_len:], skip_special_tokens=True)
                return torch.tensor([_first_stop(tail, stop) is not None], device=input_ids.device)

        if seed is not None:
            torch.manual_seed(seed)
        eos = [t for t in {tokenizer.eos_token_id, *_as_list(getattr(model.generation_config, "eos_token_id", None))} if t is not None]
        sample = temperature > 0
        options: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "min_new_tokens": max_tokens if ignore_eos else min(min_tokens, max_tokens),
            "do_sample": sample,
            "eos_token_id": eos or None,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0),
        }
        if sample:
            options |= {"temperature": temperature, "top_p": top_p, "top_k": 0}
        else:
            options |= {"temperature": None, "top_p": None, "top_k": None}
        if stop:
            options["stopping_criteria"] = StoppingCriteriaList([StopOnText()])
        if streamer is not None:
            options["streamer"] = streamer
        input_ids = torch.tensor([ids], device=self.device)
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options)
        generated = out[0, prompt_len:].tolist()
        # The end-of-sequence token stays in the ids (it is scored and counted, as vLLM does); the
        # text leaves it out.
        finished = bool(generated) and generated[-1] in eos and not ignore_eos
        return generated, "stop" if finished else "length"

    def _logprobs(self, model, tokenizer, echoed: list[int], full: list[int], top: int, prompt_len: int) -> dict[str, Any]:
        """OpenAI's legacy ``logprobs`` object for the echoed prompt (if any) and the generated tokens."""
        import torch

        logits = model(input_ids=torch.tensor([full], device=self.device)).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        start = 0 if echoed else prompt_len
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        offset = 0
        for position in range(start, len(full)):
            token = full[position]
            text = tokenizer.decode([token])
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            if position == 0:  # the first token has no context to be scored in
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            row = logp[position - 1]
            token_logprobs.append(float(row[token]))
            if top > 0:
                values, indices = torch.topk(row, top)
                top_logprobs.append({tokenizer.decode([int(i)]): float(v) for v, i in zip(values, indices)})
            else:
                top_logprobs.append({})
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}

    def describe(self) -> list[dict[str, Any]]:
        """``/v1/models`` entries: the base, then every adapter this server knows."""
        entries = [{
            "id": self.base_name, "object": "model", "created": self.created, "owned_by": "customizer",
            "root": str(self.base_dir), "parent": None, "max_model_len": self.max_length,
        }]
        with self.lock:
            known = sorted(self.adapters.values(), key=lambda a: a.name)
        for adapter in known:
            entries.append({
                "id": adapter.name, "object": "model", "created": adapter.created, "owned_by": "customizer",
                "root": adapter.source, "parent": self.base_name, "max_model_len": self.max_length,
                "resident": adapter.peft_name is not None,
            })
        return entries


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _first_stop(text: str, stop: list[str]) -> int | None:
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


# --- the HTTP API -----------------------------------------------------------------------------------


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": status}})


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    if not prompt:
        raise ServingError(400, "`prompt` is empty", param="prompt")
    return list(prompt)  # type: ignore[arg-type]


def _usage(results: list[Generated]) -> dict[str, int]:
    prompt = sum(len(r.prompt_ids) for r in results)
    completion = sum(len(r.output_ids) for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def create_app(server: ModelServer) -> Any:
    """The FastAPI application over a loaded ``ModelServer``."""
    from fastapi import FastAPI, Request
    from jinja2 import TemplateError
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="customizer serve-models", docs_url=None, redoc_url=None)
    app.state.server = server

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError):
        return _error(exc.status, exc.message, exc.kind, exc.param)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError):
        problems, first = [], None
        for error in exc.errors():
            loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
            first = first or loc or None
            problems.append(f"{loc or 'body'}: {error.get('msg', 'invalid')}")
        return _error(400, "; ".join(problems), param=first)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), kind="NotFoundError" if exc.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.error("Unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log", kind="server_error")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": server.describe()}

    @app.post("/v1/completions")
    def completions(body: CompletionRequest):
        prompts = _prompts(body.prompt)
        if body.max_tokens == 0 and not body.echo:
            raise ServingError(400, "`max_tokens` is 0: nothing to generate (use it with `echo` to score a prompt)", param="max_tokens")
        if body.stream and (len(prompts) > 1 or body.logprobs is not None):
            raise ServingError(400, "streaming takes one prompt and no `logprobs`", param="stream")
        adapter = server.acquire(body.model)
        request_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        options = dict(
            max_tokens=body.max_tokens if body.max_tokens is not None else 16, temperature=body.temperature, top_p=body.top_p,
            stop=_stops(body.stop), seed=body.seed, ignore_eos=body.ignore_eos, min_tokens=body.min_tokens,
        )
        if body.stream:
            return StreamingResponse(
                _stream(server, adapter, prompts[0], options, body.model, request_id, created, chat=False, echo=body.echo,
                        add_special_tokens=body.add_special_tokens),
                media_type="text/event-stream",
            )
        results = [
            server.generate(adapter, prompt, logprobs=body.logprobs, echo=body.echo, add_special_tokens=body.add_special_tokens, **options)
            for prompt in prompts
        ]
        choices = []
        for index, (prompt, result) in enumerate(zip(prompts, results)):
            text = result.text
            if body.echo:
                head = prompt if isinstance(prompt, str) else (adapter and adapter.tokenizer or server.tokenizer).decode(prompt)
                text = head + text
            choices.append({"index": index, "text": text, "logprobs": result.logprobs, "finish_reason": result.finish_reason})
        return {"id": request_id, "object": "text_completion", "created": created, "model": body.model, "choices": choices, "usage": _usage(results)}

    @app.post("/v1/chat/completions")
    def chat_completions(body: ChatRequest):
        adapter = server.acquire(body.model)
        tokenizer = (adapter.tokenizer if adapter is not None else None) or server.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ServingError(400, f"{body.model} has no chat template; use /v1/completions", param="model")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except (TemplateError, ValueError, TypeError, KeyError) as exc:
            raise ServingError(400, f"the chat template rejects these messages: {exc}", param="messages") from exc
        max_tokens = body.max_completion_tokens or body.max_tokens or max(1, min(512, server.max_length - len(tokenizer(prompt)["input_ids"])))
        request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        options = dict(
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, stop=_stops(body.stop), seed=body.seed,
            ignore_eos=body.ignore_eos, min_tokens=body.min_tokens,
        )
        if body.stream:
            return StreamingResponse(
                _stream(server, adapter, prompt, options, body.model, request_id, created, chat=True, echo=False, add_special_tokens=False),
                media_type="text/event-stream",
            )
        # The template already holds any special tokens the model expects.
        result = server.generate(adapter, prompt, add_special_tokens=False, **options)
        return {
            "id": request_id, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": _usage([result]),
        }

    @app.post("/v1/load_lora_adapter")
    def load_lora_adapter(body: LoadLoraRequest):
        server.load(body.lora_name, body.lora_path, replace=body.load_inplace)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    def unload_lora_adapter(body: UnloadLoraRequest):
        server.unload(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    return app


def _stream(server: ModelServer, adapter: Adapter | None, prompt: str | list[int], options: dict[str, Any], model: str,
            request_id: str, created: int, chat: bool, echo: bool, add_special_tokens: bool) -> Iterator[str]:
    """Server-sent events, sent as the model generates (it runs in a thread, holding the model lock).

    Text that could be the start of a stop sequence is held back until it is known not to be one;
    the final event carries the finish reason.
    """
    import queue

    from transformers import TextIteratorStreamer

    tokenizer = (adapter.tokenizer if adapter is not None else None) or server.tokenizer
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    outcome: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            outcome.put(server.generate(adapter, prompt, add_special_tokens=add_special_tokens, streamer=streamer, **options))
        except Exception as exc:  # noqa: BLE001 - handed to the client as an error event below
            outcome.put(exc)
            streamer.end()  # release the reader below

    threading.Thread(target=run, daemon=True).start()
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(text: str | None, finish: str | None = None, role: bool = False) -> str:
        if chat:
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _sse({"id": request_id, "object": kind, "created": created, "model": model, "choices": [choice]})

    if chat:
        yield event(None, role=True)
    elif echo:
        yield event(prompt if isinstance(prompt, str) else tokenizer.decode(prompt))
    stops, text, sent = options["stop"], "", 0
    for piece in streamer:
        text += piece
        cut = _first_stop(text, stops)
        safe = cut if cut is not None else len(text) - _held_back(text, stops)
        if safe > sent:
            yield event(text[sent:safe])
            sent = safe
    result = outcome.get()
    if isinstance(result, Exception):
        error = result if isinstance(result, ServingError) else ServingError(500, f"internal error ({type(result).__name__})", "server_error")
        if error.status >= 500:
            log.error("Streaming %s failed", model, exc_info=result)
        yield _sse({"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.status}})
    else:
        if len(result.text) > sent:
            yield event(result.text[sent:])
        yield event("" if not chat else None, result.finish_reason)
    yield "data: [DONE]\n\n"


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could begin a stop sequence."""
    return max((n for s in stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)


# --- running it -------------------------------------------------------------------------------------


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread; yields its base URL and stops it on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def run_server(
    settings: Settings, base_model_dir: Path, base_name: str, aliases: tuple[str, ...], host: str, port: int,
    max_adapters: int | None, preload: list[str],
) -> None:
    """Load the base model (and ``preload`` adapters), then serve until interrupted."""
    import uvicorn

    server = ModelServer(settings, base_model_dir, base_name, aliases, max_adapters)
    for name in preload:
        adapter = server.acquire(name)
        if adapter is not None:
            with server.active(adapter):
                pass
    print(f"customizer serve-models: {server.base_name} on http://{host}:{port}/v1 (max {server.max_adapters} adapters in memory)", flush=True)
    uvicorn.run(create_app(server), host=host, port=port, log_level="info")
