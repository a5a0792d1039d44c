"""``customizer serve-models``: an OpenAI-compatible server over transformers + PEFT.

One base model (a config's target) is loaded once; any number of LoRA adapters of that base are
served by name and swapped per request (``serving.model`` says which names a request may use).
Routes, with the request bodies vLLM uses (``serving.schemas``):

    GET  /health                   200 when the model is loaded
    GET  /v1/models                the base model and the adapters this server knows
    POST /v1/completions           prompt (text or token ids) -> text; ``echo`` + ``logprobs`` score a prompt
    POST /v1/chat/completions      messages, rendered with the tokenizer's chat template
    POST /v1/load_lora_adapter     {"lora_name": ..., "lora_path": ...}
    POST /v1/unload_lora_adapter   {"lora_name": ...}

Both generation routes stream server-sent events with ``stream``. Errors are OpenAI-style JSON
(``{"error": {...}}``) with a 4xx status that names the problem; nothing answers with a stack trace.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.settings import Settings
from serving.generation import Generated, first_stop, held_back, stop_list
from serving.model import Adapter, ModelServer
from serving.schemas import ChatRequest, CompletionRequest, LoadLoraRequest, ServingError, UnloadLoraRequest, error_body

log = logging.getLogger("customizer.serving")


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> Any:
    from fastapi.responses import JSONResponse  # delayed: fastapi is heavy (start-up time)

    return JSONResponse(status_code=status, content=error_body(status, message, kind, param))


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
    """The FastAPI application over a loaded ``ModelServer``.

    Args:
        server: the model and its adapters; every route answers from it.

    Returns:
        A FastAPI app (no docs pages) whose errors are all OpenAI-style JSON bodies.
    """
    # delayed: fastapi is heavy (start-up time)
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse, StreamingResponse
    from jinja2 import TemplateError
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
            stop=stop_list(body.stop), seed=body.seed, ignore_eos=body.ignore_eos, min_tokens=body.min_tokens,
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
            max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, stop=stop_list(body.stop), seed=body.seed,
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
    from transformers import TextIteratorStreamer  # delayed: transformers is heavy (start-up time)

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
        cut = first_stop(text, stops)
        safe = cut if cut is not None else len(text) - held_back(text, stops)
        if safe > sent:
            yield event(text[sent:safe])
            sent = safe
    result = outcome.get()
    if isinstance(result, Exception):
        error = result if isinstance(result, ServingError) else ServingError(500, f"internal error ({type(result).__name__})", "server_error")
        if error.status >= 500:
            log.error("Streaming %s failed", model, exc_info=result)
        yield _sse(error_body(error.status, error.message, error.kind, error.param))
    else:
        if len(result.text) > sent:
            yield event(result.text[sent:])
        yield event("" if not chat else None, result.finish_reason)
    yield "data: [DONE]\n\n"


# --- running it -------------------------------------------------------------------------------------


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread; yields its base URL and stops it on exit.

    Args:
        app: an ASGI app (``create_app``'s).
        host: the address to bind.
        port: the port; 0 binds a free one, and the URL yielded says which.

    Raises:
        RuntimeError: the server did not start within 60 seconds.
    """
    import uvicorn  # delayed: uvicorn is heavy (start-up time)

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
    """Load the base model (and ``preload`` adapters), then serve until interrupted.

    Args:
        settings: store, registry and serving settings.
        base_model_dir: local Hugging Face folder of the base model.
        base_name: the name it is served under; ``aliases`` are more names for it.
        host, port: where to listen.
        max_adapters: adapters held in memory; default the ``serve_max_adapters`` setting.
        preload: model names to fetch and load before the server answers.

    Raises:
        ServingError: a ``preload`` name is unknown or does not load on this base.
    """
    import uvicorn  # delayed: uvicorn is heavy (start-up time)

    server = ModelServer(settings, base_model_dir, base_name, aliases, max_adapters)
    for name in preload:
        adapter = server.acquire(name)
        if adapter is not None:
            with server.active(adapter):
                pass
    print(f"customizer serve-models: {server.base_name} on http://{host}:{port}/v1 (max {server.max_adapters} adapters in memory)", flush=True)
    uvicorn.run(create_app(server), host=host, port=port, log_level="info")
