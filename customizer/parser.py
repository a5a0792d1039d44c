"""The ``customizer`` command line's grammar, on click: every command, option, default and help text.

Parsing runs no command: each command's callback returns an ``argparse.Namespace`` of what was asked
(``command``, ``<group>_command`` for a subcommand, and one attribute per parameter, repeatable
options as lists), which ``customizer.cli`` then runs after the settings are in the environment.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import click

from customizer import exits
from customizer.remote import OUTCOMES

HELP = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """A group that lists its commands in the order they were added (the documented order)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def opt(*decls: str, **attrs: Any) -> click.Option:
    """An option with these declarations (``--name``) and click attributes."""
    return click.Option(list(decls), **attrs)


def arg(name: str, help: str | None = None, **attrs: Any) -> click.Argument:  # noqa: A002 - click's own name
    """A positional argument; its help shows under the command's "Positional arguments"."""
    return click.Argument([name], help=help, **attrs)


def flag(decl: str, help: str) -> click.Option:  # noqa: A002
    """An on/off option, off unless given."""
    return click.Option([decl], is_flag=True, default=False, help=help)


def path(decl: str, help: str | None = None, **attrs: Any) -> click.Parameter:  # noqa: A002
    """A path parameter (``--name`` an option, else an argument), parsed to a ``Path``."""
    kind = click.Path(path_type=Path)
    return opt(decl, type=kind, help=help, **attrs) if decl.startswith("-") else arg(decl, help, type=kind, **attrs)


def namespace(**params: Any) -> argparse.Namespace:
    """The parsed command line of the command being invoked, with the attribute names commands read."""
    ctx = click.get_current_context()
    names = []
    while ctx.parent is not None:
        names.append(ctx.command.name)
        ctx = ctx.parent
    top, *sub = reversed(names)
    chosen = {"command": top} | ({f"{top}_command": sub[0]} if sub else {})
    return argparse.Namespace(**chosen, **{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()})


def command(parent: click.Group, name: str, help: str, *params: click.Parameter) -> None:  # noqa: A002
    """Add command ``name`` to ``parent``; its listing shows ``help`` whole, as its own page does."""
    parent.add_command(click.Command(name, params=list(params), callback=namespace, help=help, short_help=help))


def group(parent: click.Group, name: str, help: str) -> click.Group:  # noqa: A002
    """A group of subcommands under ``parent``, one of which is required."""
    sub = Group(name, help=help, short_help=help)
    parent.add_command(sub)
    return sub


def _root(ctx: click.Context) -> argparse.Namespace:
    if ctx.invoked_subcommand is None:  # a bare `customizer`: the help, exit status 0
        click.echo(ctx.get_help())
    return argparse.Namespace(command=None)


def version() -> str:
    """The installed customizer's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("customizer")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"customizer {version()}")
        ctx.exit(exits.OK)


def build() -> click.Group:
    """The whole command tree."""
    root = Group("customizer", help="Customize LLMs end to end.", callback=click.pass_context(_root), invoke_without_command=True,
                 epilog="\b\nexit status:\n" + exits.__doc__.split("\n\n")[1], context_settings=HELP,
                 params=[opt("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
                             help="show program's version number and exit")])
    fail_on = ("--fail-on",)
    fail_on_attrs = {"multiple": True, "type": click.Choice(["rejected", "held"]), "default": (),
                     "help": "exit 5 when the candidate ends this way (repeatable; default: exit 0 whatever the decision)"}
    command(root, "demo", "fine-tune the embedded model on the shipped support-ticket dataset",
            opt("--epochs", type=int, default=2, help="training epochs (default 2)"),
            opt("--output-model", default="default/support-triage", help="output model name, namespace/name"),
            opt(*fail_on, **fail_on_attrs))
    spec = "spec file (.yaml, .yml or .json)"
    command(root, "run", "run the customize flow for a spec file", path("spec", spec), opt(*fail_on, **fail_on_attrs))
    command(root, "check", "validate a spec without training", path("spec", spec),
            flag("--ladder", "also score the free rungs of the ladder (zero-shot, candidate prompts, few-shot, retrieval few-shot) "
                 "on the base model and print the ladder table"),
            flag("--json", "print the result as JSON (with --ladder: the ladder's rows)"))
    add_remote_commands(root)
    command(root, "configs", "list the config catalog")
    command(root, "prepare-model", "convert and cache a config's base model",
            arg("config", "config URN (default: the embedded model's config)", required=False))
    command(root, "approve", "approve (or reject) a job that waits for a reviewer", arg("job_id", "the job id, cust-..."),
            opt("--reviewer", help="who decides, not the job's submitter (required with authentication off; with it on, the "
                "principal of the API key decides and this may only repeat its name)"),
            flag("--reject", "reject instead of approving"),
            opt("--comment", default="", help="why"),
            opt("--api-url", help="the REST API, with authentication on (default: $CUSTOMIZER_API_URL, else http://127.0.0.1:8000)"),
            opt("--api-key", help="your API key, with authentication on (default: $CUSTOMIZER_API_KEY, which keeps it out of the "
                "shell history)"))
    keys = group(root, "keys", "manage the API's principals and their keys in this data folder (on the server)")
    command(keys, "add", "add a principal and print its API key (shown once)", arg("name", "lower-case name, e.g. alice or ci-bot"),
            opt("--namespace", multiple=True, required=True, metavar="NS", help='a namespace the key may use ("*": all); repeatable'),
            opt("--role", multiple=True, required=True, metavar="ROLE",
                help="submit (create and cancel jobs), review (answer approvals) or admin; repeatable"))
    command(keys, "list", "list the principals and bootstrap keys (never a key)")
    command(keys, "revoke", "revoke a principal: its key stops working at the API's next request", arg("name"))
    command(root, "services", "print the user and password that sign in to the Prefect and MLflow UIs of `customizer up` on "
            "this data folder", flag("--password", "print the password alone (for scripts)"))
    command(root, "reapprove", "sign, as a reviewer's approval, the gate decision of a version registered before decisions "
            "were signed, so serving and retraining trust it as champion",
            arg("model", "output model, namespace/name"), arg("version"),
            opt("--reviewer", required=True, help="who confirms the decision (recorded in the audit trail)"),
            opt("--comment", default=""))
    command(root, "generate", "generate with a registered model version", arg("model", "output model name, namespace/name"),
            arg("prompt"), opt("--version", default="champion", help="version number or alias (default champion)"),
            opt("--max-new-tokens", type=int, default=64))
    serve_config = "config URN whose base model is served (default: the serve_config setting)"
    command(root, "serve-models", "serve the base model and published adapters over an OpenAI-compatible API",
            opt("--config", help=serve_config),
            opt("--host", help="address to listen on (default: the serve_host setting)"),
            opt("--port", type=int, help="port to listen on (default: the serve_port setting)"),
            opt("--max-adapters", type=int, help="adapters held in memory (default: the serve_max_adapters setting)"),
            opt("--max-full-models", type=int, default=1, help="full-weight versions held in memory, each its own model "
                "(default: 1); the least recently used is evicted"),
            opt("--preload", multiple=True, metavar="NAME", help="adapter or full-weight version to load at start "
                "(namespace/name[@version]); repeatable"))
    serving = group(root, "serving", "hand-off to a production serving engine")
    command(serving, "vllm-args", "print vLLM launch arguments for a namespace's champion adapters", arg("namespace"))
    command(serving, "start", "run vLLM (installed by `make vllm`) on a config's base model with the trusted champions loaded "
            "and any published version resolved from the store on first request",
            opt("--config", help=serve_config),
            opt("--namespace", help="load this namespace's champions at start (default: every namespace's)"),
            opt("--host", help="address to listen on (default: the vllm_host setting)"),
            opt("--port", type=int, help="port to listen on (default: the vllm_port setting)"),
            opt("--timeout", type=float, default=900.0, help="seconds to wait for vLLM to answer (default 900)"))
    data = group(root, "data", "dataset commands")
    command(data, "validate", "validate a dataset alone, as a job would ingest it",
            arg("path", "dataset folder, file:// or s3://bucket/prefix"),
            opt("--config", help="config URN: measure examples with its tokenizer and max_seq_length"),
            opt("--long-examples", type=click.Choice(["error", "drop", "truncate"]), default="error",
                help="examples longer than max_seq_length (with --config): error (default), drop or truncate"),
            opt("--seed", type=int, default=42, help="seed of the validation holdout (default 42)"),
            path("--report", "folder to write report.json and report.html to"))
    command(root, "up", "start the REST API, a Prefect server and UI, the worker and the MLflow UI",
            opt("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)"),
            opt("--port", type=int, default=8000, help="REST API port (default 8000)"),
            opt("--prefect-port", type=int, default=4200, help="Prefect API/UI port (default 4200; 0: any free port)"),
            opt("--mlflow-port", type=int, default=5000, help="MLflow UI port (default 5000; 0: any free port)"),
            flag("--no-mlflow-ui", "do not start the MLflow UI (print the command instead)"),
            opt("--poll-seconds", type=float, default=2.0, help="how often the worker looks for new runs (default 2)"),
            opt("--limit", type=int, default=2, help="flow runs the worker runs at once (default 2)"),
            path("--ready-file", default=None, hidden=True),
            opt("--postgres", metavar="URL", default=None, help="keep the API's state, MLflow's store and Prefect's on this "
                "PostgreSQL server, postgresql://user:password@host:port (default: $CUSTOMIZER_POSTGRES_URL, else SQLite in the "
                "data folder)"),
            flag("--vllm", "also start vLLM (`customizer serving start`) where `make vllm` installed it, and hand promoted "
                 "adapters off to it (default: the vllm_in_up setting)"))
    command(root, "api", "run the REST API alone", opt("--host", default="127.0.0.1"), opt("--port", type=int, default=8000))
    command(root, "worker", "serve the customize and evaluate deployments",
            opt("--limit", type=int, default=2, help="flow runs at once (default 2)"))
    return root


def common() -> list[click.Parameter]:
    """The options every command over the REST API takes."""
    return [opt("--api-url", help="the REST API (default: $CUSTOMIZER_API_URL, else http://127.0.0.1:8000)"),
            opt("--api-key", help="your API key (default: $CUSTOMIZER_API_KEY, which keeps it out of the shell history)"),
            flag("--json", "print JSON (for scripts)")]


def add_remote_commands(root: click.Group) -> None:
    """``jobs`` and ``datasets``: clients of a platform's REST API (``customizer.remote`` runs them)."""
    jobs = group(root, "jobs", "customization jobs over the REST API")
    command(jobs, "list", "list the jobs your key may see, newest first", *common(),
            opt("--status", help="only jobs in this status (created, running, completed, failed, ...)"),
            opt("--limit", type=int, default=50, help="at most this many (default 50, at most 1000)"))
    command(jobs, "status", "a job's status and progress", *common(), arg("job_id"),
            flag("--wait", "wait until the job ends: exit 0 completed, 1 failed or cancelled"),
            opt("--fail-on", multiple=True, type=click.Choice(sorted(OUTCOMES.values())), default=(),
                help="with --wait: exit 5 when the candidate ends this way (repeatable)"),
            opt("--interval", type=float, default=5.0, help="with --wait: seconds between polls (default 5)"))
    command(jobs, "logs", "a job's log", *common(), arg("job_id"))
    command(jobs, "cancel", "cancel a job", *common(), arg("job_id"))
    command(jobs, "approve", "approve (or --reject) a job that waits for a reviewer", *common(), arg("job_id"),
            flag("--reject", "reject instead of approving"), opt("--comment", default="", help="why"))
    datasets = group(root, "datasets", "datasets over the REST API")
    command(datasets, "upload", "upload a dataset folder to the Data Store and register it", *common(),
            arg("name", "namespace/name"), path("folder", "the dataset folder (training/, validation/, testing/ files)"),
            opt("--description", default=None))
    command(datasets, "list", "list the datasets your key may see", *common(), opt("--namespace", help="only this namespace"))
