"""``response_format: {"type": "json_schema"}``: decoding that keeps the output valid for a JSON schema.

The schema is compiled into a grammar by ``llguidance`` (the constrained-decoding library vLLM also
ships), once per request, and checked before the request is queued, so a schema it cannot compile
is a 400 naming ``response_format``. At each step ``SchemaConstraint`` allows only the tokens the
grammar accepts next (most likely first, as ``serving.constrained.JsonConstraint`` does for
``json_object``) and ends the answer when the grammar is complete. Whitespace between tokens is
not allowed (``whitespace_flexible: false``): a model cannot spend its tokens on blank space. As in
vLLM, an answer cut short by ``max_tokens`` is a valid prefix, not a complete document.

llguidance reads the tokenizer's vocabulary once per tokenizer (about a second), then keeps it.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

COMPILE_OPTIONS = {"whitespace_flexible": False}


class SchemaError(ValueError):
    """A ``json_schema`` that cannot be compiled into a grammar (the message says why)."""


class GrammarUnavailable(RuntimeError):
    """The constrained-decoding library is not installed."""


# HF tokenizer -> its llguidance form; an entry goes when its tokenizer does (an evicted adapter's, say)
_TOKENIZERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def compile_schema(schema: dict[str, Any]) -> str:
    """The grammar for ``schema`` (llguidance's JSON form), checked.

    >>> grammar = compile_schema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    >>> isinstance(grammar, str) and len(grammar) > 0
    True
    >>> compile_schema({"type": "no such type"})
    Traceback (most recent call last):
    ...
    serving.schema_constraint.SchemaError: Invalid type: no such type

    Raises:
        SchemaError: the schema is not valid JSON Schema, or uses what the library does not implement.
        GrammarUnavailable: llguidance is not installed.
    """
    try:
        from llguidance import LLMatcher  # delayed: only json_schema requests need it
    except ImportError as exc:
        raise GrammarUnavailable("json_schema needs the llguidance package (pip install llguidance)") from exc
    try:
        grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=COMPILE_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise SchemaError(str(exc)) from exc
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise SchemaError(error.removeprefix("Error: "))
    return grammar


def _ll_tokenizer(tokenizer: Any) -> Any:
    from llguidance.hf import from_tokenizer  # delayed: only json_schema requests need it

    with _TOKENIZERS_LOCK:
        cached = _TOKENIZERS.get(tokenizer)
        if cached is None:
            cached = _TOKENIZERS[tokenizer] = from_tokenizer(tokenizer)
        return cached


class SchemaConstraint:
    """Per request: the tokens that keep the output valid for its schema, and whether it is complete."""

    def __init__(self, tokenizer: Any, grammar: str):
        from llguidance import LLMatcher  # delayed: only json_schema requests need it

        self.ll_tokenizer = _ll_tokenizer(tokenizer)
        self.matcher = LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        self.consumed = 0

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped() or self.matcher.is_error()

    def allowed(self, logits: Any, output: list[int], left: int, want: int) -> list[int]:
        """Up to ``want`` tokens, most likely first, that the grammar accepts next."""
        import numpy as np  # delayed: with torch, heavy (start-up time)
        import torch

        if self.matcher.is_error():
            return []
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        width = min(len(bits), logits.shape[0])
        mask = torch.zeros(logits.shape[0], dtype=torch.bool)
        mask[:width] = torch.from_numpy(bits[:width].astype(bool))
        scores = torch.where(mask, logits, torch.tensor(float("-inf"), dtype=logits.dtype))
        count = min(want, int(mask.sum()))
        if count == 0:
            return []
        best = torch.topk(scores, count)
        return [token for token, score in zip(best.indices.tolist(), best.values.tolist(), strict=True) if score != float("-inf")]

    def advance(self, output: list[int]) -> None:
        """Consume the tokens of ``output`` the grammar has not seen yet."""
        for token in output[self.consumed:]:
            self.matcher.consume_token(token)
        self.consumed = len(output)
