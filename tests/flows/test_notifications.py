"""Job notifications reach a webhook (a local HTTP server here) as Slack-compatible JSON: waiting for
approval, promoted, completed and failed."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.settings import get_settings
from deploy.notify import notify
from tests.conftest import write_jsonl
from tests.flows.test_approvals import answer, paused_run, start, wait_resumed
from tests.flows.test_customize import OUTPUT, REVIEW_LORA_TOO, spec_for


@pytest.fixture
def webhook(monkeypatch):
    """A webhook that records the JSON bodies posted to it; its URL is the configured one."""
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"content_type": self.headers["Content-Type"], **json.loads(body)})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CUSTOMIZER_NOTIFY_WEBHOOK_URL", f"http://127.0.0.1:{server.server_address[1]}/hooks/customizer")
    yield received
    server.shutdown()
    server.server_close()


def test_a_reviewed_job_notifies_waiting_promoted_and_completed(services, ok_dataset, webhook, monkeypatch):
    monkeypatch.setenv("CUSTOMIZER_APPROVAL_POLL_SECONDS", "1")
    spec = spec_for(ok_dataset, review_methods=REVIEW_LORA_TOO).model_copy(update={"submitted_by": "alice"})
    thread, outcome = start(spec)
    for _ in ("training", "promotion"):  # a reviewed method waits before training and before promotion
        paused = paused_run(thread, outcome)
        answer(paused, approved=True, reviewer="bob", comment="fine")
        wait_resumed(paused.id)
    thread.join(timeout=600)
    result = outcome["result"]
    assert result.registered.aliases == ["candidate", "champion"]

    texts = [m["text"] for m in webhook]
    assert {m["content_type"] for m in webhook} == {"application/json"} and all(m.keys() == {"content_type", "text"} for m in webhook)
    job = result.job_id
    assert len(texts) == 4, texts
    assert texts[0].startswith(f"customize job {job} for {OUTPUT} is waiting for approval of training: train sft/lora")
    assert f"`customizer approve --reviewer NAME {job}`" in texts[0] and f"/v1/customization/jobs/{job}/approval" in texts[0]
    assert texts[1].startswith(f"customize job {job} for {OUTPUT} is waiting for approval of promotion")
    assert texts[2] == f"{OUTPUT} version 1 is the champion (job {job}), published at {result.published_uri}"
    assert texts[3] == f"customize job {job} for {OUTPUT} completed: promote; version 1 is champion"


def test_a_failed_job_notifies_with_the_reason(services, webhook, tmp_path):
    from flows.customize import customize

    root = tmp_path / "bad"
    write_jsonl(root / "training" / "t.jsonl", [{"prompt": "x", "completion": "ok"}, "{broken"])
    with pytest.raises(Exception, match="not valid JSON"):
        customize(spec_for(root))
    (message,) = webhook
    assert message["text"].startswith("customize job cust-") and f"for {OUTPUT} failed: " in message["text"]
    assert "training/t.jsonl:2: not valid JSON" in message["text"]


def test_a_failed_job_notifies_its_own_namespace_only(services, webhook, monkeypatch, tmp_path):
    from flows.customize import customize

    hook = os.environ["CUSTOMIZER_NOTIFY_WEBHOOK_URL"].replace("http://", "json://")
    monkeypatch.delenv("CUSTOMIZER_NOTIFY_WEBHOOK_URL")
    monkeypatch.setenv("CUSTOMIZER_NOTIFY_URLS", json.dumps({OUTPUT.split("/")[0]: [hook], "someone-else": [hook + "-not-ours"]}))
    root = tmp_path / "bad"
    write_jsonl(root / "training" / "t.jsonl", [{"prompt": "x", "completion": "ok"}, "{broken"])
    with pytest.raises(Exception, match="not valid JSON"):
        customize(spec_for(root))
    (message,) = webhook  # Apprise's JSON body, to the namespace's URL alone
    assert message["message"].startswith("customize job cust-") and f"for {OUTPUT} failed: " in message["message"]


def test_an_unreachable_webhook_is_logged_not_raised(monkeypatch, caplog):
    monkeypatch.setenv("CUSTOMIZER_NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/nobody-listens")
    assert notify(get_settings(), "hello") is False
    assert "Notification not delivered to JSON (json://127.0.0.1:9/…) after 3 attempts" in caplog.text
    assert "nobody-listens" not in caplog.text  # a webhook's path may be its token: never logged
    monkeypatch.delenv("CUSTOMIZER_NOTIFY_WEBHOOK_URL")
    assert notify(get_settings(), "hello") is False  # none configured: nothing is sent
