"""Real services for flow tests, started once per session: a Prefect server (the test harness)
and an S3 endpoint over HTTP (moto's server)."""

import json

import boto3
import pytest
from moto.server import ThreadedMotoServer
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def s3_store():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="models")
    yield endpoint
    server.stop()


class Store:
    """The test's S3 store: a client and the test's own prefix in the shared bucket."""

    def __init__(self, endpoint: str, prefix: str):
        self.s3 = boto3.client("s3", endpoint_url=endpoint)
        self.prefix = prefix
        self.uri = f"s3://models/{prefix}"

    def objects(self, under: str = "") -> dict[str, bytes]:
        """Objects below ``<prefix>/<under>``, keyed by the rest of their key."""
        return bucket_objects(self.s3, f"{self.prefix}/{under}")


@pytest.fixture
def services(prefect_server, s3_store, tiny_config_dir, tmp_path, tmp_path_factory, monkeypatch) -> Store:
    """Fresh data folder (so a fresh MLflow database) and S3 prefix per test; S3 is served over HTTP.
    The tests' own folders are the allowed ones: a flow reads a dataset only there."""
    store = Store(s3_store, tmp_path.name)
    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CUSTOMIZER_ALLOWED_FILE_ROOTS", json.dumps([str(tmp_path_factory.getbasetemp())]))
    monkeypatch.setenv("CUSTOMIZER_STORE_URI", store.uri)
    monkeypatch.setenv("CUSTOMIZER_S3_ENDPOINT_URL", s3_store)
    return store


def bucket_objects(s3, prefix: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket="models", Prefix=prefix).get("Contents", [])
    return {o["Key"].removeprefix(prefix): s3.get_object(Bucket="models", Key=o["Key"])["Body"].read() for o in listed}
