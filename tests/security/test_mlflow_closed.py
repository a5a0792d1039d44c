"""The registry is closed to everyone but the platform: the MLflow server asks for the service account
before changing an alias or a tag, and answers only its own address and origin."""

from __future__ import annotations

from urllib.parse import urlparse

import httpx
import pytest

pytestmark = pytest.mark.platform
EVIL = "http://evil.example"


def test_mlflow_changes_need_the_service_account(platform):
    """Guards the registry against anonymous writes: setting an alias (what serving follows) or a version
    tag (what the gate recorded) answers 401 or 403 without credentials; with them the server answers 200."""
    assert platform.mlflow, "customizer up started no MLflow server"
    with httpx.Client(base_url=platform.mlflow, timeout=30) as anonymous:
        alias = anonymous.post("/api/2.0/mlflow/registered-models/alias", json={"name": "team-a/m", "alias": "champion", "version": "1"})
        assert alias.status_code in (401, 403), alias.text
        tag = anonymous.post("/api/2.0/mlflow/model-versions/set-tag",
                             json={"name": "team-a/m", "version": "1", "key": "decision", "value": "promote"})
        assert tag.status_code in (401, 403), tag.text
        assert anonymous.get("/api/2.0/mlflow/registered-models/search").status_code in (401, 403)
    with httpx.Client(base_url=platform.mlflow, auth=platform.services_auth, timeout=30) as insider:
        assert insider.get("/api/2.0/mlflow/registered-models/search").status_code == 200


def test_mlflow_cors_and_host_are_its_own(platform):
    """Guards against another site's page or a rebound DNS name driving MLflow: a preflight from another
    origin is not allowed; a foreign Host header is refused even with credentials."""
    with httpx.Client(base_url=platform.mlflow, auth=platform.services_auth, timeout=30) as insider:
        preflight = insider.options("/api/2.0/mlflow/registered-models/alias", headers={
            "Origin": EVIL, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.headers.get("access-control-allow-origin") not in ("*", EVIL), preflight.headers
        port = urlparse(platform.mlflow).port
        foreign = insider.get("/api/2.0/mlflow/registered-models/search", headers={"Host": f"evil.example:{port}"})
        assert 400 <= foreign.status_code < 500, foreign.text
