"""The command line's commands: one function per ``customizer`` command, each over the layers below.

``customizer.cli`` imports this module only after the settings have reached the environment, because
what it imports (Prefect, MLflow, transformers) reads the environment when imported.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from api import orchestrator
from api.app import create_app
from api.principals import (
    ROLES, PrincipalError, PrincipalSpec, PrincipalsUnreadable, add_principal, bootstrap_principals, revoke_principal, store_for,
)
from core import auth, audit, services
from core import tags as tag
from core import tracking
from core.catalog import CatalogError, get_config, load_catalog
from core.ids import uuid_from_id
from core.processes import NotHealthy, stop_processes, wait_until_healthy
from core.settings import Settings
from core.specs import CustomizationSpec
from core.submission import EVERY, signed
from customizer.exits import InvalidData, JobFailed, NotPromoted, Unavailable, UsageError
from customizer.output import print_table
from customizer.remote import DEFAULT_API_URL, detail
from customizer.summary import render_summary
from customizer.up import resume_orphaned_runs, up, watch_cancellations
from customizer.worker import DeploymentsError, runner_deployments
from data.ingest import DatasetError, ingest_dataset
from data.lengths import LengthCheck
from data.preference import render_with_answer
from data.report import DataReport, render_text
from deploy.registry import CHAMPION, RegistryUnavailable, VersionNotFound, load_version
from deploy.store import StoreError
from deploy.trust import UntrustedChampion, re_approve, trusted_champion
from evaluation.policy import PolicyError
from flows.customize import customize
from serving.handoff import HandOffError, vllm_args
from serving.vllm import READY as VLLM_READY
from serving.vllm import VllmNotInstalled, launch_command
from serving.server import run_server
from tasks.approval import watch_deadlines
from tasks.check import JobRefused, check
from training.base_model import BaseModelError, resolve_base_model

DEMO_CONFIG = "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu"  # the embedded model's config
DEMO_DATASET = Path(__file__).parent / "datasets" / "support-tickets"


def demo_spec(args: argparse.Namespace) -> dict:
    """The demo job: JSON triage of support tickets with the embedded model, sized for a 2-core CPU."""
    return {
        "config": DEMO_CONFIG,
        "dataset": str(DEMO_DATASET),
        "output_model": args.output_model,
        "hyperparameters": {
            "training_type": "sft",
            "finetuning_type": "lora",
            "epochs": args.epochs,
            "batch_size": 8,
            "learning_rate": 5e-4,
            "lora": {"adapter_dim": 8, "alpha": 16, "adapter_dropout": 0.0},
        },
        # The ladder's free rungs first: a candidate system prompt and retrieval few-shot, against a target.
        "evaluation": {
            "task_metric": "exact_match", "max_new_tokens": 24, "target_score": 70.0, "retrieval_few_shot": True,
            "prompts": ['You triage support tickets. Answer with one line of JSON and nothing else, such as '
                        '{"category": "billing", "priority": "medium"}.'],
        },
    }


def load_spec_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read spec file {path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InvalidData(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {exc}") from exc


OPERATOR = "operator"  # the principal the CLI's own submissions are signed for


def validated_spec(raw: dict) -> CustomizationSpec:
    """The spec, or a ``InvalidData`` naming each field that is wrong."""
    try:
        return CustomizationSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  {'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise InvalidData(f"invalid spec:\n{problems}") from exc


def preflight(spec: CustomizationSpec, settings: Settings, out_dir: Path):
    """The job's pre-flight (``tasks.check.check``) with its refusals as the CLI's errors.

    Raises:
        UsageError: naming the field, file and line that is wrong.
    """
    try:
        return check(spec, settings, out_dir)
    except (JobRefused, PolicyError) as exc:
        raise InvalidData(str(exc)) from exc
    except BaseModelError as exc:
        raise UsageError(str(exc)) from exc


def check_spec(raw: dict, settings: Settings):
    """Validate a spec with the job's pre-flight before any work starts (no stack traces): its config
    and method, its policy, its base model, and every example of its dataset, read for the method and
    measured against the config's max_seq_length.

    Returns:
        The validated ``CustomizationSpec``.

    Raises:
        UsageError: naming the field, file and line that is wrong.
    """
    spec = validated_spec(raw)
    with tempfile.TemporaryDirectory() as scratch:
        preflight(spec, settings, Path(scratch))
    return spec


def run_flow(spec, settings: Settings, fail_on: list[str] | None = None) -> int:
    """Run the customize flow here and print its summary.

    Raises:
        JobFailed: the flow failed (its reason in one line; the log above has the detail).
        NotPromoted: the decision is one ``fail_on`` names (``rejected``, ``held``).
    """
    started = time.monotonic()
    print(f"customizer: data folder {settings.root}; store {settings.publish_uri}", flush=True)
    try:  # the operator's own submission, on this server: every namespace, the operator's files
        result = customize(signed(spec, settings, OPERATOR, [EVERY], ROLES, door="cli"))
    except Exception as exc:  # noqa: BLE001 - any failure of the job is reported as one line, exit 1
        raise JobFailed(f"the job failed: {type(exc).__name__}: {exc}") from exc
    print(render_summary(result, time.monotonic() - started))
    action = result.decision.action if result.decision and result.outcome != "prompt_sufficient" else None
    outcome = {"reject": "rejected", "hold": "held"}.get(action or "")
    if outcome and outcome in (fail_on or []):
        raise NotPromoted(f"the candidate was {outcome} (--fail-on {outcome})")
    return 0


def cmd_configs(args: argparse.Namespace, settings: Settings) -> int:

    rows = [[urn, config.target.name, ", ".join(f"{o.training_type}/{o.finetuning_type}" for o in config.training_options)]
            for urn, config in sorted(load_catalog(settings).items())]
    print_table(["config", "base model", "methods"], rows, lambda row: f"{row[0]:50} base {row[1]:40} {row[2]}")
    return 0


def cmd_prepare_model(args: argparse.Namespace, settings: Settings) -> int:

    try:
        config = get_config(args.config or DEMO_CONFIG, settings)
    except CatalogError as exc:
        raise UsageError(str(exc)) from exc
    resolved = resolve_base_model(config.target, settings)
    print(f"{config.urn}: {resolved.path} (sha256 {resolved.digest[:16]}...)")
    return 0


def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    """Answer the approval a paused customize job waits for. With authentication on (a bootstrap key
    or a principal in this data folder) the answer goes through the REST API with the caller's API
    key, so it is given in the key's principal's name and checked like any other; with it off it goes
    straight to Prefect with the free-text ``--reviewer``."""

    try:
        flow_run_id = uuid_from_id(args.job_id)
    except ValueError as exc:
        raise UsageError(f"job id: {exc}") from exc
    if auth.enabled(settings):
        return _approve_through_api(args)
    if not args.reviewer:
        raise UsageError("--reviewer is required: with authentication off the answer names who decides")
    try:
        orchestrator.answer(str(flow_run_id), {"approved": not args.reject, "reviewer": args.reviewer, "comment": args.comment})
    except orchestrator.NotWaiting as exc:
        raise UsageError(f"job {args.job_id} is not waiting for an approval (its run is {exc})") from exc
    except orchestrator.OrchestratorUnavailable as exc:
        raise UsageError(str(exc)) from exc
    print(f"job {args.job_id}: {'rejected' if args.reject else 'approved'} by {args.reviewer}")
    return 0


def _approve_through_api(args: argparse.Namespace) -> int:
    """``customizer approve`` with authentication on: ``POST .../approval`` with the caller's key.

    Raises:
        UsageError: no key, the API cannot be reached, or it refused the answer (with its reason).
    """
    key = args.api_key or os.environ.get("CUSTOMIZER_API_KEY")
    if not key:
        raise UsageError("authentication is on in this data folder (API keys or principals are configured): "
                         "`customizer approve` answers through the REST API as the principal of your API key; "
                         "set CUSTOMIZER_API_KEY (or pass --api-key)")
    url = (args.api_url or os.environ.get("CUSTOMIZER_API_URL") or DEFAULT_API_URL).rstrip("/")
    body = {"approved": not args.reject, "comment": args.comment} | ({"reviewer": args.reviewer} if args.reviewer else {})
    try:
        response = httpx.post(f"{url}/v1/customization/jobs/{args.job_id}/approval", json=body,
                              headers={"Authorization": f"Bearer {key}"}, timeout=120)
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach the REST API at {url} ({type(exc).__name__}: {exc}); start it (`customizer up`), "
                         "or pass --api-url (or set CUSTOMIZER_API_URL)") from exc
    if response.status_code != 200:
        raise UsageError(f"the REST API at {url} refused the answer ({response.status_code}): {detail(response)}")
    print(f"job {args.job_id}: {'rejected' if args.reject else 'approved'} through the REST API at {url}")
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """``customizer keys add|list|revoke``: the principals file of this data folder, edited directly
    (the operator's tool on the server; the REST API sees each change at its next request)."""
    try:
        return {"add": _keys_add, "list": _keys_list, "revoke": _keys_revoke}[args.keys_command](args, settings)
    except (PrincipalError, PrincipalsUnreadable) as exc:
        raise UsageError(str(exc)) from exc
    except audit.AuditError as exc:
        raise UsageError(f"nothing changed: the audit record could not be written ({exc})") from exc


def cmd_services(args: argparse.Namespace, settings: Settings) -> int:
    """``customizer services``: the service account that signs in to the Prefect and MLflow UIs of
    ``customizer up`` on this data folder (the password is derived from the platform key, on the server)."""
    user, password = services.credentials(settings)
    if args.password:
        print(password)
        return 0
    print(f"user      {user}\npassword  {password}")
    print("(the Prefect and MLflow servers of `customizer up` on this data folder; keep the password to operators)", file=sys.stderr)
    return 0


def _operator() -> str:
    """Who runs ``customizer keys``, for the audit trail: the operating-system user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment (e.g. a container's bare uid)
        return f"uid-{os.getuid()}"


def _keys_add(args: argparse.Namespace, settings: Settings) -> int:
    try:
        spec = PrincipalSpec(name=args.name, namespaces=args.namespace, roles=args.role)
    except ValidationError as exc:
        fields = {"name": "NAME", "namespaces": "--namespace", "roles": "--role"}
        problems = "; ".join(f"{fields.get(str(e['loc'][0]), e['loc'][0])}: {e['msg'].removeprefix('Value error, ')}"
                             + ("" if e["type"] == "value_error" else f" (got {e.get('input')!r})") for e in exc.errors())
        raise UsageError(f"invalid principal: {problems}") from exc
    key, principal = add_principal(settings, spec, _operator(), "customizer keys")
    print(f"principal {principal.name} added (namespaces {', '.join(principal.namespaces)}; roles {', '.join(principal.roles)}). "
          "Its API key follows; it is not shown again:", file=sys.stderr)
    print(key)
    return 0


def _keys_list(args: argparse.Namespace, settings: Settings) -> int:
    listed = sorted(store_for(settings).principals() + [p for _, p in bootstrap_principals(settings)], key=lambda p: p.name)
    if not listed:
        print("no principals and no api_keys: authentication is off (anyone who can reach the API can do anything)")
    rows = [[p.name, ",".join(p.namespaces), ",".join(p.roles), "api_keys setting" if p.source == "setting" else f"added {p.created_at}"]
            for p in listed]
    if rows:
        print_table(["name", "namespaces", "roles", "source"], rows, lambda r: f"{r[0]:30} namespaces {r[1]:30} roles {r[2]:20} {r[3]}")
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    principal = revoke_principal(settings, args.name, _operator(), "customizer keys")
    print(f"principal {principal.name} revoked: its key is refused from the API's next request on")
    return 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    """Generate with a registered version, loaded back from MLflow (adapter applied to its base).
    The champion is the version its alias points at only when the platform's signed decision allows it."""

    ref = args.version
    try:
        if ref == CHAMPION:
            champion = trusted_champion(settings, args.model, principal=_operator(), purpose="customizer generate")
            if champion is None:
                raise UsageError(f"{args.model} has no champion; name a version with --version")
            ref = champion.version  # the very version that was checked, even if the alias moves meanwhile
        model, tokenizer, version = load_version(settings, args.model, ref)
    except (VersionNotFound, UntrustedChampion, RegistryUnavailable) as exc:
        raise UsageError(str(exc)) from exc
    except (MlflowException, OSError) as exc:  # the version's files could not be downloaded or read
        raise Unavailable(f"{args.model} version {ref}: its model could not be loaded from {settings.tracking_uri}: {exc}") from exc
    # The prompt exactly as training and evaluation rendered it (chat template or the config's template).
    config_urn = tracking.client(settings).get_model_version(version.registered_model, version.version).tags[tag.CONFIG]
    text = render_with_answer(args.prompt, "", get_config(config_urn, settings), tokenizer).prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    print(f"# {args.model} version {version.version} ({', '.join(version.aliases) or 'no alias'})", file=sys.stderr)
    print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return 0


def cmd_reapprove(args: argparse.Namespace, settings: Settings) -> int:
    """Sign again, as ``args.reviewer``'s approval, the decision of a version registered before
    decisions were signed, so it can be trusted as champion (``deploy.trust.re_approve``)."""
    try:
        trusted = re_approve(settings, args.model, args.version, args.reviewer or "", args.comment)
    except (ValueError, StoreError, RegistryUnavailable) as exc:
        raise UsageError(str(exc)) from exc
    print(f"{trusted.output_model} version {trusted.version}: decision signed, approved by {args.reviewer}")
    return 0


def cmd_serve_models(args: argparse.Namespace, settings: Settings) -> int:

    if args.max_adapters is not None and args.max_adapters < 1:
        raise UsageError(f"--max-adapters must be at least 1, got {args.max_adapters}")
    if args.max_full_models < 1:
        raise UsageError(f"--max-full-models must be at least 1, got {args.max_full_models}")
    try:
        config = get_config(args.config or settings.serve_config, settings)
        resolved = resolve_base_model(config.target, settings)
    except (CatalogError, BaseModelError) as exc:
        raise UsageError(str(exc)) from exc
    run_server(
        settings, resolved.path, config.target.name, (config.urn,), args.host or settings.serve_host,
        settings.serve_port if args.port is None else args.port, args.max_adapters, args.preload,
        max_full_models=args.max_full_models,
    )
    return 0


def cmd_serving(args: argparse.Namespace, settings: Settings) -> int:
    return cmd_serving_start(args, settings) if args.serving_command == "start" else cmd_vllm_args(args, settings)


def cmd_serving_start(args: argparse.Namespace, settings: Settings) -> int:
    """Run vLLM on a config's base model with the trusted champions loaded, until it exits or Ctrl-C."""
    try:
        config = get_config(args.config or settings.serve_config, settings)
        resolved = resolve_base_model(config.target, settings)
        launch = launch_command(settings, resolved.path, [config.target.name, config.urn], args.namespace,
                                args.host or settings.vllm_host, settings.vllm_port if args.port is None else args.port)
    except (CatalogError, BaseModelError, VllmNotInstalled, HandOffError, StoreError, UntrustedChampion, RegistryUnavailable) as exc:
        raise UsageError(str(exc)) from exc
    print(f"starting vLLM: {shlex.join(launch.command)}", file=sys.stderr, flush=True)
    process = subprocess.Popen(launch.command, env=os.environ | launch.env, start_new_session=True)
    signal.signal(signal.SIGTERM, _interrupted)  # stopped by `customizer up` (or a service manager): vLLM stops too
    try:
        wait_until_healthy(f"{launch.url}/health", process, timeout=args.timeout, what="vLLM")
        print(f"{VLLM_READY} {config.target.name} and its adapters at {launch.url}", flush=True)
        return process.wait()
    except NotHealthy as exc:
        print(f"customizer: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_processes(process, grace=10)


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def cmd_vllm_args(args: argparse.Namespace, settings: Settings) -> int:


    try:
        arguments = vllm_args(args.namespace, settings)
    except (HandOffError, StoreError, UntrustedChampion) as exc:
        raise UsageError(str(exc)) from exc
    if not settings.serving_lora_root:
        print("# adapter paths are store URIs; set CUSTOMIZER_SERVING_LORA_ROOT to where vLLM sees the store", file=sys.stderr)
    print(" ".join(shlex.quote(a) for a in arguments))
    return 0


def cmd_data_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Validate a dataset alone: print the report's summary, and the errors on stderr (exit 3)."""

    lengths = None
    if args.config:
        from transformers import AutoTokenizer

        try:
            config = get_config(args.config, settings)
            base = resolve_base_model(config.target, settings)
        except (CatalogError, BaseModelError) as exc:
            raise UsageError(str(exc)) from exc
        lengths = LengthCheck(config, AutoTokenizer.from_pretrained(base.path), args.long_examples)
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = Path(scratch)
        try:
            data = ingest_dataset(args.path, out_dir, seed=args.seed, lengths=lengths, settings=settings)
            report, failure = data.report_files["json"], None
        except DatasetError as exc:
            report, failure = str(out_dir / "report.json"), exc
        if failure is not None and failure.report is None:  # not even a folder to read
            raise UsageError(str(failure))
        summary = DataReport.model_validate_json(Path(report).read_text(encoding="utf-8"))
        print(render_text(summary))
        if args.report:
            args.report.mkdir(parents=True, exist_ok=True)
            for name in ("report.json", "report.html"):
                shutil.copyfile(out_dir / name, args.report / name)
            print(f"report: {args.report / 'report.html'}")
    if failure is not None:
        raise InvalidData(str(failure))
    print(f"dataset OK: {args.path}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the flows as the deployments prefect.yaml defines (``customize``, ``evaluate``, ``ingest``
    and the scheduled ``retrain``); each run is a subprocess."""
    try:
        deployments = runner_deployments(settings)
    except DeploymentsError as exc:
        raise UsageError(str(exc)) from exc
    # delayed: Prefect is heavy, and settings must reach the environment before it is imported (start-up)
    from prefect import serve
    from prefect.exceptions import ObjectNotFound

    # Runs created while the worker is down stay scheduled and start when it is back; runs a stopped
    # worker left behind are taken back first.
    try:
        for flow_run_id, what in resume_orphaned_runs(settings.customize_deployment):
            print(f"customizer worker: flow run {flow_run_id} lost its worker: {what}", flush=True)
    except ObjectNotFound:
        pass  # the deployment does not exist yet: nothing was left behind
    watch_deadlines(settings.customize_deployment, settings.approval_poll_seconds)  # suspended runs cannot see their own
    watch_cancellations(settings.customize_deployment, settings.approval_poll_seconds)  # runs cancelled as they started
    serve(*deployments, limit=args.limit, pause_on_shutdown=False, print_starting_message=False)
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn


    # The failed-key throttle counts per client address: a forwarded-for header must not choose it.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", proxy_headers=False)
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.model_copy(update={"postgres_url": args.postgres}) if args.postgres else settings
    return up(settings, args.host, args.port, args.prefect_port, args.mlflow_port, not args.no_mlflow_ui, args.poll_seconds,
              args.limit, args.ready_file, vllm=args.vllm or settings.vllm_in_up)


