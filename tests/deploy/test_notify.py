"""Notifications go through Apprise to the URLs of the job's namespace and of "*", reach a real HTTP
receiver, are retried when it fails, never log a URL's secrets, and a malformed setting is refused
at start-up naming it."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import apprise
import pytest

from core.settings import SettingError, Settings, get_settings
from deploy import notify as notify_module
from deploy.notify import describe, notify, targets


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST (path, content type, JSON body) and answers
    with the next of ``statuses`` (200 once they run out)."""

    def __init__(self, statuses: list[int] | None = None):
        self.statuses = list(statuses or [])
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append({"path": self.path, "content_type": self.headers["Content-Type"], "body": json.loads(body)})
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str, scheme: str = "json", userinfo: str = "") -> str:
        return f"{scheme}://{userinfo}127.0.0.1:{self.port}{path}"

    def paths(self) -> list[str]:
        return [message["path"] for message in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    started: list[Receiver] = []

    def start(statuses: list[int] | None = None) -> Receiver:
        started.append(Receiver(statuses))
        return started[-1]

    yield start
    for one in started:
        one.close()


@pytest.fixture(autouse=True)
def no_notifications_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CUSTOMIZER_NOTIFY_URLS", raising=False)
    monkeypatch.delenv("CUSTOMIZER_NOTIFY_WEBHOOK_URL", raising=False)
    monkeypatch.setattr(notify_module, "BACKOFF_S", 0.05)


def settings_for(tmp_path, routes: dict[str, list[str]] | None = None, webhook: str | None = None) -> Settings:
    return Settings(data_dir=tmp_path, notify_urls=json.dumps(routes) if routes is not None else None, notify_webhook_url=webhook)


def test_an_apprise_json_notification_reaches_a_local_receiver(receiver, tmp_path):
    hook = receiver()
    settings = settings_for(tmp_path, {"*": [hook.url("/hooks/all")]})
    assert notify(settings, "customize job cust-1 for team-a/bot completed: promote", namespace="team-a") is True
    (message,) = hook.received
    assert message["path"] == "/hooks/all" and message["content_type"] == "application/json"
    assert message["body"]["message"] == "customize job cust-1 for team-a/bot completed: promote"


def test_each_namespace_gets_its_own_jobs_and_star_gets_all(receiver, tmp_path):
    hook = receiver()
    settings = settings_for(tmp_path, {"*": [hook.url("/all")], "team-a": [hook.url("/a")], "team-b": [hook.url("/b")]})
    assert notify(settings, "job of team-a", namespace="team-a")
    assert notify(settings, "job of team-b", namespace="team-b")
    assert notify(settings, "job of team-c", namespace="team-c")  # no entry of its own: "*" only
    assert notify(settings, "job of no known model")  # a job whose spec could not be read
    by_path = {}
    for message in hook.received:
        by_path.setdefault(message["path"], []).append(message["body"]["message"])
    assert by_path == {
        "/all": ["job of team-a", "job of team-b", "job of team-c", "job of no known model"],
        "/a": ["job of team-a"],
        "/b": ["job of team-b"],
    }


def test_a_url_listed_twice_is_sent_once(tmp_path):
    url = "json://127.0.0.1:9/hook"
    settings = settings_for(tmp_path, {"*": [url], "team-a": [url]})
    assert targets(settings, "team-a") == [url]


def test_the_deprecated_webhook_still_receives_slack_style_text(receiver, tmp_path):
    hook = receiver()
    settings = settings_for(tmp_path, {"*": [hook.url("/apprise")]}, webhook=f"http://127.0.0.1:{hook.port}/hooks/customizer?team=a")
    assert notify(settings, "version 3 is the champion", namespace="team-a") is True
    legacy = next(m for m in hook.received if m["path"].startswith("/hooks/customizer"))
    assert legacy == {"path": "/hooks/customizer?team=a", "content_type": "application/json", "body": {"text": "version 3 is the champion"}}
    assert sorted(hook.paths()) == ["/apprise", "/hooks/customizer?team=a"]


def test_a_receiver_that_fails_once_is_retried_and_gets_it(receiver, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="customizer.notify")
    hook = receiver(statuses=[503, 200])
    settings = settings_for(tmp_path, {"team-a": [hook.url("/hook")]})
    assert notify(settings, "waiting for approval", namespace="team-a") is True
    assert [m["body"]["message"] for m in hook.received] == ["waiting for approval", "waiting for approval"]
    assert "failed (attempt 1 of 3); retrying" in caplog.text and "not delivered" not in caplog.text


def test_a_receiver_that_keeps_failing_is_given_up_without_raising(receiver, tmp_path, caplog):
    hook = receiver(statuses=[503] * 10)
    settings = settings_for(tmp_path, {"*": [hook.url("/hook")]})
    assert notify(settings, "failed: out of memory", namespace="team-a") is False
    assert len(hook.received) == notify_module.ATTEMPTS
    assert f"Notification not delivered to JSON (json://127.0.0.1:{hook.port}/…) after 3 attempts: failed: out of memory" in caplog.text


def test_a_failed_delivery_never_logs_the_urls_secrets(receiver, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # even Apprise's and urllib3's debug lines
    hook = receiver(statuses=[500] * 10)
    secrets = ["s3cr3t-pass", "tok-9f8e7d6c", "k3y-abcdef", "0ther-pass", "tok-unreachable-42", "XSECRETTOKEN", "B0SECRET"]
    settings = settings_for(
        tmp_path,
        {"team-a": [hook.url("/hooks/tok-9f8e7d6c?key=k3y-abcdef", userinfo="alice:s3cr3t-pass@"),
                    "json://bob:0ther-pass@127.0.0.1:9/tok-unreachable-42"]},
        webhook=f"http://127.0.0.1:{hook.port}/services/T0/B0SECRET/XSECRETTOKEN",
    )
    assert notify(settings, "completed", namespace="team-a") is False
    assert len(hook.received) == 2 * notify_module.ATTEMPTS  # both targets on the receiver were tried
    logged = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    assert not [secret for secret in secrets if secret in logged], logged
    assert f"not delivered to JSON (json://alice:****@127.0.0.1:{hook.port}/…) after 3 attempts" in logged
    assert "not delivered to JSON (json://bob:****@127.0.0.1:9/…) after 3 attempts" in logged
    # Apprise did log the addresses it posted to, masked: the check above is not vacuous
    assert any(record.name == "apprise" and "JSON POST URL" in record.getMessage() and "****" in record.getMessage()
               for record in caplog.records)


def test_a_slack_target_is_described_without_its_tokens():
    plugin = apprise.Apprise.instantiate("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general")
    described = describe(plugin)
    assert described.startswith("Slack (slack://")
    assert not [token for token in ("T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ") if token in described], described


@pytest.mark.parametrize(("value", "message"), [
    ("not json", r"CUSTOMIZER_NOTIFY_URLS is not valid JSON \(Expecting value at line 1 column 1\)"),
    ('["json://127.0.0.1/x"]', r"CUSTOMIZER_NOTIFY_URLS must be a JSON object .* got a JSON list"),
    ('{"Team A": ["json://127.0.0.1/x"]}', r"CUSTOMIZER_NOTIFY_URLS: 'Team A' is not a namespace"),
    ('{"*": "json://127.0.0.1/x"}', r'CUSTOMIZER_NOTIFY_URLS\["\*"\] must be a list of Apprise URLs'),
    ('{"*": ["json://127.0.0.1/x"], "team-a": ["slack://tok3n-only-secret"]}',
     r'CUSTOMIZER_NOTIFY_URLS\["team-a"\]\[0\]: Apprise cannot read this slack:// URL'),
    ('{"*": ["nosuchservice://user:pa55-secret@host/tok3n-secret"]}',
     r'CUSTOMIZER_NOTIFY_URLS\["\*"\]\[0\]: Apprise cannot read this nosuchservice:// URL'),
])
def test_a_malformed_setting_is_refused_naming_it(monkeypatch, caplog, value, message):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CUSTOMIZER_NOTIFY_URLS", value)
    with pytest.raises(SettingError, match=message) as refused:
        get_settings()
    for secret in ("tok3n-only-secret", "pa55-secret", "tok3n-secret"):
        assert secret not in str(refused.value) and secret not in caplog.text


def test_a_deprecated_webhook_that_is_not_http_is_refused(monkeypatch):
    monkeypatch.setenv("CUSTOMIZER_NOTIFY_WEBHOOK_URL", "ftp://files.example.com/drop")
    with pytest.raises(SettingError, match=r"CUSTOMIZER_NOTIFY_WEBHOOK_URL must be an http:// or https:// URL with a host, got a ftp:// URL"):
        get_settings()


def test_nothing_configured_sends_nothing(tmp_path):
    assert notify(settings_for(tmp_path), "hello", namespace="team-a") is False
    assert notify(settings_for(tmp_path, {"team-b": ["json://127.0.0.1:9/b"]}), "hello", namespace="team-a") is False
