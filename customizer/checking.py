"""``customizer check``: the job's pre-flight on a spec file and, with ``--ladder``, the free rungs of
the customization ladder scored on the base model before any training."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from core.settings import Settings
from customizer.commands import load_spec_file, preflight, validated_spec
from customizer.exits import UsageError
from evaluation.ladder import ladder_dicts, render_ladder
from tasks.check import score_ladder
from training.base_model import BaseModelError


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    """``customizer check SPEC [--ladder] [--json]``: the pre-flight, and with ``--ladder`` the free rungs
    of the ladder scored on the base model (zero-shot, candidate prompts, few-shot, retrieval few-shot),
    printed as the ladder table (``--json``: as rows)."""
    spec = validated_spec(load_spec_file(args.spec))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        checked = preflight(spec, settings, Path(scratch) / "data")
        if args.ladder:
            print(f"customizer: scoring the free rungs of the ladder on {spec.config}'s base model", file=sys.stderr, flush=True)
            try:
                rows = score_ladder(checked, settings, Path(scratch))
            except BaseModelError as exc:
                raise UsageError(str(exc)) from exc
    if args.json:
        out = {"config": spec.config, "dataset": spec.dataset, "output_model": spec.output_model,
               "target_score": spec.evaluation.target_score}
        print(json.dumps(out | ({"ladder": ladder_dicts(rows)} if args.ladder else {}), indent=2))
        return 0
    print(f"spec OK: config {spec.config}, dataset {spec.dataset}, output {spec.output_model}")
    if args.ladder:
        target = spec.evaluation.target_score
        print(f"\nladder at the baseline (target {'not set' if target is None else f'{target:.1f}'}; a rung meets it when "
              "its lower bound does; score and interval in points)")
        print(render_ladder(rows))
    return 0
