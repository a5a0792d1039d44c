"""Data Store: the subset of the Hugging Face Hub API that ``huggingface_hub.HfApi(endpoint=<api>/v1/hf)``
uses to create a repo, upload files (preupload, then one commit with the files inline), list and
download them; plus ``/v1/datastore/namespaces``.

Files live in the artifact store (``data.datastore``); the repo's index (paths, sizes, sha256, git
blob ids, commits) is an entity in the API database. Preupload always answers ``regular``, so the
client sends file contents inline in the commit (no LFS or Xet transfer is needed). Every path is
checked before any I/O by the Data Store's path rule (``data.datastore.safe_path``, over
``core.objects.safe_path``): absolute paths, ``..``, control and format characters, the store's
reserved prefix, over-long names and symlinks are refused, and so are two paths that differ only in
case. A namespace or repo name that the rule refuses is a 422 naming the field. A commit streams in
and is read line by line under the limits of ``api.limits`` (one line, one file, files per commit).

A model repo the Data Store does not hold itself is the output model's published versions, read-only
(``api.routes.published``): the revision is the version number, or ``main`` for the champion.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import tempfile
import threading
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api.db import Duplicate, iso, now
from api.deps import CallerDep, ListDep, SettingsDep, StoreDep, paginate
from api.errors import ApiError, BadRequest, Conflict, NotFound, StoreUnavailable
from api.limits import MAX_COMMIT_FILES, MAX_COMMIT_LINE_BYTES, line_too_long, too_many_files
from api.routes import published
from core import objects
from data import datastore
from deploy.registry import RegistryUnavailable
from deploy.store import StoreError
from deploy.trust import UntrustedChampion

router = APIRouter(tags=["data store"])
REPO, NAMESPACE = "hf_repo", "datastore_namespace"
RepoType = Annotated[str, Path(pattern="^(datasets|models)$", description="datasets or models")]
_commit_lock = threading.Lock()  # one commit at a time: a repo's index is read, changed and written back
_SPOOL_BYTES = 8 << 20  # a commit body larger than this waits on disk, not in memory


class TooLarge(ApiError):
    status_code = 413


def _ns(value: str, field: str = "namespace", where: str = "path") -> str:
    """``value`` as a namespace or repo name, or a 422 naming ``field`` (in the ``where`` part of the request)."""
    try:
        return datastore.safe_name(value, field)
    except datastore.DatastoreError as exc:
        raise RequestValidationError([{"loc": (where, field), "msg": str(exc), "type": "value_error"}]) from exc


def _repo(store, repo_type: str, namespace: str, name: str) -> dict[str, Any]:
    found = store.find(REPO, _ns(namespace), f"{repo_type}/{_ns(name, 'name')}")
    if found is None:
        raise NotFound(f"repository {repo_type}/{namespace}/{name} does not exist")
    return found


def _published(store, settings, repo_type: str, namespace: str, name: str, revision: str) -> published.PublishedRepo | None:
    """The published version ``revision`` when ``namespace/name`` is a model repo the Data Store does
    not hold itself and the model is published; else None (the Data Store's own repo answers).

    Raises:
        NotFound: a published model without that revision.
        StoreUnavailable: the store or the registry cannot be read, or the version does not match its manifest.
    """
    if repo_type != "models" or store.find(REPO, _ns(namespace), f"models/{_ns(name, 'name')}") is not None:
        return None
    try:
        return published.find(settings, namespace, name, revision)
    except (StoreError, RegistryUnavailable, UntrustedChampion) as exc:
        raise StoreUnavailable(f"{namespace}/{name}@{revision}: {exc}") from exc


def _revision(repo: dict[str, Any], revision: str) -> None:
    if revision not in ("main", repo["sha"]):
        raise NotFound(f"revision {revision!r} does not exist (the Data Store keeps one branch, main)")


def _path(value: str, line: int | None = None) -> str:
    try:
        return datastore.safe_path(value)
    except datastore.DatastoreError as exc:
        raise BadRequest(f"commit line {line}: {exc}" if line else str(exc)) from exc


# ---------------------------------------------------------------- namespaces


@router.post("/v1/datastore/namespaces", status_code=201, summary="Create a Data Store namespace (form field `namespace`)")
def create_namespace(namespace: Annotated[str, Form(min_length=1, max_length=255)], store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    try:
        data = store.add(NAMESPACE, f"datastore-ns-{_ns(namespace, where='body')}", "", namespace, {"namespace": namespace})
    except Duplicate as exc:
        raise Conflict(f"namespace {namespace} already exists") from exc
    return {k: data[k] for k in ("namespace", "created_at", "updated_at")}


@router.get("/v1/datastore/namespaces", summary="List Data Store namespaces")
def list_namespaces(store: StoreDep, caller: CallerDep, params: ListDep) -> dict[str, Any]:
    items = [{k: n[k] for k in ("namespace", "created_at", "updated_at")} for n in store.all(NAMESPACE)]
    return paginate(items, params, caller, {"namespace"}, {"namespace", "created_at", "updated_at"})


@router.get("/v1/datastore/namespaces/{namespace}", summary="Get a Data Store namespace")
def get_namespace(namespace: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    found = store.find(NAMESPACE, "", namespace)
    if found is None:
        raise NotFound(f"namespace {namespace} does not exist")
    return {k: found[k] for k in ("namespace", "created_at", "updated_at")}


@router.delete("/v1/datastore/namespaces/{namespace}", summary="Delete an empty Data Store namespace")
def delete_namespace(namespace: str, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    found = store.find(NAMESPACE, "", namespace)
    if found is None:
        raise NotFound(f"namespace {namespace} does not exist")
    repos = [r["repo_id"] for r in store.all(REPO) if r["repo_id"].split("/")[0] == namespace]
    if repos:
        raise Conflict(f"namespace {namespace} still holds repositories: {', '.join(sorted(repos))}")
    store.remove(NAMESPACE, found["id"])
    return {"namespace": namespace, "deleted_at": iso(now()), "message": "namespace deleted"}


# ---------------------------------------------------------------- repos


def _repo_url(request: Request, repo_type: str, repo_id: str) -> str:
    base = str(request.base_url).rstrip("/") + "/v1/hf"
    return f"{base}/{repo_id}" if repo_type == "models" else f"{base}/{repo_type}/{repo_id}"


def _repo_body(body: Any) -> tuple[str, str, str]:
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise BadRequest("expected a JSON object with `name` (and `organization`, `type`)")
    repo_type = {"dataset": "datasets", "model": "models", None: "models"}.get(body.get("type"))
    if repo_type is None:
        raise BadRequest(f"`type` {body.get('type')!r} is not supported: use dataset or model")
    organization = body.get("organization")
    if not isinstance(organization, str) or not organization:
        raise BadRequest("`organization` (the namespace) is required: use a repo id of the form namespace/name")
    return repo_type, _ns(organization, "organization", "body"), _ns(body["name"], "name", "body")


@router.post("/v1/hf/api/repos/create", summary="Create a dataset or model repository")
async def create_repo(request: Request, store: StoreDep, caller: CallerDep) -> Any:
    repo_type, namespace, name = _repo_body(await _json(request))
    caller.check(namespace)
    url = _repo_url(request, repo_type, f"{namespace}/{name}")
    try:
        store.add(REPO, f"repo-{uuid.uuid4().hex}", namespace, f"{repo_type}/{name}",
                  {"repo_type": repo_type, "repo_id": f"{namespace}/{name}", "files": {}, "sha": _new_oid(), "commits": []})
    except Duplicate:
        # HfApi(create_repo, exist_ok=True) reads the url from the 409 body.
        return JSONResponse({"detail": f"repository {namespace}/{name} already exists", "url": url}, status_code=409,
                            headers={"x-should-retry": "false"})
    return {"url": url, "name": f"{namespace}/{name}", "id": f"{namespace}/{name}"}


@router.delete("/v1/hf/api/repos/delete", summary="Delete a repository and its files")
async def delete_repo(request: Request, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    repo_type, namespace, name = _repo_body(await _json(request))
    caller.check(namespace)
    repo = _repo(store, repo_type, namespace, name)
    try:
        datastore.open_files(settings).delete_prefix(datastore.repo_prefix(repo_type, namespace, name))
    except (datastore.DatastoreError, objects.PathRefused) as exc:
        raise BadRequest(str(exc)) from exc
    store.remove(REPO, repo["id"])
    return {"deleted": f"{namespace}/{name}"}


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest("the body is not valid JSON: nested too deeply") from exc


def _info(repo: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": repo["repo_id"], "_id": repo["id"], "sha": repo["sha"], "private": False, "disabled": False, "gated": False,
        "lastModified": repo["updated_at"] + "Z", "createdAt": repo["created_at"] + "Z", "author": repo["repo_id"].split("/")[0],
        "siblings": [{"rfilename": path, "size": f["size"]} for path, f in sorted(repo["files"].items())],
        "tags": [], "downloads": 0, "likes": 0,
    }


@router.get("/v1/hf/api/{repo_type}/{namespace}/{name}", summary="Repository info")
def repo_info(repo_type: RepoType, namespace: str, name: str, store: StoreDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    if version := _published(store, settings, repo_type, namespace, name, "main"):
        return published.info(version)
    return _info(_repo(store, repo_type, namespace, name))


@router.get("/v1/hf/api/{repo_type}/{namespace}/{name}/revision/{revision}", summary="Repository info at a revision")
def repo_info_revision(repo_type: RepoType, namespace: str, name: str, revision: str, store: StoreDep, settings: SettingsDep,
                       caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    if version := _published(store, settings, repo_type, namespace, name, revision):
        return published.info(version)
    repo = _repo(store, repo_type, namespace, name)
    _revision(repo, revision)
    return _info(repo)


@router.get("/v1/hf/api/{repo_type}/{namespace}/{name}/tree/{revision}", summary="List a repository's files")
@router.get("/v1/hf/api/{repo_type}/{namespace}/{name}/tree/{revision}/{path:path}", summary="List files under a folder")
def list_tree(
    repo_type: RepoType, namespace: str, name: str, revision: str, store: StoreDep, settings: SettingsDep, caller: CallerDep,
    path: str = "", recursive: Annotated[bool, Query()] = False,
) -> list[dict[str, Any]]:
    caller.check(namespace)
    if version := _published(store, settings, repo_type, namespace, name, revision):
        if path.strip("/"):  # a published version's files sit at its top level
            raise NotFound(f"{path} does not exist in {version.output_model} version {version.version}")
        return published.tree(version)
    repo = _repo(store, repo_type, namespace, name)
    _revision(repo, revision)
    base = _path(path.strip("/")) + "/" if path.strip("/") else ""
    entries, folders = [], set()
    for file_path, meta in sorted(repo["files"].items()):
        if not file_path.startswith(base):
            continue
        rest = file_path[len(base):]
        if not recursive and "/" in rest:
            folders.add(base + rest.split("/", 1)[0])
            continue
        if recursive:
            parts = rest.split("/")[:-1]
            folders.update(base + "/".join(parts[: i + 1]) for i in range(len(parts)))
        entries.append({"type": "file", "oid": meta["oid"], "size": meta["size"], "path": file_path})
    if base and not entries and not folders:
        raise NotFound(f"{path} does not exist in {repo['repo_id']}")
    return [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f} for f in sorted(folders)] + entries


@router.post("/v1/hf/api/{repo_type}/{namespace}/{name}/preupload/{revision}", summary="Upload modes for files (always regular)")
async def preupload(repo_type: RepoType, namespace: str, name: str, revision: str, request: Request, store: StoreDep, caller: CallerDep) -> dict[str, Any]:
    caller.check(namespace)
    repo = _repo(store, repo_type, namespace, name)
    _revision(repo, revision)
    body = await _json(request)
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("path"), str) for f in files):
        raise BadRequest("expected {\"files\": [{\"path\", \"sample\", \"size\"}, ...]}")
    return {"files": [{"path": _path(f["path"]), "uploadMode": "regular", "shouldIgnore": False} for f in files]}


def _new_oid() -> str:
    return hashlib.sha1(uuid.uuid4().bytes).hexdigest()


Operation = tuple[str, str, bytes | None]  # (add | delete | delete_folder, path, content)


def _commit_lines(body: BinaryIO) -> Iterator[tuple[int, str, Any]]:
    """The NDJSON commit's lines, one at a time: (line number, header | add | delete | delete_folder, value).

    Raises:
        BadRequest: naming the line that is not a commit operation.
        TooLarge: a line over ``MAX_COMMIT_LINE_BYTES`` or more than ``MAX_COMMIT_FILES`` files (413, naming the limit).
    """
    number, files = 0, 0
    while line := body.readline(MAX_COMMIT_LINE_BYTES + 1):
        number += 1
        if len(line.rstrip(b"\n")) > MAX_COMMIT_LINE_BYTES:  # checked as the body streamed in, and again here
            raise TooLarge(line_too_long(number))
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as exc:
            raise BadRequest(f"commit line {number}: expected {{\"key\", \"value\"}} JSON ({type(exc).__name__})") from exc
        if key == "header":
            yield number, "header", value if isinstance(value, dict) else {}
        elif key == "file":
            if not isinstance(value, dict) or not isinstance(value.get("path"), str) or not isinstance(value.get("content"), str):
                raise BadRequest(f"commit line {number}: a file needs `path` and `content`")
            if value.get("encoding", "base64") != "base64":
                raise BadRequest(f"commit line {number}: encoding {value.get('encoding')!r}; only base64 is supported")
            files += 1
            if files > MAX_COMMIT_FILES:
                raise TooLarge(too_many_files(number))
            try:
                content = base64.b64decode(value["content"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise BadRequest(f"commit line {number}: `content` is not valid base64") from exc
            yield number, "add", (_path(value["path"], number), content)
        elif key in ("deletedFile", "deletedFolder"):
            if not isinstance(value, dict) or not isinstance(value.get("path"), str):
                raise BadRequest(f"commit line {number}: a deletion needs `path`")
            yield number, "delete" if key == "deletedFile" else "delete_folder", (_path(value["path"].rstrip("/"), number), None)
        elif key == "lfsFile":
            raise BadRequest(f"commit line {number}: LFS files are not accepted; the Data Store takes files inline (preupload says regular)")
        else:
            raise BadRequest(f"commit line {number}: unknown operation {str(key)[:64]!r}")


def _folders(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _check_commit(body: BinaryIO, files: dict[str, Any]) -> dict[str, Any]:
    """Read the whole commit once, keeping no file contents, and refuse it before anything is written.

    Besides each line's own checks, a commit may not leave two paths (or folders) that differ only in
    case, since they collide on case-insensitive file systems, nor a file where a folder is (or the
    other way round).

    Returns:
        The commit's header.
    """
    header: dict[str, Any] = {}
    paths, known = set(files), None
    for number, kind, value in _commit_lines(body):
        if kind == "header":
            header = value
            continue
        path, _ = value
        if kind != "add":
            paths = {p for p in paths if p != path and not (kind == "delete_folder" and p.startswith(path + "/"))}
            known = None
            continue
        if known is None:  # every file and folder name, case-folded
            known = {name.casefold(): name for p in paths for name in (p, *_folders(p))}
        for name in (path, *_folders(path)):
            clash = known.get(name.casefold())
            if clash is not None and clash != name:
                raise BadRequest(f"commit line {number}: {name!r} differs from {clash!r} only in case; rename one of them")
        if any(folder in paths for folder in _folders(path)) or (known.get(path.casefold()) == path and path not in paths):
            raise BadRequest(f"commit line {number}: {path!r} would be both a file and a folder")
        paths.add(path)
        known.update({name.casefold(): name for name in (path, *_folders(path))})
    return header


def _apply_commit(body: BinaryIO, files, prefix: str, index: dict[str, Any]) -> dict[str, Any]:
    """Write and delete the commit's files, one line in memory at a time; returns the new index."""
    index = dict(index)
    for _, kind, value in _commit_lines(body):
        if kind == "header":
            continue
        path, content = value
        if kind == "add":
            content = content or b""
            files.put(f"{prefix}/{path}", content)
            index[path] = {
                "size": len(content), "sha256": hashlib.sha256(content).hexdigest(),
                "oid": hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest(),
            }
        elif kind == "delete":
            files.delete(f"{prefix}/{path}")
            index.pop(path, None)
        else:
            for existing in [p for p in index if p.startswith(path + "/")]:
                files.delete(f"{prefix}/{existing}")
                index.pop(existing)
    return index


def _commit(repo_type: str, namespace: str, name: str, revision: str, body: BinaryIO, store, settings) -> tuple[dict[str, Any], str]:
    with _commit_lock:
        repo = _repo(store, repo_type, namespace, name)
        _revision(repo, revision)
        header = _check_commit(body, repo["files"])
        body.seek(0)
        try:
            files = datastore.open_files(settings)
            index = _apply_commit(body, files, datastore.repo_prefix(repo_type, namespace, name), repo["files"])
        except (datastore.DatastoreError, objects.PathRefused) as exc:
            raise BadRequest(str(exc)) from exc
        oid = _new_oid()
        summary = header.get("summary", "")
        commits = [*repo["commits"], {"oid": oid, "summary": summary if isinstance(summary, str) else "", "at": iso(now())}][-100:]
        store.save(REPO, {**repo, "files": index, "sha": oid, "commits": commits})
    return repo, oid


@router.post("/v1/hf/api/{repo_type}/{namespace}/{name}/commit/{revision}", summary="Commit files (NDJSON, contents inline)")
async def commit(
    repo_type: RepoType, namespace: str, name: str, revision: str, request: Request, store: StoreDep, settings: SettingsDep, caller: CallerDep,
) -> dict[str, Any]:
    """The body streams into a spooled file (memory up to a few MiB, then disk); it is read line by
    line twice, to check every operation and then to apply them, so a bad line changes nothing."""
    caller.check(namespace)
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as body:
        number, length = 1, 0  # the line being received and its length so far
        async for chunk in request.stream():
            # A line over the limit is refused as it arrives: nothing waits for the rest of it.
            first = chunk.find(b"\n")
            if length + (first if first >= 0 else len(chunk)) > MAX_COMMIT_LINE_BYTES:
                raise TooLarge(line_too_long(number))
            if first >= 0:
                number += chunk.count(b"\n")
                length = len(chunk) - chunk.rfind(b"\n") - 1
            else:
                length += len(chunk)
            body.write(chunk)
        body.seek(0)
        repo, oid = await run_in_threadpool(_commit, repo_type, namespace, name, revision, body, store, settings)
    url = _repo_url(request, repo_type, repo["repo_id"])
    return {"commitUrl": f"{url}/commit/{oid}", "commitOid": oid, "success": True, "pullRequestUrl": None}


def _resolve(repo_type: str, namespace: str, name: str, revision: str, path: str, store, settings, caller, head: bool) -> Response:
    caller.check(namespace)
    if version := _published(store, settings, repo_type, namespace, name, revision):
        return _resolve_published(version, _path(path), settings, head)
    repo = _repo(store, repo_type, namespace, name)
    _revision(repo, revision)
    path = _path(path)
    meta = repo["files"].get(path)
    if meta is None:
        raise NotFound(f"{path} does not exist in {repo['repo_id']}")
    headers = {"X-Repo-Commit": repo["sha"], "ETag": f'"{meta["oid"]}"', "Content-Length": str(meta["size"]), "Accept-Ranges": "none"}
    if head:
        return Response(status_code=200, headers=headers)
    try:
        content = datastore.open_files(settings).get(f"{datastore.repo_prefix(repo_type, namespace, name)}/{path}")
    except (datastore.DatastoreError, objects.PathRefused) as exc:
        raise BadRequest(str(exc)) from exc
    if content is None:
        raise NotFound(f"{path} is indexed in {repo['repo_id']} but missing from the store")
    return Response(content=content, media_type="application/octet-stream", headers={k: v for k, v in headers.items() if k != "Content-Length"})


def _resolve_published(version: published.PublishedRepo, path: str, settings, head: bool) -> Response:
    headers = published.headers(version, path)
    if head:
        return Response(status_code=200, headers=headers)
    try:
        content = published.content(settings, version, path)
    except StoreError as exc:
        raise StoreUnavailable(f"{version.output_model} version {version.version}: {exc}") from exc
    return Response(content=content, media_type="application/octet-stream", headers={k: v for k, v in headers.items() if k != "Content-Length"})


@router.get("/v1/hf/{repo_type}/{namespace}/{name}/resolve/{revision}/{path:path}", summary="Download a file")
@router.head("/v1/hf/{repo_type}/{namespace}/{name}/resolve/{revision}/{path:path}", summary="A file's metadata", operation_id="resolve_head")
def resolve(repo_type: RepoType, namespace: str, name: str, revision: str, path: str, request: Request, store: StoreDep,
            settings: SettingsDep, caller: CallerDep) -> Response:
    return _resolve(repo_type, namespace, name, revision, path, store, settings, caller, request.method == "HEAD")


@router.get("/v1/hf/{namespace}/{name}/resolve/{revision}/{path:path}", summary="Download a model repo file")
@router.head("/v1/hf/{namespace}/{name}/resolve/{revision}/{path:path}", summary="A model repo file's metadata", operation_id="resolve_model_head")
def resolve_model(namespace: str, name: str, revision: str, path: str, request: Request, store: StoreDep,
                  settings: SettingsDep, caller: CallerDep) -> Response:
    return _resolve("models", namespace, name, revision, path, store, settings, caller, request.method == "HEAD")
