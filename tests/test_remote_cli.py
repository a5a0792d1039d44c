"""``customizer jobs status --wait --fail-on`` judges the recorded decision, and fails closed when it
cannot read one (the end-to-end run against a keyed platform is tests/security/test_cli_client.py)."""

import httpx
import pytest

from customizer import exits, remote
from customizer.cli import main

pytestmark = pytest.mark.unit

JOB = "cust-abc"


def serve(monkeypatch, model: dict | None, output_model: str = "team/m") -> list[str]:
    """The REST API answering a completed job whose output model is ``model`` (None: not found)."""
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path == f"{remote.JOBS}/{JOB}/status":
            return httpx.Response(200, json={"status": "completed", "percentage_done": 100})
        if request.url.path == f"{remote.JOBS}/{JOB}":
            return httpx.Response(200, json={"id": JOB, "output_model": output_model})
        if request.url.path == f"/v1/models/{output_model}" and model is not None:
            return httpx.Response(200, json=model)
        return httpx.Response(404, json={"detail": "not found"})

    real = httpx.Client
    monkeypatch.setattr(remote.httpx, "Client", lambda **kw: real(**kw, transport=httpx.MockTransport(answer)))
    return asked


def status(*flags: str) -> int:
    return main(["jobs", "status", JOB, "--wait", "--interval", "0.2", "--api-url", "http://api.test", *flags])


@pytest.mark.parametrize(("decision", "code"), [("reject", exits.NOT_PROMOTED), ("hold", exits.NOT_PROMOTED),
                                                ("promote", exits.OK), ("no fine-tuning needed", exits.OK)])
def test_fail_on_judges_the_recorded_decision(monkeypatch, capsys, decision, code):
    serve(monkeypatch, {"custom_fields": {"decision": decision}})
    assert status("--fail-on", "rejected", "--fail-on", "held") == code


def test_a_decision_that_cannot_be_read_is_not_taken_as_promoted(monkeypatch, capsys):
    serve(monkeypatch, {"custom_fields": {}})  # the model entry has no decision (e.g. MLflow was unreachable)
    assert status("--fail-on", "rejected") == exits.UNAVAILABLE
    err = capsys.readouterr().err
    assert "decision could not be read" in err and "team/m" in err and "Traceback" not in err


def test_a_missing_output_model_is_not_taken_as_promoted(monkeypatch, capsys):
    serve(monkeypatch, None)
    assert status("--fail-on", "held") == exits.UNAVAILABLE
    assert "404" in capsys.readouterr().err


def test_without_fail_on_the_decision_is_not_read(monkeypatch, capsys):
    asked = serve(monkeypatch, None)
    assert status() == exits.OK
    assert not any(path.startswith("/v1/models") for path in asked)
