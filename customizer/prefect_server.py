"""The Prefect server ``customizer up`` starts: ``prefect server start``'s app, answering only its own address.

Prefect has no setting that checks the Host header, which leaves its API open to DNS rebinding (a page
whose name resolves to the server's address). This runs the app ``prefect server start`` runs (API, UI and
background services, from ``create_app``) under uvicorn in the same way, with Starlette's
``TrustedHostMiddleware`` outside it: a request whose Host header is not the server's address is refused
with 400 before Prefect sees it. Authentication and CORS come from Prefect's own settings
(``core.services.prefect_server_environment``).

    python -m customizer.prefect_server --host 127.0.0.1 --port 4200
"""

from __future__ import annotations

import argparse
import sys

from starlette.middleware.trustedhost import TrustedHostMiddleware

from core.services import host_names


def create_app(host: str):
    """Prefect's server app (API, UI, services) behind a Host header check for ``host``."""
    # delayed: Prefect reads its settings from the environment when imported (start-up)
    from prefect.server.api.server import create_app as create_prefect_app

    app = create_prefect_app(final=True)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=host_names(host))  # outermost: checked first
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="customizer.prefect_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="address to listen on; the only one the Host header may name")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn
    from prefect.settings import (
        PREFECT_SERVER_API_KEEPALIVE_TIMEOUT,
        PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL,
        PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT,
        PREFECT_SERVER_LOGGING_LEVEL,
    )

    uvicorn.run(
        create_app(args.host), host=args.host, port=args.port, timeout_keep_alive=PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value(),
        ws_ping_interval=PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL.value(),
        ws_ping_timeout=PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT.value(),
        log_level=PREFECT_SERVER_LOGGING_LEVEL.value().lower(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
