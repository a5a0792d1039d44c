"""The model serve-models answers with: one base model and the LoRA adapters of it, chosen per request.

A request's ``model`` names what answers it:
- the base model's name (the config's target name, or the config URN): the base, adapters off;
- a name loaded through ``/v1/load_lora_adapter``;
- ``namespace/name@version``: that published version, fetched from the store on first use (every
  file verified against its manifest) and kept on local disk;
- ``namespace/name``: the version the MLflow ``champion`` alias points at, when the platform's
  signed gate decision allows it (``deploy.trust``; otherwise the request is refused with why).
A published version holding full weights rather than an adapter is its own model, with its own
batches (``serving.full_models``); the names and the rules above are the same.

At most ``serve_max_adapters`` adapters are held in memory; using another evicts the least recently
used one, which comes back from its verified local copy when asked for again.

Requests are batched (``serving.batching``): one scheduler thread runs the model, and a batch may
mix adapters, each row getting its own adapter's LoRA contribution (``serving.lora``). The base
weights are never written, so they stay bit-exact, and a row never sees another adapter's weights.
The lock guards the adapters held in memory: a batch holds it while it runs, loading and unloading
wait for it. Downloads happen outside the lock.

``/v1/models`` lists the base, the adapters this server knows and the registered models whose
champion is trusted (``deploy.trust``); listing fails soft (an unreachable registry leaves the
champions out, with a warning), serving never does.
"""

from __future__ import annotations

import json
import logging
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
from core import tags as tag
from deploy.registry import RegistryUnavailable, champions
from deploy.store import MANIFEST, TOKENIZER_FILES, NotPublished, StoreError, fetch, list_published, parse_published_uri
from deploy.trust import UntrustedChampion, trusted_champion
from serving.batching import MAX_BATCH, Job, Scheduler, decode_batch
from serving.full_models import FullModel, FullModels, is_full_weights
from serving.generation import Generated, Options, as_list, prompt_ids
from serving.lora import BatchedLora
from serving.metrics import ServingMetrics
from serving.schemas import PUBLISHED_NAME, REGISTERED_NAME, ServingError

log = logging.getLogger("customizer.serving")



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


CHAMPIONS_TTL = 10.0  # seconds a listing of the registry's champions is reused (each refusal is audited)


def _published_base_ids(folder: Path) -> set[str]:
    """The Hub id (lowercase) that a fetched version's manifest records for its base: published
    adapters name their base by it, and the manifest's catalog name was matched on fetch."""
    path = folder / MANIFEST
    if not path.is_file():
        return set()
    try:
        hub_id = json.loads(path.read_text(encoding="utf-8")).get("lineage", {}).get("base_model_hub_id")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return set()  # nothing more is accepted than the server's own names
    return {hub_id.lower()} if isinstance(hub_id, str) and hub_id else set()


class ModelServer:
    """The base model, its adapters (at most ``max_adapters`` in memory), the lock that guards them
    and the scheduler that batches requests."""

    def __init__(
        self, settings: Settings, base_model_dir: Path, base_name: str, aliases: tuple[str, ...] = (), max_adapters: int | None = None,
        max_batch: int = MAX_BATCH, max_full_models: int = 1,
    ):
        """Load the base model.

        Args:
            settings: store, registry and serving settings.
            base_model_dir: local Hugging Face folder of the base model.
            base_name: the name it is served under (a config's target name; adapters name it too).
            aliases: more names for the base (e.g. the config URN).
            max_adapters: adapters held in memory; default the ``serve_max_adapters`` setting.
            max_batch: requests run together at most.
            max_full_models: full-weight versions held in memory (``serving.full_models``).
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
        self.lora = BatchedLora()
        self.eos = [t for t in dict.fromkeys([self.tokenizer.eos_token_id, *as_list(getattr(self.model.generation_config, "eos_token_id", None))])
                    if t is not None]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.eos[0] if self.eos else 0)
        self._champions: tuple[float, list[tuple[str, str]]] | None = None
        # Replaced, never changed in place (under the lock): requests read it without waiting for a batch.
        self.adapters: dict[str, Adapter] = {}
        self.resident: OrderedDict[str, Adapter] = OrderedDict()  # least recently used first
        self.lock = threading.RLock()
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._fetch_locks_lock = threading.Lock()
        self._counter = 0
        self.loads = 0  # adapters loaded into memory so far (evicted ones that return count again)
        self.created = int(time.time())
        # Evicting the active adapter is routine here: PEFT's active adapter is not what answers.
        warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted")
        self.metrics = ServingMetrics()
        self._exclusive = threading.Event()  # set while a load or unload waits for the lock
        self._waiters, self._waiters_lock = 0, threading.Lock()
        self.scheduler = Scheduler(self._run_batch, max_batch=max_batch, max_keys=self.max_adapters)
        self.full = FullModels(self.base_dir, base_name, self.tokenizer, self.device, dtype, self.metrics, max_full_models, max_batch)
        log.info("Serving %s from %s on %s (at most %d adapters in memory, batches of up to %d)", base_name, base_model_dir,
                 self.device, self.max_adapters, max_batch)

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
        known = self.adapters.get(name)
        if known is not None:
            return known
        match = PUBLISHED_NAME.match(name)
        if match:
            return Adapter(name=name, source=f"{self.settings.publish_uri.rstrip('/')}/{match['model']}/{match['version']}/")
        if REGISTERED_NAME.match(name):
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

    def _fetch(self, adapter: Adapter, full_ok: bool = False) -> None:
        """Put the adapter's files on local disk (verified against the manifest when it is published);
        ``full_ok``: a published version may hold full weights instead (``serving.full_models``)."""
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
                except StoreError as exc:  # what the store holds is not what was published: no retry helps (409)
                    tampered = any(s in str(exc) for s in ("does not match its manifest", "listed in the manifest but missing"))
                    raise ServingError(409 if tampered else 502, f"cannot fetch {adapter.name}: {exc}",
                                       kind="manifest_mismatch" if tampered else "store_error", param="model") from exc
            if manifest.base_model.lower() != self.base_name.lower():
                raise ServingError(400, f"{adapter.name} was trained on {manifest.base_model}, this server serves {self.base_name}", param="model")
            adapter.local_dir = dest
            if full_ok and is_full_weights(dest):
                return
        self._check_adapter_folder(adapter)

    def _fetch_lock(self, key: str) -> threading.Lock:
        with self._fetch_locks_lock:
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
        known = {n.lower() for n in self.base_names} | {str(self.base_dir).lower()} | _published_base_ids(folder)
        if named and named.lower() not in known:
            raise ServingError(400, f"{adapter.name} was trained on {named}, this server serves {self.base_name}", param="lora_path")
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            adapter.tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def _make_resident(self, adapter: Adapter, in_use: frozenset[str] = frozenset()) -> None:
        """Load a fetched adapter into the model, evicting the least recently used one (not among
        ``in_use``, the running rows' adapters) if full. Holds the lock."""
        from peft import PeftModel  # delayed: peft is heavy (start-up time)

        if adapter.peft_name is not None:
            self.resident.move_to_end(adapter.name)
            return
        while len(self.resident) >= self.max_adapters:
            name = next(n for n, a in self.resident.items() if a.name not in in_use)
            evicted = self.resident.pop(name)
            self.peft.delete_adapter(evicted.peft_name)
            log.info("Evicted adapter %s (least recently used)", evicted.name)
            evicted.peft_name = None
            if not evicted.explicit and self.adapters.get(evicted.name) is evicted:
                self.adapters = {k: v for k, v in self.adapters.items() if k != evicted.name}
        self._counter += 1
        peft_name = f"adapter_{self._counter}"  # PEFT keys modules by adapter name: no '/', '@' or '.'
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, str(adapter.local_dir), adapter_name=peft_name)
                self.peft.eval()
            else:
                self.peft.load_adapter(str(adapter.local_dir), adapter_name=peft_name)
            self.lora.attach(self.model)
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            if self.peft is not None and peft_name in self.peft.peft_config:
                self.peft.delete_adapter(peft_name)
            raise ServingError(400, f"{adapter.name} does not load on {self.base_name}: {str(exc).splitlines()[0]}", param="model") from exc
        # PEFT's own LoRA branches stay off: the batch's hooks add each row's adapter (serving.lora).
        self.peft.base_model.disable_adapter_layers()
        adapter.peft_name = peft_name
        self.resident[adapter.name] = adapter
        if adapter.name not in self.adapters:
            self.adapters = self.adapters | {adapter.name: adapter}
        self.loads += 1

    def acquire(self, name: str) -> Adapter | FullModel | None:
        """Resolve ``name`` and fetch its files (outside the lock); its batch loads it into memory."""
        adapter = self.lookup(name)
        if adapter is None:
            return None
        full = self.full.get(adapter.name) if adapter.name not in self.adapters else None
        if full is not None:  # a full-weight version fetched before: its verified copy is on disk
            return full
        self._fetch(adapter, full_ok=True)
        if is_full_weights(adapter.local_dir):
            return self.full.register(adapter.name, adapter.source, adapter.local_dir)
        return adapter

    @contextmanager
    def active(self, adapter: Adapter | None) -> Iterator[Any]:
        """Hold the model (no batch runs meanwhile) with ``adapter`` loaded; yields its tokenizer."""
        with self._exclusively():
            if adapter is not None:
                adapter = self._registered(adapter)
                self._make_resident(adapter)
            yield self.tokenizer if adapter is None else adapter.tokenizer or self.tokenizer

    @contextmanager
    def _exclusively(self) -> Iterator[None]:
        """Hold the lock, asking the running batch to take no new rows meanwhile (so it ends soon)."""
        with self._waiters_lock:
            self._waiters += 1
            self._exclusive.set()
        try:
            with self.lock:
                yield
        finally:
            with self._waiters_lock:
                self._waiters -= 1
                if not self._waiters:
                    self._exclusive.clear()

    def _registered(self, adapter: Adapter) -> Adapter:
        """The adapter as this server knows it (another request may have registered it meanwhile).

        Raises:
            ServingError: 404 when it was loaded by name and unloaded since.
        """
        registered = self.adapters.get(adapter.name)
        if registered is not None and registered is not adapter:
            return registered
        if registered is None and adapter.explicit:
            raise ServingError(404, f"The lora adapter '{adapter.name}' cannot be found.", kind="NotFoundError", param="model")
        return adapter

    def load(self, name: str, path: str, replace: bool = False) -> Adapter:
        """``/v1/load_lora_adapter``: fetch and load ``path`` under ``name`` (loading the same again is a no-op)."""
        if self.is_base(name):
            raise ServingError(400, f"`lora_name` {name!r} is the base model's name", param="lora_name")
        existing = self.adapters.get(name)
        if existing is not None and existing.explicit and not replace:
            if existing.source.rstrip("/") == path.rstrip("/"):
                return existing
            raise ServingError(400, f"The lora adapter '{name}' has already been loaded (from {existing.source}); unload it first", param="lora_name")
        adapter = Adapter(name=name, source=path, explicit=True)
        self._fetch(adapter)
        with self._exclusively():
            if existing is not None:
                adapter.created = existing.created
            self.adapters = self.adapters | {name: adapter}  # one assignment: the name is never missing (no 404 mid-swap)
            if existing is not None:
                self._drop(existing)  # frees the old weights; the name already points at the new adapter
            self._make_resident(adapter)
        log.info("Loaded adapter %s from %s", name, path)
        return adapter

    def _drop(self, adapter: Adapter) -> None:
        if adapter.peft_name is not None:
            self.peft.delete_adapter(adapter.peft_name)
            self.resident.pop(adapter.name, None)
            adapter.peft_name = None
        if self.adapters.get(adapter.name) is adapter:
            self.adapters = {k: v for k, v in self.adapters.items() if k != adapter.name}

    def unload(self, name: str) -> None:
        """``/v1/unload_lora_adapter``: forget ``name`` and free its memory."""
        with self._exclusively():
            adapter = self.adapters.get(name)
            if adapter is None:
                raise ServingError(404, f"The lora adapter '{name}' cannot be found.", kind="NotFoundError", param="lora_name")
            self._drop(adapter)
        log.info("Unloaded adapter %s", name)

    # generation --------------------------------------------------------------------------------------

    def submit(self, adapter: Adapter | FullModel | None, prompt: str | list[int], options: Options, add_special_tokens: bool = True,
               stream: Any = None) -> Job:
        """Check one prompt and queue it for the next batch; ``Job.wait()`` gives its answer.

        Args:
            adapter: from ``acquire`` (fetched; the batch loads it into memory), None for the base; a
                full-weight model's requests go to its own batches.
            prompt: text, or token ids taken as they are.
            options: how to generate; ``max_tokens`` 0 only scores the prompt.
            add_special_tokens: let the tokenizer add its special tokens to a text prompt.
            stream: a queue that receives the text as it is generated, then None.

        Raises:
            ServingError: the prompt is empty, holds ids outside the vocabulary, or does not fit the
                model's context with ``max_tokens``.
        """
        if isinstance(adapter, FullModel):
            return self.full.submit(adapter, prompt, options, add_special_tokens, stream)
        tokenizer = (adapter.tokenizer if adapter is not None else None) or self.tokenizer
        ids = prompt_ids(tokenizer, prompt, options, self.model.config.vocab_size, self.max_length, add_special_tokens)
        job = Job(ids=ids, options=options, tokenizer=tokenizer, key=adapter.name if adapter else None, adapter=adapter, stream=stream)
        return self.scheduler.submit(job)

    def generate(self, adapter: Adapter | FullModel | None, prompt: str | list[int], options: Options, add_special_tokens: bool = True) -> Generated:
        """``submit`` and wait for the answer."""
        return self.submit(adapter, prompt, options, add_special_tokens).wait()

    def _run_batch(self, jobs: list[Job]) -> None:
        """Run a batch (the scheduler's thread) from ``jobs`` until no row is left, letting queued
        requests join as it goes; holds the lock throughout (loading or unloading an adapter stops
        new requests from joining, so the batch drains and the lock is free)."""
        first = [jobs]

        def admit(running: list[Any]) -> list[tuple[Job, str | None]]:
            if first:
                fresh = first.pop()
            elif self._exclusive.is_set():
                return []
            else:
                fresh = self.scheduler.take(self.scheduler.max_batch - len(running), {row.job.key for row in running})
            admitted = []
            for job in fresh:
                try:
                    if job.adapter is not None:
                        job.adapter = self._registered(job.adapter)
                        self._make_resident(job.adapter, frozenset(row.job.adapter.name for row in running if row.job.adapter is not None))
                except ServingError as exc:
                    job.finish(exc)
                    continue
                admitted.append((job, job.adapter.peft_name if job.adapter is not None else None))
            if admitted:
                self.metrics.started([job for job, _ in admitted], len(running) + len(admitted))
            return admitted

        with self.lock:
            decode_batch(self.model, self.pad_id, self.eos, admit,
                         lambda names: self.lora.set_rows(self.model, names, [a.peft_name for a in self.resident.values()]),
                         self.lora.select)

    def trusted_champions(self) -> list[tuple[str, str]]:
        """``(output_model, version)`` of each registered model of this base whose champion is trusted.

        For listing only, so it fails soft: when the registry cannot be read it logs a warning and
        lists none (a request naming a model still resolves it strictly, in ``lookup``). An
        untrusted champion is left out (and its refusal audited, at most every ``CHAMPIONS_TTL`` s).
        """
        cached = self._champions
        if cached is not None and time.monotonic() - cached[0] < CHAMPIONS_TTL:
            return cached[1]
        listed = []
        try:
            for output_model, version, tags in champions(self.settings):
                base = tags.get(tag.BASE_MODEL)
                if version is None or (base and base.lower() not in {n.lower() for n in self.base_names}):
                    continue  # no champion, or another base's (full weights are served too: serving.full_models)
                try:
                    trusted = trusted_champion(self.settings, output_model, principal=None, purpose="serving")
                except UntrustedChampion:
                    continue
                if trusted is not None:
                    listed.append((output_model, trusted.version))
        except RegistryUnavailable as exc:
            log.warning("Listing models without the registry's champions: %s", exc)
            return []
        self._champions = (time.monotonic(), listed)
        return listed

    def describe(self) -> list[dict[str, Any]]:
        """``/v1/models`` entries: the base, every adapter and full-weight version this server knows, then the trusted champions."""
        entries = [{
            "id": self.base_name, "object": "model", "created": self.created, "owned_by": "customizer",
            "root": str(self.base_dir), "parent": None, "max_model_len": self.max_length,
        }]
        known = sorted(self.adapters.values(), key=lambda a: a.name)
        for adapter in known:
            entries.append({
                "id": adapter.name, "object": "model", "created": adapter.created, "owned_by": "customizer",
                "root": adapter.source, "parent": self.base_name, "max_model_len": self.max_length,
                "resident": adapter.peft_name is not None,
            })
        entries += self.full.describe()
        listed = {entry["id"] for entry in entries}
        for output_model, version in self.trusted_champions():
            if output_model not in listed:
                entries.append({
                    "id": output_model, "object": "model", "created": self.created, "owned_by": "customizer",
                    "root": f"{output_model}@{version}", "parent": self.base_name, "max_model_len": self.max_length,
                })
        return entries
