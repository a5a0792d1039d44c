"""Generation for serve-models, one request at a time within a batch: its options, how its next
token is chosen from its row of logits, stop sequences, and OpenAI's legacy ``logprobs``.

``serving.batching`` runs the model for a whole batch; everything here looks at one row, so a
request's answer depends on its own options only, whatever it was batched with. Sampling draws
from the request's own ``torch.Generator`` (seeded with its ``seed``), so a seeded request gives
the same tokens alone or in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serving.schemas import ServingError


@dataclass
class Generated:
    """One prompt's result: its token ids, the generated ids and text, and why generation ended."""

    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop sequence) or "length"
    logprobs: dict[str, Any] | None = None


def stop_list(stop: str | list[str] | None) -> list[str]:
    """A request's ``stop`` as a list.

    >>> stop_list(None), stop_list("\\n"), stop_list(["a", "b"])
    ([], ['\\n'], ['a', 'b'])
    """
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def first_stop(text: str, stop: list[str]) -> int | None:
    """Where the first stop sequence in ``text`` begins, or None.

    >>> first_stop("one. two.", ["."]), first_stop("one", ["."])
    (3, None)
    """
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could begin a stop sequence (a stream holds them).

    >>> held_back("an end", ["ending"]), held_back("an end", ["stop"])
    (3, 0)
    """
    return max((n for s in stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)


def as_list(value: Any) -> list[Any]:
    """One value or several as a list (a generation config's ``eos_token_id`` is either).

    >>> as_list(None), as_list(2), as_list([2, 3])
    ([], [2], [2, 3])
    """
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class Options:
    """How one request generates (OpenAI's sampling fields, plus vLLM's ``ignore_eos`` and ``min_tokens``)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: all tokens
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None  # with a number: score the tokens, with that many alternatives each
    echo: bool = False  # score the prompt too (with ``logprobs``)
    json_object: bool = False  # ``response_format: json_object``
    json_schema: str | None = None  # ``response_format: json_schema``: its compiled grammar (``serving.schema_constraint``)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def plain(self) -> bool:
        """Greedy with nothing that changes the logits: the batch's argmax is this row's token."""
        return self.greedy and not (self.presence_penalty or self.frequency_penalty or self.logit_bias or self.json_object
                                 or self.json_schema is not None)


def process_logits(row: Any, options: Options, output: list[int], eos: list[int]) -> Any:
    """One row of logits (float32, [vocab]) after the request's biases, penalties and ``min_tokens``.

    Penalties follow OpenAI: ``frequency_penalty`` times how often a token was generated, plus
    ``presence_penalty`` once it was generated at all.
    """
    import torch  # delayed: torch is heavy (start-up time)

    row = row.clone()
    if options.logit_bias:
        ids = torch.tensor(list(options.logit_bias), device=row.device)
        row[ids] += torch.tensor(list(options.logit_bias.values()), device=row.device, dtype=row.dtype)
    if output and (options.presence_penalty or options.frequency_penalty):
        counts = torch.bincount(torch.tensor(output, device=row.device), minlength=row.shape[0])[: row.shape[0]].to(row.dtype)
        row -= counts * options.frequency_penalty + (counts > 0).to(row.dtype) * options.presence_penalty
    if eos and (options.ignore_eos or len(output) < options.min_tokens):
        row[eos] = float("-inf")
    return row


def choose(row: Any, options: Options, generator: Any, allowed: list[int] | None = None) -> int:
    """The next token from one processed row: the most likely (greedy) or sampled with
    ``temperature``, ``top_k`` and ``top_p`` from the request's own generator.

    Args:
        allowed: only these tokens (a constraint's), when given.
    """
    import torch  # delayed: torch is heavy (start-up time)

    if allowed is not None:
        keep = torch.full_like(row, float("-inf"))
        keep[allowed] = row[allowed]
        row = keep
    if options.greedy:
        return int(row.argmax())
    row = row / options.temperature
    if 0 < options.top_k < row.shape[0]:
        cutoff = torch.topk(row, options.top_k).values[-1]
        row = row.masked_fill(row < cutoff, float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if options.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        outside = ordered.cumsum(0) - ordered > options.top_p  # the smallest set whose mass reaches top_p
        probs = probs.clone()
        probs[order[outside]] = 0
    return int(torch.multinomial(probs, 1, generator=generator))


def logprob_entry(logp: Any, token: int, top: int, tokenizer: Any) -> tuple[float, dict[str, float]]:
    """A token's log probability in its row of ``log_softmax`` and the ``top`` most likely alternatives."""
    import torch  # delayed: torch is heavy (start-up time)

    alternatives: dict[str, float] = {}
    if top > 0:
        values, indices = torch.topk(logp, top)
        alternatives = {tokenizer.decode([int(i)]): float(v) for v, i in zip(values, indices)}
    return float(logp[token]), alternatives


def logprobs_object(tokenizer: Any, tokens: list[int], scored: list[tuple[float, dict[str, float]] | None]) -> dict[str, Any]:
    """OpenAI's legacy ``logprobs`` object: ``tokens``, ``token_logprobs`` (None for the very first
    token of a prompt, which has no context), ``top_logprobs`` and ``text_offset``, one per token."""
    texts, offsets, offset = [], [], 0
    for token in tokens:
        text = tokenizer.decode([token])
        texts.append(text)
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [None if s is None else s[0] for s in scored],
        "top_logprobs": [None if s is None else s[1] for s in scored],
        "text_offset": offsets,
    }


def prompt_ids(tokenizer: Any, prompt: str | list[int], options: Options, vocab_size: int, max_length: int,
               add_special_tokens: bool = True) -> list[int]:
    """A prompt's token ids (a text prompt tokenized), checked against the model's vocabulary
    (``vocab_size`` rows of its embedding) and context (``max_length`` with ``max_tokens`` more).

    Raises:
        ServingError: the prompt is empty, holds ids outside the vocabulary, does not fit the context,
            or ``logit_bias`` names ids outside the vocabulary (400, naming the field).
    """
    ids = list(prompt) if isinstance(prompt, list) else tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    if not ids:
        raise ServingError(400, "`prompt` is empty", param="prompt")
    vocab = len(tokenizer)
    if any(not 0 <= i < max(vocab, vocab_size) for i in ids):
        raise ServingError(400, f"`prompt` holds token ids outside the vocabulary (0..{vocab - 1})", param="prompt")
    if len(ids) + options.max_tokens > max_length:
        raise ServingError(
            400,
            f"This model's maximum context length is {max_length} tokens; the prompt has {len(ids)} "
            f"and max_tokens asks for {options.max_tokens} more",
            param="max_tokens",
        )
    bad = [t for t in options.logit_bias if not 0 <= t < vocab_size]
    if bad:
        raise ServingError(400, f"`logit_bias` names token ids outside the vocabulary: {bad[:5]}", param="logit_bias")
    return ids
