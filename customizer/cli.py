"""The ``customizer`` command line.

    customizer demo                 fine-tune the embedded SmolLM2 on the shipped support-ticket data
    customizer run SPEC.yaml        run the customize flow for a spec (YAML or JSON)
    customizer check SPEC.yaml [--ladder] [--json]
                                    validate a spec, its config and its dataset without training; with
                                    --ladder, score the free rungs on the base model and print the ladder
    customizer configs              list the config catalog
    customizer prepare-model [URN]  convert/cache a config's base model ahead of time
    customizer approve JOB_ID [--reviewer NAME] [--reject] [--comment TEXT] [--api-url URL] [--api-key KEY]
                                    answer a job that waits for a reviewer (with authentication on,
                                    through the REST API as the principal of the API key)
    customizer keys add NAME --namespace NS --role ROLE   add a principal (prints its API key once)
    customizer keys list | revoke NAME                    list or revoke principals (no keys shown)
    customizer services [--password]                      the user and password of the Prefect and MLflow UIs of `up`
    customizer generate MODEL PROMPT [--version V]
                                    load a registered version from MLflow and generate
    customizer serve-models         serve the base model and published adapters (OpenAI-compatible API)
    customizer serving vllm-args NS vLLM launch arguments for a namespace's champion adapters
    customizer serving start        run vLLM (`make vllm`) with the trusted champions and the store's resolver
    customizer data validate PATH   check a dataset alone (exit status 2 when it has errors)
    customizer jobs list|status|logs|cancel|approve   the platform's jobs over its REST API
    customizer datasets upload|list                     datasets over the REST API (Data Store + Entity Store)
    customizer up                   the whole platform: REST API, Prefect server + UI, worker, MLflow UI
    customizer api                  the REST API alone (needs PREFECT_API_URL)
    customizer worker               serve the customize and evaluate deployments (needs PREFECT_API_URL)
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from pydantic import ValidationError

from core.services import default_prefect_auth
from core.settings import SettingError, apply_environment, get_settings
from core.storage import NotPrivate, make_private, private_umask
from customizer import exits, remote


def quiet_libraries() -> None:
    """Keep the console to customizer's own progress: libraries' deprecation notes and chatter off."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for noisy in ("alembic", "mlflow", "datasets", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # lm-eval warns about every model passed in as an object; its progress bars remain.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    logging.getLogger("customizer").setLevel(logging.INFO)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("customizer")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="customizer", description="Customize LLMs end to end.",
                                     epilog="exit status:\n" + exits.__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"customizer {version()}")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="fine-tune the embedded model on the shipped support-ticket dataset")
    demo.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    demo.add_argument("--output-model", default="default/support-triage", help="output model name, namespace/name")
    for name, text in (("run", "run the customize flow for a spec file"), ("check", "validate a spec without training")):
        p = sub.add_parser(name, help=text)
        p.add_argument("spec", type=Path, help="spec file (.yaml, .yml or .json)")
    sub.choices["check"].add_argument("--ladder", action="store_true", help="also score the free rungs of the ladder (zero-shot, "
                                      "candidate prompts, few-shot, retrieval few-shot) on the base model and print the ladder table")
    sub.choices["check"].add_argument("--json", action="store_true", help="print the result as JSON (with --ladder: the ladder's rows)")
    for p in (demo, sub.choices["run"]):
        p.add_argument("--fail-on", action="append", choices=["rejected", "held"], default=[],
                       help="exit 5 when the candidate ends this way (repeatable; default: exit 0 whatever the decision)")
    remote.add_commands(sub)
    sub.add_parser("configs", help="list the config catalog")
    prep = sub.add_parser("prepare-model", help="convert and cache a config's base model")
    prep.add_argument("config", nargs="?", help="config URN (default: the embedded model's config)")
    approve = sub.add_parser("approve", help="approve (or reject) a job that waits for a reviewer")
    approve.add_argument("job_id", help="the job id, cust-...")
    approve.add_argument("--reviewer", help="who decides, not the job's submitter (required with authentication off; with "
                         "it on, the principal of the API key decides and this may only repeat its name)")
    approve.add_argument("--reject", action="store_true", help="reject instead of approving")
    approve.add_argument("--comment", default="", help="why")
    approve.add_argument("--api-url", help="the REST API, with authentication on (default: $CUSTOMIZER_API_URL, else "
                         "http://127.0.0.1:8000)")
    approve.add_argument("--api-key", help="your API key, with authentication on (default: $CUSTOMIZER_API_KEY, which "
                         "keeps it out of the shell history)")
    keys = sub.add_parser("keys", help="manage the API's principals and their keys in this data folder (on the server)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    add = keys_sub.add_parser("add", help="add a principal and print its API key (shown once)")
    add.add_argument("name", help="lower-case name, e.g. alice or ci-bot")
    add.add_argument("--namespace", action="append", required=True, metavar="NS", help='a namespace the key may use ("*": all); repeatable')
    add.add_argument("--role", action="append", required=True, metavar="ROLE",
                     help="submit (create and cancel jobs), review (answer approvals) or admin; repeatable")
    keys_sub.add_parser("list", help="list the principals and bootstrap keys (never a key)")
    revoke = keys_sub.add_parser("revoke", help="revoke a principal: its key stops working at the API's next request")
    revoke.add_argument("name")
    services = sub.add_parser("services", help="print the user and password that sign in to the Prefect and MLflow UIs of "
                              "`customizer up` on this data folder")
    services.add_argument("--password", action="store_true", help="print the password alone (for scripts)")
    reapprove = sub.add_parser("reapprove", help="sign, as a reviewer's approval, the gate decision of a version registered "
                               "before decisions were signed, so serving and retraining trust it as champion")
    reapprove.add_argument("model", help="output model, namespace/name")
    reapprove.add_argument("version")
    reapprove.add_argument("--reviewer", required=True, help="who confirms the decision (recorded in the audit trail)")
    reapprove.add_argument("--comment", default="")
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
    serve.add_argument("--max-full-models", type=int, default=1,
                       help="full-weight versions held in memory, each its own model (default: 1); the least recently used is evicted")
    serve.add_argument("--preload", action="append", default=[], metavar="NAME", help="adapter or full-weight version to load at start (namespace/name[@version]); repeatable")
    serving = sub.add_parser("serving", help="hand-off to a production serving engine")
    serving_sub = serving.add_subparsers(dest="serving_command", required=True)
    vllm = serving_sub.add_parser("vllm-args", help="print vLLM launch arguments for a namespace's champion adapters")
    vllm.add_argument("namespace")
    start = serving_sub.add_parser("start", help="run vLLM (installed by `make vllm`) on a config's base model with the trusted "
                                   "champions loaded and any published version resolved from the store on first request")
    start.add_argument("--config", help="config URN whose base model is served (default: the serve_config setting)")
    start.add_argument("--namespace", help="load this namespace's champions at start (default: every namespace's)")
    start.add_argument("--host", help="address to listen on (default: the vllm_host setting)")
    start.add_argument("--port", type=int, help="port to listen on (default: the vllm_port setting)")
    start.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for vLLM to answer (default 900)")
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
    up.add_argument("--postgres", metavar="URL", default=None,
                    help="keep the API's state, MLflow's store and Prefect's on this PostgreSQL server, postgresql://user:password@host:port "
                    "(default: $CUSTOMIZER_POSTGRES_URL, else SQLite in the data folder)")
    up.add_argument("--vllm", action="store_true", help="also start vLLM (`customizer serving start`) where `make vllm` "
                    "installed it, and hand promoted adapters off to it (default: the vllm_in_up setting)")
    api = sub.add_parser("api", help="run the REST API alone")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    worker = sub.add_parser("worker", help="serve the customize and evaluate deployments")
    worker.add_argument("--limit", type=int, default=2, help="flow runs at once (default 2)")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return exits.OK
    if args.command in ("jobs", "datasets"):  # a client of a platform, maybe elsewhere: no local data folder
        try:
            return (remote.cmd_jobs if args.command == "jobs" else remote.cmd_datasets)(args)
        except exits.UsageError as exc:
            print(f"customizer: error: {exc}", file=sys.stderr)
            return exc.code

    try:
        settings = get_settings()
    except (SettingError, ValidationError) as exc:  # the messages name the setting, never its value
        problems = str(exc) if isinstance(exc, SettingError) else "; ".join(
            f"CUSTOMIZER_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        print(f"customizer: error: {problems}", file=sys.stderr)
        return exits.USAGE
    try:  # before any command: what this process and those it starts create is the platform user's alone
        private_umask()
        make_private(settings.root)
    except NotPrivate as exc:
        print(f"customizer: error: {exc}", file=sys.stderr)
        return exits.USAGE
    apply_environment(settings)
    default_prefect_auth(settings)  # a platform's Prefect server asks for the service account
    quiet_libraries()
    # The commands import Prefect, MLflow and transformers, which read the environment when imported.
    # delayed: until the settings are in the environment (and so `--help` stays fast)
    from customizer import commands as run
    from customizer.checking import cmd_check  # delayed: as commands, which it imports

    try:
        chosen = {
            "configs": run.cmd_configs, "prepare-model": run.cmd_prepare_model, "approve": run.cmd_approve,
            "generate": run.cmd_generate, "serve-models": run.cmd_serve_models, "serving": run.cmd_serving,
            "data": run.cmd_data_validate, "up": run.cmd_up, "api": run.cmd_api, "worker": run.cmd_worker, "keys": run.cmd_keys,
            "services": run.cmd_services, "reapprove": run.cmd_reapprove, "check": cmd_check,
        }
        if args.command in chosen:
            return chosen[args.command](args, settings)
        raw = run.demo_spec(args) if args.command == "demo" else run.load_spec_file(args.spec)
        spec = run.check_spec(raw, settings)
        return run.run_flow(spec, settings, args.fail_on)
    except exits.UsageError as exc:
        print(f"customizer: error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
