"""The orchestrator is closed to everyone but the platform: Prefect's API asks for the service account,
answers only its own address and origin, and a run created straight through it (bypassing the REST API)
stops before it does any work."""

from __future__ import annotations

import uuid
from urllib.parse import urlparse

import httpx
import pytest

from tests.api.conftest import TINY_CONFIG
from tests.security.conftest import deployment_id, task_run_names, trained, wait_final

pytestmark = pytest.mark.platform
EVIL = "http://evil.example"


def test_prefect_api_needs_the_service_account(platform, prefect, platform_settings):
    """Guards the orchestrator against anonymous callers: reading runs, starting a deployment and resuming
    a paused run all answer 401 without credentials; the same read answers 200 with them."""
    assert prefect.post("/flow_runs/filter", json={"limit": 1}).status_code == 200
    customize = deployment_id(prefect, platform_settings.customize_deployment)
    runs = prefect.post("/flow_runs/filter", json={"limit": 1}).json()
    some_run = runs[0]["id"] if runs else str(uuid.uuid4())
    with httpx.Client(base_url=platform.prefect_api, timeout=30) as anonymous:
        assert anonymous.post("/flow_runs/filter", json={}).status_code == 401
        assert anonymous.post(f"/deployments/{customize}/create_flow_run", json={}).status_code == 401
        assert anonymous.post(f"/flow_runs/{some_run}/resume", json={"run_input": {"approved": True}}).status_code == 401
        wrong = anonymous.post("/flow_runs/filter", json={}, auth=("customizer", "guessed-password"))
        assert wrong.status_code == 401


def test_prefect_cors_and_host_are_its_own(platform, prefect):
    """Guards against a browser page of another site (CORS) or a rebound DNS name (Host header) driving
    Prefect: a preflight from another origin is not allowed, a foreign Host is refused even with credentials."""
    preflight = httpx.options(f"{platform.prefect_api}/flow_runs/filter", timeout=30, headers={
        "Origin": EVIL, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"})
    allowed = preflight.headers.get("access-control-allow-origin")
    assert allowed not in ("*", EVIL), preflight.headers
    simple = prefect.post("/flow_runs/filter", json={"limit": 1}, headers={"Origin": EVIL})
    assert simple.headers.get("access-control-allow-origin") not in ("*", EVIL), simple.headers
    # customizer.prefect_server documents its Host check: only the server's own address.
    port = urlparse(platform.prefect_api).port
    foreign = prefect.post("/flow_runs/filter", json={"limit": 1}, headers={"Host": f"evil.example:{port}"})
    assert 400 <= foreign.status_code < 500, foreign.text


def test_unsigned_run_created_in_prefect_does_no_work(platform, prefect, platform_settings):
    """Guards against an insider with Prefect credentials bypassing the REST API: a customize run created
    straight through Prefect, its spec unsigned (a dataset outside the allowed folders, another team's
    output model, no review), ends Failed before training, saying it was not submitted through the platform."""
    customize = deployment_id(prefect, platform_settings.customize_deployment)
    spec = {"config": TINY_CONFIG, "dataset": "/etc", "output_model": "team-b/x", "policy": {"review_methods": []}}
    created = prefect.post(f"/deployments/{customize}/create_flow_run", json={"parameters": {"spec": spec}, "name": "insider"})
    assert created.status_code in (200, 201), created.text
    run = wait_final(prefect, created.json()["id"], timeout=300)
    assert run["state"]["type"] == "FAILED", run["state"]
    assert "not submitted through the platform" in (run["state"].get("message") or ""), run["state"]
    assert not trained(task_run_names(prefect, run["id"]))
