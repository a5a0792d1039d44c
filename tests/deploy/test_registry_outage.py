"""The registry is read fail-closed: only a definite "does not exist" reads as "no champion"; an
outage (server down, database locked) is retried a bounded number of times, then raised as
RegistryUnavailable, and the champion alias stays where it was."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    PERMISSION_DENIED,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from core import tracking
from core.processes import free_port, stop_processes
from core.settings import Settings
from deploy import registry
from deploy.registry import RegistryUnavailable

MODEL = "team/bot"
LOCKED = "(sqlite3.OperationalError) database is locked\n[SQL: SELECT registered_models.name ...]"


# --- what counts as "does not exist" -------------------------------------------------------------

def test_absent_is_only_a_missing_model_or_alias():
    assert registry.is_absent(MlflowException("Registered Model with name=team.bot not found", RESOURCE_DOES_NOT_EXIST))
    assert registry.is_absent(MlflowException("Registered model alias champion not found.", INVALID_PARAMETER_VALUE))
    # The REST store's RestException carries the server's code and "CODE: message".
    from mlflow.exceptions import RestException

    assert registry.is_absent(RestException({"error_code": "INVALID_PARAMETER_VALUE",
                                             "message": "Registered model alias champion not found."}))
    assert registry.is_absent(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Registered Model with name=x not found"}))
    # The same code for another reason, a locked database or a refused connection is no answer.
    assert not registry.is_absent(MlflowException("Invalid model name: ''", INVALID_PARAMETER_VALUE))
    assert not registry.is_absent(MlflowException(LOCKED, TEMPORARILY_UNAVAILABLE))
    assert not registry.is_absent(MlflowException("API request to http://x/api/2.0/mlflow/registered-models/alias failed with "
                                                  "exception ... [Errno 111] Connection refused"))


def test_missing_model_and_alias_are_still_no_champion(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    assert registry.champion_tags(settings, MODEL) is None
    assert registry.champion_version(settings, MODEL) is None
    assert registry.champions(settings, [MODEL]) == [(MODEL, None, {})]
    run_id = tracking.start_run(settings, "cust-absent", tags={}, params={})
    registry.register_version(settings, MODEL, "file:///nowhere", run_id, {})  # registered, no champion alias
    assert registry.champion_version(settings, MODEL) is None
    assert registry.champions(settings) == [(MODEL, None, {})]
    assert registry.namespace_champions(settings, "team") == []


# --- retries, with a client that fails the way the SQLite store does ------------------------------

class FlakyClient:
    """Raises ``errors`` in turn from the champion reads, then answers."""

    def __init__(self, errors: list[Exception]):
        self.errors, self.calls, self.created = list(errors), 0, []

    def _next(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)

    def get_model_version_by_alias(self, name, alias):
        self._next()
        return SimpleNamespace(version=3, tags={"customizer.dataset.sha256": "f00"})

    def get_registered_model(self, name):
        self._next()
        return SimpleNamespace(aliases={})

    def create_registered_model(self, name, tags=None):
        self.created.append(name)


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(registry, "_sleep", waited.append)
    return waited


def test_a_locked_database_is_retried_then_raised(tmp_path: Path, monkeypatch, sleeps):
    flaky = FlakyClient([MlflowException(LOCKED, TEMPORARILY_UNAVAILABLE)] * 5)
    monkeypatch.setattr(registry, "client", lambda settings: flaky)
    with pytest.raises(RegistryUnavailable) as raised:
        registry.champions(Settings(data_dir=tmp_path), [MODEL])
    message = str(raised.value)
    assert "could not read the champion of team/bot from the registry at sqlite:///" in message
    assert "database is locked (3 attempts" in message
    assert flaky.calls == registry.READ_ATTEMPTS == 3 and sleeps == [1.0, 3.0]
    assert isinstance(raised.value, RuntimeError) and isinstance(raised.value.__cause__, MlflowException)


def test_a_transient_error_that_clears_is_an_answer(tmp_path: Path, monkeypatch, sleeps):
    flaky = FlakyClient([MlflowException(LOCKED, TEMPORARILY_UNAVAILABLE)])
    monkeypatch.setattr(registry, "client", lambda settings: flaky)
    assert registry.champion_version(Settings(data_dir=tmp_path), MODEL) == "3"
    assert flaky.calls == 2 and sleeps == [1.0]


def test_a_permanent_error_is_raised_at_once(tmp_path: Path, monkeypatch, sleeps):
    flaky = FlakyClient([MlflowException("Permission denied for team.bot", PERMISSION_DENIED)])
    monkeypatch.setattr(registry, "client", lambda settings: flaky)
    with pytest.raises(RegistryUnavailable, match=r"Permission denied for team.bot \(1 attempt in"):
        registry.champion_tags(Settings(data_dir=tmp_path), MODEL)
    assert flaky.calls == 1 and sleeps == []


def test_register_does_not_create_a_model_it_could_not_read(tmp_path: Path, monkeypatch, sleeps):
    flaky = FlakyClient([MlflowException(LOCKED, TEMPORARILY_UNAVAILABLE)] * 5)
    monkeypatch.setattr(registry, "client", lambda settings: flaky)
    with pytest.raises(RegistryUnavailable, match="registered model team/bot"):
        registry.register_version(Settings(data_dir=tmp_path), MODEL, "file:///x", "run", {})
    assert flaky.created == []


def test_the_retries_stay_within_the_budget(tmp_path: Path, monkeypatch, sleeps):
    """A read that is slow to fail is not tried again past READ_BUDGET_S."""
    clock = [0.0]
    monkeypatch.setattr(registry.time, "monotonic", lambda: clock[0])

    class Slow(FlakyClient):
        def get_model_version_by_alias(self, name, alias):
            clock[0] += 15.0  # e.g. SQLite's busy timeout, or MLflow's own HTTP retries
            return super().get_model_version_by_alias(name, alias)

    flaky = Slow([MlflowException(LOCKED, TEMPORARILY_UNAVAILABLE)] * 5)
    monkeypatch.setattr(registry, "client", lambda settings: flaky)
    with pytest.raises(RegistryUnavailable, match=r"database is locked \(1 attempt in 15 s\)"):
        registry.champion_version(Settings(data_dir=tmp_path), MODEL)
    assert flaky.calls == 1


# --- a real MLflow tracking server that goes down -------------------------------------------------

class MlflowServer:
    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ) | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                   "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1"]
        log = open(self.folder / "server.log", "ab")
        self.process = subprocess.Popen(command, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.folder / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError("mlflow server did not start: " + (self.folder / "server.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_processes(self.process, grace=30)


@pytest.fixture
def mlflow_server(tmp_path: Path):
    server = MlflowServer(tmp_path / "server")
    server.folder.mkdir()
    server.start()
    yield server
    server.stop()


@pytest.mark.faults  # stops and starts the service it depends on
def test_outage_during_the_champion_read_fails_and_leaves_the_champion(mlflow_server: MlflowServer, tmp_path: Path, monkeypatch):
    for key in tracking.HTTP_DEFAULTS:  # the defaults client() sets, not whatever the environment holds
        monkeypatch.delenv(key, raising=False)
    settings = Settings(data_dir=tmp_path / "data", mlflow_tracking_uri=mlflow_server.url)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")

    # The REST store says "does not exist" the way the SQLite store does: still no champion.
    assert registry.champion_version(settings, MODEL) is None
    run_id = tracking.start_run(settings, "cust-outage", tags={}, params={})
    source = tracking.log_artifacts(settings, run_id, adapter, "adapter")
    assert registry.register_version(settings, MODEL, source, run_id, {"customizer.dataset.sha256": "f00"}).version == "1"
    assert registry.champion_version(settings, MODEL) is None and registry.champions(settings) == [(MODEL, None, {})]
    registry.promote(settings, MODEL, "1")
    assert registry.champions(settings, [MODEL]) == [(MODEL, "1", {"customizer.dataset.sha256": "f00"})]

    mlflow_server.stop()  # the registry goes away
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable) as raised:
        registry.champions(settings, [MODEL])  # what the customize flow's champion-scores task reads
    took = time.monotonic() - started
    message = str(raised.value)
    assert f"could not read the champion of team/bot from the registry at {mlflow_server.url}: connection refused (" in message
    assert "attempt" in message
    assert took < 40, f"gave up after {took:.0f} s"  # MLflow's own 7 retries (~4 min) are bounded by client()

    # Every other champion read fails closed too (MLflow's retries off here, to keep the test short).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(registry, "_sleep", lambda seconds: None)
    for read in (lambda: registry.champion_version(settings, MODEL), lambda: registry.champion_tags(settings, MODEL),
                 lambda: registry.champions(settings), lambda: registry.namespace_champions(settings, "team"),
                 lambda: registry.register_version(settings, MODEL, source, run_id, {})):
        with pytest.raises(RegistryUnavailable, match="connection refused"):
            read()

    mlflow_server.start()  # back: the champion is where it was, and nothing else was registered
    assert registry.champion_version(settings, MODEL) == "1"
    assert registry.describe(settings, MODEL, "1").aliases == ["candidate", "champion"]
    assert [str(v.version) for v in tracking.client(settings).search_model_versions("name = 'team.bot'")] == ["1"]
