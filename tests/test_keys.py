"""``customizer keys``: the operator's tool on the server edits the principals file directly; the
running API sees each change at its next request, and nothing prints or stores a key twice."""

from __future__ import annotations

import json
import stat

import pytest
from fastapi.testclient import TestClient

from api import orchestrator
from api.app import create_app
from core import audit
from core.auth import principals_file
from core.ids import prefixed_id
from core.settings import Settings, get_settings
from customizer.cli import main

JOB_ID = prefixed_id("cust", "0b9c2a8e-4f1d-4c6b-8a7e-5d3c2b1a0f9e")  # a well-formed job id; no such job exists


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A fresh data folder for the command line (and an API on it)."""
    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CUSTOMIZER_API_KEYS", raising=False)
    monkeypatch.delenv("CUSTOMIZER_API_KEY", raising=False)
    return tmp_path


def test_keys_add_list_and_revoke_reach_a_running_api(data_dir, capsys):
    settings = Settings(data_dir=data_dir)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert main(["keys", "list"]) == 0
        assert "authentication is off" in capsys.readouterr().out

        assert main(["keys", "add", "alice", "--namespace", "team-a", "--namespace", "team-b", "--role", "review", "--role", "submit"]) == 0
        printed = capsys.readouterr()
        key = printed.out.strip()
        assert key and "\n" not in key and "not shown again" in printed.err
        assert key not in principals_file(settings).read_text()
        assert stat.S_IMODE(principals_file(settings).stat().st_mode) == 0o600

        # The API was started before the key existed: it takes it now, and wants a key from everyone else.
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200

        assert main(["keys", "list"]) == 0
        listed = capsys.readouterr().out
        assert "alice" in listed and "team-a,team-b" in listed and "submit,review" in listed and key not in listed

        assert main(["keys", "revoke", "alice"]) == 0
        assert "alice revoked" in capsys.readouterr().out
        # The last principal gone and no bootstrap key: authentication is off again, for anyone.
        assert client.get("/v1/models").status_code == 200
        assert json.loads(principals_file(settings).read_text()) == {}
    trail = [(r["action"], r["after"] or r["before"]) for r in audit.records(get_settings()) if r["action"].startswith("principal.")]
    assert [(action, entry["name"]) for action, entry in trail] == [("principal.added", "alice"), ("principal.revoked", "alice")]


def test_a_revoked_key_is_refused_while_other_principals_remain(data_dir, capsys):
    settings = Settings(data_dir=data_dir)
    assert main(["keys", "add", "alice", "--namespace", "*", "--role", "submit"]) == 0
    alice = capsys.readouterr().out.strip()
    assert main(["keys", "add", "bob", "--namespace", "*", "--role", "review"]) == 0
    bob = capsys.readouterr().out.strip()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {alice}"}).status_code == 200
        assert main(["keys", "revoke", "alice"]) == 0
        refused = client.get("/v1/models", headers={"Authorization": f"Bearer {alice}"})
        assert refused.status_code == 401 and "unknown or revoked" in refused.json()["detail"]
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {bob}"}).status_code == 200


def test_bad_keys_commands_are_one_clear_message(data_dir, capsys):
    assert main(["keys", "add", "Alice", "--namespace", "team a", "--role", "boss"]) == 2
    err = capsys.readouterr().err
    assert "NAME: `name` 'Alice'" in err and "--namespace: `namespaces`: 'team a'" in err and "--role:" in err and "'boss'" in err
    assert "Traceback" not in err
    assert main(["keys", "add", "alice", "--namespace", "*", "--role", "admin"]) == 0
    capsys.readouterr()
    assert main(["keys", "add", "alice", "--namespace", "*", "--role", "admin"]) == 2
    assert "principal 'alice' exists" in capsys.readouterr().err
    assert main(["keys", "revoke", "nobody"]) == 2
    assert "no principal named 'nobody'" in capsys.readouterr().err
    principals_file(Settings(data_dir=data_dir)).write_text("[")
    assert main(["keys", "list"]) == 2
    assert f"the principals file {principals_file(Settings(data_dir=data_dir))} is not valid" in capsys.readouterr().err


def test_approve_with_authentication_on_needs_a_key_and_never_calls_prefect_directly(data_dir, capsys, monkeypatch):
    def direct(*args, **kwargs):
        raise AssertionError("customizer approve answered through Prefect with authentication on")

    monkeypatch.setattr(orchestrator, "answer", direct)
    assert main(["keys", "add", "carol", "--namespace", "*", "--role", "review"]) == 0
    capsys.readouterr()
    assert main(["approve", JOB_ID, "--reviewer", "carol"]) == 2
    err = capsys.readouterr().err
    assert "authentication is on" in err and "CUSTOMIZER_API_KEY" in err

    # With a key but no API listening: a clear message naming where it looked.
    assert main(["approve", JOB_ID, "--api-key", "k", "--api-url", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the REST API at http://127.0.0.1:9" in capsys.readouterr().err


def test_approve_with_authentication_off_still_needs_a_reviewer(data_dir, capsys):
    assert main(["approve", JOB_ID]) == 2
    assert "--reviewer is required" in capsys.readouterr().err
