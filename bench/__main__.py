"""Run every benchmark and write one table: ``python -m bench [--quick] [--only NAME ...]``.

Each benchmark runs in its own subprocess with a time limit and writes its results as JSON; a
benchmark that fails or runs out of time gets a row saying so and the others still run. The
table (metric, ours, baseline, ratio, goal, verdict) goes to stdout and to
``bench/results/<timestamp>.md``, the rows and every benchmark's raw results to
``bench/results/<timestamp>.json``, each benchmark's output to ``bench/results/<timestamp>/<name>.log``.

``--quick`` runs small sizes (the tiny model, small files, few steps) to finish in minutes on a
2-core machine; ratios from it are noisier and on a model too small to represent real training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import report  # noqa: E402

from core.processes import stop_processes


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    full: list[str]
    quick: list[str] | None  # None: not run in quick mode
    timeout: dict[str, int]  # seconds, by mode: generous, since a shared machine can be several times slower
    rows: Callable[[dict], list[report.Row]]


BENCHMARKS = [
    # Three interleaved repeats of three sides, then the fp32 run of the loss-parity check: ten trainings.
    Benchmark("train", "train.py", ["--model", "embedded", "--steps", "8", "--repeats", "3"],
              ["--model", "tiny", "--steps", "20", "--repeats", "3"], {"full": 5400, "quick": 1200}, report.train_rows),
    Benchmark("customize", "customize_overhead.py", ["--model", "embedded", "--epochs", "1", "--max-steps", "10", "--limit", "20"],
              ["--model", "tiny", "--epochs", "1", "--limit", "10"], {"full": 2400, "quick": 900}, report.customize_rows),
    Benchmark("eval", "eval.py", ["--model", "embedded", "--limit", "40"], ["--model", "tiny", "--limit", "10"],
              {"full": 2400, "quick": 600}, report.eval_rows),
    Benchmark("publish", "publish_throughput.py", ["--shard-mib", "64", "--shards", "3", "--repeats", "9"],
              ["--shard-mib", "8", "--shards", "2", "--repeats", "3"], {"full": 900, "quick": 300}, report.publish_rows),
    Benchmark("ingest", "ingest.py", ["--sizes", "50000", "500000", "--repeat", "3"], ["--sizes", "50000", "200000", "--repeat", "2"],
              {"full": 1800, "quick": 480}, report.ingest_rows),
    Benchmark("api_load", "api_load.py", ["--model", "tiny", "--epochs", "8", "--clients", "50"],
              ["--model", "tiny", "--epochs", "2", "--clients", "50", "--interval", "5"], {"full": 3000, "quick": 1200}, report.api_rows),
    Benchmark("gate_power", "gate_power.py", ["--trials", "2000"], ["--trials", "400"], {"full": 1800, "quick": 600},
              report.gate_power_rows),
    Benchmark("serving", "serving_throughput.py", ["--model", "tiny"], None, {"full": 1200}, report.serving_rows),
    Benchmark("hotload", "hotload_latency.py", ["--model", "tiny"], None, {"full": 1200}, report.hotload_rows),
    Benchmark("vllm_golive", "vllm_golive.py", [], None, {"full": 1200}, report.golive_rows),
]


def failure_reason(log: Path, returncode: int | None, timeout: int) -> str:
    """The last line that looks like an error in a benchmark's output (else its last line)."""
    lines = [line.strip() for line in log.read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line or line.startswith("raise ")]
    if returncode is None:
        return f"timed out after {timeout} s; last output: {(lines or ['none'])[-1][:300]}"
    return f"exit status {returncode}: {(errors or lines or ['no output'])[-1][:300]}"


def stop(process: subprocess.Popen) -> None:
    """Interrupt a benchmark (Ctrl-C: its clean-up stops the servers it started in their own
    sessions), then kill its process group if it is still there a minute later."""
    stop_processes(process, grace=90, first=signal.SIGINT)


def run(benchmark: Benchmark, quick: bool, folder: Path) -> tuple[list[report.Row], dict | None, float]:
    """Run one benchmark in a subprocess; its rows, or one row saying why it failed."""
    mode = "quick" if quick else "full"
    out, log = folder / f"{benchmark.name}.json", folder / f"{benchmark.name}.log"
    command = [sys.executable, str(BENCH / benchmark.script), *(benchmark.quick if quick else benchmark.full), "--json", str(out)]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    print(f"[bench] {benchmark.name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    returncode: int | None
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = process.wait(timeout=benchmark.timeout[mode])
        except subprocess.TimeoutExpired:
            stop(process)
            returncode = None
    seconds = time.perf_counter() - started
    if returncode != 0 or not out.exists():
        reason = failure_reason(log, returncode, benchmark.timeout[mode])
        print(f"[bench] {benchmark.name} FAILED after {seconds:.0f} s ({reason}); see {log}", flush=True)
        return [report.failed_row(benchmark.name, reason)], None, seconds
    data = json.loads(out.read_text())
    try:
        rows = benchmark.rows(data)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        rows = [report.failed_row(benchmark.name, f"unreadable results {out.name}: {type(exc).__name__}: {exc}")]
    print(f"[bench] {benchmark.name} done in {seconds:.0f} s", flush=True)
    return rows, data, seconds


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: minutes, not hours")
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHMARKS], help="run only these benchmarks")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="folder for the table, JSON and logs")
    args = parser.parse_args()

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = args.out / stamp
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHMARKS if (not args.only or b.name in args.only) and (b.quick is not None or not args.quick)]
    skipped = [b.name for b in BENCHMARKS if b not in chosen and (not args.only or b.name in args.only)]
    rows, raw, durations = [], {}, {}
    started = time.perf_counter()
    for benchmark in chosen:
        these, data, seconds = run(benchmark, args.quick, folder)
        rows += these
        raw[benchmark.name] = data
        durations[benchmark.name] = round(seconds, 1)
    total = time.perf_counter() - started

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    notes = [
        f"{'quick' if args.quick else 'full'} run, {stamp}, {device}, {platform.python_version()}, torch {torch.__version__}; "
        f"{total / 60:.1f} min in all ({', '.join(f'{k} {v:.0f} s' for k, v in durations.items())})",
        "ratio = ours / baseline, in the metric's unit; the goal is on the ratio unless it names a value",
        "every pair ran in the same run on the same machine; on a shared machine timings are noisy: compare ratios, not times",
        f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
    ] + ([f"not run in quick mode: {', '.join(skipped)}"] if skipped else [])
    table = report.markdown(rows, "customizer benchmarks", notes)
    print("\n" + table)
    (args.out / f"{stamp}.md").write_text(table)
    (args.out / f"{stamp}.json").write_text(json.dumps(report.as_json(rows, {
        "stamp": stamp, "mode": "quick" if args.quick else "full", "device": device, "durations": durations, "results": raw,
    }), indent=2))
    print(f"written: {args.out / f'{stamp}.md'}, {args.out / f'{stamp}.json'}, logs in {folder}")
    return 0 if all(not row.verdict.startswith("FAILED") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
