"""Full-weight versions in serve-models: published versions that are a whole model, not an adapter.

A full fine-tune publishes ``config.json`` and the weights (no ``adapter_config.json``); such a
version is its own model, served by the same names and routes as an adapter (``serving.model``
resolves the name, applies the trust rules and fetches the files, each verified against the
manifest). What differs is what answers: the version's own weights, loaded in the base's dtype on
the base's device, and its own tokenizer when the folder ships one (the base's otherwise).

Each full-weight model has its own scheduler (``serving.batching``): its requests batch together
and never share a batch with the base, its adapters or another full-weight model. At most
``max_models`` are held in memory; a batch for one that is not loads it first, evicting the least
recently used one that no batch is running on (waiting for one to finish when all are busy: running
batches then take no new rows, so they end soon). An evicted model keeps its verified local copy
and its scheduler, and loads again from that copy when asked for.

A folder whose architecture or vocabulary differs from the served base's
(``serving.compat.check_full_model``) is refused with a 400 that names the model; it is never loaded.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.store import TOKENIZER_FILES
from serving.batching import MAX_BATCH, Job, Scheduler, decode_batch
from serving.compat import CompatError, check_full_model
from serving.generation import Options, as_list, prompt_ids
from serving.metrics import ServingMetrics
from serving.schemas import ServingError

log = logging.getLogger("customizer.serving")


def is_full_weights(folder: Path | None) -> bool:
    """Whether ``folder`` holds a whole model (``config.json``, no ``adapter_config.json``), as full
    fine-tunes publish it.

    >>> is_full_weights(None), is_full_weights(Path("/no/such/folder"))
    (False, False)
    """
    return folder is not None and (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file()


@dataclass
class FullModel:
    """A full-weight version this server knows: its verified local copy, what requests need to know
    before it is loaded (tokenizer, context, vocabulary, end-of-sequence ids), and, while resident,
    its weights."""

    name: str
    source: str  # the published version's URI
    local_dir: Path
    tokenizer: Any  # its own, or the base's when the folder ships none
    max_length: int
    vocab_size: int
    eos: list[int]
    pad_id: int
    scheduler: Scheduler | None = None
    model: Any = None  # the loaded weights, while resident
    pins: int = 0  # batches running on it (never evicted meanwhile)
    loads: int = 0  # times its weights were loaded (again after an eviction)
    created: int = field(default_factory=lambda: int(time.time()))
    load_lock: threading.Lock = field(default_factory=threading.Lock)


class FullModels:
    """The full-weight models of one server: the ones it knows, the ones in memory (at most
    ``max_models``, least recently used first) and one scheduler each.

    Args:
        base_dir: the served base model's folder (a full-weight folder must match its architecture).
        base_name: the base's name (errors and listings name it).
        base_tokenizer: used by folders that ship no tokenizer.
        device, dtype: where and how weights load (the base's).
        metrics: the server's metrics (batch sizes, queue waits).
        max_models: full-weight models held in memory at most.
        max_batch: requests run together at most.
    """

    def __init__(self, base_dir: Path, base_name: str, base_tokenizer: Any, device: str, dtype: Any, metrics: ServingMetrics,
                 max_models: int = 1, max_batch: int = MAX_BATCH):
        if max_models < 1:
            raise ValueError(f"`max_full_models` must be at least 1, got {max_models}")
        self.base_dir, self.base_name, self.base_tokenizer = Path(base_dir), base_name, base_tokenizer
        self.device, self.dtype, self.metrics = device, dtype, metrics
        self.max_models, self.max_batch = max_models, max_batch
        # Replaced, never changed in place (under the condition): requests read it without waiting.
        self.known: dict[str, FullModel] = {}
        self.resident: OrderedDict[str, FullModel] = OrderedDict()  # least recently used first
        self._cond = threading.Condition()  # guards resident, pins and known
        self._waiting = 0  # loads waiting for room: running batches take no new rows meanwhile

    # knowing a version --------------------------------------------------------------------------------

    def get(self, name: str) -> FullModel | None:
        """The full-weight model known by ``name`` (``namespace/name@version``), or None."""
        return self.known.get(name)

    def register(self, name: str, source: str, folder: Path) -> FullModel:
        """Know a fetched and verified full-weight folder under ``name`` (its weights load with its first batch).

        Raises:
            ServingError: 400 naming the model when its architecture or vocabulary is not the base's,
                a shard is missing, or its config or tokenizer cannot be read.
        """
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig  # delayed: transformers is heavy (start-up time)

        known = self.known.get(name)
        if known is not None:
            return known
        try:
            check_full_model(folder, self.base_dir, self.base_name)
        except CompatError as exc:
            reasons = str(exc).partition("cannot be served: ")[2] or str(exc)
            raise ServingError(400, f"`{name}` is not served on {self.base_name}: {reasons}", param="model") from exc
        try:
            config = AutoConfig.from_pretrained(str(folder))
            tokenizer = AutoTokenizer.from_pretrained(str(folder)) if any((folder / f).is_file() for f in TOKENIZER_FILES) \
                else self.base_tokenizer
            generation = GenerationConfig.from_pretrained(str(folder)) if (folder / "generation_config.json").is_file() \
                else GenerationConfig.from_model_config(config)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise ServingError(400, f"`{name}` cannot be read: {str(exc).splitlines()[0]}", param="model") from exc
        eos = [t for t in dict.fromkeys([tokenizer.eos_token_id, *as_list(generation.eos_token_id)]) if t is not None]
        full = FullModel(
            name=name, source=source, local_dir=folder, tokenizer=tokenizer,
            max_length=int(getattr(config, "max_position_embeddings", 0) or 2048), vocab_size=int(config.vocab_size), eos=eos,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0),
        )
        with self._cond:
            if name in self.known:  # another request registered it meanwhile
                return self.known[name]
            full.scheduler = Scheduler(lambda jobs: self._run_batch(full, jobs), max_batch=self.max_batch, max_keys=1)
            self.known = self.known | {name: full}
        log.info("Serving full-weight model %s from %s (%s)", name, folder, "its own tokenizer" if tokenizer is not self.base_tokenizer
                 else "the base's tokenizer")
        return full

    # generation ---------------------------------------------------------------------------------------

    def submit(self, full: FullModel, prompt: str | list[int], options: Options, add_special_tokens: bool = True,
               stream: Any = None) -> Job:
        """Check one prompt against ``full``'s tokenizer and context, and queue it for its next batch.

        Raises:
            ServingError: the prompt is empty, holds ids outside the vocabulary, or does not fit the
                model's context with ``max_tokens``.
        """
        tokenizer = full.tokenizer
        ids = prompt_ids(tokenizer, prompt, options, full.vocab_size, full.max_length, add_special_tokens)
        assert full.scheduler is not None
        return full.scheduler.submit(Job(ids=ids, options=options, tokenizer=tokenizer, key=full.name, stream=stream))

    def _run_batch(self, full: FullModel, jobs: list[Job]) -> None:
        """Run a batch of ``full``'s requests (its scheduler's thread), loading it first when it is
        not resident; requests for it join as the batch goes, unless another model waits for room."""
        try:
            model = self._pin(full)
        except ServingError as exc:
            for job in jobs:
                job.finish(exc)
            return
        first = [jobs]

        def admit(running: list[Any]) -> list[tuple[Job, str | None]]:
            if first:
                fresh = first.pop()
            elif self._waiting:
                return []
            else:
                assert full.scheduler is not None
                fresh = full.scheduler.take(self.max_batch - len(running), {full.name})
            if fresh:
                self.metrics.started(fresh, len(running) + len(fresh))
            return [(job, None) for job in fresh]

        try:
            decode_batch(model, full.pad_id, full.eos, admit, lambda names: None, lambda keep: None)
        finally:
            self._unpin(full)

    # memory -------------------------------------------------------------------------------------------

    def preload(self, full: FullModel) -> None:
        """Load ``full``'s weights now (``--preload``), as its first batch would."""
        self._pin(full)
        self._unpin(full)

    def _pin(self, full: FullModel) -> Any:
        """Make ``full`` resident (evicting the least recently used idle model when memory is full)
        and keep it so until ``_unpin``; returns its weights.

        Raises:
            ServingError: 400 naming the model when its weights do not load.
        """
        with self._cond:
            # A model whose batch just ended lets a load waiting for room go first: it is not starved.
            while full.name in self.resident and full.pins == 0 and self._waiting:
                self._cond.wait()
            while full.name not in self.resident and len(self.resident) >= self.max_models:
                victim = next((m for m in self.resident.values() if m.pins == 0), None)
                if victim is None:  # every resident model is running a batch: wait for one to end
                    self._waiting += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._waiting -= 1
                        self._cond.notify_all()
                    continue
                self._evict(victim)
            full.pins += 1
            self.resident[full.name] = full
            self.resident.move_to_end(full.name)
        try:
            with full.load_lock:  # loading happens outside the condition: other models' batches go on
                if full.model is None:
                    full.model = self._load(full)
            return full.model
        except BaseException:
            with self._cond:
                full.pins -= 1
                if full.model is None:
                    self.resident.pop(full.name, None)
                self._cond.notify_all()
            raise

    def _unpin(self, full: FullModel) -> None:
        with self._cond:
            full.pins -= 1
            self._cond.notify_all()

    def _evict(self, victim: FullModel) -> None:
        """Free an idle resident model's weights (holding the condition); its local copy stays."""
        import torch  # delayed: torch is heavy (start-up time)

        self.resident.pop(victim.name)
        victim.model = None
        if self.device == "cuda":
            torch.cuda.empty_cache()
        log.info("Evicted full-weight model %s (least recently used)", victim.name)

    def _load(self, full: FullModel) -> Any:
        from transformers import AutoModelForCausalLM  # delayed: transformers is heavy (start-up time)

        started = time.monotonic()
        try:
            model = AutoModelForCausalLM.from_pretrained(str(full.local_dir), dtype=self.dtype).to(self.device).eval()
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise ServingError(400, f"`{full.name}` does not load: {str(exc).splitlines()[0]}", param="model") from exc
        full.loads += 1
        log.info("Loaded full-weight model %s in %.1f s", full.name, time.monotonic() - started)
        return model

    # listing ------------------------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """``/v1/models`` entries for the full-weight models this server knows (``parent``: the base
        they were fine-tuned from, which also keeps them to their namespace's keys)."""
        return [{
            "id": full.name, "object": "model", "created": full.created, "owned_by": "customizer", "root": full.source,
            "parent": self.base_name, "max_model_len": full.max_length, "resident": full.name in self.resident,
        } for full in sorted(self.known.values(), key=lambda f: f.name)]
