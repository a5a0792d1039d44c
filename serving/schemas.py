"""The OpenAI wire format serve-models speaks: request bodies (with the fields vLLM adds) and errors.

Bodies forbid unknown fields, so a misspelt option is a 400 that names it rather than a silently
ignored one. An error is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx or 5xx
status, as OpenAI and vLLM answer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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
