"""``customizer up``: a whole local platform from one command.

Starts, each in its own process group so it can be stopped with everything it spawned:
1. the Prefect API and UI (``customizer.prefect_server``: ``prefect server start``'s app, SQLite under the data folder);
2. the worker that runs the ``customize``, ``evaluate``, ``ingest`` and ``retrain`` deployments (``customizer worker``);
3. the MLflow UI (``mlflow server`` on the same SQLite store, job execution off), unless disabled;
4. the REST API (uvicorn);
5. with ``--vllm`` (or the ``vllm_in_up`` setting), vLLM as ``customizer serving start`` where ``make vllm``
   installed it; promoted adapters are then handed off to it unless ``serving_endpoint`` names another.

The Prefect and MLflow servers admit only the platform (``core.services``): both ask for the service
account ``customizer`` (HTTP basic auth; MLflow grants nobody else anything), answer only their own
address in the Host header and their own origin in CORS. The worker, the runs it starts and the REST API
get the Prefect credentials; MLflow's are needed by no process of the platform, which reads and writes the
registry's SQLite store directly. The worker is not given the API's keys (``CUSTOMIZER_API_KEYS``), only
``CUSTOMIZER_AUTH_REQUIRED`` when authentication is on.

The API, the Prefect server and the MLflow UI run at ``services_nice`` (default 10), below the
worker and the jobs it runs: polling clients then take the CPU that training leaves, not the reverse.

It prints their URLs, waits, and on Ctrl-C or SIGTERM stops them all (TERM, then KILL after a
grace period). Everything lives in the data folder, so a restart finds the jobs it had.

A worker that starts first takes back the runs a stopped worker left behind
(``resume_orphaned_runs``): a run whose process is gone is scheduled again and resumes (training
from its last checkpoint), up to ``RESUME_LIMIT`` times, then it is marked crashed with the reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from core import auth, services
from core.postgres import PostgresUnavailable, ensure_databases, where
from core.processes import free_port, stop_processes
from core.settings import Settings
from customizer.exits import Unavailable
from serving.vllm import VllmNotInstalled, vllm_python


class StartError(RuntimeError):
    """A component did not come up; the message says which and where its log is."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path


@dataclass
class Platform:
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, command: list[str], env: dict[str, str], logs: Path, nice: int = 0) -> Child:
        """Start ``command`` in its own session, logging to ``logs/<name>.log``; ``nice`` is added to its
        niceness (and so to that of every process it starts)."""
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        with open(log_path, "ab") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, preexec_fn=(lambda: os.nice(nice)) if nice else None)
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def stop(self, grace: float = 15.0) -> None:
        """TERM every child's process group (newest first), then KILL what is left after ``grace`` seconds."""
        # Each child's group is killed in the end: that takes its leftovers (flow-run subprocesses).
        left = stop_processes(*(child.process for child in reversed(self.children)), grace=grace)
        for child in self.children:
            if child.process in left:
                print(f"customizer: {child.name} (pid {child.process.pid}) did not stop", file=sys.stderr)

    def dead(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)


def wait_healthy(url: str, child: Child, timeout: float, headers: dict[str, str] | None = None) -> None:
    """Poll ``url`` (sending ``headers``) until it answers 200; fail early if the child exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise StartError(f"{child.name} exited with status {child.process.returncode}; see {child.log_path}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise StartError(f"{child.name} did not answer {url} within {timeout:.0f} s; see {child.log_path}")


def _wait_for_deployments(prefect_api: str, names: list[str], child: Child, timeout: float, auth_string: str) -> None:
    headers = {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}
    for name in names:
        wait_healthy(f"{prefect_api}/deployments/name/{name}", child, timeout, headers)


RESUME_LIMIT = 5  # a run lost this many times is crashed for good, not resumed again
RESUMING = "Resuming"  # the name of the Scheduled state a lost run is given back to its deployment in
_UNCLAIMED_SECONDS = 60  # a run Pending or Running this long without a recorded process lost its worker


def _process_gone(infrastructure_pid: str | None, started: dt.datetime | None) -> bool | None:
    """Whether a run's recorded process (``host:pid``) is gone; None when it is another host's."""
    import psutil

    host, _, pid = (infrastructure_pid or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        created = psutil.Process(int(pid)).create_time()
    except psutil.NoSuchProcess:
        return True
    # A process started after the run did is another one that was given the same pid.
    return started is not None and created > started.timestamp() + 5


def resume_orphaned_runs(deployment: str, cancelling_only: bool = False) -> list[tuple[str, str]]:
    """Give the runs of ``deployment`` (``flow/name``) that lost their process back to it.

    A run Running or Pending whose process on this host is gone (or that never recorded one within
    a minute) is scheduled again in a ``Resuming`` state that says why; the worker picks it up and
    the flow resumes (its tasks are idempotent; training continues from its last checkpoint). A run
    lost more than ``RESUME_LIMIT`` times is marked Crashed instead, and a run that was being
    cancelled is marked Cancelled. With ``cancelling_only``, only the last (what ``watch_cancellations``
    does while the worker runs).

    Returns:
        ``(flow run id, what was done)`` for each run taken back.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Crashed, Scheduled

    done = []
    now = dt.datetime.now(dt.UTC)
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.CANCELLING] if cancelling_only else [StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]))),
        )
        for run in runs:
            gone = _process_gone(run.infrastructure_pid, run.start_time)
            if gone is None and not run.infrastructure_pid:
                gone = (now - run.state.timestamp).total_seconds() > _UNCLAIMED_SECONDS
            if not gone:
                continue
            where = f"process {run.infrastructure_pid} is gone" if run.infrastructure_pid else "it never started"
            lost = 1 + sum(s.name == RESUMING for s in client.read_flow_run_states(run.id))
            if run.state.type == StateType.CANCELLING:
                state, what = Cancelled(message=f"cancelled: its worker stopped while cancelling it ({where})"), "cancelled"
            elif lost > RESUME_LIMIT:
                state = Crashed(message=f"the worker running this job stopped ({where}) {lost} times; it is not resumed again: "
                                        "look at the worker's log, then start the job again")
                what = "crashed"
            else:
                state = Scheduled(name=RESUMING, scheduled_time=now, message=(
                    f"its worker stopped ({where}); resumed by the worker started on {socket.gethostname()} "
                    f"({lost} of at most {RESUME_LIMIT} times)"))
                what = "resumed"
            client.set_flow_run_state(run.id, state, force=True)
            done.append((str(run.id), what))
    return done


def watch_cancellations(deployment: str, every: float) -> threading.Thread:
    """Start a daemon thread that, every ``every`` seconds, marks Cancelled the runs of ``deployment``
    left Cancelling with no process: a run cancelled while its worker was starting it can end its
    process before the worker has its pid to stop it, and nothing else would ever finish it (it
    never runs: the flow refuses to start once its history holds a cancellation)."""

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(every):
            try:
                for flow_run_id, _ in resume_orphaned_runs(deployment, cancelling_only=True):
                    print(f"customizer worker: flow run {flow_run_id} was left cancelling with no process: cancelled", flush=True)
            except Exception as exc:  # noqa: BLE001 - Prefect unreachable or the deployment not yet there: try again next time
                print(f"customizer worker: could not look for runs left cancelling: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    thread = threading.Thread(target=watch, name="cancellations", daemon=True)
    thread.start()
    return thread


def _postgres_environment(settings: Settings) -> dict[str, str]:
    """With ``postgres_url``: its databases made where missing, and the environment that points every
    process at them (the API and the worker read the setting; Prefect's server its own variable)."""
    if not settings.postgres_url:
        return {}
    try:
        for name in ensure_databases(settings.postgres_url):
            print(f"customizer: made database {name} on {where(settings.postgres_url)}", flush=True)
    except PostgresUnavailable as exc:
        raise Unavailable(f"cannot keep the platform's state on {exc}") from exc
    return {"CUSTOMIZER_POSTGRES_URL": settings.postgres_url, "PREFECT_API_DATABASE_CONNECTION_URL": settings.prefect_database_url or ""}


def _vllm_wanted(settings: Settings, asked: bool) -> bool:
    """Whether to start vLLM: asked for, and installed (else it is said why not; the platform starts without it)."""
    if not asked:
        return False
    try:
        vllm_python(settings)
    except VllmNotInstalled as exc:
        print(f"customizer: not starting vLLM: {exc}", file=sys.stderr, flush=True)
        return False
    return True


def up(settings: Settings, host: str, api_port: int, prefect_port: int | None, mlflow_port: int | None, mlflow_ui: bool,
       poll_seconds: float, worker_limit: int, ready_file: Path | None = None, vllm: bool = False) -> int:
    """Start the platform and block until interrupted (or a component dies). Returns the exit status.

    Raises:
        Unavailable: ``postgres_url`` names a PostgreSQL server that cannot be reached or used.
    """
    root = settings.root
    state = _postgres_environment(settings)  # before anything starts: its databases must exist
    logs = root / "logs"
    prefect_port = prefect_port or free_port(host)
    api_port = api_port or free_port(host)
    prefect_api = f"{services.origin(host, prefect_port)}/api"
    env = dict(os.environ) | {
        "CUSTOMIZER_DATA_DIR": str(root),
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(settings.prefect_home)),
        "PREFECT_API_URL": prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": str(poll_seconds),
        "PREFECT_UI_API_URL": prefect_api,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # else mlflow starts ~10 worker processes
    } | state
    # Each process gets the secrets it needs: every principal's key only the REST API, the Prefect
    # credentials only Prefect's clients, the MLflow admin's only MLflow.
    api_keys = {"CUSTOMIZER_API_KEYS": env.pop("CUSTOMIZER_API_KEYS")} if "CUSTOMIZER_API_KEYS" in env else {}
    prefect_client = env | services.prefect_client_environment(settings)
    worker_env = prefect_client | ({"CUSTOMIZER_AUTH_REQUIRED": "true"} if auth.enabled(settings) else {})
    user, _ = services.credentials(settings)
    python = sys.executable
    vllm_url = f"http://{host}:{settings.vllm_port}" if _vllm_wanted(settings, vllm) else None
    if vllm_url and not settings.serving_endpoint:  # promoted adapters go live on it
        worker_env["CUSTOMIZER_SERVING_ENDPOINT"] = vllm_url
    platform = Platform()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    for sig in previous:
        signal.signal(sig, interrupted)
    try:
        # The services that answer clients run below the worker's priority: training gets the CPU first.
        nice = settings.services_nice
        if vllm_url:  # first: it loads the base model while the rest starts
            vllm_child = platform.start("vllm", [python, "-m", "customizer.cli", "serving", "start", "--host", host,
                                                 "--port", str(settings.vllm_port)], env, logs)
        prefect = platform.start("prefect", [python, "-m", "customizer.prefect_server", "--host", host, "--port", str(prefect_port)],
                                 env | services.prefect_server_environment(settings, host, prefect_port), logs, nice)
        wait_healthy(f"{prefect_api}/health", prefect, timeout=180)
        worker = platform.start("worker", [python, "-m", "customizer.cli", "worker", "--limit", str(worker_limit)], worker_env, logs)
        _wait_for_deployments(prefect_api, [settings.customize_deployment, settings.evaluate_deployment], worker, timeout=180,
                              auth_string=services.prefect_auth_string(settings))
        mlflow_url = None
        if mlflow_ui:
            mlflow_port = mlflow_port or free_port(host)
            artifacts = ["--default-artifact-root", settings.mlflow_artifact_root.as_uri()] if settings.mlflow_tracking_uri is None else []
            mlflow = platform.start("mlflow", [python, "-m", "mlflow", "server", "--backend-store-uri", settings.tracking_uri, *artifacts,
                                               "--host", host, "--port", str(mlflow_port), "--workers", "1",
                                               *services.mlflow_server_arguments(host, mlflow_port)],
                                    env | services.mlflow_server_environment(settings), logs, nice)
            mlflow_url = services.origin(host, mlflow_port)
            wait_healthy(f"{mlflow_url}/health", mlflow, timeout=180)
        api = platform.start("api", [python, "-m", "uvicorn", "--factory", "api.app:app_from_environment", "--host", host,
                                     "--port", str(api_port), "--log-level", "warning", "--no-proxy-headers"], prefect_client | api_keys, logs, nice)
        wait_healthy(f"http://{host}:{api_port}/v1/health", api, timeout=120)
        if vllm_url:
            wait_healthy(f"{vllm_url}/health", vllm_child, timeout=900)
        sign_in = f"(sign in as {user}; password: `customizer services`)"
        urls = {
            "API": f"http://{host}:{api_port}  (docs: http://{host}:{api_port}/docs)",
            "Prefect UI": f"{services.origin(host, prefect_port)}  {sign_in}",
            "MLflow UI": f"{mlflow_url}  {sign_in}" if mlflow_url else f"run: mlflow ui --backend-store-uri {settings.tracking_uri}",
        } | ({"vLLM": f"{vllm_url}  (OpenAI-compatible; adapters by name)"} if vllm_url else {})
        print("customizer is up:", flush=True)
        for name, url in urls.items():
            print(f"  {name:11} {url}", flush=True)
        print(f"  data       {root}  (logs in {logs})", flush=True)
        if not auth.enabled(settings):
            print("  WARNING    API authentication is off: anyone who can reach the API can use it "
                  "(add keys with `customizer keys add`, or set CUSTOMIZER_API_KEYS)", flush=True)
        if ready_file is not None:
            ready_file.write_text(f"http://{host}:{api_port}\n{prefect_api}\n{mlflow_url or ''}\n")
        while (dead := platform.dead()) is None:
            time.sleep(1)
        print(f"customizer: {dead.name} exited with status {dead.process.returncode}; see {dead.log_path}", file=sys.stderr)
        return 1
    except StartError as exc:
        print(f"customizer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("customizer: stopping...", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN)
        platform.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
