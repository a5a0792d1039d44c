"""The API's only contact with Prefect: start a deployment's flow run, read run states and logs,
cancel a run. Jobs are flow runs; their ids derive from the flow run ids.

The Prefect API is the one in ``PREFECT_API_URL`` (``customizer up`` sets it). Prefect errors are
turned into ``OrchestratorUnavailable`` so the API can answer 503 with a message, not a trace.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from core.auth import approval_message
from core.secrets import sign
from core.settings import get_settings

log = logging.getLogger("customizer.api")

# Prefect state type -> NeMo job status
STATUS = {
    "SCHEDULED": "pending",
    "PENDING": "pending",
    "RUNNING": "running",
    "PAUSED": "running",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CRASHED": "failed",
    "CANCELLING": "cancelling",
    "CANCELLED": "cancelled",
}
FINAL = {"completed", "failed", "cancelled"}


class OrchestratorUnavailable(RuntimeError):
    """Prefect's API did not answer, or has no such deployment."""


class NotWaiting(RuntimeError):
    """The flow run is not paused for an answer."""


@contextmanager
def _asking_prefect(warning: str | None = None) -> Iterator[None]:
    """Run a conversation with Prefect; any error it raises becomes ``OrchestratorUnavailable``
    (the API answers 503 with its message). Our own answers (``OrchestratorUnavailable``,
    ``NotWaiting``) pass through as they are. ``warning``: logged with the error, for a refusal the
    server log should show.
    """
    try:
        yield
    except (OrchestratorUnavailable, NotWaiting):
        raise
    except Exception as exc:  # noqa: BLE001 - any transport or API error means the same to the client
        if warning:
            log.warning("%s: %s", warning, exc)
        raise OrchestratorUnavailable(f"the orchestrator (Prefect) is not reachable: {type(exc).__name__}: {exc}") from exc


class RunState(BaseModel):
    """A flow run's state, as much as the API needs."""

    flow_run_id: str
    status: str  # NeMo's job status
    state_name: str
    message: str | None
    timestamp: dt.datetime | None
    started: dt.datetime | None
    history: list[tuple[str, str, dt.datetime | None, str | None]] = []  # (status, state name, time, message)


def _naive(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


def _state(run: Any) -> RunState:
    state = run.state
    kind = state.type.value if state is not None else "SCHEDULED"
    return RunState(
        flow_run_id=str(run.id),
        status=STATUS.get(kind, "unknown"),
        state_name=state.name if state is not None else "Scheduled",
        message=state.message if state is not None else None,
        timestamp=_naive(state.timestamp) if state is not None else None,
        started=_naive(run.start_time),
    )


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _client() -> Any:
    """A started Prefect client for ``PREFECT_API_URL``, one per URL, kept open for the process's
    life and shared by the request threads (its httpx pool is thread-safe and reconnects after a
    server restart): a new client costs ~20 ms of CPU (it builds an SSL context), more than the
    calls a status refresh makes with it."""
    # delayed: Prefect is heavy (start-up time)
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value() or ""
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = get_client(sync_client=True).__enter__()
    return client


def start(deployment: str, parameters: dict[str, Any], name: str | None = None, tags: list[str] | None = None) -> str:
    """Create a flow run of ``deployment`` (``flow/deployment``) and return its id at once.

    Raises:
        OrchestratorUnavailable: Prefect cannot be reached or the deployment does not exist.
    """
    # delayed: Prefect is heavy (start-up time)
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    with _asking_prefect(warning=f"Prefect did not accept a flow run of {deployment}"):
        try:
            run = run_deployment(deployment, parameters=parameters, timeout=0, flow_run_name=name, tags=tags, as_subflow=False)
        except ObjectNotFound as exc:
            raise OrchestratorUnavailable(
                f"the Prefect deployment {deployment!r} does not exist: start the worker (`customizer worker` or `customizer up`)"
            ) from exc
    return str(run.id)


def states(flow_run_ids: list[str], history: bool = False) -> dict[str, RunState]:
    """The current state of each flow run (unknown ids are left out).

    Raises:
        OrchestratorUnavailable: Prefect cannot be reached.
    """
    # delayed: Prefect is heavy (start-up time)
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    if not flow_run_ids:
        return {}
    with _asking_prefect():
        client = _client()
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in flow_run_ids])), limit=len(flow_run_ids)
        )
        found = {str(run.id): _state(run) for run in runs}
        if history:
            for run_id, state in found.items():
                state.history = [
                    (STATUS.get(s.type.value, "unknown"), s.name, _naive(s.timestamp), s.message)
                    for s in sorted(client.read_flow_run_states(UUID(run_id)), key=lambda s: s.timestamp)
                ]
    return found


def cancel(flow_run_id: str) -> None:
    """Ask a flow run to stop; it is reported ``cancelled`` only once it can no longer start.

    The state is proposed, not forced, so Prefect's server decides against the run's state at that very
    moment: a run not started (Scheduled, or Suspended for an approval) becomes Cancelled, which no
    worker may move to Pending again; a run being submitted (Pending) or running becomes Cancelling,
    which it cannot leave for Running: its worker stops it and marks it Cancelled. (Forcing Cancelled
    onto a Pending run let the process its worker was starting move it to Running and train; every flow
    also ends at once, Cancelled, when its history holds a cancellation: ``tasks.job.cancelled_before_start``.)

    Raises:
        OrchestratorUnavailable: Prefect cannot be reached.
    """
    # delayed: Prefect is heavy (start-up time)
    from prefect.states import Cancelling

    with _asking_prefect():
        client = _client()
        run = client.read_flow_run(UUID(flow_run_id))
        kind = run.state.type.value if run.state else "SCHEDULED"
        if kind in ("SCHEDULED", "PENDING", "RUNNING", "PAUSED"):
            client.set_flow_run_state(UUID(flow_run_id), Cancelling(message="Cancellation requested through the API"))


def answer(flow_run_id: str, run_input: dict[str, Any]) -> None:
    """Resume a flow run waiting for an approval with the reviewer's answer (the form's fields),
    signed with the platform key over (flow run, the wait's key, approved, reviewer): with
    authentication on, the flow accepts only a signed answer, so one typed into the Prefect UI's
    form is refused.

    Raises:
        NotWaiting: the run is not paused (or suspended) for an answer.
        OrchestratorUnavailable: Prefect cannot be reached.
    """
    # delayed: Prefect is heavy (start-up time)
    from prefect.exceptions import ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    with _asking_prefect():
        try:
            state = _client().read_flow_run(UUID(flow_run_id)).state
        except ObjectNotFound:
            raise NotWaiting("unknown to Prefect") from None
        if state is None or not state.is_paused():
            raise NotWaiting(state.name if state is not None else "Scheduled")
    message = approval_message(flow_run_id, state.state_details.pause_key or "", bool(run_input.get("approved")),
                               str(run_input.get("reviewer", "")))
    signed = run_input | {"signature": sign(get_settings(), message)}  # outside: a key error is not Prefect's
    with _asking_prefect():
        resume_flow_run(UUID(flow_run_id), run_input=signed)


def logs(flow_run_id: str, limit: int = 2000) -> list[dict[str, Any]]:
    """The flow run's log lines (flow and task runs), oldest first.

    Raises:
        OrchestratorUnavailable: Prefect cannot be reached.
    """
    # delayed: Prefect is heavy (start-up time)
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    lines: list[Any] = []
    with _asking_prefect():
        client = _client()
        while len(lines) < limit:  # the server returns at most 200 lines a request
            page = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)])), limit=200, offset=len(lines))
            lines += page
            if len(page) < 200:
                break
    return [
        {"timestamp": _naive(line.timestamp).isoformat() if line.timestamp else None, "level": line.level,
         "logger": line.name, "message": line.message}
        for line in lines
    ]
