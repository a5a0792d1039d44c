"""``customizer serve-models``: an OpenAI-compatible server over transformers + PEFT, with batching.

One base model (a config's target) is loaded once; any number of LoRA adapters of that base are
served by name (``serving.model`` says which names a request may use), and so are published
full-weight versions of it, each its own model (``serving.full_models``). Requests that arrive
together run as one batch, adapters mixed (``serving.batching``). Routes, with the request bodies
vLLM uses (``serving.schemas``):

    GET  /health                   200 when the model is loaded (never needs a key)
    GET  /metrics                  Prometheus text: requests, tokens, batch sizes, queue wait
    GET  /v1/models                the base, the adapters this server knows, the trusted champions
    POST /v1/completions           prompt (text or token ids) -> text; ``echo`` + ``logprobs`` score a prompt
    POST /v1/chat/completions      messages, rendered with the tokenizer's chat template
    POST /v1/load_lora_adapter     {"lora_name": ..., "lora_path": ...}
    POST /v1/unload_lora_adapter   {"lora_name": ...}

Both generation routes stream server-sent events with ``stream`` (from the same batches), ending
with a usage chunk when ``stream_options.include_usage`` is set. ``response_format``
``json_object`` constrains the answer to a JSON object (``serving.constrained``), ``json_schema`` to
its schema (``serving.schema_constraint``). With API keys
configured, every route but ``/health`` needs one (``serving.auth``). Errors are OpenAI-style JSON
(``{"error": {...}}``) with a 4xx status that names the problem; nothing answers with a stack trace.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations, and ``Request``
# is imported inside ``create_app`` (start-up time), where only evaluated annotations can see it.
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
from serving.auth import Keys, check_all, check_model, namespace_of
from serving.batching import Job
from serving.generation import Generated, Options, first_stop, held_back, stop_list
from serving.full_models import FullModel
from serving.model import Adapter, ModelServer
from serving.schema_constraint import GrammarUnavailable, SchemaError, compile_schema
from serving.schemas import ChatRequest, CompletionRequest, LoadLoraRequest, Sampling, ServingError, UnloadLoraRequest, error_body

log = logging.getLogger("customizer.serving")
GENERATION_ROUTES = ("/v1/completions", "/v1/chat/completions")


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


def _options(body: Sampling, max_tokens: int, logprobs: int | None = None, echo: bool = False) -> Options:
    """The request's generation options; refuses what this engine cannot do, logs what it ignores."""
    if ignored := body.ignored():
        log.warning("Request for %s: ignoring %s (not implemented by serve-models)", body.model, ", ".join(ignored))
    json_object, grammar = False, None
    if body.response_format is not None and body.response_format.type == "json_schema":
        schema = (body.response_format.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise ServingError(400, "`response_format.json_schema.schema` is required: the JSON schema the answer follows",
                               param="response_format.json_schema")
        try:
            grammar = compile_schema(schema)
        except SchemaError as exc:
            raise ServingError(400, f"`response_format.json_schema.schema` cannot be followed: {exc}", param="response_format") from exc
        except GrammarUnavailable as exc:
            raise ServingError(400, f"`response_format` type 'json_schema' is not available on this server: {exc}",
                               param="response_format") from exc
    elif body.response_format is not None:
        json_object = body.response_format.type == "json_object"
    return Options(
        max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=max(0, body.top_k), seed=body.seed,
        stop=stop_list(body.stop), presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
        logit_bias={int(k): v for k, v in (body.logit_bias or {}).items()}, ignore_eos=body.ignore_eos, min_tokens=body.min_tokens,
        logprobs=logprobs, echo=echo, json_object=json_object, json_schema=grammar,
    )


def _copies(options: Options, n: int) -> list[Options]:
    """``n`` choices of one prompt: a seeded request's i-th choice draws with ``seed + i``."""
    from dataclasses import replace

    return [options if options.seed is None or i == 0 else replace(options, seed=options.seed + i) for i in range(n)]


def _chat_logprobs(logprobs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The chat form of the ``logprobs`` of generated tokens (``content``: one entry per token)."""
    if logprobs is None:
        return None
    entry = lambda token, value: {"token": token, "logprob": value, "bytes": list(token.encode())}  # noqa: E731
    return {"content": [
        entry(token, value) | {"top_logprobs": [entry(t, v) for t, v in (top or {}).items()]}
        for token, value, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"])
    ]}


def create_app(server: ModelServer) -> Any:
    """The FastAPI application over a loaded ``ModelServer``.

    Args:
        server: the model and its adapters; every route answers from it.

    Returns:
        A FastAPI app (no docs pages) whose errors are all OpenAI-style JSON bodies.
    """
    # delayed: fastapi is heavy (start-up time)
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import PlainTextResponse, Response, StreamingResponse
    from jinja2 import TemplateError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="customizer serve-models", docs_url=None, redoc_url=None)
    app.state.server = server
    keys, metrics = Keys(server.settings), server.metrics

    def caller(request: Request) -> frozenset[str] | None:
        return keys.namespaces(request.headers.get("authorization"))

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        if request.url.path in GENERATION_ROUTES:
            metrics.answered(getattr(request.state, "model", "unknown"), response.status_code)
        return response

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

    @app.get("/metrics")
    def prometheus(namespaces: frozenset[str] | None = Depends(caller)):
        check_all(namespaces, "/metrics")
        content, media_type = metrics.exposition()
        return Response(content=content, media_type=media_type)

    @app.get("/v1/models")
    def list_models(namespaces: frozenset[str] | None = Depends(caller)) -> dict[str, Any]:
        entries = server.describe()
        if namespaces is not None:
            entries = [e for e in entries if e["parent"] is None or namespace_of(e["id"]) in (None, *namespaces)]
        return {"object": "list", "data": entries}

    def start(request: Request, body: Sampling, namespaces: frozenset[str] | None) -> Adapter | None:
        request.state.model = body.model
        check_model(namespaces, body.model, server.is_base(body.model))
        if body.stream and body.n > 1:
            raise ServingError(400, "streaming takes `n` 1", param="n")
        return server.acquire(body.model)

    @app.post("/v1/completions")
    def completions(body: CompletionRequest, request: Request, namespaces: frozenset[str] | None = Depends(caller)):
        adapter = start(request, body, namespaces)
        prompts = _prompts(body.prompt)
        if body.suffix:
            raise ServingError(400, "`suffix` is not supported", param="suffix")
        if body.max_tokens == 0 and not body.echo:
            raise ServingError(400, "`max_tokens` is 0: nothing to generate (use it with `echo` to score a prompt)", param="max_tokens")
        if body.stream and (len(prompts) > 1 or body.logprobs is not None):
            raise ServingError(400, "streaming takes one prompt and no `logprobs`", param="stream")
        options = _options(body, body.max_tokens if body.max_tokens is not None else 16, body.logprobs, body.echo)
        request_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        tokenizer = (adapter.tokenizer if adapter is not None else None) or server.tokenizer
        heads = [p if isinstance(p, str) else tokenizer.decode(p) for p in prompts] if body.echo else [""] * len(prompts)
        if body.stream:
            job = server.submit(adapter, prompts[0], options, body.add_special_tokens, stream=queue.Queue())
            return StreamingResponse(_stream(server, job, body, request_id, created, chat=False, head=heads[0]), media_type="text/event-stream")
        jobs = [(head, server.submit(adapter, prompt, copy, body.add_special_tokens))
                for prompt, head in zip(prompts, heads) for copy in _copies(options, body.n)]
        results = [(head, job.wait()) for head, job in jobs]
        _count(metrics, body.model, [r for _, r in results])
        choices = [{"index": i, "text": head + r.text, "logprobs": r.logprobs, "finish_reason": r.finish_reason}
                   for i, (head, r) in enumerate(results)]
        return {"id": request_id, "object": "text_completion", "created": created, "model": body.model, "choices": choices,
                "usage": _usage([r for _, r in results])}

    @app.post("/v1/chat/completions")
    def chat_completions(body: ChatRequest, request: Request, namespaces: frozenset[str] | None = Depends(caller)):
        adapter = start(request, body, namespaces)
        tokenizer = (adapter.tokenizer if adapter is not None else None) or server.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ServingError(400, f"{body.model} has no chat template; use /v1/completions", param="model")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except (TemplateError, ValueError, TypeError, KeyError) as exc:
            raise ServingError(400, f"the chat template rejects these messages: {exc}", param="messages") from exc
        max_tokens = body.max_completion_tokens or body.max_tokens or max(1, min(512, server.max_length - len(tokenizer(prompt)["input_ids"])))
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        if body.stream and logprobs is not None:
            raise ServingError(400, "streaming takes no `logprobs`", param="logprobs")
        options = _options(body, max_tokens, logprobs)
        request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        # The template already holds any special tokens the model expects.
        if body.stream:
            job = server.submit(adapter, prompt, options, add_special_tokens=False, stream=queue.Queue())
            return StreamingResponse(_stream(server, job, body, request_id, created, chat=True), media_type="text/event-stream")
        jobs = [server.submit(adapter, prompt, copy, add_special_tokens=False) for copy in _copies(options, body.n)]
        results = [job.wait() for job in jobs]
        _count(metrics, body.model, results)
        return {
            "id": request_id, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": _chat_logprobs(r.logprobs),
                         "finish_reason": r.finish_reason} for i, r in enumerate(results)],
            "usage": _usage(results),
        }

    @app.post("/v1/load_lora_adapter")
    def load_lora_adapter(body: LoadLoraRequest, namespaces: frozenset[str] | None = Depends(caller)):
        check_all(namespaces, "loading an adapter")
        server.load(body.lora_name, body.lora_path, replace=body.load_inplace)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    def unload_lora_adapter(body: UnloadLoraRequest, namespaces: frozenset[str] | None = Depends(caller)):
        check_all(namespaces, "unloading an adapter")
        server.unload(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    return app


def _count(metrics: Any, model: str, results: list[Generated]) -> None:
    usage = _usage(results)
    metrics.tokens(model, usage["prompt_tokens"], usage["completion_tokens"])


def _stream(server: ModelServer, job: Job, body: Sampling, request_id: str, created: int, chat: bool, head: str = "") -> Iterator[str]:
    """Server-sent events, sent as the batch generates the job's text.

    Text that could be the start of a stop sequence is held back until it is known not to be one;
    the last event with a choice carries the finish reason, then (with ``include_usage``) a chunk
    with no choices and the usage, as OpenAI and vLLM send it.
    """
    kind = "chat.completion.chunk" if chat else "text_completion"
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        payload = {"id": request_id, "object": kind, "created": created, "model": body.model, "choices": choices}
        if include_usage:
            payload["usage"] = usage
        return _sse(payload)

    def event(text: str | None, finish: str | None = None, role: bool = False) -> str:
        if chat:
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
            return chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
        return chunk([{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}])

    try:
        if chat:
            yield event("", role=True)
        elif head:
            yield event(head)
        stops, text, sent = job.options.stop, "", 0
        assert job.stream is not None
        while (piece := job.stream.get()) is not None:
            text += piece
            cut = first_stop(text, stops)
            safe = cut if cut is not None else len(text) - held_back(text, stops)
            if safe > sent:
                yield event(text[sent:safe])
                sent = safe
        try:
            result = job.wait()
        except Exception as exc:  # noqa: BLE001 - handed to the client as an error event
            error = exc if isinstance(exc, ServingError) else ServingError(500, f"internal error ({type(exc).__name__})", "server_error")
            if error.status >= 500:
                log.error("Streaming %s failed", body.model, exc_info=exc)
            yield _sse(error_body(error.status, error.message, error.kind, error.param))
        else:
            if len(result.text) > sent:
                yield event(result.text[sent:])
            yield event("" if not chat else None, result.finish_reason)
            _count(server.metrics, body.model, [result])
            if include_usage:
                yield chunk([], _usage([result]))
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True  # a client that went away leaves the batch at the next token


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
    max_adapters: int | None, preload: list[str], max_full_models: int = 1,
) -> None:
    """Load the base model (and ``preload`` adapters), then serve until interrupted.

    Args:
        settings: store, registry and serving settings.
        base_model_dir: local Hugging Face folder of the base model.
        base_name: the name it is served under; ``aliases`` are more names for it.
        host, port: where to listen.
        max_adapters: adapters held in memory; default the ``serve_max_adapters`` setting.
        preload: model names to fetch and load before the server answers.
        max_full_models: full-weight versions held in memory (``serving.full_models``).

    Raises:
        ServingError: a ``preload`` name is unknown or does not load on this base.
    """
    import uvicorn  # delayed: uvicorn is heavy (start-up time)

    server = ModelServer(settings, base_model_dir, base_name, aliases, max_adapters, max_full_models=max_full_models)
    for name in preload:
        adapter = server.acquire(name)
        if isinstance(adapter, FullModel):
            server.full.preload(adapter)
        elif adapter is not None:
            with server.active(adapter):
                pass
    print(f"customizer serve-models: {server.base_name} on http://{host}:{port}/v1 (max {server.max_adapters} adapters and "
          f"{max_full_models} full-weight models in memory)", flush=True)
    uvicorn.run(create_app(server), host=host, port=port, log_level="info")
