"""The ``customizer`` command line.

    customizer demo                 fine-tune the embedded SmolLM2 on the shipped support-ticket data
    customizer run SPEC.yaml        run the customize flow for a spec (YAML or JSON)
    customizer check SPEC.yaml      validate a spec, its config and its dataset without training
    customizer configs              list the config catalog
    customizer prepare-model [URN]  convert/cache a config's base model ahead of time
    customizer approve JOB_ID --reviewer NAME [--reject] [--comment TEXT]
                                    answer a job that waits for a reviewer
    customizer generate MODEL PROMPT [--version V]
                                    load a registered version from MLflow and generate
    customizer serve-models         serve the base model and published adapters (OpenAI-compatible API)
    customizer serving vllm-args NS vLLM launch arguments for a namespace's champion adapters
    customizer data validate PATH   check a dataset alone (exit status 2 when it has errors)
    customizer up                   the whole platform: REST API, Prefect server + UI, worker, MLflow UI
    customizer api                  the REST API alone (needs PREFECT_API_URL)
    customizer worker               serve the customize and evaluate deployments (needs PREFECT_API_URL)
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml
from pydantic import ValidationError

from core.settings import Settings, apply_environment, get_settings

DEMO_DATASET = Path(__file__).parent / "datasets" / "support-tickets"
DEMO_CONFIG = "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu"
RETRAIN_CRON = "0 3 * * *"  # daily at 03:00 UTC, as in prefect.yaml


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


def _load_spec_file(path: Path) -> dict:
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
    """Validate a spec, its config and its dataset before any work starts (no stack traces).

    Returns:
        The validated ``CustomizationSpec``.

    Raises:
        UsageError: naming the field, file and line that is wrong.
    """
    from core.catalog import CatalogError, get_config
    from data.ingest import DatasetError, ingest_dataset
    from core.specs import CustomizationSpec

    try:
        spec = CustomizationSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  {'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise UsageError(f"invalid spec:\n{problems}") from exc
    try:
        config = get_config(spec.config, settings)
        config.option_for(spec.hyperparameters.training_type, spec.hyperparameters.finetuning_type)
        with tempfile.TemporaryDirectory() as scratch:
            ingest_dataset(
                spec.dataset, Path(scratch), seed=spec.hyperparameters.seed, settings=settings,
                method=spec.hyperparameters.training_type,
            )
    except (CatalogError, DatasetError) as exc:
        raise UsageError(str(exc)) from exc
    return spec


def run_flow(spec, settings: Settings) -> int:
    from customizer.summary import render_summary
    from flows.customize import customize

    started = time.monotonic()
    print(f"customizer: data folder {settings.root}; store {settings.publish_uri}", flush=True)
    result = customize(spec)
    print(render_summary(result, time.monotonic() - started))
    return 0


def cmd_configs(args: argparse.Namespace, settings: Settings) -> int:
    from core.catalog import load_catalog

    for urn, config in sorted(load_catalog(settings).items()):
        pairs = ", ".join(f"{o.training_type}/{o.finetuning_type}" for o in config.training_options)
        print(f"{urn:50} base {config.target.name:40} {pairs}")
    return 0


def cmd_prepare_model(args: argparse.Namespace, settings: Settings) -> int:
    from training.base_model import resolve_base_model
    from core.catalog import CatalogError, get_config

    try:
        config = get_config(args.config, settings)
    except CatalogError as exc:
        raise UsageError(str(exc)) from exc
    resolved = resolve_base_model(config.target, settings)
    print(f"{config.urn}: {resolved.path} (sha256 {resolved.digest[:16]}...)")
    return 0


def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    """Answer the approval a paused customize job waits for (the Prefect UI's form, from a shell)."""
    from api import orchestrator
    from core.ids import uuid_from_id

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
    from core import tracking
    from deploy.registry import VersionNotFound, load_version
    from core.catalog import get_config
    from data.preference import render_with_answer

    try:
        model, tokenizer, version = load_version(settings, args.model, args.version)
    except VersionNotFound as exc:
        raise UsageError(str(exc)) from exc
    # The prompt exactly as training and evaluation rendered it (chat template or the config's template).
    config_urn = tracking.client(settings).get_model_version(version.registered_model, version.version).tags["customizer.config"]
    text = render_with_answer(args.prompt, "", get_config(config_urn, settings), tokenizer).prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    print(f"# {args.model} version {version.version} ({', '.join(version.aliases) or 'no alias'})", file=sys.stderr)
    print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return 0


def cmd_serve_models(args: argparse.Namespace, settings: Settings) -> int:
    from serving.server import run_server
    from training.base_model import BaseModelError, resolve_base_model
    from core.catalog import CatalogError, get_config

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
    import shlex

    from serving.handoff import HandOffError, vllm_args
    from deploy.store import StoreError

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
    from training.base_model import BaseModelError, resolve_base_model
    from core.catalog import CatalogError, get_config
    from data.ingest import DatasetError, ingest_dataset
    from data.report import DataReport, render_text
    from data.lengths import LengthCheck

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
    """Serve the ``customize``, ``evaluate``, ``ingest`` and ``retrain`` flows as deployments; each run
    is a subprocess."""
    names = {}
    for flow_name, name in (("customize", settings.customize_deployment), ("evaluate", settings.evaluate_deployment)):
        prefix, _, deployment = name.partition("/")
        if prefix != flow_name or not deployment:
            raise UsageError(f"deployment {name!r} must be {flow_name}/<deployment name>")
        names[flow_name] = deployment
    # Checked before Prefect is imported: a misconfigured worker fails at once.
    from prefect import serve
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import ObjectNotFound

    from flows.customize import customize
    from flows.evaluate import evaluate
    from flows.ingest import ingest
    from flows.retrain import retrain

    deployments = [flow.to_deployment(name=names[flow.name], entrypoint_type=EntrypointType.MODULE_PATH) for flow in (customize, evaluate)]
    # As in prefect.yaml: dataset checks on demand, and the daily retrain of every champion whose data changed.
    deployments += [
        ingest.to_deployment(name="customizer", entrypoint_type=EntrypointType.MODULE_PATH),
        retrain.to_deployment(
            name="customizer", entrypoint_type=EntrypointType.MODULE_PATH, cron=RETRAIN_CRON,
            # A retrain still running when the next one is due: the new run is cancelled, not queued.
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        ),
    ]
    # Runs created while the worker is down stay scheduled and start when it is back; runs a stopped
    # worker left behind are taken back first.
    from customizer.up import resume_orphaned_runs

    try:
        for flow_run_id, what in resume_orphaned_runs(settings.customize_deployment):
            print(f"customizer worker: flow run {flow_run_id} lost its worker: {what}", flush=True)
    except ObjectNotFound:
        pass  # the deployment does not exist yet: nothing was left behind
    serve(*deployments, limit=args.limit, pause_on_shutdown=False, print_starting_message=False)
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from api.app import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from customizer.up import up

    return up(settings, args.host, args.port, args.prefect_port, args.mlflow_port, not args.no_mlflow_ui, args.poll_seconds,
              args.limit, args.ready_file)


def quiet_libraries() -> None:
    """Keep the console to customizer's own progress: libraries' deprecation notes and chatter off."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for noisy in ("alembic", "mlflow", "datasets", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # lm-eval warns about every model passed in as an object; its progress bars remain.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    logging.getLogger("customizer").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="customizer", description="Customize LLMs end to end.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fine-tune the embedded model on the shipped support-ticket dataset")
    demo.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    demo.add_argument("--output-model", default="default/support-triage", help="output model name, namespace/name")
    for name, text in (("run", "run the customize flow for a spec file"), ("check", "validate a spec without training")):
        p = sub.add_parser(name, help=text)
        p.add_argument("spec", type=Path, help="spec file (.yaml, .yml or .json)")
    sub.add_parser("configs", help="list the config catalog")
    prep = sub.add_parser("prepare-model", help="convert and cache a config's base model")
    prep.add_argument("config", nargs="?", default=DEMO_CONFIG)
    approve = sub.add_parser("approve", help="approve (or reject) a job that waits for a reviewer")
    approve.add_argument("job_id", help="the job id, cust-...")
    approve.add_argument("--reviewer", required=True, help="who decides (not the job's submitter)")
    approve.add_argument("--reject", action="store_true", help="reject instead of approving")
    approve.add_argument("--comment", default="", help="why")
    generate = sub.add_parser("generate", help="generate with a registered model version")
    generate.add_argument("model", help="output model name, namespace/name")
    generate.add_argument("prompt")
    generate.add_argument("--version", default="champion", help="version number or alias (default champion)")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    serve = sub.add_parser("serve-models", help="serve the base model and published adapters over an OpenAI-compatible API")
    serve.add_argument("--config", help="config URN whose base model is served (default: the serve_config setting)")
    serve.add_argument("--host", help="address to listen on (default: the serve_host setting)")
    serve.add_argument("--port", type=int, help="port to listen on (default: the serve_port setting)")
    serve.add_argument("--max-adapters", type=int, help="adapters held in memory (default: the serve_max_adapters setting)")
    serve.add_argument("--preload", action="append", default=[], metavar="NAME", help="adapter to load at start (namespace/name[@version]); repeatable")
    serving = sub.add_parser("serving", help="hand-off to a production serving engine")
    serving_sub = serving.add_subparsers(dest="serving_command", required=True)
    vllm = serving_sub.add_parser("vllm-args", help="print vLLM launch arguments for a namespace's champion adapters")
    vllm.add_argument("namespace")
    data = sub.add_parser("data", help="dataset commands").add_subparsers(dest="data_command", required=True)
    validate = data.add_parser("validate", help="validate a dataset alone, as a job would ingest it")
    validate.add_argument("path", help="dataset folder, file:// or s3://bucket/prefix")
    validate.add_argument("--config", help="config URN: measure examples with its tokenizer and max_seq_length")
    validate.add_argument(
        "--long-examples", choices=["error", "drop", "truncate"], default="error",
        help="examples longer than max_seq_length (with --config): error (default), drop or truncate",
    )
    validate.add_argument("--seed", type=int, default=42, help="seed of the validation holdout (default 42)")
    validate.add_argument("--report", type=Path, help="folder to write report.json and report.html to")
    up = sub.add_parser("up", help="start the REST API, a Prefect server and UI, the worker and the MLflow UI")
    up.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="REST API port (default 8000)")
    up.add_argument("--prefect-port", type=int, default=4200, help="Prefect API/UI port (default 4200; 0: any free port)")
    up.add_argument("--mlflow-port", type=int, default=5000, help="MLflow UI port (default 5000; 0: any free port)")
    up.add_argument("--no-mlflow-ui", action="store_true", help="do not start the MLflow UI (print the command instead)")
    up.add_argument("--poll-seconds", type=float, default=2.0, help="how often the worker looks for new runs (default 2)")
    up.add_argument("--limit", type=int, default=2, help="flow runs the worker runs at once (default 2)")
    up.add_argument("--ready-file", type=Path, default=None, help=argparse.SUPPRESS)
    api = sub.add_parser("api", help="run the REST API alone")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    worker = sub.add_parser("worker", help="serve the customize and evaluate deployments")
    worker.add_argument("--limit", type=int, default=2, help="flow runs at once (default 2)")
    args = parser.parse_args(argv)

    settings = get_settings()
    apply_environment(settings)  # before Prefect, transformers or MLflow are imported
    quiet_libraries()
    try:
        commands = {
            "configs": cmd_configs, "prepare-model": cmd_prepare_model, "approve": cmd_approve, "generate": cmd_generate,
            "serve-models": cmd_serve_models, "serving": cmd_vllm_args, "data": cmd_data_validate,
            "up": cmd_up, "api": cmd_api, "worker": cmd_worker,
        }
        if args.command in commands:
            return commands[args.command](args, settings)
        raw = demo_spec(args) if args.command == "demo" else _load_spec_file(args.spec)
        spec = check_spec(raw, settings)
        if args.command == "check":
            print(f"spec OK: config {spec.config}, dataset {spec.dataset}, output {spec.output_model}")
            return 0
        return run_flow(spec, settings)
    except UsageError as exc:
        print(f"customizer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
