"""The API's state in one SQL table through SQLAlchemy: SQLite by default, PostgreSQL in production.
Its schema is versioned with Alembic (``api/migrations``): opening a database upgrades it.

Every resource (namespace, project, dataset, model, customization job/config/target, evaluation
job/config/target, Data Store repo) is one row: its kind, id, namespace and name as columns (for
uniqueness and lookups) and the wire object as JSON. The number of entities a self-hosted platform
holds is small, so filtering and sorting happen in Python over one kind's rows.

A job's row also holds the API's bookkeeping about its run (keys starting with ``_``, never on the
wire); ``JobRun`` is its one typed reading.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    delete,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

metadata = MetaData()

entities = Table(
    "entities",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("kind", String(64), nullable=False, index=True),
    Column("namespace", String(256), nullable=False),
    Column("name", String(512), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("data", JSON, nullable=False),
    UniqueConstraint("kind", "namespace", "name", name="uq_kind_namespace_name"),
    Index("ix_entities_kind_created_at", "kind", "created_at"),
)
MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001"  # the schema the API made before its migrations: such a database is stamped with it


class Duplicate(Exception):
    """An entity of that kind, namespace and name (or id) already exists."""


class JobRun(BaseModel):
    """What a stored job keeps about its run and never shows: the ``_``-prefixed keys of its JSON
    (``public`` leaves them out of every answer). Every job has a flow run; the dataset and output
    fields are a customization job's.

    >>> run = JobRun.of({"id": "cust-1", "status": "running", "_flow_run_id": "0b9c"})
    >>> run.flow_run_id, run.stored()
    ('0b9c', {'_flow_run_id': '0b9c'})
    """

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    flow_run_id: str = Field(alias="_flow_run_id", description="the Prefect flow run the job is")
    dataset_dir: str | None = Field(None, alias="_dataset_dir", description="the server's snapshot of the training dataset")
    dataset_files_url: str | None = Field(None, alias="_dataset_files_url", description="where the dataset was copied from")
    dataset_sha256: str | None = Field(None, alias="_dataset_sha256", description="the ingested dataset's hash")
    spec_output_model: str | None = Field(None, alias="_spec_output_model", description="the output model the flow registers")
    secrets: dict[str, str] = Field(default_factory=dict, alias="_secrets", description="sealed request secrets, by header name")

    @classmethod
    def of(cls, job: dict[str, Any]) -> JobRun:
        """The bookkeeping of a stored job.

        Raises:
            ValueError: the job records no flow run (or a malformed field), naming the job.
        """
        try:
            return cls.model_validate({k: v for k, v in job.items() if k.startswith("_")})
        except ValidationError as exc:
            problems = "; ".join(f"`{'.'.join(map(str, e['loc']))}`: {e['msg']}" for e in exc.errors())
            raise ValueError(f"job {job.get('id')!r} has no usable run record: {problems}") from None

    def stored(self) -> dict[str, Any]:
        """The keys to store in the job's JSON (as they were always stored; unset ones left out)."""
        return self.model_dump(by_alias=True, exclude_defaults=True)


def now() -> dt.datetime:
    """UTC now without a timezone: NeMo's wire timestamps carry none."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def iso(value: dt.datetime) -> str:
    return value.isoformat()


def _loads(text: str | bytes) -> Any:
    """orjson reads the stored JSON ~4x faster than json (a job list reads every job's metrics);
    json reads what orjson refuses (NaN and Infinity, which json.dumps writes)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def open_database(url: str) -> Engine:
    """Create the engine (and the SQLite folder and schema when missing)."""
    kwargs: dict[str, Any] = {"json_deserializer": _loads}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # The API answers from a thread pool; SQLite serialises writers, so wait instead of failing.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kwargs)
    with engine.begin() as conn:
        migrate(conn)
    return engine


def migrate(conn: Connection) -> str:
    """Upgrade the database to the newest schema revision (a database made before the migrations
    existed is first stamped as ``BASELINE``); returns the revision. Concurrent openers of one
    PostgreSQL database take turns (an advisory lock held until the transaction ends)."""
    # delayed: Alembic is needed only here, once per process (API start-up time)
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    head = ScriptDirectory.from_config(config).get_current_head()
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('customizer api schema'))"))
    current = MigrationContext.configure(conn).get_current_revision()
    if current == head:
        return head
    if current is None and inspect(conn).has_table("entities"):
        command.stamp(config, BASELINE)
    command.upgrade(config, "head")
    return head


class Store:
    """Typed access to the entity table; every method is one short transaction."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._writes: dict[str, int] = {}  # per kind: writes through this Store (answer caches check it)

    def writes(self, kind: str) -> int:
        """How many times this process has written entities of ``kind``: an answer computed at one
        count is out of date once it changes (writes by other processes are not counted)."""
        return self._writes.get(kind, 0)

    def _wrote(self, kind: str) -> None:
        self._writes[kind] = self._writes.get(kind, 0) + 1

    def add(self, kind: str, id: str, namespace: str, name: str, data: dict[str, Any], stamp: dt.datetime | None = None) -> dict[str, Any]:
        """Insert an entity; ``created_at``/``updated_at`` are set here (to ``stamp``, default now) and returned in the data.

        Raises:
            Duplicate: same kind, namespace and name, or the same id.
        """
        stamp = stamp or now()
        data = {**data, "id": id, "created_at": iso(stamp), "updated_at": iso(stamp)}
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(entities).values(
                    id=id, kind=kind, namespace=namespace, name=name, created_at=stamp, updated_at=stamp, data=data
                ))
        except IntegrityError as exc:
            raise Duplicate(f"{kind} {namespace}/{name}") from exc
        self._wrote(kind)
        return data

    def get(self, kind: str, id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(entities.c.data).where(entities.c.kind == kind, entities.c.id == id)).first()
        return row[0] if row else None

    def find(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(entities.c.data).where(entities.c.kind == kind, entities.c.namespace == namespace, entities.c.name == name)
            ).first()
        return row[0] if row else None

    def all(self, kind: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(entities.c.data).where(entities.c.kind == kind).order_by(entities.c.created_at)).all()
        return [row[0] for row in rows]

    def iter_ids(self, kind: str) -> Iterator[str]:
        with self.engine.connect() as conn:
            yield from (row[0] for row in conn.execute(select(entities.c.id).where(entities.c.kind == kind)).all())

    def save(self, kind: str, data: dict[str, Any], *, namespace: str | None = None, name: str | None = None) -> dict[str, Any]:
        """Replace an entity's data (it keeps its id); ``updated_at`` is set here.

        Raises:
            Duplicate: a rename onto an existing namespace/name.
        """
        stamp = now()
        data = {**data, "updated_at": iso(stamp)}
        values: dict[str, Any] = {"data": data, "updated_at": stamp}
        if namespace is not None:
            values["namespace"] = namespace
        if name is not None:
            values["name"] = name
        try:
            with self.engine.begin() as conn:
                conn.execute(update(entities).where(entities.c.kind == kind, entities.c.id == data["id"]).values(**values))
        except IntegrityError as exc:
            raise Duplicate(f"{kind} {namespace}/{name}") from exc
        self._wrote(kind)
        return data

    def remove(self, kind: str, id: str) -> bool:
        with self.engine.begin() as conn:
            removed = conn.execute(delete(entities).where(entities.c.kind == kind, entities.c.id == id)).rowcount > 0
        self._wrote(kind)
        return removed
