"""The Prefect server `customizer up` runs answers only its own address, its own origin and the
service account (no server started: the app is called in process, before Prefect's database is needed)."""

import base64

import pytest

from core import services
from core.settings import Settings

pytestmark = pytest.mark.unit


def test_the_prefect_server_refuses_other_hosts_origins_and_anonymous_callers(tmp_path):
    from prefect.settings import PREFECT_SERVER_API_AUTH_STRING, PREFECT_SERVER_CORS_ALLOWED_ORIGINS, temporary_settings
    from starlette.testclient import TestClient

    from customizer.prefect_server import create_app

    settings = Settings(data_dir=tmp_path)
    server = services.prefect_server_environment(settings, "127.0.0.1", 4321)
    with temporary_settings({PREFECT_SERVER_API_AUTH_STRING: server["PREFECT_SERVER_API_AUTH_STRING"],
                             PREFECT_SERVER_CORS_ALLOWED_ORIGINS: server["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"]}):
        app = create_app("127.0.0.1")
    client = TestClient(app, base_url="http://127.0.0.1:4321")  # no lifespan: nothing below the checks runs
    rebound = client.post("/api/flow_runs/filter", json={}, headers={"Host": "evil.example:4321"})
    assert rebound.status_code == 400 and rebound.text == "Invalid host header"
    assert client.post("/api/flow_runs/filter", json={}).status_code == 401
    wrong = base64.b64encode(b"customizer:guess").decode()
    assert client.post("/api/flow_runs/filter", json={}, headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    foreign = client.options("/api/flow_runs/filter", headers=preflight | {"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in foreign.headers
    own = client.options("/api/flow_runs/filter", headers=preflight | {"Origin": "http://127.0.0.1:4321"})
    assert own.headers["access-control-allow-origin"] == "http://127.0.0.1:4321"
