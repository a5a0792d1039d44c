"""Evaluation stage vs the ``lm_eval`` command line: same model, same benchmarks, same settings.

    python bench/eval.py [--model embedded|tiny] [--limit N] [--json results.json]

For the base model alone and for the base plus a LoRA adapter, it times customizer's evaluation
stage (one model load for the task benchmark and the general benchmarks; adapters merged) and the
``lm_eval run`` command line on the exported YAML (``--model_args ...,peft=ADAPTER`` for the
adapter), each in a fresh process so both pay the same start-up, and checks the scores agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASET = REPO / "customizer" / "datasets" / "support-tickets"
CONFIGS = {"embedded": "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu", "tiny": "customizer/tiny-llama@v1.0.0+cpu"}


def ours(work: Path, model: str, adapter: str | None, limit: int | None) -> dict:
    """Child process: customizer's evaluation stage."""
    from transformers import AutoTokenizer

    from core.settings import apply_environment, get_settings
    from evaluation.runner import evaluate_model, task_benchmark
    from training.base_model import resolve_base_model
    from core.catalog import get_config
    from data.ingest import ingest_dataset
    from core.specs import EvaluationPlan

    settings = get_settings()
    apply_environment(settings)
    config = get_config(CONFIGS[model], settings)
    base = resolve_base_model(config.target, settings)
    data = ingest_dataset(str(DATASET), work / "data", seed=0)
    plan = EvaluationPlan(limit=limit, max_new_tokens=24)
    task = task_benchmark(data, config, AutoTokenizer.from_pretrained(base.path), plan, work / "bench")
    scores = evaluate_model(base.path, adapter, task, plan, work / "eval", settings)
    return {"task": scores.task, "general": scores.general, "measures": scores.measures}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(CONFIGS), default="embedded")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--child", type=Path)
    parser.add_argument("--adapter")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.child:
        args.child.write_text(json.dumps(ours(args.child.parent, args.model, args.adapter, args.limit)))
        return

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import LoraConfig, get_peft_model

    from core.settings import apply_environment, get_settings
    from evaluation.export import export_for_lm_eval
    from evaluation.runner import GENERATION_BATCH, eval_dtype, general_benchmark, task_benchmark
    from training.base_model import resolve_base_model
    from core.catalog import get_config
    from data.ingest import ingest_dataset
    from core.specs import EvaluationPlan

    settings = get_settings()
    apply_environment(settings)
    config = get_config(CONFIGS[args.model], settings)
    base = resolve_base_model(config.target, settings)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base.path), LoraConfig(r=8, target_modules=config.lora_target_modules, init_lora_weights=False))
        peft.save_pretrained(work / "adapter")
        data = ingest_dataset(str(DATASET), work / "data", seed=0)
        plan = EvaluationPlan(limit=args.limit, max_new_tokens=24)
        task = task_benchmark(data, config, AutoTokenizer.from_pretrained(base.path), plan, work / "bench")
        names = export_for_lm_eval(task, plan, work / "cli")
        templated = bool(AutoTokenizer.from_pretrained(base.path).chat_template)
        chat = [c["task"] for c in map(general_benchmark, plan.general_benchmarks) if templated and c.get("metadata", {}).get("chat_template")]
        plain = [n for n in names if n not in chat]
        for label, adapter in (("base model", None), ("base + LoRA", str(work / "adapter"))):
            out = work / f"ours-{len(rows)}" / "scores.json"
            out.parent.mkdir()
            command = [sys.executable, __file__, "--model", args.model, "--child", str(out)] + (["--adapter", adapter] if adapter else [])
            command += ["--limit", str(args.limit)] if args.limit else []
            started = time.perf_counter()
            subprocess.run(command, check=True, env=env, cwd=REPO, capture_output=True)
            ours_seconds = time.perf_counter() - started
            mine = json.loads(out.read_text())

            # The CLI runs what the stage runs: the same dtype, and the benchmarks scored through the chat
            # template in a second call with the generation batch (lm-eval templates every task of a call).
            model_args = f"pretrained={base.path},dtype={eval_dtype(settings.eval_precision)}" + (f",peft={adapter}" if adapter else "")
            theirs, cli_seconds = {}, 0.0
            for call, (tasks, extra) in enumerate(((plain, ["--batch_size", str(plan.batch_size)]),
                                                   (chat, ["--batch_size", str(max(plan.batch_size, GENERATION_BATCH)), "--apply_chat_template"]))):
                if not tasks:
                    continue
                folder = work / f"cli-out-{len(rows)}-{call}"
                cli = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", model_args, "--tasks", ",".join(tasks),
                       "--include_path", str(work / "cli"), "--device", "cpu", "--seed", "0", "--output_path", str(folder), *extra]
                cli += ["--limit", str(args.limit)] if args.limit else []
                started = time.perf_counter()
                subprocess.run(cli, check=True, env=env, cwd=work, capture_output=True)
                cli_seconds += time.perf_counter() - started
                (result,) = list(folder.rglob("results_*.json"))
                theirs |= json.loads(result.read_text())["results"]
            metric = {n: "bits_per_byte,none" if mine["measures"].get(n) == "bits_per_byte" else "acc,none" for n in mine["general"]}
            same = abs(theirs["task"]["exact_match,none"] - mine["task"]["exact_match"]) < 1e-9 and all(
                abs(theirs[n][metric[n]] - mine["general"][n]) < 1e-6 for n in mine["general"]
            )
            rows.append((label, ours_seconds, cli_seconds, same))
    print(f"\nEvaluation stage vs lm_eval CLI, {args.model} model, task + {', '.join(plan.general_benchmarks)}"
          f"{f' (limit {args.limit})' if args.limit else ''}, batch {plan.batch_size}")
    print(f"{'model':14} {'customizer s':>13} {'lm_eval s':>10} {'ratio':>7}  same scores")
    for label, mine_s, cli_s, same in rows:
        print(f"{label:14} {mine_s:13.1f} {cli_s:10.1f} {cli_s / mine_s:6.2f}x  {'yes' if same else 'NO'}")
    print("ratio = lm_eval time / customizer time (goal >= 1.0: no slower)")
    if args.json:
        runs = [{"label": label, "customizer_seconds": mine_s, "lm_eval_seconds": cli_s, "same_scores": same} for label, mine_s, cli_s, same in rows]
        args.json.write_text(json.dumps({"model": args.model, "limit": args.limit, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
