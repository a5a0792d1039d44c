"""The audit trail: an append-only record of every decision about a job or a model.

Who did what, when, to which job or model, and the value before and after: job creation and
cancellation, approvals and rejections, gate decisions, promotions, alias moves and policy changes.
The REST API and the flows write to the same table (``audit`` in the API's database,
``Settings.api_db_url``), so one job's story reads in one place whichever process acted.

Nothing updates or deletes a record: this module has no call for it, and on SQLite the table
refuses ``UPDATE`` and ``DELETE`` by trigger. A write that fails raises: an action whose record
cannot be kept does not go ahead silently.

>>> import tempfile; from pathlib import Path
>>> settings = Settings(data_dir=Path(tempfile.mkdtemp()))
>>> _ = record(settings, "job.created", "alice", job="cust-1", flow_run="f1", namespace="team-a", after={"status": "created"})
>>> _ = record(settings, "gate.decided", "customizer", job="cust-f1", flow_run="f1", model="team-a/m", after={"action": "promote"})
>>> [r["action"] for r in records(settings, job="cust-1")]  # the flow's records join through the flow run
['job.created', 'gate.decided']
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Engine, MetaData, String, Table, Text, create_engine, insert, or_, select

from core.settings import Settings

ACTIONS = (
    "job.created", "job.cancelled", "approval.approved", "approval.rejected", "gate.decided",
    "model.registered", "model.promoted", "alias.moved", "policy.changed", "principal.added", "principal.revoked",
    "champion.refused", "decision.signed",
)

metadata = MetaData()
audit = Table(
    "audit", metadata,
    Column("id", String(40), primary_key=True),
    Column("at", DateTime, nullable=False, index=True),
    Column("action", String(40), nullable=False),
    Column("principal", String(200), nullable=True),
    Column("namespace", String(200), nullable=True, index=True),
    Column("job", String(80), nullable=True, index=True),
    Column("flow_run", String(80), nullable=True, index=True),
    Column("model", String(400), nullable=True, index=True),
    Column("before", JSON, nullable=True),
    Column("after", JSON, nullable=True),
    Column("detail", Text, nullable=False, default=""),
)

_NO_CHANGE = """CREATE TRIGGER IF NOT EXISTS audit_{verb}_refused BEFORE {verb} ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"""

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


class AuditError(RuntimeError):
    """The audit trail could not be written or read (the message says where)."""


def _engine(settings: Settings) -> Engine:
    url = settings.api_db_url
    with _lock:
        if url not in _engines:
            kwargs: dict[str, Any] = {}
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            engine = create_engine(url, **kwargs)
            metadata.create_all(engine)
            if engine.dialect.name == "sqlite":
                with engine.begin() as conn:
                    for verb in ("UPDATE", "DELETE"):
                        conn.exec_driver_sql(_NO_CHANGE.format(verb=verb))
            _engines[url] = engine
        return _engines[url]


def _plain(value: Any) -> Any:
    """JSON-ready: pydantic models dumped, anything else JSON cannot hold as its text."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return json.loads(json.dumps(value, default=str)) if value is not None else None


def record(
    settings: Settings,
    action: str,
    principal: str | None,
    *,
    job: str | None = None,
    flow_run: str | None = None,
    model: str | None = None,
    namespace: str | None = None,
    before: Any = None,
    after: Any = None,
    detail: str = "",
) -> dict[str, Any]:
    """Append one record and return it.

    Args:
        action: one of ``ACTIONS``.
        principal: who acted (an API principal, a reviewer, or ``customizer`` for the platform itself;
            None when auth is off and nobody was named).
        job, flow_run, model: what it concerns; a REST job and its flow run are joined by ``flow_run``.

    Raises:
        ValueError: an unknown action.
        AuditError: the record could not be written.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; known: {', '.join(ACTIONS)}")
    row = {
        "id": uuid.uuid4().hex, "at": dt.datetime.now(dt.UTC).replace(tzinfo=None), "action": action,
        "principal": principal, "namespace": namespace or (model.partition("/")[0] if model and "/" in model else None),
        "job": job, "flow_run": str(flow_run) if flow_run else None, "model": model,
        "before": _plain(before), "after": _plain(after), "detail": detail,
    }
    try:
        with _engine(settings).begin() as conn:
            conn.execute(insert(audit).values(**row))
    except Exception as exc:  # noqa: BLE001 - any database failure stops the action it records
        raise AuditError(f"could not write the audit record {action} to {settings.api_db_url}: {exc}") from exc
    return _wire(row)


def _wire(row: Any) -> dict[str, Any]:
    data = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
    data["at"] = data["at"].isoformat()
    return data


def records(
    settings: Settings,
    *,
    job: str | None = None,
    model: str | None = None,
    namespace: str | None = None,
    action: str | None = None,
) -> list[dict[str, Any]]:
    """Records, oldest first. ``job`` matches the job id and every record of the flow runs recorded
    under it (a REST job's flow run logs under the flow's own job id); ``model`` matches the model
    name with or without a version (``ns/m`` also finds ``ns/m@3``).

    Raises:
        AuditError: the trail could not be read.
    """
    query = select(audit)
    try:
        with _engine(settings).connect() as conn:
            if job is not None:
                runs = [r[0] for r in conn.execute(select(audit.c.flow_run).where(audit.c.job == job, audit.c.flow_run.is_not(None))).all()]
                query = query.where(or_(audit.c.job == job, audit.c.flow_run.in_(runs)) if runs else audit.c.job == job)
            if model is not None:
                query = query.where(or_(audit.c.model == model, audit.c.model.startswith(f"{model}@", autoescape=True)))
            if namespace is not None:
                query = query.where(audit.c.namespace == namespace)
            if action is not None:
                query = query.where(audit.c.action == action)
            rows = conn.execute(query.order_by(audit.c.at, audit.c.id)).all()
    except Exception as exc:  # noqa: BLE001 - a decision's history that cannot be read is an error, not an empty list
        raise AuditError(f"could not read the audit trail in {settings.api_db_url}: {exc}") from exc
    return [_wire(row) for row in rows]


def summary(rows: list[dict[str, Any]], limit: int = 4000) -> str:
    """One line per record (``at action by principal: detail``), newest kept when over ``limit``
    characters: what an MLflow tag can hold."""
    lines = [f"{r['at']} {r['action']} by {r['principal'] or 'unknown'}" + (f": {r['detail']}" if r["detail"] else "") for r in rows]
    text = "\n".join(lines)
    while len(text) > limit and len(lines) > 1:
        lines = lines[1:]
        text = "\n".join(["...", *lines])
    return text[-limit:]

