"""The service account that closes the Prefect and MLflow servers of `customizer up`: derived from the
platform key, the same after a restart, another folder's differs; the servers' settings grant nothing
to anyone else and name no wildcard."""

import configparser

import pytest

from core import services
from core.settings import Settings

pytestmark = pytest.mark.unit


def test_the_password_is_derived_from_the_platform_key_and_survives_a_restart(tmp_path):
    user, password = services.credentials(Settings(data_dir=tmp_path / "a"))
    assert user == "customizer" and len(password) >= 12  # MLflow refuses an admin password under 12 characters
    assert services.credentials(Settings(data_dir=tmp_path / "a")) == (user, password)  # a new process, the same folder
    assert services.credentials(Settings(data_dir=tmp_path / "b"))[1] != password
    (tmp_path / "a" / "api" / "secret.key").unlink()
    assert services.credentials(Settings(data_dir=tmp_path / "a"))[1] != password  # a new platform key, a new password


def test_the_prefect_server_asks_for_the_account_and_trusts_only_its_own_origin(tmp_path):
    settings = Settings(data_dir=tmp_path)
    user, password = services.credentials(settings)
    server = services.prefect_server_environment(settings, "127.0.0.1", 4321)
    assert server == {"PREFECT_SERVER_API_AUTH_STRING": f"{user}:{password}",
                      "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": "http://127.0.0.1:4321"}
    assert services.prefect_client_environment(settings) == {"PREFECT_API_AUTH_STRING": f"{user}:{password}"}
    assert services.host_names("::1") == ["::1", "localhost", "127.0.0.1"]
    assert services.host_names("prefect.internal") == ["prefect.internal"]


def test_the_mlflow_server_grants_nothing_but_to_the_account(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config

    settings = Settings(data_dir=tmp_path)
    env = services.mlflow_server_environment(settings)
    path = env["MLFLOW_AUTH_CONFIG_PATH"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = read_auth_config()
    assert config.default_permission == "NO_PERMISSIONS"
    assert config.admin_username == "customizer" and config.admin_password == services.credentials(settings)[1]
    assert config.database_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow' / 'auth.db'}"
    parser = configparser.ConfigParser()
    parser.read(path)
    assert "admin_password" not in parser["mlflow"]  # the password is handed to the server, never written
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == services.mlflow_server_environment(settings)["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    arguments = services.mlflow_server_arguments("127.0.0.1", 5001)
    assert arguments[:2] == ["--app-name", "basic-auth"]
    options = dict(zip(arguments[2::2], arguments[3::2], strict=True))
    assert options == {"--allowed-hosts": "127.0.0.1:5001,localhost:5001", "--cors-allowed-origins": "http://127.0.0.1:5001"}


def test_an_operators_command_gets_the_account_only_for_a_platforms_server(tmp_path):
    settings = Settings(data_dir=tmp_path)
    url = {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}
    environ = dict(url)
    assert not services.default_prefect_auth(settings, environ)  # no platform key: none is made
    assert not (tmp_path / "api" / "secret.key").exists() and "PREFECT_API_AUTH_STRING" not in environ
    services.credentials(settings)  # `customizer up` ran here
    assert not services.default_prefect_auth(settings, {})  # Prefect's ephemeral server needs nothing
    assert services.default_prefect_auth(settings, environ)
    assert environ["PREFECT_API_AUTH_STRING"] == services.prefect_auth_string(settings)
    for own in ({"PREFECT_API_AUTH_STRING": "ops:theirs"}, {"PREFECT_API_KEY": "pnu_cloud"}):
        environ = url | own
        assert not services.default_prefect_auth(settings, environ) and environ == url | own
