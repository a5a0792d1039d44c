"""``customizer jobs`` and ``customizer datasets``: the platform's jobs and datasets over its REST API.

These commands talk to a running platform (``customizer up``, or the API of a server elsewhere) as
the principal of an API key, exactly as any other client: ``CUSTOMIZER_API_URL`` (default
``http://127.0.0.1:8000``) and ``CUSTOMIZER_API_KEY`` from the environment, or ``--api-url`` and
``--api-key``. Output is a table on a terminal and JSON with ``--json`` (or when piped, a plain
line per item); exit statuses are ``customizer.exits``'. Their options are defined with the rest of
the command line in ``customizer.parser``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from customizer.exits import InvalidData, JobFailed, NotPromoted, Unavailable, UsageError
from customizer.output import print_table

DEFAULT_API_URL = "http://127.0.0.1:8000"  # where `customizer up` and `customizer api` listen by default
JOBS = "/v1/customization/jobs"
FINAL = {"completed", "failed", "cancelled"}
OUTCOMES = {"reject": "rejected", "hold": "held"}  # the gate's decision -> the name --fail-on takes


class Api:
    """The REST API at ``url`` with ``key``; errors become one-line ``customizer.exits`` errors."""

    def __init__(self, args: argparse.Namespace):
        self.url = (args.api_url or os.environ.get("CUSTOMIZER_API_URL") or DEFAULT_API_URL).rstrip("/")
        self.key = args.api_key or os.environ.get("CUSTOMIZER_API_KEY")
        self.http = httpx.Client(base_url=self.url, timeout=60,
                                 headers={"Authorization": f"Bearer {self.key}"} if self.key else {})

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the REST API at {self.url} ({type(exc).__name__}: {exc}); start it "
                              "(`customizer up`), or pass --api-url (or set CUSTOMIZER_API_URL)") from exc
        if response.status_code < 300:
            return response.json() if response.content else None
        what = f"{method} {path}: {response.status_code} {detail(response)}"
        if response.status_code in (400, 409, 413, 422):
            raise InvalidData(f"the REST API refused {what}")
        hint = " (set CUSTOMIZER_API_KEY or pass --api-key)" if response.status_code == 401 and not self.key else ""
        raise Unavailable(f"the REST API at {self.url} answered {what}{hint}")


def detail(response: httpx.Response) -> str:
    """The ``detail`` of an API error answer, readable on one line."""
    try:
        found = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or response.reason_phrase
    if isinstance(found, list):  # a validation error: field and message per problem
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}" for e in found if isinstance(e, dict))
    return str(found)


def cmd_jobs(args: argparse.Namespace) -> int:
    api = Api(args)
    if args.jobs_command == "list":
        if not 1 <= args.limit <= 1000:
            raise UsageError(f"--limit must be between 1 and 1000, got {args.limit}")
        params = {"page_size": args.limit, "sort": "-created_at"} | ({"filter[status]": args.status} if args.status else {})
        rows = api.call("GET", JOBS, params=params)["data"]
        return show(args, rows, ["id", "status", "output_model", "config", "created_at"])
    path = f"{JOBS}/{args.job_id}"
    if args.jobs_command == "status":
        return _status(api, args, path)
    if args.jobs_command == "logs":
        logs = api.call("GET", f"{path}/container-logs")
        if args.json:
            print(json.dumps(logs, indent=2))
            return 0
        for entry in logs.get("entries", {}).values():
            for event in entry.get("events", []):
                print(f"{event['last_seen']} [{event['reason']}] {event['message']}")
            for lines in entry.get("logs", {}).values():
                print("\n".join(lines))
        if logs.get("error"):
            print(f"customizer: the job failed: {logs['error'].get('message')}", file=sys.stderr)
        return 0
    if args.jobs_command == "cancel":
        return show(args, api.call("POST", f"{path}/cancel"), ["id", "status"])
    answer = {"approved": not args.reject, "comment": args.comment}
    return show(args, api.call("POST", f"{path}/approval", json=answer) or {"id": args.job_id}, ["id", "status"])


def _status(api: Api, args: argparse.Namespace, path: str) -> int:
    status = api.call("GET", f"{path}/status")
    while args.wait and status["status"] not in FINAL:
        time.sleep(max(0.2, args.interval))
        status = api.call("GET", f"{path}/status")
    show(args, {"id": args.job_id} | status, ["id", "status", "percentage_done", "train_loss", "elapsed_time"])
    if not args.wait:
        return 0
    if status["status"] != "completed":
        last = (status.get("status_logs") or [{}])[-1]
        raise JobFailed(f"job {args.job_id} {status['status']}" + (f": {last['detail']}" if last.get("detail") else ""))
    if args.fail_on:
        decision = _decision(api, args.job_id, path)
        if (outcome := OUTCOMES.get(decision)) in args.fail_on:
            raise NotPromoted(f"job {args.job_id}: the candidate was {outcome} (--fail-on {outcome})")
    return 0


def _decision(api: Api, job_id: str, path: str) -> str:
    """The gate's recorded decision on a completed job's output model. ``--fail-on`` depends on it, so
    one that cannot be read is an error (exit 4), never taken as promoted."""
    namespace, _, name = (api.call("GET", path).get("output_model") or "").partition("/")
    model = api.call("GET", f"/v1/models/{namespace}/{name}") if namespace and name else {}
    decision = (model.get("custom_fields") or {}).get("decision")
    if not decision:
        raise Unavailable(f"job {job_id} completed, but its decision could not be read from its output model "
                          f"{namespace + '/' + name if name else '(none)'}: --fail-on cannot be judged; try again later")
    return decision


def cmd_datasets(args: argparse.Namespace) -> int:
    api = Api(args)
    if args.datasets_command == "list":
        params = {"page_size": 1000} | ({"filter[namespace]": args.namespace} if args.namespace else {})
        return show(args, api.call("GET", "/v1/datasets", params=params)["data"], ["namespace", "name", "files_url", "created_at"])
    namespace, slash, name = args.name.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise UsageError(f"dataset name: expected namespace/name, got {args.name!r}")
    if not args.folder.is_dir():
        raise UsageError(f"dataset folder {args.folder}: not a folder")
    _upload(api, args.name, args.folder)
    body = {"namespace": namespace, "name": name, "files_url": f"hf://datasets/{args.name}"}
    created = api.call("POST", "/v1/datasets", json=body | ({"description": args.description} if args.description else {}))
    return show(args, created, ["namespace", "name", "files_url"])


def _upload(api: Api, repo_id: str, folder: Path) -> None:
    """Every file below ``folder`` into the Data Store's dataset repo ``repo_id``, with huggingface_hub
    as any Hub client uploads (the Data Store speaks the Hub's API)."""
    import huggingface_hub.constants  # delayed: huggingface_hub is slow to import (start-up time)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    # The platform's own endpoint, not the Hub: an offline setting for the Hub does not apply to it.
    huggingface_hub.constants.HF_HUB_OFFLINE = False
    hub = HfApi(endpoint=f"{api.url}/v1/hf", token=api.key or False)
    try:
        hub.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        hub.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset")
    except HfHubHTTPError as exc:
        response = exc.response
        what = f"uploading {folder} to {repo_id}: {response.status_code} {detail(response)}"
        raise (InvalidData if response.status_code in (400, 409, 413, 422) else Unavailable)(f"the Data Store refused {what}") from exc
    except OSError as exc:
        raise Unavailable(f"cannot upload {folder} to the Data Store at {api.url}: {exc}") from exc


def show(args: argparse.Namespace, rows: list[dict[str, Any]] | dict[str, Any], columns: list[str]) -> int:
    """Rows (a list) or one item (a dict) as JSON with ``--json``, a table on a terminal, or a
    tab-separated line each when piped."""
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    rows = [rows] if isinstance(rows, dict) else rows
    cells = [["" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows]
    print_table(columns, cells, "\t".join)
    return 0
