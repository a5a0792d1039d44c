"""The platform's state on one PostgreSQL server (``postgres_url``): the REST API's state, MLflow's
tracking and registry store and Prefect's server each in a database of its own on it (their schemas
would collide in one: each keeps an ``alembic_version`` table), made when missing."""

from __future__ import annotations

from sqlalchemy.engine import make_url

DATABASES = {"api": "customizer_api", "mlflow": "customizer_mlflow", "prefect": "customizer_prefect"}
DRIVERS = {"api": "psycopg", "mlflow": "psycopg", "prefect": "asyncpg"}  # Prefect's server is async


class PostgresUnavailable(Exception):
    """The PostgreSQL server cannot be reached, or its databases cannot be made there."""


def database_url(server_url: str, service: str) -> str:
    """The SQLAlchemy URL of ``service``'s database (``api``, ``mlflow`` or ``prefect``) on the server.

    >>> database_url("postgresql://cz:pw@db:5432", "prefect")
    'postgresql+asyncpg://cz:pw@db:5432/customizer_prefect'
    """
    url = make_url(server_url).set(drivername=f"postgresql+{DRIVERS[service]}", database=DATABASES[service])
    return url.render_as_string(hide_password=False)


def where(server_url: str) -> str:
    """The server, for messages: host and port, never the password.

    >>> where("postgresql://cz:secret@db:5433/x")
    'PostgreSQL at db:5433 as cz'
    """
    url = make_url(server_url)
    return f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432} as {url.username or '(default user)'}"


def ensure_databases(server_url: str) -> list[str]:
    """Create the platform's databases that the server lacks; returns those created.

    Raises:
        PostgresUnavailable: the server refused or could not be reached (the message names it, not its password).
    """
    import psycopg  # delayed: the driver is the `postgres` extra, needed only where PostgreSQL is used
    from psycopg import sql

    url = make_url(server_url)
    try:
        with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                             dbname=url.database or "postgres", autocommit=True, connect_timeout=10) as conn:
            made = []
            for name in DATABASES.values():
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    made.append(name)
            return made
    except psycopg.Error as exc:
        message = " ".join(str(exc).split())
        raise PostgresUnavailable(f"{where(server_url)}: {message}") from exc
