"""How often the gate promotes a candidate that forgot, and one that did not: simulated with
``evaluation.gate.decide`` itself on per-item results.

    python bench/gate_power.py [--trials N] [--json results.json]

Three questions, each a promotion rate over ``--trials`` simulated candidates (the task gain is
large and the method self-service, so only the forgetting rules decide):

1. a single benchmark of 80, 300 and 1,000 items whose true drop is the limit + 1 point (goal: <= 5%);
2. the shipped default suite, one benchmark of it losing 3x the limit, the others nothing (goal:
   <= 5%, for whichever benchmark it is);
3. the shipped default suite with no true drop (goal: >= 80%).

Items are simulated as pairs (base right?, candidate right?): a base accuracy, the candidate's
churn (the share of items whose result changed, as many lost as gained) and a true net drop on top
of it fix the four cells. Bits-per-byte benchmarks
draw per-item log-ratios with the spread observed. The suite's sizes, base accuracies, flip rates
and spreads are those recorded in each benchmark's YAML (``metadata.observed``: measured on the
embedded model and the demo's candidate).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.gate import decide  # noqa: E402
from evaluation.runner import general_benchmark, measure_of  # noqa: E402
from core.specs import EvaluationPlan, PromotionPolicy  # noqa: E402

BASE_ACCURACY = 0.6
FLIP_RATE = 0.10  # for the single-benchmark question: a LoRA that changes one answer in ten


def paired_items(rng: random.Random, n: int, accuracy: float, flips: float, drop: float) -> tuple[list[float], list[float]]:
    """``n`` paired 0/1 results with base ``accuracy``: the candidate's usual churn (a share ``flips``
    of items changed, as many lost as gained) plus a true net ``drop`` of lost items (proportions)."""
    lost, gained = flips / 2 + drop, flips / 2
    if gained < 0 or lost > accuracy or gained > 1 - accuracy:
        raise ValueError(f"no such items: accuracy {accuracy}, flips {flips}, drop {drop}")
    before, after = [], []
    for _ in range(n):
        right = rng.random() < accuracy
        changed = rng.random() < (lost / accuracy if right else gained / (1 - accuracy))
        before.append(float(right))
        after.append(float(right != changed))
    return before, after


def bpb_items(rng: random.Random, n: int, spread: float, rise: float) -> tuple[list[float], list[float]]:
    before = [rng.uniform(0.8, 1.4) for _ in range(n)]
    return before, [b * (1 + rise) * (2.718281828 ** rng.gauss(0, spread)) for b in before]


def promotion_rate(rng: random.Random, trials: int, suite: list[dict], drops: dict[str, float], policy: PromotionPolicy) -> float:
    """Share of simulated candidates promoted; ``drops`` gives a benchmark's true drop (points, or percent for bits-per-byte)."""
    promoted = 0
    for _ in range(trials):
        base = {"task": {"em": 0.2}, "general": {}, "per_sample": {}, "per_sample_bpb": {}, "measures": {}, "per_sample_task": [0.0] * 100}
        cand = {"task": {"em": 0.9}, "general": {}, "per_sample": {}, "per_sample_bpb": {}, "measures": {}, "per_sample_task": [1.0] * 90 + [0.0] * 10}
        for bench in suite:
            name, drop = bench["name"], drops.get(bench["name"], 0.0) / 100
            if bench["measure"] == "bits_per_byte":
                before, after = bpb_items(rng, bench["items"], bench["spread"], drop)
                key = "per_sample_bpb"
            else:
                before, after = paired_items(rng, bench["items"], bench["accuracy"], bench["flip_rate"], drop)
                key = "per_sample"
            for scores, values in ((base, before), (cand, after)):
                scores[key][name] = values
                scores["general"][name] = sum(values) / len(values)
                scores["measures"][name] = bench["measure"]
        promoted += decide(base, cand, None, policy, "em").action == "promote"
    return promoted / trials


def shipped_suite() -> list[dict]:
    """The default suite with what was observed on it (``metadata.observed`` of each benchmark)."""
    suite = []
    for name in EvaluationPlan().general_benchmarks:
        config = general_benchmark(name)
        meta = config.get("metadata", {})
        observed = meta.get("observed")
        if not observed:
            raise SystemExit(f"benchmark {name}: no metadata.observed (items, base accuracy, flip rate) recorded in its YAML")
        measure = measure_of(config)
        suite.append({"name": name, "measure": measure, "items": int(meta["items"]), "accuracy": observed.get("base_accuracy"),
                      "flip_rate": observed.get("flip_rate"), "spread": observed.get("log_ratio_sd")})
    return suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    policy = PromotionPolicy()
    limit = policy.max_general_drop
    results = {"trials": args.trials, "limit": limit, "single": [], "one_dropped": [], "no_drop": None}
    for n in (80, 300, 1000):
        suite = [{"name": "g", "measure": "accuracy", "items": n, "accuracy": BASE_ACCURACY, "flip_rate": FLIP_RATE}]
        rate = promotion_rate(rng, args.trials, suite, {"g": limit + 1}, policy)
        results["single"].append({"items": n, "true_drop": limit + 1, "flip_rate": FLIP_RATE, "promoted": rate})
        print(f"one benchmark of {n} items, true drop {limit + 1:.0f} points: promoted {rate:.1%}", flush=True)
    suite = shipped_suite()
    for bench in suite:
        drop = 3 * limit if bench["measure"] == "accuracy" else 3 * policy.max_bpb_increase
        rate = promotion_rate(rng, args.trials, suite, {bench["name"]: drop}, policy)
        results["one_dropped"].append({"benchmark": bench["name"], "true_drop": drop, "promoted": rate})
        print(f"shipped suite, {bench['name']} dropping {drop:.0f}{' points' if bench['measure'] == 'accuracy' else '%'}: promoted {rate:.1%}", flush=True)
    rate = promotion_rate(rng, args.trials, suite, {}, policy)
    results["no_drop"] = {"promoted": rate, "suite": suite}
    print(f"shipped suite, no true drop: promoted {rate:.1%}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
