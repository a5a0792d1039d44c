"""The OpenAI wire format serve-models speaks: request bodies (with the fields vLLM adds) and errors.

Every field the official ``openai`` client sends is declared and its value checked (a bad value is a
400 naming the field). Fields serve-models takes but does not act on (``IGNORED``: e.g.
``repetition_penalty``, ``store``, ``metadata``) are accepted and logged as ignored, as vLLM does;
a field nobody defines is still a 400 that names it, so a misspelt option is not silently dropped.
An error is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx or 5xx status, as
OpenAI and vLLM answer.
"""

from __future__ import annotations

import re

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The names an adapter is asked for by, in serve-models and in vLLM's resolver alike: a published
# version (``namespace/name@version``) and a registered model (``namespace/name``, its champion).
PUBLISHED_NAME = re.compile(r"^(?P<model>[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*)@(?P<version>[A-Za-z0-9._-]+)$")
REGISTERED_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$")

# Accepted and ignored (with a warning in the log): what they ask for is not implemented here.
IGNORED = ("repetition_penalty", "min_p", "best_of", "use_beam_search", "length_penalty", "skip_special_tokens",
           "spaces_between_special_tokens", "truncate_prompt_tokens", "store", "metadata", "service_tier", "prompt_cache_key",
           "safety_identifier", "reasoning_effort", "verbosity", "modalities", "parallel_tool_calls", "include_stop_str_in_output")
Penalty = Field(default=0.0, ge=-2.0, le=2.0)


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with ``choices: []`` and the usage."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's; ignored


class ResponseFormat(BaseModel):
    """``response_format``: plain text, a JSON object, or JSON following ``json_schema.schema``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class Sampling(BaseModel):
    """The sampling fields both routes share (OpenAI's, plus vLLM's ``top_k``, ``ignore_eos``, ``min_tokens``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1, description="Sample among the k most likely tokens; 0 or -1: all.")
    n: int = Field(default=1, ge=1, le=16, description="Choices per prompt (one when streaming).")
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    presence_penalty: float = Penalty
    frequency_penalty: float = Penalty
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    response_format: ResponseFormat | None = None
    # IGNORED: accepted, logged, not acted on
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    best_of: int | None = Field(default=None, ge=1)
    use_beam_search: bool | None = None
    length_penalty: float | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=1)
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    parallel_tool_calls: bool | None = None
    include_stop_str_in_output: bool | None = None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for token, value in (bias or {}).items():
            if not token.lstrip("-").isdigit():
                raise ValueError(f"`logit_bias` keys are token ids, got {token!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"`logit_bias` values are from -100 to 100, got {value} for token {token}")
        return bias

    def ignored(self) -> list[str]:
        """The ``IGNORED`` fields this request set (to log)."""
        return [name for name in IGNORED if getattr(self, name) is not None]


class CompletionRequest(Sampling):
    """``POST /v1/completions`` (OpenAI's fields plus vLLM's ``add_special_tokens``)."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(description="Text or token ids, one or a batch.")
    max_tokens: int | None = Field(default=16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None
    add_special_tokens: bool = True


class TextPart(BaseModel):
    """One text part of a message's content (the list form OpenAI accepts)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of a chat request; only text content is taken."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text, its parts joined when it comes as a list."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


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


# --- errors ------------------------------------------------------------------------------------------


class ServingError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def error_body(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    """The OpenAI error object, as a response body or as a streamed event.

    >>> error_body(404, "no such model", "NotFoundError", "model")
    {'error': {'message': 'no such model', 'type': 'NotFoundError', 'param': 'model', 'code': 404}}
    """
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}
