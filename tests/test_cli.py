"""The command line: user errors are one clear message and exit status 2, never a stack trace."""

import json

from customizer.cli import main
from customizer.commands import DEMO_CONFIG
from tests.conftest import TINY_CONFIG_URN, ok_rows, write_jsonl


def test_configs_lists_the_catalog(capsys, tiny_config_dir):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert DEMO_CONFIG in out and TINY_CONFIG_URN in out


def test_check_accepts_a_good_spec(tmp_path, capsys, tiny_config_dir, ok_dataset):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": TINY_CONFIG_URN, "dataset": str(ok_dataset), "output_model": "team/m"}))
    assert main(["check", str(spec)]) == 0
    assert "spec OK" in capsys.readouterr().out


def test_check_names_the_missing_version(tmp_path, capsys, ok_dataset):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"config: huggingfacetb/smollm2-135m-instruct\ndataset: {ok_dataset}\noutput_model: team/m\n")
    assert main(["check", str(spec)]) == 3
    err = capsys.readouterr().err
    assert "config: `config` 'huggingfacetb/smollm2-135m-instruct' is missing its version" in err
    assert "Traceback" not in err


def test_check_reports_bad_dataset_lines(tmp_path, capsys, tiny_config_dir):
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "t.jsonl", ok_rows(3) + ['{"prompt": 1, "completion": "x"}'])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": TINY_CONFIG_URN, "dataset": str(root), "output_model": "team/m"}))
    assert main(["check", str(spec)]) == 3
    assert "training/t.jsonl:4: `prompt` must be a string, got number" in capsys.readouterr().err


def test_check_runs_the_jobs_pre_flight_with_its_method_and_lengths(tmp_path, capsys, tiny_config_dir):
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "t.jsonl", ok_rows(9) + [{"prompt": "word " * 300, "completion": "ok"}])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": TINY_CONFIG_URN, "dataset": str(root), "output_model": "team/m"}))
    assert main(["check", str(spec)]) == 3
    err = capsys.readouterr().err
    assert "training/t.jsonl:10: " in err and "longer than the config's max_seq_length 128" in err and "Traceback" not in err
    spec.write_text(json.dumps({"config": TINY_CONFIG_URN, "dataset": str(root), "output_model": "team/m",
                                "data": {"long_examples": "drop"}, "hyperparameters": {"training_type": "dpo"}}))
    assert main(["check", str(spec)]) == 3
    assert "training/t.jsonl:1: training/ holds completion records; training_type dpo reads preference records" in capsys.readouterr().err


def test_unreadable_spec_files_are_reported(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read spec file" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    assert main(["run", str(broken)]) == 3
    assert "not valid JSON" in capsys.readouterr().err


def test_serving_commands_report_bad_arguments_clearly(capsys, tiny_config_dir):
    assert main(["serve-models", "--max-adapters", "0"]) == 2
    assert "--max-adapters must be at least 1, got 0" in capsys.readouterr().err
    assert main(["serve-models", "--config", "test/tiny-llama"]) == 2
    err = capsys.readouterr().err
    assert "is missing its version" in err and "Traceback" not in err


def test_data_validate_prints_the_report_and_exits_0(tmp_path, capsys, ok_dataset):
    assert main(["data", "validate", str(ok_dataset), "--report", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "  training   completion         18        0         0  training/" in out and "held out from training/ (10%, seed 42)" in out
    assert "tokens: not measured (no config given: token lengths need the target model's tokenizer)" in out
    assert f"dataset OK: {ok_dataset}" in out
    assert json.loads((tmp_path / "report" / "report.json").read_text())["ok"] is True
    assert (tmp_path / "report" / "report.html").read_text().startswith("<!doctype html>")


def test_data_validate_lists_every_error_and_exits_2(tmp_path, capsys):
    root = tmp_path / "ds"
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    write_jsonl(root / "training" / "t.jsonl", ok_rows(3) + ["{broken", chat])
    assert main(["data", "validate", str(root)]) == 3
    captured = capsys.readouterr()
    assert "  training   completion          2        0         0  training/" in captured.out  # what was read
    assert "dataset " + str(root) + " has 2 problems:" in captured.err
    assert "training/t.jsonl:4: not valid JSON: Expecting property name enclosed in double quotes (column 2)" in captured.err
    assert "training/t.jsonl:5: record is chat but the file started as completion (line 1); one format per file" in captured.err
    assert "Traceback" not in captured.err
    assert main(["data", "validate", str(tmp_path / "missing")]) == 2
    assert "dataset folder does not exist" in capsys.readouterr().err


def test_data_validate_with_a_config_measures_tokens_under_the_policy(tmp_path, capsys, tiny_config_dir):
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "t.jsonl", ok_rows(9) + [{"prompt": "word " * 300, "completion": "ok"}])
    assert main(["data", "validate", str(root), "--config", TINY_CONFIG_URN]) == 3
    captured = capsys.readouterr()
    assert "training/t.jsonl:10: " in captured.err and "longer than the config's max_seq_length 128" in captured.err
    assert main(["data", "validate", str(root), "--config", TINY_CONFIG_URN, "--long-examples", "drop"]) == 0
    out = capsys.readouterr().out
    assert "tokens (max_seq_length 128, long examples: drop)" in out
    assert "training/t.jsonl:10: " in out and "dropped (data.long_examples: drop)" in out
    assert main(["data", "validate", str(root), "--config", "nope/none@v1"]) == 2
    assert "nope/none@v1" in capsys.readouterr().err


def test_worker_refuses_a_deployment_of_another_flow(capsys, monkeypatch):
    monkeypatch.setenv("CUSTOMIZER_CUSTOMIZE_DEPLOYMENT", "evaluate/x")
    assert main(["worker"]) == 2
    assert "deployment 'evaluate/x' must be customize/<deployment name>" in capsys.readouterr().err


def test_services_prints_the_account_of_the_platforms_servers(tmp_path, capsys, monkeypatch):
    from core.services import credentials
    from core.settings import Settings

    monkeypatch.setenv("CUSTOMIZER_DATA_DIR", str(tmp_path))
    user, password = credentials(Settings(data_dir=tmp_path))
    assert main(["services"]) == 0
    assert capsys.readouterr().out.split() == ["user", user, "password", password]
    assert main(["services", "--password"]) == 0
    assert capsys.readouterr().out == f"{password}\n"
