"""Property-based fuzzing of the OpenAPI schema with schemathesis against the running API: whatever
the request, no operation answers with a server error."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

EXAMPLES_PER_OPERATION = 6  # modest: the point is breadth over every operation, within CI time


def test_no_operation_answers_with_a_server_error(platform):
    schema = schemathesis.openapi.from_url(f"{platform.api}/openapi.json")
    failures, operations = {}, 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(timeout=60)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            fuzz()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, report them together
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:1500]}"
    assert operations > 40
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())


# ---------------------------------------------------------------- the Data Store upload path, in-process

import base64  # noqa: E402 - the sections below fuzz in-process and need more than the schema fuzzing above
import itertools  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from urllib.parse import quote  # noqa: E402

import pytest  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from api.app import create_app  # noqa: E402
from core.settings import Settings  # noqa: E402
from data.datastore import DatastoreError, safe_path  # noqa: E402
from data.ingest import DatasetError, ingest_dataset  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
NASTY = ["..", ".", "", "/", "\\", "\x00", "\n", "\x7f", "\u202e", "\ud800", "~", "%2e%2e", "CON", "a" * 256, "é", " ", ":", "*"]
segments = st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=12), st.from_regex(r"[a-z]{1,8}(\.jsonl)?", fullmatch=True))
paths = st.one_of(st.lists(segments, min_size=1, max_size=5).map("/".join), st.text(max_size=40), st.sampled_from(NASTY))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("file"), paths, st.binary(max_size=256)),
        st.tuples(st.sampled_from(["deletedFile", "deletedFolder"]), paths, st.none()),
    ),
    max_size=6,
)


@pytest.fixture(scope="module")
def datastore_client(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-datastore")
    with TestClient(create_app(Settings(data_dir=root / "data", max_upload_bytes=1 << 20)), raise_server_exceptions=False) as client:
        yield client, root


def _safe(path: str) -> bool:
    try:
        return safe_path(path) == path
    except DatastoreError:
        return False


def test_data_store_commits_keep_files_inside_their_repo(datastore_client):
    client, root = datastore_client
    counter, statuses = itertools.count(), set()
    store = root / "data" / "datastore"

    @given(ops=operations)
    @FUZZ
    def commit(ops):
        name = f"repo{next(counter)}"
        assert client.post("/v1/hf/api/repos/create", json={"name": name, "organization": "fuzz", "type": "dataset"}).status_code == 200
        lines = [json.dumps({"key": key, "value": {"path": path} | ({"content": base64.b64encode(data).decode()} if data is not None else {})})
                 for key, path, data in ops]
        response = client.post(f"/v1/hf/api/datasets/fuzz/{name}/commit/main", content="\n".join(lines).encode())
        assert response.status_code in (200, 400), response.text
        assert isinstance(response.json().get("detail", ""), str)
        statuses.add(response.status_code)
        files = {s["rfilename"] for s in client.get(f"/v1/hf/api/datasets/fuzz/{name}").json()["siblings"]}
        repo = store / "datasets" / "fuzz" / name
        on_disk = {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()} if repo.exists() else set()
        assert on_disk == files  # nothing written beside the index, nothing left over from a refused commit
        if response.status_code == 400:
            assert files == set()
            return
        expected = {}
        for key, path, data in ops:
            if key == "file":
                expected[path] = data
            else:
                expected = {p: d for p, d in expected.items() if p != path and not (key == "deletedFolder" and p.startswith(path + "/"))}
        assert files == set(expected) and all(_safe(p) for p in files)
        for path, data in expected.items():
            assert client.get(f"/v1/hf/datasets/fuzz/{name}/resolve/main/{path}").content == data

    commit()
    assert statuses == {200, 400}  # both accepted and refused commits were checked
    # Nothing was ever written outside the Data Store's own folder.
    assert sorted(p.name for p in (root / "data").iterdir()) == ["api", "datastore"]
    assert sorted(p.name for p in store.iterdir()) == ["datasets"]


def test_data_store_endpoints_answer_any_body_and_any_path_without_a_server_error(datastore_client):
    client, _ = datastore_client
    assert client.post("/v1/hf/api/repos/create", json={"name": "raw", "organization": "fuzz", "type": "dataset"}).status_code in (200, 409)
    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                               lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
    bodies = st.one_of(
        st.binary(max_size=512),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.lists(json_values.map(json.dumps), max_size=5).map(lambda lines: "\n".join(lines).encode()),
        st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
        st.sampled_from([b'{"key": "file", "value": {"path": "a", "content": "!!"}}', b'{"key": "lfsFile", "value": {}}', b"\xff\xfe\x00"]),
    )
    urls = st.sampled_from([
        "/v1/hf/api/datasets/fuzz/raw/commit/main", "/v1/hf/api/datasets/fuzz/raw/preupload/main", "/v1/hf/api/repos/create",
        "/v1/hf/api/repos/delete", "/v1/hf/api/datasets/fuzz/nope/commit/main", "/v1/hf/api/datasets/fuzz/raw/commit/other",
    ])
    headers = st.dictionaries(st.sampled_from(["content-type", "content-encoding", "x-anything", "authorization"]),
                              st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30), max_size=3)

    @given(url=urls, body=bodies, extra=headers)
    @FUZZ
    def post(url, body, extra):
        method = "DELETE" if url.endswith("/delete") else "POST"
        response = client.request(method, url, content=body, headers=extra)
        assert response.status_code < 500, response.text
        assert "detail" in response.json() or response.status_code == 200

    @given(path=st.text(max_size=60), revision=st.text(min_size=1, max_size=12))
    @FUZZ
    def get(path, revision):
        path, revision = quote(path, safe="/"), quote(revision, safe="")  # any text, percent-encoded as a client sends it
        for url in (f"/v1/hf/datasets/fuzz/raw/resolve/{revision}/{path}", f"/v1/hf/api/datasets/fuzz/raw/tree/{revision}/{path}"):
            response = client.get(url)
            assert response.status_code < 500, response.text

    post()
    get()


# ---------------------------------------------------------------- every operation, with a key scoped to one namespace


def test_no_operation_answers_a_scoped_key_with_a_server_error_or_another_namespaces_data(tmp_path, monkeypatch):
    """In-process, with API keys on: the namespace checks run on every operation, and whatever the
    request, team-b's dataset never shows up in an answer to team-a's key."""
    from api import orchestrator

    monkeypatch.setattr(orchestrator, "start", lambda *args, **kwargs: "0b9c6a2e-0000-4000-8000-000000000002")
    monkeypatch.setattr(orchestrator, "states", lambda ids, history=False: {})
    monkeypatch.setattr(orchestrator, "logs", lambda flow_run_id: [])
    app = create_app(Settings(data_dir=tmp_path, api_keys={"key-a": ["team-a"], "key-b": ["team-b"]}))
    with TestClient(app) as client:
        created = client.post("/v1/datasets", json={"name": "secret-set", "namespace": "team-b", "files_url": "hf://datasets/team-b/x"},
                              headers={"Authorization": "Bearer key-b"})
        assert created.status_code == 200, created.text
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures, operations, statuses = {}, 0, set()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            case.headers = (case.headers or {}) | {"Authorization": "Bearer key-a"}
            response = case.call()
            statuses.add(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])
            assert "secret-set" not in response.text and created.json()["id"] not in response.text

        try:
            fuzz()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, report them together
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:1500]}"
    assert operations > 40 and {200, 403, 404, 422} <= statuses and 401 not in statuses  # the key was accepted and checked
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())


# ---------------------------------------------------------------- the dataset validator

LINE_ERROR = re.compile(r"^training/t\.jsonl(:\d+)?: \S")
json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
records = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["prompt", "completion", "messages", "role", "content", "chosen", "rejected", "x"]), inner, max_size=4), max_leaves=12)
good_line = st.builds(lambda p, c: json.dumps({"prompt": p, "completion": c}).encode(), st.text(min_size=1, max_size=20),
                      st.text(min_size=1, max_size=20))
lines = st.one_of(
    good_line,
    records.map(lambda r: json.dumps(r).encode()),
    st.binary(max_size=64),
    st.integers(1, 100_000).map(lambda depth: b"[" * depth),
    st.integers(4000, 20_000).map(lambda digits: b'{"prompt": "p", "completion": "c", "n": ' + b"9" * digits + b"}"),
    st.sampled_from([b'{"prompt": "p", "completion": 1e999}', b"\xff\xfe{}", b'{"prompt": "\x00", "completion": "c"}', b"\x00\x00",
                     b'{"prompt": "p", "completion": "c"', b"NaN", b'{"prompt": NaN, "completion": "c"}', b"\xed\xa0\x80"]),
)
BROKEN = b'{"prompt": "unterminated'


def test_the_dataset_validator_answers_any_file_with_file_line_reasons(tmp_path_factory):
    counter = itertools.count()
    root = tmp_path_factory.mktemp("fuzz-validator")

    @given(content=st.lists(lines, min_size=1, max_size=8), broken_at=st.integers(0, 8), raw=st.booleans())
    @FUZZ
    def validate(content, broken_at, raw):
        folder = root / f"ds{next(counter)}"
        (folder / "training").mkdir(parents=True)
        content = list(content)
        broken_at = min(broken_at, len(content))
        content.insert(broken_at, BROKEN)  # one line that can never be valid: its error must name it
        (folder / "training" / "t.jsonl").write_bytes(b"\n".join(content) if raw else b"\n".join(content) + b"\n")
        with pytest.raises(DatasetError) as caught:
            ingest_dataset(str(folder), folder / "out", seed=0)
        errors = [str(e) for e in caught.value.errors]
        assert errors and all(LINE_ERROR.match(e) for e in errors), errors
        numbers = {e.line for e in caught.value.errors}
        binary = any(b"\x00" in line for line in content[:broken_at])  # a binary file is reported once, where it starts
        assert binary or broken_at + 1 in numbers or caught.value.total > len(caught.value.errors), errors

    validate()
