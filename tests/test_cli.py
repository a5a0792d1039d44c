"""The command line: user errors are one clear message and exit status 2, never a stack trace."""

import json

from customizer.cli import DEMO_CONFIG, main
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
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "config: `config` 'huggingfacetb/smollm2-135m-instruct' is missing its version" in err
    assert "Traceback" not in err


def test_check_reports_bad_dataset_lines(tmp_path, capsys, tiny_config_dir):
    root = tmp_path / "ds"
    write_jsonl(root / "training" / "t.jsonl", ok_rows(3) + ['{"prompt": 1, "completion": "x"}'])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": TINY_CONFIG_URN, "dataset": str(root), "output_model": "team/m"}))
    assert main(["check", str(spec)]) == 2
    assert "training/t.jsonl:4: `prompt` must be a string, got int" in capsys.readouterr().err


def test_unreadable_spec_files_are_reported(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read spec file" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    assert main(["run", str(broken)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_worker_refuses_a_deployment_of_another_flow(capsys, monkeypatch):
    monkeypatch.setenv("CUSTOMIZER_CUSTOMIZE_DEPLOYMENT", "evaluate/x")
    assert main(["worker"]) == 2
    assert "deployment 'evaluate/x' must be customize/<deployment name>" in capsys.readouterr().err
