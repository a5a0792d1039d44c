"""Dataset sources: an s3:// prefix served over HTTP by moto's server ingests like the same folder."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from core.settings import Settings
from data.ingest import DatasetError, ingest_dataset, read_examples
from tests.conftest import ok_rows, write_jsonl


@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="datasets")
    yield endpoint
    server.stop()


def upload(s3, folder: Path, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "datasets", f"{prefix}/{path.relative_to(folder).as_posix()}")


def test_an_s3_dataset_ingests_with_the_same_identity_as_its_folder(tmp_path: Path, s3_endpoint: str):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    folder = tmp_path / "local"
    write_jsonl(folder / "training" / "a.jsonl", ok_rows(12))
    write_jsonl(folder / "training" / "more" / "b.jsonl", ok_rows(8, start=12))
    write_jsonl(folder / "testing" / "t.jsonl", ok_rows(3, start=100))
    (folder / "README.md").write_text("not data")
    upload(s3, folder, "teams/support/v1")
    s3.put_object(Bucket="datasets", Key="teams/support/v1/training/", Body=b"")  # a folder marker
    settings = Settings(data_dir=tmp_path / "data", s3_endpoint_url=s3_endpoint)

    remote = ingest_dataset("s3://datasets/teams/support/v1", tmp_path / "job" / "data", seed=0, settings=settings)
    local = ingest_dataset(str(folder), tmp_path / "local-out", seed=0)
    assert remote.sha256 == local.sha256 and remote.counts == local.counts == {"training": 18, "validation": 2, "testing": 3}
    assert remote.source == "s3://datasets/teams/support/v1"
    assert [e.loc for e in read_examples(remote.files["training"])] == [e.loc for e in read_examples(local.files["training"])]
    downloaded = sorted(p.relative_to(tmp_path / "job" / "data" / "source").as_posix() for p in (tmp_path / "job" / "data" / "source").rglob("*.jsonl"))
    assert downloaded == ["testing/t.jsonl", "training/a.jsonl", "training/more/b.jsonl"]


def test_s3_errors_are_one_clear_line(tmp_path: Path, s3_endpoint: str):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    settings = Settings(data_dir=tmp_path / "data", s3_endpoint_url=s3_endpoint)
    with pytest.raises(DatasetError) as info:
        ingest_dataset("s3://datasets/nothing-here", tmp_path / "a", seed=0, settings=settings)
    assert [str(e) for e in info.value.errors] == ["s3://datasets/nothing-here: no objects under this prefix"]

    with pytest.raises(DatasetError) as info:
        ingest_dataset("s3://no-such-bucket/x", tmp_path / "b", seed=0, settings=settings)
    assert str(info.value.errors[0]).startswith("s3://no-such-bucket/x: cannot read the dataset from the S3 store: ")
    assert "NoSuchBucket" in str(info.value.errors[0])

    s3.put_object(Bucket="datasets", Key="bad/training/t.jsonl", Body=json.dumps({"prompt": 1, "completion": "x"}).encode() + b"\n")
    with pytest.raises(DatasetError) as info:
        ingest_dataset("s3://datasets/bad", tmp_path / "c", seed=0, settings=settings)
    assert [str(e) for e in info.value.errors] == ["training/t.jsonl:1: `prompt` must be a string, got number"]

    s3.put_object(Bucket="datasets", Key="escape/training/../../x.jsonl", Body=b"{}\n")
    with pytest.raises(DatasetError, match=r"object key 'escape/training/\.\./\.\./x\.jsonl'.*does not name a file inside the dataset"):
        ingest_dataset("s3://datasets/escape", tmp_path / "d", seed=0, settings=settings)
    assert not (tmp_path / "x.jsonl").exists()

    unreachable = Settings(data_dir=tmp_path / "data", s3_endpoint_url="http://127.0.0.1:9")
    with pytest.raises(DatasetError, match="cannot read the dataset from the S3 store"):
        ingest_dataset("s3://datasets/teams", tmp_path / "e", seed=0, settings=unreachable)


# ---------------------------------------------------------------- who may read what


def _layout(tmp_path: Path) -> Settings:
    """A data folder with a Data Store file in team-a and team-b, and a file of the service's own state."""
    settings = Settings(data_dir=tmp_path / "data")
    for namespace in ("team-a", "team-b"):
        write_jsonl(settings.root / "datastore" / "datasets" / namespace / "qa" / "rows.jsonl", [{"q": namespace}])
    write_jsonl(settings.root / "api" / "secret.jsonl", [{"key": "k"}])
    return settings


def test_a_folder_spanning_namespaces_is_readable_only_for_every_namespace(tmp_path: Path):
    from data.sources import SourceError, check_access

    settings = _layout(tmp_path)
    spanning = [settings.root, settings.root / "datastore", settings.root / "datastore" / "datasets", settings.root / "store"]
    for folder in spanning:
        for namespaces in ({"default"}, {"team-a"}, {"default", "team-a"}):
            with pytest.raises(SourceError, match="spans every namespace"):
                check_access(folder.as_uri(), settings, namespaces)
    for namespaces in (None, {"*"}):
        check_access(settings.root.as_uri(), settings, namespaces)
    team_b = settings.root / "datastore" / "datasets" / "team-b" / "qa"
    with pytest.raises(SourceError, match="'team-b'"):
        check_access(team_b.as_uri(), settings, {"team-a", "default"})
    with pytest.raises(SourceError, match="'team-b'"):
        check_access("hf://datasets/team-b/qa", settings, {"team-a"})
    check_access(str(team_b), settings, {"team-b"})


def test_every_file_read_below_a_folder_is_checked_where_it_really_lies(tmp_path: Path):
    from data.sources import SourceError, checked_files

    settings = _layout(tmp_path)
    mine = settings.root / "datastore" / "datasets" / "team-a" / "qa"
    assert checked_files(mine, settings, {"team-a"}) == [mine / "rows.jsonl"]
    (mine / "theirs.jsonl").symlink_to(settings.root / "datastore" / "datasets" / "team-b" / "qa" / "rows.jsonl")
    with pytest.raises(SourceError, match=r"theirs\.jsonl .*'team-b'"):
        checked_files(mine, settings, {"team-a"})
    assert len(checked_files(mine, settings, None)) == 2  # every namespace may read both
    (mine / "theirs.jsonl").unlink()
    (mine / "state.jsonl").symlink_to(settings.root / "api" / "secret.jsonl")
    with pytest.raises(SourceError, match="service's own state"):
        checked_files(mine, settings, None)
    (mine / "state.jsonl").unlink()
    outside = tmp_path / "outside.jsonl"
    write_jsonl(outside, [{"q": "x"}])
    (mine / "out.jsonl").symlink_to(outside)
    with pytest.raises(SourceError, match="outside the folders"):
        checked_files(mine, settings, None)
    with pytest.raises(SourceError, match=r"^api holds the service's own state"):
        checked_files(settings.root, settings, None)  # the data folder itself: its own state is never walked


def test_packaged_model_uris_cannot_leave_their_package(tmp_path: Path):
    from data.sources import SourceError, check_url, package_path

    settings = Settings(data_dir=tmp_path)
    refused = ["pkg://json/../json/__init__.py", "pkg://json/../../../../etc/passwd", "pkg://json//etc/../passwd", "pkg://os.path/x",
               "pkg://json/./decoder.py", "builtin://tiny-llama/../../etc/passwd", "builtin://../etc", "builtin://tiny-llama?x=1"]
    for uri in refused:
        with pytest.raises(SourceError):
            check_url(uri, settings, "model")
    check_url("builtin://tiny-llama", settings, "model")
    assert package_path("pkg://json/decoder.py").name == "decoder.py"
    with pytest.raises(SourceError, match=r"\.\."):
        package_path("pkg://json/../json/__init__.py")  # an existing file, still refused: no existence oracle
