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

import click
from pydantic import ValidationError

from core.services import default_prefect_auth
from core.settings import SettingError, apply_environment, get_settings
from core.storage import NotPrivate, make_private, private_umask
from customizer import exits, parser, remote


def quiet_libraries() -> None:
    """Keep the console to customizer's own progress: libraries' deprecation notes and chatter off."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for noisy in ("alembic", "mlflow", "datasets", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # lm-eval warns about every model passed in as an object; its progress bars remain.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    logging.getLogger("customizer").setLevel(logging.INFO)


def parse(argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed command line, or the exit status when parsing ended it (``--help``, ``--version``,
    a usage error, printed as a usage line and one ``customizer: error:`` line on stderr)."""
    try:
        return parser.build().main(args=argv, prog_name="customizer", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # a group named without one of its commands
        commands = ", ".join(exc.ctx.command.list_commands(exc.ctx))
        usage_error(exc.ctx, f"{exc.ctx.command_path} needs a command: one of {commands}")
    except click.UsageError as exc:  # unknown option, missing or bad argument, bad choice
        usage_error(exc.ctx, exc.format_message())
    except click.ClickException as exc:  # any other of click's errors: one line, as every error
        print(f"customizer: error: {exc.format_message()}", file=sys.stderr)
    except click.Abort:  # Ctrl-C before any command ran
        print("customizer: error: interrupted", file=sys.stderr)
    return exits.USAGE


def usage_error(ctx: click.Context | None, message: str) -> None:
    """Print the usage line of the command the error is in, then the error as one line."""
    if ctx is not None:
        print(ctx.get_usage(), file=sys.stderr)
    hint = f" (see `{ctx.command_path if ctx is not None else 'customizer'} --help`)"
    print(f"customizer: error: {message.replace(chr(10), ' ')}{hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if isinstance(args, int):  # parsing ended the command line (help, version or an error)
        return args
    if args.command is None:  # a bare `customizer`: the help was printed
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
