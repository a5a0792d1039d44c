"""The model serve-models answers with: one base model and the LoRA adapters of it, swapped per request.

A request's ``model`` names what answers it:
- the base model's name (the config's target name, or the config URN): the base, adapters off;
- a name loaded through ``/v1/load_lora_adapter``;
- ``namespace/name@version``: that published version, fetched from the store on first use (every
  file verified against its manifest) and kept on local disk;
- ``namespace/name``: the version the MLflow ``champion`` alias points at, when the platform's
  signed gate decision allows it (``deploy.trust``; otherwise the request is refused with why).

At most ``serve_max_adapters`` adapters are held in memory; using another evicts the least recently
used one, which comes back from its verified local copy when asked for again.

One lock guards the model: a request merges its adapter into the weights (the base weights are
restored from a kept copy before another one goes in, so they stay bit-exact), generates and
releases, so requests for different adapters never see each other's weights and each runs at the
base model's speed. Downloads happen outside the lock.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.settings import Settings
from deploy.registry import RegistryUnavailable
from deploy.store import MANIFEST, TOKENIZER_FILES, NotPublished, StoreError, fetch, list_published, parse_published_uri
from deploy.trust import UntrustedChampion, trusted_champion
from serving.generation import Generated, decode, first_stop, score_logprobs
from serving.schemas import ServingError

log = logging.getLogger("customizer.serving")

_PUBLISHED = re.compile(r"^(?P<model>[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*)@(?P<version>[A-Za-z0-9._-]+)$")
_REGISTERED = re.compile(r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$")


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
        import torch  # delayed: torch and transformers are heavy (start-up time)
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
        """Whether ``name`` is one of the base model's names."""
        return name in self.base_names

    def loadable_names(self) -> list[str]:
        """What a request may name: the base, known adapters, and every published version."""
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
                nor a registered model with a champion; 409 when its champion's signed decision does
                not allow it; 503 when the registry cannot be read.
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
            try:
                champion = trusted_champion(self.settings, name, principal=None, purpose="serving")
            except UntrustedChampion as exc:  # someone moved the alias or edited its decision: nothing is served for it
                raise ServingError(409, f"`{name}` is not served: {exc}", kind="untrusted_champion", param="model") from exc
            except RegistryUnavailable as exc:  # an outage is not "no such model": the client may retry
                log.warning("Cannot resolve %s to its champion: %s", name, exc)
                raise ServingError(503, f"cannot resolve `{name}` to its champion now: the model registry is unavailable; try again",
                                   kind="registry_unavailable", param="model") from exc
            if champion is None:
                raise self._unknown(name, " (no published version of it has the champion alias)")
            return self.lookup(f"{name}@{champion.version}")
        raise self._unknown(name)

    # fetching and loading ----------------------------------------------------------------------------

    def _fetch(self, adapter: Adapter) -> None:
        """Put the adapter's files on local disk (verified against the manifest when it is published)."""
        if adapter.local_dir is not None and (adapter.local_dir / "adapter_config.json").is_file():
            return
        source = adapter.source
        local = Path(source.removeprefix("file://")) if not source.startswith("s3://") else None
        if local is not None and local.is_dir() and not (local / MANIFEST).is_file():
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
                except NotPublished as exc:
                    raise self._unknown(adapter.name, f" ({output_model} v{version} is not published in {store_uri})") from exc
                except StoreError as exc:
                    raise ServingError(502, f"cannot fetch {adapter.name}: {exc}", kind="store_error") from exc
            if manifest.base_model.lower() != self.base_name.lower():
                raise ServingError(400, f"{adapter.name} was trained on {manifest.base_model}, this server serves {self.base_name}", param="model")
            adapter.local_dir = dest
        self._check_adapter_folder(adapter)

    def _fetch_lock(self, key: str) -> threading.Lock:
        with self.lock:
            return self._fetch_locks.setdefault(key, threading.Lock())

    def _check_adapter_folder(self, adapter: Adapter) -> None:
        """Refuse what is not a plain LoRA adapter of this base; load the tokenizer it ships, if any."""
        from transformers import AutoTokenizer  # delayed: transformers is heavy (start-up time)

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
        from peft import PeftModel  # delayed: peft is heavy (start-up time)

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
        from peft.tuners.lora import LoraLayer  # delayed: peft is heavy (start-up time)

        return [(name, module) for name, module in self.model.named_modules() if isinstance(module, LoraLayer)]

    def _merge(self, peft_name: str) -> None:
        """Put one adapter's weights into the base weights: W = W_base + B A * scale.

        A request then runs at the base model's speed (no LoRA branch per layer and token); a swap
        costs one small matrix product per adapted layer. The base weights are restored from a
        kept copy, never by subtraction, so they stay bit-exact however many swaps happen, and the
        merged weights are the very ones the job's candidate evaluation scored (PEFT's merge).
        """
        import torch  # delayed: torch is heavy (start-up time)

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

        Args:
            adapter: from ``acquire`` (fetched; it is loaded and merged here, under the lock).
            prompt: text, or token ids taken as they are.
            max_tokens: tokens to generate at most; 0 only scores the prompt.
            temperature, top_p, seed: sampling (``temperature`` 0 is greedy decoding).
            stop: stop sequences; the text ends before the first one found.
            ignore_eos, min_tokens: vLLM's options to generate past an end-of-sequence token.
            logprobs: with a number, score the tokens and give that many alternatives per position.
            echo: score the prompt's tokens as well (with ``logprobs``).
            add_special_tokens: let the tokenizer add its special tokens to a text prompt.
            streamer: a transformers streamer that receives the text as it is generated.

        Returns:
            The prompt's and the generated ids, the text and the finish reason.

        Raises:
            ServingError: the prompt and ``max_tokens`` do not fit the model's context.
        """
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
                output, finish = decode(model, tokenizer, ids, max_tokens, temperature, top_p, stop, seed, ignore_eos, min_tokens, streamer,
                                        self.device)
            text = tokenizer.decode(output, skip_special_tokens=True)
            cut = first_stop(text, stop)
            if cut is not None:
                text, finish = text[:cut], "stop"
            scored = None
            if logprobs is not None:
                scored = score_logprobs(model, tokenizer, echo, ids + output, logprobs, len(ids), self.device)
        return Generated(prompt_ids=ids, output_ids=output, text=text, finish_reason=finish, logprobs=scored)

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
