"""The ingest flow under Prefect (test harness server): a dataset's checks on their own."""

import json

import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.conftest import TINY_CONFIG_URN, ok_rows, write_jsonl
from data.ingest import ingest_dataset
from core.specs import DataOptions


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(autouse=True)
def allowed_folders(tmp_path_factory, monkeypatch):
    """The tests' own folders are the ones the server may read."""
    monkeypatch.setenv("CUSTOMIZER_ALLOWED_FILE_ROOTS", json.dumps([str(tmp_path_factory.getbasetemp())]))


def test_the_ingest_flow_reports_a_valid_dataset(prefect_server, ok_dataset, tmp_path, monkeypatch):
    from flows.ingest import ingest

    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(tmp_path / "data"))
    report = ingest(str(ok_dataset))
    assert report.ok and report.sha256 == ingest_dataset(str(ok_dataset), tmp_path / "direct", seed=42).sha256
    assert {name: split.examples for name, split in report.splits.items()} == {"training": 18, "validation": 2, "testing": 8}
    assert report.lengths is None and report.lengths_skipped
    written = list((tmp_path / "data" / "ingest").glob("ingest-*/report.html"))
    assert len(written) == 1


def test_the_ingest_flow_measures_tokens_with_a_config(prefect_server, tiny_config_dir, tmp_path, monkeypatch):
    from flows.ingest import ingest

    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(tmp_path / "data"))
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "t.jsonl", ok_rows(9) + [{"prompt": "word " * 300, "completion": "ok"}])
    write_jsonl(root / "validation" / "v.jsonl", ok_rows(2, start=50))
    report = ingest(str(root), config=TINY_CONFIG_URN, data=DataOptions(long_examples="drop"))
    assert report.splits["training"].examples == 9 and report.splits["training"].dropped == 1
    assert [x.loc for x in report.lengths.long_examples] == ["training/t.jsonl:10"]


def test_the_ingest_flow_fails_naming_each_bad_line(prefect_server, tmp_path, monkeypatch):
    from flows.ingest import ingest

    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(tmp_path / "data"))
    root = tmp_path / "bad"
    write_jsonl(root / "training" / "t.jsonl", ok_rows(3) + ['{"prompt": "q", "completion": 7}'])
    with pytest.raises(Exception, match=r"training/t.jsonl:4: `completion` must be a string, got number"):
        ingest(str(root))
    report = next((tmp_path / "data" / "ingest").glob("ingest-*/report.json"))
    assert '"ok": false' in report.read_text()


def test_the_ingest_flow_reads_only_what_its_submitter_may(prefect_server, ok_dataset, tmp_path, monkeypatch):
    from core.settings import get_settings
    from core.submission import sign_parameters
    from flows.ingest import ingest
    from tasks.check import ingest_parameters

    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(Exception, match=r"`dataset` '/root' is refused: .* outside the folders the server may read"):
        ingest("/root")  # authentication off: no signature needed, the allowed folders still bound it
    assert not list((tmp_path / "data").glob("ingest/ingest-*/report.json"))

    monkeypatch.setenv("CUSTOMIZER_AUTH_REQUIRED", "true")
    with pytest.raises(Exception, match="not submitted through the platform"):
        ingest(str(ok_dataset))
    submission = sign_parameters(get_settings(), "ingest", ingest_parameters(str(ok_dataset), None, None, 42), "op", None, ["admin"])
    assert ingest(str(ok_dataset), submission=submission).ok
    with pytest.raises(Exception, match="does not match its parameters"):
        ingest(str(ok_dataset), seed=7, submission=submission)  # edited after it was signed
