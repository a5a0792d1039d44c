"""The command line's grammar on click: help, version and usage errors end with the documented exit
status and one error line; each command parses to the attributes its function reads; listings are a
rich table on a terminal and plain lines for scripts."""

import json

import httpx
import pytest

from customizer import exits, output, parser, remote
from customizer.cli import main
from customizer.commands import DEMO_CONFIG

pytestmark = pytest.mark.unit


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("customizer: error:")]


@pytest.mark.parametrize(("argv", "named"), [
    (["--bogus"], "No such option '--bogus'"),
    (["check"], "Missing argument 'SPEC'"),
    (["demo", "--fail-on", "maybe"], "'maybe' is not one of 'rejected', 'held'"),
    (["demo", "--epochs", "two"], "'two' is not a valid integer"),
    (["keys", "add", "alice", "--role", "admin"], "Missing option '--namespace'"),
    (["jobs", "list", "--limit"], "Option '--limit' requires an argument"),
    (["data"], "customizer data needs a command: one of validate"),
    (["serving", "nope"], "No such command 'nope'"),
])
def test_usage_errors_exit_2_with_one_error_line(capsys, argv, named):
    assert main(argv) == exits.USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = error_lines(captured.err)
    assert len(lines) == 1 and named in lines[0], captured.err
    assert captured.err.splitlines()[-1] == lines[0] and len(captured.err.splitlines()) <= 2  # after the usage line, if any
    assert captured.err.startswith("Usage: customizer") or captured.err.startswith("customizer: error:")
    assert "Traceback" not in captured.err


def test_bare_customizer_prints_the_help_with_the_exit_status_table(capsys):
    assert main([]) == exits.OK
    out = capsys.readouterr().out
    assert out.startswith("Usage: customizer [OPTIONS] COMMAND") or out.startswith("Usage: customizer [OPTIONS] [COMMAND]")
    assert "Customize LLMs end to end." in out and "exit status:" in out
    for line in exits.__doc__.split("\n\n")[1].splitlines():  # the documented table, line for line
        assert line.strip() in out
    commands = [line.split()[0] for line in out.split("Commands:")[1].split("exit status:")[0].splitlines()
                if line.startswith("  ") and line[2:3].strip()]
    assert commands[:4] == ["demo", "run", "check", "jobs"] and {"keys", "serving", "data", "up", "worker"} <= set(commands)
    assert main(["--help"]) == exits.OK and capsys.readouterr().out == out


def test_version_and_subcommand_help_exit_0(capsys):
    assert main(["--version"]) == exits.OK
    assert capsys.readouterr().out == f"customizer {parser.version()}\n"
    assert main(["up", "-h"]) == exits.OK
    out = capsys.readouterr().out
    assert "--prefect-port INTEGER" in out and "(default 4200; 0: any free port)" in out
    assert "--ready-file" not in out  # an internal option stays out of the help
    assert main(["keys", "add", "--help"]) == exits.OK
    assert "lower-case name, e.g. alice or ci-bot" in capsys.readouterr().out


def parsed(*argv: str):
    return parser.build().main(list(argv), prog_name="customizer", standalone_mode=False)


def test_commands_parse_to_the_attributes_their_functions_read():
    keys = parsed("keys", "add", "alice", "--namespace", "a", "--namespace", "b", "--role", "review")
    assert vars(keys) == {"command": "keys", "keys_command": "add", "name": "alice", "namespace": ["a", "b"], "role": ["review"]}
    demo = parsed("demo")
    assert vars(demo) == {"command": "demo", "epochs": 2, "output_model": "default/support-triage", "fail_on": []}
    up = parsed("up", "--ready-file", "r.txt", "--no-mlflow-ui")
    assert (up.host, up.port, up.prefect_port, up.mlflow_port, up.no_mlflow_ui, up.poll_seconds, up.limit, up.postgres, up.vllm) == (
        "127.0.0.1", 8000, 4200, 5000, True, 2.0, 2, None, False)
    assert str(up.ready_file) == "r.txt" and up.ready_file.__class__.__name__.endswith("Path")
    check = parsed("check", "spec.yaml", "--ladder")
    assert (check.command, str(check.spec), check.ladder, check.json) == ("check", "spec.yaml", True, False)
    status = parsed("jobs", "status", "cust-1", "--wait", "--fail-on", "held", "--json")
    assert (status.jobs_command, status.job_id, status.wait, status.fail_on, status.interval, status.json, status.api_url) == (
        "status", "cust-1", True, ["held"], 5.0, True, None)
    validate = parsed("data", "validate", "ds", "--long-examples", "drop")
    assert (validate.data_command, validate.path, validate.long_examples, validate.seed, validate.report) == (
        "validate", "ds", "drop", 42, None)
    gen = parsed("generate", "team/m", "hello")
    assert (gen.model, gen.prompt, gen.version, gen.max_new_tokens) == ("team/m", "hello", "champion", 64)


JOBS = [{"id": "cust-1", "status": "running", "output_model": "team/m", "config": "c@v1", "created_at": "2026-01-01T00:00:00"},
        {"id": "cust-2", "status": "completed", "output_model": "team/n", "config": "c@v1", "created_at": None}]


@pytest.fixture
def api(monkeypatch):
    """The REST API answering ``jobs list`` with JOBS."""
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == remote.JOBS
        return httpx.Response(200, json={"data": JOBS})

    real = httpx.Client
    monkeypatch.setattr(remote.httpx, "Client", lambda **kw: real(**kw, transport=httpx.MockTransport(answer)))


def test_jobs_list_is_a_table_on_a_terminal_and_plain_lines_when_piped(api, capsys, monkeypatch):
    argv = ["jobs", "list", "--api-url", "http://api.test"]
    monkeypatch.setattr(output, "is_terminal", lambda: False)
    assert main(argv) == exits.OK
    assert capsys.readouterr().out.splitlines() == ["cust-1\trunning\tteam/m\tc@v1\t2026-01-01T00:00:00",
                                                    "cust-2\tcompleted\tteam/n\tc@v1\t"]
    monkeypatch.setattr(output, "is_terminal", lambda: True)
    assert main(argv) == exits.OK
    table = capsys.readouterr().out
    assert "┏" in table and "\t" not in table
    header = next(line for line in table.splitlines() if "output_model" in line)
    assert header.split("┃")[1:-1] and [c.strip() for c in header.split("┃")[1:-1]] == ["id", "status", "output_model", "config",
                                                                                        "created_at"]
    assert any("cust-2" in line and "completed" in line for line in table.splitlines())
    assert main([*argv, "--json"]) == exits.OK  # machine output even on a terminal: JSON and nothing else
    assert json.loads(capsys.readouterr().out) == JOBS


def test_configs_is_a_table_on_a_terminal_and_plain_lines_when_piped(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: one line per config
    monkeypatch.setattr(output, "is_terminal", lambda: False)
    assert main(["configs"]) == exits.OK
    plain = [line for line in capsys.readouterr().out.splitlines() if line.startswith(DEMO_CONFIG)]
    assert len(plain) == 1 and " base " in plain[0] and "sft/lora" in plain[0]
    monkeypatch.setattr(output, "is_terminal", lambda: True)
    assert main(["configs"]) == exits.OK
    table = capsys.readouterr().out
    assert "┏" in table and "base model" in table and "methods" in table
    assert any(line.startswith("│") and DEMO_CONFIG[:30] in line for line in table.splitlines())


def test_keys_list_is_a_table_on_a_terminal_and_plain_lines_when_piped(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CUSTOMIZER_API_KEYS", raising=False)
    assert main(["keys", "add", "alice", "--namespace", "team-a", "--role", "review", "--role", "submit"]) == exits.OK
    key = capsys.readouterr().out.strip()
    monkeypatch.setattr(output, "is_terminal", lambda: False)
    assert main(["keys", "list"]) == exits.OK
    plain = capsys.readouterr().out.splitlines()
    assert len(plain) == 1 and plain[0].split()[:5] == ["alice", "namespaces", "team-a", "roles", "submit,review"]
    monkeypatch.setattr(output, "is_terminal", lambda: True)
    assert main(["keys", "list"]) == exits.OK
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if "alice" in line)
    assert [c.strip() for c in row.split("│")[1:4]] == ["alice", "team-a", "submit,review"] and key not in table
