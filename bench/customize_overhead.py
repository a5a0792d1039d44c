"""End-to-end overhead of the ``customize`` flow: its wall time against the time its training and
its evaluations take, measured in the same run.

    python bench/customize_overhead.py [--model tiny|embedded] [--epochs 2] [--limit N] [--json results.json]

The flow runs in this process, as ``customizer run`` runs it, on Prefect's local API (started and
answered once before the clock starts, so its start-up is reported apart), a fresh data folder
(MLflow on SQLite) and a local artifact store, on the support-tickets dataset. Afterwards the
flow's task runs are read back from Prefect: ``train`` and every ``evaluate-*`` task count as the
work; everything else (ingest, benchmark building, planning, gate, register, publish, promote,
report, and Prefect's and MLflow's own bookkeeping between tasks) is overhead. Reported:

    overhead ratio = flow wall time / (train task + evaluate tasks)     goal <= 1.10

The task durations are Prefect's start and end times of each task run, so ``train`` includes loading
the model and saving the adapter, as a job always does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import isolate_platform  # noqa: E402

from core.catalog import get_config  # noqa: E402 (the repository is on the path from here on)
from core.settings import apply_environment, get_settings  # noqa: E402
from core.specs import CustomizationSpec, EvaluationPlan, Hyperparameters  # noqa: E402
from training.base_model import resolve_base_model  # noqa: E402

DATASET = REPO / "customizer" / "datasets" / "support-tickets"
CONFIGS = {"embedded": "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu", "tiny": "customizer/tiny-llama@v1.0.0+cpu"}
GOAL = 1.10


def task_durations(flow_run_id) -> list[tuple[str, float]]:
    """``(task run name, seconds)`` of every finished task run of a flow run, in start order."""
    from prefect.client.orchestration import get_client  # delayed: Prefect is heavy (start-up time)
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    runs = sorted((r for r in runs if r.start_time and r.end_time), key=lambda r: r.start_time)
    return [(r.name, (r.end_time - r.start_time).total_seconds()) for r in runs]


def split_work(durations: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds of training, of evaluation, and of every other task (by task name).

    >>> split_work([("ingest-0", 1.0), ("evaluate-baseline", 4.0), ("train-0", 10.0), ("evaluate-candidate", 5.0)])
    {'train': 10.0, 'evaluate': 9.0, 'other tasks': 1.0}
    """
    totals = {"train": 0.0, "evaluate": 0.0, "other tasks": 0.0}
    for name, seconds in durations:
        if name.startswith("train"):
            totals["train"] += seconds
        elif name.startswith("evaluate"):
            totals["evaluate"] += seconds
        else:
            totals["other tasks"] += seconds
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="embedded")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop training after this many steps (default: the epochs)")
    parser.add_argument("--limit", type=int, default=None, help="score at most this many items per benchmark")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-customize-") as scratch:
        work = Path(scratch)
        # A fresh platform state: data folder (MLflow, store) and Prefect's own database.
        isolate_platform(work)
        # delayed: Prefect reads PREFECT_HOME and its other settings when imported, so these come
        # after the environment above (and Prefect is heavy: start-up time)
        from prefect.client.orchestration import get_client

        from flows.customize import customize

        settings = get_settings()
        apply_environment(settings)
        resolve_base_model(get_config(CONFIGS[args.model], settings).target, settings)  # a one-time conversion is no job's cost
        started = time.perf_counter()
        with get_client(sync_client=True) as client:
            client.hello()
        prefect_start = time.perf_counter() - started

        # A job reads files only under the platform's folders: the dataset is uploaded there, as a user's would be.
        dataset = shutil.copytree(DATASET, settings.root / "uploads" / DATASET.name)
        spec = CustomizationSpec(
            config=CONFIGS[args.model], dataset=str(dataset), output_model="bench/overhead",
            hyperparameters=Hyperparameters(epochs=args.epochs, max_steps=args.max_steps),
            evaluation=EvaluationPlan(limit=args.limit),
        )
        started = time.perf_counter()
        state = customize(spec, return_state=True)
        wall = time.perf_counter() - started
        result = state.result()  # raises if the flow failed
        durations = task_durations(state.state_details.flow_run_id)

    totals = split_work(durations)
    work_seconds = totals["train"] + totals["evaluate"]
    ratio = wall / work_seconds
    between = wall - sum(seconds for _, seconds in durations)
    print(f"\ncustomize flow, {args.model} model, LoRA SFT, {args.epochs} epoch(s)"
          f"{f', max {args.max_steps} steps' if args.max_steps > 0 else ''}{f', eval limit {args.limit}' if args.limit else ''} "
          f"(support-tickets); decision {result.decision.action if result.decision else result.outcome}")
    print(f"Prefect local API start (before the clock): {prefect_start:.1f} s")
    print(f"{'task':28} {'seconds':>8}")
    for name, seconds in durations:
        print(f"{name:28} {seconds:8.1f}")
    print(f"{'between tasks (orchestration)':28} {between:8.1f}")
    print(f"flow wall {wall:.1f} s; train {totals['train']:.1f} s + evaluate {totals['evaluate']:.1f} s = {work_seconds:.1f} s; "
          f"other tasks {totals['other tasks']:.1f} s")
    print(f"overhead ratio wall / (train + evaluate): {ratio:.3f} (goal <= {GOAL:.2f})")
    if args.json:
        args.json.write_text(json.dumps({
            "model": args.model, "epochs": args.epochs, "max_steps": args.max_steps, "limit": args.limit, "wall": wall,
            "prefect_start": prefect_start, "tasks": durations, "totals": totals, "between_tasks": between,
            "ratio": ratio, "goal": GOAL, "decision": result.decision.action if result.decision else result.outcome,
        }, indent=2))


if __name__ == "__main__":
    main()
