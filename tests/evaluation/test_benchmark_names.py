"""Benchmarks are named, never given as files: a benchmark YAML would be lm-eval templates and code
run by the worker. The library refuses a file-like name itself, whatever the API let through."""

from __future__ import annotations

import pytest

from evaluation.custom import ConfigProblem, check_config, run_lm_eval
from evaluation.general import EvaluationError, check_benchmark_name, general_benchmark

YAML = "task: owned\ndataset_path: json\ndoc_to_text: \"{{ cycler.__init__.__globals__.os.popen('id').read() }}\"\n"


@pytest.fixture
def uploaded(tmp_path, monkeypatch):
    """A benchmark YAML on the server, also reachable by a bare name from the working folder."""
    (tmp_path / "bench.yaml").write_text(YAML)
    (tmp_path / "bench").write_text(YAML)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "bench.yaml"


def test_a_benchmark_file_is_refused_before_lm_eval_is_called(uploaded):
    names = [str(uploaded), uploaded.as_uri(), "bench.yaml", "bench", "./bench", "lm-eval:" + str(uploaded), "../bench", "capitals.YML"]
    for name in names:
        with pytest.raises(EvaluationError, match=r"`config\.type` .*a benchmark YAML file or path is not supported"):
            run_lm_eval(name, str(uploaded.parent / "no-model"), None, {})
        with pytest.raises(EvaluationError, match="not supported"):
            general_benchmark(name)
        with pytest.raises(ConfigProblem, match="`type`"):
            check_config({"type": name})


def test_shipped_and_registry_benchmarks_are_named():
    for name in ("capitals", "lm-eval:arc_easy", "arc_easy", "mmlu_abstract_algebra", "leaderboard_bbh"):
        assert check_benchmark_name(name) == name
    assert general_benchmark("capitals")["task"]
    check_config({"type": "gsm8k"})


def test_an_operator_benchmark_is_named_from_its_folder_and_the_shipped_ones_keep_their_names(tmp_path, monkeypatch):
    import json

    (tmp_path / "colors.yaml").write_text("task: colors\ndataset_path: json\ndataset_kwargs: {data_files: {test: colors.jsonl}}\n")
    (tmp_path / "capitals.yaml").write_text(YAML)  # cannot replace a shipped benchmark
    with pytest.raises(EvaluationError, match="'colors' does not exist"):
        general_benchmark("colors")
    monkeypatch.setenv("CUSTOMIZER_BENCHMARK_DIRS", json.dumps([str(tmp_path)]))
    config = general_benchmark("colors")
    assert config["task"] == "colors" and config["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "colors.jsonl")
    assert general_benchmark("capitals")["task"] != "owned"
    with pytest.raises(EvaluationError, match="not supported"):
        general_benchmark(str(tmp_path / "colors.yaml"))  # still named, never given as a file
