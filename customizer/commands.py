"""The command line's commands: one function per ``customizer`` command, each over the layers below.

``customizer.cli`` imports this module only after the settings have reached the environment, because
what it imports (Prefect, MLflow, transformers) reads the environment when imported.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from pydantic import ValidationError

from api import orchestrator
from api.app import create_app
from core import tags as tag
from core import tracking
from core.catalog import CatalogError, get_config, load_catalog
from core.ids import uuid_from_id
from core.settings import Settings
from core.specs import CustomizationSpec
from customizer.summary import render_summary
from customizer.up import resume_orphaned_runs, up
from customizer.worker import DeploymentsError, runner_deployments
from data.ingest import DatasetError, ingest_dataset
from data.lengths import LengthCheck
from data.preference import render_with_answer
from data.report import DataReport, render_text
from deploy.registry import VersionNotFound, load_version
from deploy.store import StoreError
from evaluation.policy import PolicyError
from flows.customize import customize
from serving.handoff import HandOffError, vllm_args
from serving.server import run_server
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
        "evaluation": {"task_metric": "exact_match", "max_new_tokens": 24},
    }


def load_spec_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read spec file {path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {exc}") from exc


class UsageError(Exception):
    """A user error: printed as one clear message, exit status 2."""


def check_spec(raw: dict, settings: Settings):
    """Validate a spec with the job's pre-flight before any work starts (no stack traces): its config
    and method, its policy, its base model, and every example of its dataset, read for the method and
    measured against the config's max_seq_length.

    Returns:
        The validated ``CustomizationSpec``.

    Raises:
        UsageError: naming the field, file and line that is wrong.
    """
    try:
        spec = CustomizationSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  {'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise UsageError(f"invalid spec:\n{problems}") from exc
    try:
        with tempfile.TemporaryDirectory() as scratch:
            check(spec, settings, Path(scratch))
    except (JobRefused, PolicyError, BaseModelError) as exc:
        raise UsageError(str(exc)) from exc
    return spec


def run_flow(spec, settings: Settings) -> int:

    started = time.monotonic()
    print(f"customizer: data folder {settings.root}; store {settings.publish_uri}", flush=True)
    result = customize(spec)
    print(render_summary(result, time.monotonic() - started))
    return 0


def cmd_configs(args: argparse.Namespace, settings: Settings) -> int:

    for urn, config in sorted(load_catalog(settings).items()):
        pairs = ", ".join(f"{o.training_type}/{o.finetuning_type}" for o in config.training_options)
        print(f"{urn:50} base {config.target.name:40} {pairs}")
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
    """Answer the approval a paused customize job waits for (the Prefect UI's form, from a shell)."""

    try:
        flow_run_id = uuid_from_id(args.job_id)
    except ValueError as exc:
        raise UsageError(f"job id: {exc}") from exc
    try:
        orchestrator.answer(str(flow_run_id), {"approved": not args.reject, "reviewer": args.reviewer, "comment": args.comment})
    except orchestrator.NotWaiting as exc:
        raise UsageError(f"job {args.job_id} is not waiting for an approval (its run is {exc})") from exc
    except orchestrator.OrchestratorUnavailable as exc:
        raise UsageError(str(exc)) from exc
    print(f"job {args.job_id}: {'rejected' if args.reject else 'approved'} by {args.reviewer}")
    return 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    """Generate with a registered version, loaded back from MLflow (adapter applied to its base)."""

    try:
        model, tokenizer, version = load_version(settings, args.model, args.version)
    except VersionNotFound as exc:
        raise UsageError(str(exc)) from exc
    # The prompt exactly as training and evaluation rendered it (chat template or the config's template).
    config_urn = tracking.client(settings).get_model_version(version.registered_model, version.version).tags[tag.CONFIG]
    text = render_with_answer(args.prompt, "", get_config(config_urn, settings), tokenizer).prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    print(f"# {args.model} version {version.version} ({', '.join(version.aliases) or 'no alias'})", file=sys.stderr)
    print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return 0


def cmd_serve_models(args: argparse.Namespace, settings: Settings) -> int:

    if args.max_adapters is not None and args.max_adapters < 1:
        raise UsageError(f"--max-adapters must be at least 1, got {args.max_adapters}")
    try:
        config = get_config(args.config or settings.serve_config, settings)
        resolved = resolve_base_model(config.target, settings)
    except (CatalogError, BaseModelError) as exc:
        raise UsageError(str(exc)) from exc
    run_server(
        settings, resolved.path, config.target.name, (config.urn,), args.host or settings.serve_host,
        settings.serve_port if args.port is None else args.port, args.max_adapters, args.preload,
    )
    return 0


def cmd_vllm_args(args: argparse.Namespace, settings: Settings) -> int:


    try:
        arguments = vllm_args(args.namespace, settings)
    except (HandOffError, StoreError) as exc:
        raise UsageError(str(exc)) from exc
    if not settings.serving_lora_root:
        print("# adapter paths are store URIs; set CUSTOMIZER_SERVING_LORA_ROOT to where vLLM sees the store", file=sys.stderr)
    print(" ".join(shlex.quote(a) for a in arguments))
    return 0


def cmd_data_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Validate a dataset alone: print the report's summary, and the errors on stderr (exit 2)."""

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
        raise UsageError(str(failure))
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
    serve(*deployments, limit=args.limit, pause_on_shutdown=False, print_starting_message=False)
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn


    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    return up(settings, args.host, args.port, args.prefect_port, args.mlflow_port, not args.no_mlflow_ui, args.poll_seconds,
              args.limit, args.ready_file)


