"""``customizer check --ladder``: the free rungs of a spec scored on its base model before any
training, printed as the ladder table, or as rows with ``--json``."""

import json

from customizer.cli import main
from tests.conftest import TINY_CONFIG_URN

EVALUATION = {"general_benchmarks": [], "limit": 4, "max_new_tokens": 3, "few_shot": 1, "retrieval_few_shot": True,
              "prompts": ["Answer in one word."], "target_score": 50.0}
RUNGS = ["zero-shot", "prompt 1", "few-shot (k=1)", "retrieval few-shot (BM25, k=1)"]


def test_check_ladder_scores_the_free_rungs_and_prints_the_table(tmp_path, capsys, tiny_config_dir, ok_dataset):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": TINY_CONFIG_URN, "dataset": str(ok_dataset), "output_model": "team/m",
                                "evaluation": EVALUATION}))

    assert main(["check", str(spec), "--ladder", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["ladder"]
    assert (out["config"], out["target_score"]) == (TINY_CONFIG_URN, 50.0)
    assert [(r["rung"], r["cost"]) for r in rows] == [(rung, "free") for rung in RUNGS]
    assert [r["kind"] for r in rows] == ["zero-shot", "prompt", "few-shot", "retrieval"]
    for row in rows:  # the tiny random model answers nothing right: every rung misses, its interval around its score
        assert row["score"] == 0.0 and row["ci_low"] == 0.0 < row["ci_high"] < 1.0 and row["decision"] == "missed the target"
    zero, prompt, few, retrieval = (r["prompt_tokens"] for r in rows)
    assert 0 < zero < prompt and zero < few and zero < retrieval  # a system prompt or an example makes every request longer

    assert main(["check", str(spec), "--ladder"]) == 0  # the baseline is cached now: the same rows, as a table
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("spec OK: config test/tiny-llama")
    at = next(i for i, line in enumerate(lines) if line.startswith("ladder at the baseline (target 50.0;"))
    assert lines[at + 1].split()[:3] == ["rung", "score", "interval"]
    assert [line.split("  ")[0] for line in lines[at + 2: at + 6]] == RUNGS
    assert all(line.rstrip().endswith("missed the target") and " free " in line for line in lines[at + 2: at + 6])


def test_check_without_ladder_scores_nothing(tmp_path, capsys, tiny_config_dir, ok_dataset):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": TINY_CONFIG_URN, "dataset": str(ok_dataset), "output_model": "team/m"}))
    assert main(["check", str(spec), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"config": TINY_CONFIG_URN, "dataset": str(ok_dataset), "output_model": "team/m",
                                                   "target_score": None}
