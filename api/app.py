"""The FastAPI application: NeMo Customizer's wire format over customizer.

``create_app(settings)`` wires the routes, the database, the body limits and the error handlers.
Every error is JSON ``{"detail": ...}``: the logic's errors map to their status codes, schema errors
and refused URLs are 422 (FastAPI's list of ``{loc, msg, type}``), bodies over the configured limits
are 413 (``api.limits``), duplicates are 409 with ``x-should-retry: false``, and anything unexpected
is logged with its traceback and answered with a short 500 message and a reference id, never the trace.
Every detail passes ``api.errors.for_caller`` on its way out: no traceback and no server folder reaches
a caller.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.db import Store, open_database
from api.errors import ApiError, for_caller
from api.limits import BodyLimit
from api.orchestrator import OrchestratorUnavailable
from api.principals import FailedKeys
from api.refresh import Answers
from api.routes import audit, customization, datastore, entities, evaluation, policies, principals
from core import __version__, auth
from core.settings import Settings, apply_environment, get_settings
from core.storage import NotPrivate, make_private, out_of_room, private_umask

log = logging.getLogger("customizer.api")


def _no_retry(status: int) -> dict[str, str]:
    # NeMo's SDK retries 408/409/429/5xx unless told not to; a duplicate or a bad request never heals.
    return {"x-should-retry": "false"} if status in (409, 400, 404, 413, 422) else {}


def _json_safe(errors: list) -> list:
    """Validation errors with their ``ctx``/``input`` made JSON-safe (they may hold exceptions or bytes)."""
    def writable(value: Any) -> bool:  # JSON can carry it: no NaN/Infinity, no lone surrogate
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return False
        return isinstance(value, (str, int, float, bool, type(None)))

    def text(value: Any) -> Any:
        return value if writable(value) else str(value).encode("utf-8", "backslashreplace").decode("ascii", "replace")

    safe = []
    for error in errors:
        entry = {k: error[k] for k in ("msg", "type") if k in error}
        entry = {k: text(v) for k, v in entry.items()}
        if "loc" in error:
            entry["loc"] = [part if isinstance(part, int) else text(part) for part in error["loc"]]
        if "input" in error and writable(error["input"]):
            entry["input"] = error["input"]
        safe.append(entry)
    return safe


def _shown(detail: Any, settings: Settings) -> Any:
    """``detail`` with every text in it as a caller may see it (``api.errors.for_caller``)."""
    if isinstance(detail, str):
        return for_caller(detail, settings)
    if isinstance(detail, list):
        return [_shown(item, settings) for item in detail]
    if isinstance(detail, dict):
        return {key: _shown(value, settings) for key, value in detail.items()}
    return detail


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="customizer",
        version=__version__,
        description="Self-hosted LLM customization with NeMo Customizer's wire format: Customizer, Entity Store, "
        "Data Store (Hugging Face Hub API) and Evaluator.",
    )
    app.state.settings = settings
    app.add_middleware(BodyLimit, settings=settings)
    app.state.store = Store(open_database(settings.api_db_url))
    app.state.answers = Answers()  # job lists answered again within seconds (api.refresh)
    app.state.failed_keys = FailedKeys()  # unknown keys per client address: 10 a minute, then 429
    if not auth.enabled(settings):  # no bootstrap key and no principal
        log.warning(
            "API AUTHENTICATION IS OFF: anyone who can reach this port can create jobs and read data. "
            "Set CUSTOMIZER_API_KEYS (e.g. '{\"<key>\": [\"*\"]}') before exposing the API."
        )
    if not os.environ.get("PREFECT_API_URL"):
        log.warning("PREFECT_API_URL is not set: jobs cannot start (run `customizer up`, or point it at a Prefect server)")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": _shown(exc.detail, settings)}, status_code=exc.status_code,
                            headers=exc.headers | _no_retry(exc.status_code))

    @app.exception_handler(OrchestratorUnavailable)
    async def _orchestrator(request: Request, exc: OrchestratorUnavailable) -> JSONResponse:
        return JSONResponse({"detail": for_caller(str(exc), settings)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _shown(_json_safe(exc.errors()), settings)}, status_code=422, headers=_no_retry(422))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else f"no such endpoint: {request.method} {request.url.path}"
        return JSONResponse({"detail": _shown(detail, settings)}, status_code=exc.status_code,
                            headers=(exc.headers or {}) | _no_retry(exc.status_code))

    @app.exception_handler(OSError)
    async def _storage(request: Request, exc: OSError) -> JSONResponse:
        if not out_of_room(exc):  # answered 507 Insufficient Storage, not 500
            return await _unexpected(request, exc)
        log.error("Storage full on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": f"the server's storage is full ({exc.strerror}): the request did not complete; free space, then try again"},
            status_code=507,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        reference = uuid.uuid4().hex[:12]
        log.exception("Unexpected error %s on %s %s", reference, request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); the server log has the details under reference {reference}"},
            status_code=500,
        )

    app.include_router(customization.router)
    app.include_router(entities.router)
    app.include_router(datastore.router)
    app.include_router(evaluation.router)
    app.include_router(audit.router)
    app.include_router(policies.router)
    app.include_router(principals.router)

    @app.get("/v1/health", tags=["ops"], summary="Liveness")
    @app.get("/health", tags=["ops"], include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    return app


def app_from_environment() -> FastAPI:
    """Uvicorn factory (``uvicorn --factory api.app:app_from_environment``)."""
    settings = get_settings()
    try:  # the API is started alone too: what it and its threads create is the platform user's alone
        private_umask()
        make_private(settings.root)
    except NotPrivate as exc:
        raise SystemExit(f"customizer api: {exc}") from None
    apply_environment(settings)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in the API log
    return create_app(settings)
