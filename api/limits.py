"""Request body limits, enforced as the body streams in: a declared ``Content-Length`` over the limit is
refused before anything is read, and a body that grows past it (chunked, or lying about its length) is
cut off at the limit. Data Store commits carry file contents and get the upload limit; every other
request gets the JSON limit. The answer is 413 in the API's error shape, naming the limit.

A Data Store commit is NDJSON, one operation a line, each file's contents inline in its line (what
``huggingface_hub.HfApi`` sends). It is read as a stream, line by line, and one line is at most
``MAX_COMMIT_LINE_BYTES``, so the server never holds more than one bounded line whatever the upload's
size: a file in a commit is at most ``MAX_COMMIT_FILE_BYTES`` (its base64 fills the line), and a
commit adds at most ``MAX_COMMIT_FILES`` files. Larger data goes in several files.
"""

from __future__ import annotations

import json
import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import Settings

MAX_COMMIT_LINE_BYTES = 32 << 20
MAX_COMMIT_FILE_BYTES = 23 << 20  # its base64 (4/3 of it, under 31 MiB) and the line's JSON around it fit in a line
MAX_COMMIT_FILES = 10_000
_UPLOAD = re.compile(r"^/v1/hf/api/(datasets|models)/[^/]+/[^/]+/commit/")


def _size(value: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if value >= 1 << shift and value % (1 << shift) == 0:
            return f"{value >> shift} {unit}"
    return f"{value} bytes"


def too_large(limit: int, setting: str) -> str:
    return f"request body too large: the limit is {_size(limit)} ({limit} bytes; setting CUSTOMIZER_{setting.upper()})"


def line_too_long(number: int) -> str:
    return (f"commit line {number} is over the {_size(MAX_COMMIT_LINE_BYTES)} line limit: a file in a commit is at most "
            f"{_size(MAX_COMMIT_FILE_BYTES)}; split larger files (e.g. training/part-1.jsonl, training/part-2.jsonl)")


def too_many_files(number: int) -> str:
    return f"commit line {number}: a commit adds at most {MAX_COMMIT_FILES} files; upload the rest in another commit"


class BodyLimit:
    """ASGI middleware refusing request bodies over the configured limits with 413."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app, self.settings = app, settings

    def _limit(self, path: str) -> tuple[int, str]:
        if _UPLOAD.match(path):
            return self.settings.max_upload_bytes, "max_upload_bytes"
        return self.settings.max_json_body_bytes, "max_json_body_bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self._limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            status, detail = (413, too_large(limit, setting)) if declared.strip().isdigit() else (400, "Content-Length is not a number")
            body = json.dumps({"detail": detail}).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"x-should-retry", b"false"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI passes an HTTPException raised while reading the body through to the app's handler.
                    raise HTTPException(413, too_large(limit, setting), headers={"x-should-retry": "false", "connection": "close"})
            return message

        await self.app(scope, limited, send)
