"""moto's S3 application served over HTTP, counting what reaches it.

The count is taken by the server, not by the client under test: each request's method, path and
body length (``Content-Length``) as received, so "nothing was uploaded" is measured in bytes.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class CountingS3:
    endpoint: str
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, body bytes)

    def bytes_received(self) -> int:
        """Body bytes of every request that can carry data into the store (PUT and POST)."""
        return sum(size for method, _, size in self.requests if method in ("PUT", "POST"))

    def writes(self) -> list[tuple[str, str, int]]:
        return [r for r in self.requests if r[0] in ("PUT", "POST", "DELETE")]

    def reset(self) -> None:
        self.requests.clear()

    def new_bucket(self, prefix: str = "bucket") -> str:
        """A bucket of its own (moto keeps buckets per process, across servers)."""
        import boto3

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=self.endpoint).create_bucket(Bucket=name)
        return name


@contextmanager
def counting_s3_server() -> Iterator[CountingS3]:
    """Start moto's S3 app on a free loopback port; stop it on exit."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    state = CountingS3(endpoint="")
    lock = threading.Lock()

    def counting(environ, start_response):
        with lock:
            state.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), int(environ.get("CONTENT_LENGTH") or 0)))
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        thread.join(timeout=10)
