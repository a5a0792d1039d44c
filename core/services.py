"""The credentials and settings that close the orchestrator (Prefect) and the registry (MLflow) to
everyone but the platform.

One service account, ``customizer``, signs in to both. Its password is derived from the platform key
(``<data folder>/api/secret.key``, see ``core.secrets``), so it is the same after every restart and is
never stored anywhere else: whoever can read the data folder can read it (``customizer services``),
nobody else can guess it. The helpers here build what each server and client needs from it:

- the Prefect server checks HTTP basic auth (``PREFECT_SERVER_API_AUTH_STRING``); every Prefect client
  of the platform (the worker, the flow runs it starts, the REST API, the operator's CLI) sends it
  (``PREFECT_API_AUTH_STRING``);
- the MLflow server runs its ``basic-auth`` app: an auth config (``MLFLOW_AUTH_CONFIG_PATH``) that
  grants nothing by default, with the service account as its only admin;
- both answer only their own address (Host header) and their own origin (CORS).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import MutableMapping
from pathlib import Path

from core.secrets import sign
from core.settings import Settings

USERNAME = "customizer"  # the service account of the Prefect and MLflow servers
_PASSWORD_MESSAGE = "service password v1"  # change the version to rotate every derived password
_MLFLOW_SECRET_MESSAGE = "mlflow flask secret key v1"


def credentials(settings: Settings) -> tuple[str, str]:
    """The service account's user name and password, derived from the platform key (stable across restarts).

    >>> import tempfile; from pathlib import Path
    >>> settings = Settings(data_dir=Path(tempfile.mkdtemp()))
    >>> user, password = credentials(settings)
    >>> user, len(password), credentials(settings) == (user, password)
    ('customizer', 32, True)
    """
    return USERNAME, sign(settings, _PASSWORD_MESSAGE)[:32]


def prefect_auth_string(settings: Settings) -> str:
    """``user:password``, the form both ``PREFECT_SERVER_API_AUTH_STRING`` and ``PREFECT_API_AUTH_STRING`` take."""
    return ":".join(credentials(settings))


def origin(host: str, port: int) -> str:
    """The origin a browser gives a page served at ``host:port`` (an IPv6 address in brackets).

    >>> origin("127.0.0.1", 4200), origin("::1", 5000)
    ('http://127.0.0.1:4200', 'http://[::1]:5000')
    """
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def host_names(host: str) -> list[str]:
    """The names a client may give in the Host header of a server listening on ``host``: the address
    itself, and ``localhost`` / ``127.0.0.1`` when it is a loopback address.

    >>> host_names("127.0.0.1"), host_names("10.0.0.5")
    (['127.0.0.1', 'localhost'], ['10.0.0.5'])
    """
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = False
    names = [host]
    if loopback:
        names += [name for name in ("localhost", "127.0.0.1") if name != host]
    return names


def prefect_server_environment(settings: Settings, host: str, port: int) -> dict[str, str]:
    """The environment of the Prefect server ``customizer up`` starts on ``host:port``: basic auth on its
    API (its UI then asks for the service account) and CORS for its own origin only."""
    return {
        "PREFECT_SERVER_API_AUTH_STRING": prefect_auth_string(settings),
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": origin(host, port),
    }


def prefect_client_environment(settings: Settings) -> dict[str, str]:
    """The environment of a process that calls the platform's Prefect server (worker, flow runs, REST API)."""
    return {"PREFECT_API_AUTH_STRING": prefect_auth_string(settings)}


def default_prefect_auth(settings: Settings, environ: MutableMapping[str, str] = os.environ) -> bool:
    """Give an operator's command the service account for a platform's Prefect server, where it needs one.

    Set only when ``PREFECT_API_URL`` is (a running server, not Prefect's ephemeral one), neither
    ``PREFECT_API_AUTH_STRING`` nor ``PREFECT_API_KEY`` is (the user's own choice, e.g. Prefect Cloud, stays),
    and the data folder holds a platform key (a folder without one never ran ``customizer up``; none is made).
    A server without authentication ignores the header. Returns whether it was set.
    """
    if not environ.get("PREFECT_API_URL") or environ.get("PREFECT_API_AUTH_STRING") or environ.get("PREFECT_API_KEY"):
        return False
    if not (settings.root / "api" / "secret.key").exists():  # where core.secrets keeps the platform key
        return False
    environ["PREFECT_API_AUTH_STRING"] = prefect_auth_string(settings)
    return True


def mlflow_auth_config(settings: Settings) -> Path:
    """Write the auth config of the MLflow server (``MLFLOW_AUTH_CONFIG_PATH``) and return its path.

    Nobody but the admin may read or change anything (``NO_PERMISSIONS`` by default); the admin is the
    service account, created with the password from ``mlflow_server_environment`` the first time the
    server starts on an empty user database (``<data folder>/mlflow/auth.db``). No password is written.
    """
    folder = settings.root / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{folder / 'auth.db'}\n"
        f"admin_username = {USERNAME}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n",
        encoding="utf-8",
    )
    return path


def mlflow_server_environment(settings: Settings) -> dict[str, str]:
    """The environment of the MLflow server ``customizer up`` starts: its auth config, the admin's password
    (used only to create the admin user) and the static key Flask signs its CSRF tokens with."""
    _, password = credentials(settings)
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(mlflow_auth_config(settings)),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": sign(settings, _MLFLOW_SECRET_MESSAGE),
    }


def mlflow_server_arguments(host: str, port: int) -> list[str]:
    """``mlflow server`` options for the auth app, and for answering only its own address and origin.

    >>> mlflow_server_arguments("127.0.0.1", 5000)
    ['--app-name', 'basic-auth', '--allowed-hosts', '127.0.0.1:5000,localhost:5000', '--cors-allowed-origins', 'http://127.0.0.1:5000']
    """
    hosts = ",".join(f"[{name}]:{port}" if ":" in name else f"{name}:{port}" for name in host_names(host))
    return ["--app-name", "basic-auth", "--allowed-hosts", hosts, "--cors-allowed-origins", origin(host, port)]
