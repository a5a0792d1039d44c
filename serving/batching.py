"""Continuous batching for serve-models: requests run together, and join a running batch.

One scheduler thread owns the model. A request is queued as a ``Job``; when the model is idle the
scheduler waits a few milliseconds after the first one for others to arrive, then starts a batch.
``decode_batch`` runs it one token at a time for all rows at once, each row choosing its next token
with its own options (``serving.generation``). A row that finishes (end of sequence, a stop
sequence, ``max_tokens``, a closed JSON object) leaves the batch and its caller gets its answer at
once; requests that arrive meanwhile join at the next token (up to ``max_batch`` rows): their
prompts are run on their own (prefill), and their cache is joined to the batch's, both
left-padded to the longer one.

Streaming requests run in the same batches: their ``Job`` carries a queue that receives the text
as it is generated.

Padding does not change an answer: padded positions are masked out of attention and each row's
positions count from its own first token, so a greedy answer in a batch is the answer alone (the
tests check it on the tiny model).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.constrained import JsonConstraint
from serving.schema_constraint import SchemaConstraint
from serving.generation import Generated, Options, choose, first_stop, logprob_entry, logprobs_object, process_logits

log = logging.getLogger("customizer.serving")

MAX_BATCH = 32  # rows in one batch
WINDOW_SECONDS = 0.01  # how long the first request of a batch waits for others


@dataclass
class Job:
    """One prompt to generate from, and where its answer goes."""

    ids: list[int]
    options: Options
    tokenizer: Any
    key: str | None = None  # what must be loaded for it (its adapter's name; None: the base alone)
    adapter: Any = None  # that adapter, as the model server knows it
    stream: queue.Queue | None = None  # receives text pieces, then None at the end
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None
    result: Generated | BaseException | None = None
    cancelled: bool = False  # its caller went away (a closed stream): it leaves the batch
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, result: Generated | BaseException) -> None:
        self.result = result
        if self.stream is not None:
            self.stream.put(None)
        self.done.set()

    def wait(self) -> Generated:
        """Block until the answer is there; raises what the batch raised."""
        self.done.wait()
        if isinstance(self.result, BaseException):
            raise self.result
        assert self.result is not None
        return self.result


class Scheduler:
    """The queue of jobs and the thread that runs them.

    Args:
        run: runs a batch that starts with these jobs, until no row is left (it takes more with ``take``).
        max_batch: rows in a batch at most.
        max_keys: distinct ``Job.key`` values in a batch at most (adapters held in memory).
        window: seconds the first job of a new batch waits for more to arrive.
    """

    def __init__(self, run: Callable[[list[Job]], None], max_batch: int = MAX_BATCH, max_keys: int = 8, window: float = WINDOW_SECONDS):
        self._run, self.max_batch, self.max_keys, self.window = run, max_batch, max_keys, window
        self._pending: list[Job] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="serve-models-scheduler", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            self._pending.append(job)
            self._cond.notify()
        return job

    def take(self, room: int, keys: set[str | None]) -> list[Job]:
        """Queued jobs that fit a running batch (``room`` rows, its ``keys``), in arrival order; no waiting."""
        with self._cond:
            taken, rest, keys = [], [], set(keys)
            for job in self._pending:
                if len(taken) < room and (job.key in keys or len((keys | {job.key}) - {None}) <= self.max_keys):
                    taken.append(job)
                    keys.add(job.key)
                else:
                    rest.append(job)
            self._pending = rest
            return taken

    def _take_first(self) -> list[Job]:
        """The jobs a new batch starts with: waits for one, then ``window`` for others."""
        with self._cond:
            while not self._pending:
                self._cond.wait()
            deadline = self._pending[0].enqueued + self.window
            while len(self._pending) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
        return self.take(self.max_batch, set())

    def _loop(self) -> None:
        while True:
            batch = self._take_first()
            try:
                self._run(batch)
            except Exception as exc:  # noqa: BLE001 - handed to each caller, who answers with an error
                log.error("A batch failed", exc_info=exc)
                for job in batch:
                    if not job.done.is_set():
                        job.finish(exc)


@dataclass
class _Row:
    """A job's progress through a batch."""

    job: Job
    name: str | None  # the PEFT adapter it uses
    eos: list[int]
    generator: Any
    constraint: JsonConstraint | SchemaConstraint | None
    output: list[int] = field(default_factory=list)
    scored: list[Any] = field(default_factory=list)
    sent: str = ""  # text streamed so far


def decode_batch(model: Any, pad_id: int, eos: list[int], admit: Callable[[list[_Row]], list[tuple[Job, str | None]]],
                 set_rows: Callable[[list[str | None]], None], select: Callable[[Any], None]) -> None:
    """Generate for a batch until no row is left, finishing each job as soon as it is done.

    Args:
        model: the causal LM.
        pad_id: the token padded positions hold (masked out).
        eos: end-of-sequence ids (each job's tokenizer may add its own).
        admit: given the running rows, the jobs that join now, each with its adapter's PEFT name
            (the first call starts the batch; an empty answer with no rows left ends it).
        set_rows: tells the adapters' hooks which adapter each row uses, in order.
        select: tells them which rows stay when some leave (a tensor of row indices).
    """
    rows: list[_Row] = []
    state: dict[str, Any] = {}  # cache, mask, positions, last (the rows' next-token logits)
    joining = admit(rows)
    try:
        _decode(model, rows, state, joining, pad_id, eos, admit, set_rows, select)
    except BaseException as exc:  # every caller of the batch gets the error, not a wait without end
        for job in [row.job for row in state.get("rows", [])] + [job for job, _ in joining] + [job for job, _ in state.get("joining", [])]:
            if not job.done.is_set():
                job.finish(exc)
        raise


def _decode(model: Any, rows: list[_Row], state: dict[str, Any], joining: list[tuple[Job, str | None]], pad_id: int, eos: list[int],
            admit: Callable[[list[_Row]], list[tuple[Job, str | None]]], set_rows: Callable[[list[str | None]], None],
            select: Callable[[Any], None]) -> None:
    """``decode_batch``'s loop; ``state`` also names the running and joining rows (for its clean-up)."""
    import torch  # delayed: torch is heavy (start-up time)

    with torch.no_grad():
        while rows or joining:
            state["joining"] = joining
            if joining:
                rows = state["rows"] = _join(model, rows, state, joining, pad_id, eos, set_rows)
            tokens = _step(rows, state["last"])
            staying = [i for i, row in enumerate(rows) if not row.job.done.is_set()]
            if staying and len(staying) < len(rows):
                _keep(state, staying, select)
            rows, tokens = [rows[i] for i in staying], [tokens[i] for i in staying]
            state["rows"] = rows
            if rows:
                state["mask"] = torch.cat([state["mask"], state["mask"].new_ones((len(rows), 1))], dim=1)
                state["positions"] = state["positions"][:, -1:] + 1
                out = model(input_ids=torch.tensor(tokens, device=state["mask"].device)[:, None], attention_mask=state["mask"],
                            position_ids=state["positions"], past_key_values=state["cache"], use_cache=True)
                state["last"] = out.logits[:, -1, :].float()
            else:
                state.clear()
            joining = state["joining"] = admit(rows)


def _constraint(job: Job, special: set[int]) -> JsonConstraint | SchemaConstraint | None:
    """What keeps a row's output JSON: its schema's grammar, or a JSON object, or nothing."""
    if job.options.json_schema is not None:
        return SchemaConstraint(job.tokenizer, job.options.json_schema)
    return JsonConstraint(job.tokenizer, special) if job.options.json_object else None


def _left_pad(tensor: Any, width: int, dim: int) -> Any:
    """``tensor`` with zeros added before its entries along ``dim`` up to ``width``."""
    import torch  # delayed: torch is heavy (start-up time)

    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _join(model: Any, rows: list[_Row], state: dict[str, Any], joining: list[tuple[Job, str | None]], pad_id: int, eos: list[int],
          set_rows: Callable[[list[str | None]], None]) -> list[_Row]:
    """Run the joining jobs' prompts (prefill) and add them to the batch: their cache, mask, positions
    and next-token logits after the running rows'. Returns all rows."""
    import torch  # delayed: torch and transformers are heavy (start-up time)
    from transformers import DynamicCache

    device = next(model.parameters()).device
    jobs = [job for job, _ in joining]
    width = max(len(job.ids) for job in jobs)
    input_ids = torch.full((len(jobs), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(jobs), width), dtype=torch.long, device=device)
    for i, job in enumerate(jobs):
        input_ids[i, width - len(job.ids):] = torch.tensor(job.ids, device=device)
        mask[i, width - len(job.ids):] = 1
    new_rows = []
    for job, name in joining:
        generator = torch.Generator(device=device)
        if job.options.seed is not None:
            generator.manual_seed(job.options.seed % 2**64)
        else:
            generator.seed()
        row_eos = list(dict.fromkeys(eos + ([job.tokenizer.eos_token_id] if job.tokenizer.eos_token_id is not None else [])))
        special = set(getattr(job.tokenizer, "all_special_ids", [])) | set(row_eos)
        new_rows.append(_Row(job, name, row_eos, generator, _constraint(job, special)))
    echo = any(job.options.echo and job.options.logprobs is not None for job in jobs)
    cache = DynamicCache()
    set_rows([row.name for row in new_rows])
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), past_key_values=cache,
                use_cache=True, logits_to_keep=0 if echo else 1)
    if echo:
        _score_prompts(new_rows, out.logits, width)
    last = out.logits[:, -1, :].float()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -1:]
    if not rows:
        state.update(cache=cache, mask=mask, positions=positions, last=last)
    else:  # both left-padded to the longer one, then one batch
        joined = max(width, state["mask"].shape[1])
        for old, new in zip(state["cache"].layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, joined, 2), _left_pad(new.keys, joined, 2)])
            old.values = torch.cat([_left_pad(old.values, joined, 2), _left_pad(new.values, joined, 2)])
        state["mask"] = torch.cat([_left_pad(state["mask"], joined, 1), _left_pad(mask, joined, 1)])
        state["positions"] = torch.cat([state["positions"], positions])
        state["last"] = torch.cat([state["last"], last])
    rows = rows + new_rows
    set_rows([row.name for row in rows])
    return rows


def _keep(state: dict[str, Any], staying: list[int], select: Callable[[Any], None]) -> None:
    """Drop the rows that left from the cache, mask and positions, and columns no row needs any more."""
    import torch  # delayed: torch is heavy (start-up time)

    keep = torch.tensor(staying, dtype=torch.long, device=state["mask"].device)
    state["cache"].batch_select_indices(keep)
    state["mask"], state["positions"] = state["mask"][keep], state["positions"][keep]
    select(keep)
    used = state["mask"].any(dim=0).nonzero()
    start = int(used[0]) if len(used) else 0
    if start > 0:  # padding only the rows that left needed
        state["mask"] = state["mask"][:, start:]
        for layer in state["cache"].layers:
            layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]


def _score_prompts(rows: list[_Row], logits: Any, width: int) -> None:
    import torch  # delayed: torch is heavy (start-up time)

    for i, row in enumerate(rows):
        options = row.job.options
        if not (options.echo and options.logprobs is not None):
            continue
        ids, start = row.job.ids, width - len(row.job.ids)
        logp = torch.log_softmax(logits[i, start:width - 1].float(), dim=-1)
        row.scored = [None] + [logprob_entry(logp[k - 1], ids[k], options.logprobs, row.job.tokenizer) for k in range(1, len(ids))]


def _step(active: list[_Row], last: Any) -> list[int]:
    """Choose each row's next token, record it, stream it, and finish the rows that are done."""
    import torch  # delayed: torch is heavy (start-up time)

    greedy = last.argmax(-1).tolist()
    tokens = []
    for i, row in enumerate(active):
        job, options = row.job, row.job.options
        if options.max_tokens == 0 or job.cancelled:  # only scoring the prompt, or nobody is listening
            _finish(row, "length")
            tokens.append(0)
            continue
        allowed = None
        if options.plain:
            token = greedy[i]
        else:
            logits = process_logits(last[i], options, row.output, row.eos)
            if row.constraint is not None:
                allowed = row.constraint.allowed(logits, row.output, options.max_tokens - len(row.output), 1 if options.greedy else 8)
                if not allowed:
                    _finish(row, "length")
                    tokens.append(0)
                    continue
            token = choose(logits, options, row.generator, allowed)
        tokens.append(token)
        row.output.append(token)
        if options.logprobs is not None:
            row.scored.append(logprob_entry(torch.log_softmax(last[i], dim=-1), token, options.logprobs, job.tokenizer))
        if row.constraint is not None:
            row.constraint.advance(row.output)
        ended = "stop" if (token in row.eos and not options.ignore_eos) or (row.constraint is not None and row.constraint.done) \
            else "length" if len(row.output) >= options.max_tokens else None
        if job.stream is None and not options.stop and ended is None:
            continue  # the text is only needed to stream it, look for stop sequences, or answer
        text = job.tokenizer.decode(row.output, skip_special_tokens=True)
        if job.stream is not None and not text.endswith("\ufffd") and len(text) > len(row.sent) and text.startswith(row.sent):
            job.stream.put(text[len(row.sent):])
            row.sent = text
        if options.stop and first_stop(text, options.stop) is not None:
            ended = "stop"
        if ended is not None:
            _finish(row, ended, text)
    return tokens


def _finish(row: _Row, reason: str, text: str = "") -> None:
    job, options = row.job, row.job.options
    cut = first_stop(text, options.stop)
    if cut is not None:
        text = text[:cut]
    logprobs = None
    if options.logprobs is not None:
        tokens = (job.ids if options.echo else []) + row.output
        logprobs = logprobs_object(job.tokenizer, tokens, row.scored)
    job.finish(Generated(prompt_ids=job.ids, output_ids=row.output, text=text, finish_reason=reason, logprobs=logprobs))
