"""The API database's schema is versioned with Alembic: a new database is built by the migrations, a
database made before they existed is upgraded in place with its rows, and the migrations build
exactly the schema the code declares (the same runs on PostgreSQL in tests/platform/test_postgres.py)."""

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import JSON, Column, DateTime, MetaData, String, Table, UniqueConstraint, create_engine, inspect, select

from api.db import Store, metadata, open_database

pytestmark = pytest.mark.unit


def revision(engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_drift(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def test_a_new_database_is_built_by_the_migrations(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'api.db'}")
    assert revision(engine) == "0002"
    assert schema_drift(engine) == []  # the migrations and api.db.metadata agree, index for index


def test_a_database_from_before_the_migrations_is_upgraded_with_its_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'api.db'}"
    old = MetaData()  # the table as the API created it with create_all, before the migrations
    Table("entities", old, Column("id", String(128), primary_key=True), Column("kind", String(64), nullable=False, index=True),
          Column("namespace", String(256), nullable=False), Column("name", String(512), nullable=False),
          Column("created_at", DateTime, nullable=False), Column("updated_at", DateTime, nullable=False),
          Column("data", JSON, nullable=False), UniqueConstraint("kind", "namespace", "name", name="uq_kind_namespace_name"))
    before = create_engine(url)
    old.create_all(before)
    stamp = dt.datetime(2026, 1, 2, 3, 4, 5)
    with before.begin() as conn:
        conn.execute(old.tables["entities"].insert().values(id="ds-1", kind="dataset", namespace="team", name="tickets",
                                                            created_at=stamp, updated_at=stamp, data={"id": "ds-1", "name": "tickets"}))
    before.dispose()
    assert revision(create_engine(url)) is None

    engine = open_database(url)
    assert revision(engine) == "0002" and schema_drift(engine) == []
    assert "ix_entities_kind_created_at" in {i["name"] for i in inspect(engine).get_indexes("entities")}
    assert Store(engine).find("dataset", "team", "tickets") == {"id": "ds-1", "name": "tickets"}
    open_database(url)  # opening it again changes nothing
    with engine.connect() as conn:
        assert conn.execute(select(metadata.tables["entities"].c.id)).scalars().all() == ["ds-1"]
