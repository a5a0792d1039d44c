"""Token lengths at ingest: statistics with the target model's tokenizer and prompt format, the
``max_seq_length`` policy, and a preview of which tokens carry the loss.

Every example is rendered with ``data.prompts.render`` and tokenized with
``data.prompts.tokenize``, the functions training uses, so the lengths here are the lengths
training sees. An example longer than ``max_seq_length`` is, by the job's ``data.long_examples``:

- ``error``: a ``file:line`` error (the default: nothing is cut without the user saying so);
- ``drop``: left out of its split, counted and listed;
- ``truncate``: kept, and training cuts it to its first ``max_seq_length`` tokens; counted and
  listed. If no answer token would remain (the prompt alone fills the limit) it teaches nothing,
  so it is dropped, counted and listed with that reason.

The policy applies to the splits training reads (training and validation). The testing split is
scored by generation from the whole prompt: its long examples are counted and reported, not cut.
Memory stays flat: statistics are a histogram of lengths, listings are capped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from core.catalog import CustomizationConfig
from data.formats import Format, Record
from data.prompts import Tokens, render, tokenize

Policy = Literal["error", "drop", "truncate"]
MAX_LISTED = 50
PREVIEW_EXAMPLES = 3
PREVIEW_TOKENS = 256  # per side of an elision, for long examples


class TokenStats(BaseModel):
    """Lengths in tokens of one split's examples (prompt + answer, before the long-example policy)."""

    examples: int
    min: int
    mean: float
    p50: int
    p90: int
    p99: int
    max: int
    answer_tokens: int  # tokens that carry the loss, summed over the split (after truncation)
    over_max_seq_length: int


class LongExample(BaseModel):
    """An example longer than max_seq_length and what was done with it."""

    loc: str
    split: str
    tokens: int
    action: Literal["dropped", "truncated", "kept whole"]
    detail: str = ""


class PreviewToken(BaseModel):
    text: str
    loss: bool


class Preview(BaseModel):
    """One training example as training sees it: its tokens, and which of them carry the loss."""

    loc: str
    tokens: list[PreviewToken]
    total_tokens: int
    elided: int = 0  # tokens left out of the preview (in the middle of a long example)
    truncated: bool = False


class LengthReport(BaseModel):
    """Token statistics per split and what the long-example policy did."""

    tokenizer: str
    max_seq_length: int
    policy: Policy
    splits: dict[str, TokenStats]
    dropped: int
    truncated: int
    long_examples: list[LongExample]  # the first MAX_LISTED
    preview: list[Preview]


Decision = Literal["keep", "truncate", "drop"]


def training_view(record: Record, fmt: Format, response_field: str = "chosen_response") -> Record:
    """The record as a prompt/answer pair ``render`` understands.

    Completion and chat records are themselves; a preference record is its prompt with one of its
    responses; a reward record is its prompt with an empty answer (the model writes the answer).
    """
    if fmt in ("completion", "chat"):
        return record
    answer = record[response_field] if fmt == "preference" else ""
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return {"prompt": prompt, "completion": answer}
    return {"messages": [*prompt, {"role": "assistant", "content": answer}]}


@dataclass
class _Lengths:
    histogram: Counter = field(default_factory=Counter)
    answer_tokens: int = 0
    over: int = 0

    def stats(self) -> TokenStats:
        total = sum(self.histogram.values())
        ordered = sorted(self.histogram.items())

        def percentile(q: float) -> int:
            rank, seen = q * (total - 1), 0
            for length, count in ordered:
                seen += count
                if seen > rank:
                    return length
            return ordered[-1][0]

        return TokenStats(
            examples=total,
            min=ordered[0][0],
            mean=round(sum(length * count for length, count in ordered) / total, 1),
            p50=percentile(0.5),
            p90=percentile(0.9),
            p99=percentile(0.99),
            max=ordered[-1][0],
            answer_tokens=self.answer_tokens,
            over_max_seq_length=self.over,
        )


@dataclass
class LengthCheck:
    """Measures each example as training will see it and applies the long-example policy."""

    config: CustomizationConfig
    tokenizer: Any
    policy: Policy = "error"
    lengths: dict[str, _Lengths] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)  # split -> examples left out
    truncated: Counter = field(default_factory=Counter)  # split -> examples training cuts
    long_examples: list[LongExample] = field(default_factory=list)
    preview: list[Preview] = field(default_factory=list)

    def _tokens(self, record: Record, fmt: Format) -> Tokens:
        if fmt == "preference":  # the longer of the two sequences is the one that must fit
            pair = [tokenize(render(training_view(record, fmt, side), self.config, self.tokenizer), self.tokenizer) for side in ("chosen_response", "rejected_response")]
            return max(pair, key=lambda t: len(t.input_ids))
        sample = render(training_view(record, fmt), self.config, self.tokenizer)
        if fmt == "reward":  # the prompt alone: the completion is generated during training
            ids = self.tokenizer(text=sample.prompt)["input_ids"]
            return Tokens(input_ids=list(ids), prompt_length=len(ids))
        return tokenize(sample, self.tokenizer)

    def check(self, record: Record, fmt: Format, split: str, loc: str) -> Decision | str:
        """Measure one example; returns the decision, or a reason when it is an error.

        Rendering failures (a chat template that rejects the conversation) are reasons too.
        """
        try:
            tokens = self._tokens(record, fmt)
        except Exception as exc:  # noqa: BLE001 - a template's own error, reported at the example's line
            return f"cannot be rendered with the config's prompt format ({type(exc).__name__}: {exc})"
        length, limit = len(tokens.input_ids), self.config.max_seq_length
        kept = min(length, limit)
        stats = self.lengths.setdefault(split, _Lengths())
        stats.histogram[length] += 1
        decision: Decision = "keep"
        if length > limit:
            stats.over += 1
            if split == "testing":
                self._list(loc, split, length, "kept whole", "the task benchmark gives the model the whole prompt")
                kept = length
            elif self.policy == "error":
                return f"{length} tokens, longer than the config's max_seq_length {limit} (set data.long_examples to drop or truncate to accept it)"
            elif self.policy == "drop":
                self.dropped[split] += 1
                self._list(loc, split, length, "dropped", "data.long_examples: drop")
                return "drop"
            elif tokens.prompt_length >= limit:
                self.dropped[split] += 1
                self._list(loc, split, length, "dropped", f"the prompt alone is {tokens.prompt_length} tokens: truncated to {limit}, no answer token would remain")
                return "drop"
            else:
                self.truncated[split] += 1
                answer = length - tokens.prompt_length
                self._list(loc, split, length, "truncated", f"to {limit} tokens; {limit - tokens.prompt_length} of {answer} answer tokens kept")
                decision = "truncate"
        stats.answer_tokens += max(0, kept - tokens.prompt_length)
        if split == "training" and len(self.preview) < PREVIEW_EXAMPLES:
            self.preview.append(self._preview(loc, tokens, limit if decision == "truncate" else length))
        return decision

    def _list(self, loc: str, split: str, tokens: int, action: str, detail: str) -> None:
        if len(self.long_examples) < MAX_LISTED:
            self.long_examples.append(LongExample(loc=loc, split=split, tokens=tokens, action=action, detail=detail))

    def _preview(self, loc: str, tokens: Tokens, keep: int) -> Preview:
        ids = tokens.input_ids[:keep]
        positions = list(range(len(ids)))
        elided = 0
        if len(ids) > 2 * PREVIEW_TOKENS:
            elided = len(ids) - 2 * PREVIEW_TOKENS
            positions = positions[:PREVIEW_TOKENS] + positions[-PREVIEW_TOKENS:]
        shown = [PreviewToken(text=self.tokenizer.decode([ids[i]]), loss=i >= tokens.prompt_length) for i in positions]
        return Preview(loc=loc, tokens=shown, total_tokens=len(ids), elided=elided, truncated=keep < len(tokens.input_ids))

    def report(self) -> LengthReport:
        return LengthReport(
            tokenizer=getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__,
            max_seq_length=self.config.max_seq_length,
            policy=self.policy,
            splits={split: lengths.stats() for split, lengths in self.lengths.items() if lengths.histogram},
            dropped=sum(self.dropped.values()),
            truncated=sum(self.truncated.values()),
            long_examples=self.long_examples,
            preview=self.preview,
        )

