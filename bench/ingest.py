"""Benchmark: dataset ingest against a plain ``json.loads`` loop over the same file, in one run.

    python bench/ingest.py                       # 50,000 and 500,000 chat records
    python bench/ingest.py --format completion --sizes 50000 500000 --repeat 3 [--json results.json]

For each size it generates a dataset (``training/`` only, so ingest also holds out 10%), then runs,
each in a fresh interpreter so peaks do not mix:

- ``plain``: ``for line in open(path): json.loads(line)``;
- ``ingest``: ``data.ingest.ingest_dataset`` (validation, canonical JSON, sha256, holdout,
  duplicates and leakage, canonical split files, report), without a tokenizer.

It reports lines/s (the best of ``--repeat`` runs, interleaved, so a busy machine slows both
alike), the ratio of wall-clock times and of CPU times (steadier on a shared machine), the peak
resident memory of each process (``ru_maxrss``: interpreter and imports included) and the peak
Python heap during the work itself (``tracemalloc``, a separate run). Ingest's memory should not
depend on the file's size; its throughput should stay within 2x of the plain loop.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = (
    "the a ticket customer billing refund password login error account charge invoice order shipping "
    "delivery late damaged cancel subscription upgrade plan payment card declined reset email address "
    "phone support agent urgent please help thanks today yesterday week again still cannot"
).split()


def generate(path: Path, lines: int, fmt: str) -> None:
    """Write ``lines`` records of a realistic size (chat: ~450 bytes, completion: ~300 bytes)."""
    rng = random.Random(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(lines):
            ticket = " ".join(rng.choices(WORDS, k=rng.randint(25, 70))) + f" (ticket {i})"
            label = json.dumps({"category": rng.choice(["billing", "login", "shipping"]), "priority": rng.choice(["low", "high"])})
            if fmt == "chat":
                record = {"messages": [
                    {"role": "system", "content": "You triage support tickets. Answer with a JSON label."},
                    {"role": "user", "content": ticket},
                    {"role": "assistant", "content": label},
                ]}
            else:
                record = {"prompt": f"Triage this ticket: {ticket}", "completion": label}
            fh.write(json.dumps(record) + "\n")


def child(kind: str, dataset: Path, out: Path, trace: bool) -> dict:
    """One measurement, in this (fresh) process."""
    sys.path.insert(0, str(ROOT))
    if kind == "ingest":
        from data.ingest import ingest_dataset  # imported before the clock and the trace start

        def work() -> int:
            data = ingest_dataset(str(dataset), out, seed=0)
            return sum(data.counts[s] for s in ("training", "validation"))
    else:
        def work() -> int:
            count = 0
            with open(next((dataset / "training").glob("*.jsonl")), encoding="utf-8") as fh:
                for line in fh:
                    json.loads(line)
                    count += 1
            return count

    if trace:
        import tracemalloc

        tracemalloc.start()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    lines = work()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    result = {"lines": lines, "seconds": seconds, "cpu": after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime}
    if trace:
        result["heap_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    result["rss_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return result


def measure(kind: str, dataset: Path, out: Path, trace: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", kind, str(dataset), str(out)] + (["--trace"] if trace else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(value: float) -> str:
    return f"{value / 2**20:7.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 500_000], help="lines per generated file")
    parser.add_argument("--format", choices=["chat", "completion"], default="chat")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per tool and size (the best counts)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "DATASET", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, dataset, out = args.child
        print(json.dumps(child(kind, Path(dataset), Path(out), args.trace)))
        return

    rows, timed_runs = [], {}
    with tempfile.TemporaryDirectory(prefix="customizer-bench-") as scratch:
        for size in args.sizes:
            dataset = Path(scratch) / f"ds-{size}"
            generate(dataset / "training" / "records.jsonl", size, args.format)
            megabytes = (dataset / "training" / "records.jsonl").stat().st_size / 2**20
            timed: dict[str, list[dict]] = {"plain": [], "ingest": []}
            for _ in range(args.repeat):
                for kind in timed:
                    timed[kind].append(measure(kind, dataset, Path(scratch) / "out"))
            best = {kind: min(runs, key=lambda r: r["seconds"]) for kind, runs in timed.items()}
            traced = {kind: measure(kind, dataset, Path(scratch) / "out", trace=True) for kind in timed}
            if not best["ingest"]["lines"] == best["plain"]["lines"] == size:
                raise RuntimeError(f"{size} lines generated, ingest counted {best['ingest']['lines']}, the plain loop {best['plain']['lines']}")
            rows.append((size, megabytes, best, traced))
            timed_runs[size] = timed
    if args.json:  # for the benchmark table (python -m bench)
        sizes = [{"lines": size, "plain_seconds": best["plain"]["seconds"], "ingest_seconds": best["ingest"]["seconds"],
                  "plain_heap": traced["plain"]["heap_peak"], "ingest_heap": traced["ingest"]["heap_peak"],
                  "plain_rss": best["plain"]["rss_peak"], "ingest_rss": best["ingest"]["rss_peak"]} for size, _, best, traced in rows]
        args.json.write_text(json.dumps({"format": args.format, "repeat": args.repeat, "sizes": sizes}, indent=2))

    print(f"{args.format} records; best of {args.repeat} runs; memory: peak RSS of the process / peak Python heap of the work")
    print(f"{'lines':>9} {'MiB':>6} | {'plain lines/s':>13} {'ingest lines/s':>14} {'ratio':>6} {'cpu ratio':>9} | "
          f"{'plain RSS':>9} {'ingest RSS':>10} | {'plain heap':>10} {'ingest heap':>11}")
    for size, megabytes, best, traced in rows:
        plain, ingest = best["plain"], best["ingest"]
        cpu = min(r["cpu"] for r in timed_runs[size]["ingest"]) / min(r["cpu"] for r in timed_runs[size]["plain"])
        print(
            f"{size:>9,} {megabytes:>6.0f} | {size / plain['seconds']:>13,.0f} {size / ingest['seconds']:>14,.0f} "
            f"{ingest['seconds'] / plain['seconds']:>5.2f}x {cpu:>8.2f}x | {mib(plain['rss_peak'])}M {mib(ingest['rss_peak'])}M  | "
            f"{mib(traced['plain']['heap_peak'])}M  {mib(traced['ingest']['heap_peak'])}M"
        )
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        growth = large[3]["ingest"]["heap_peak"] - small[3]["ingest"]["heap_peak"]
        rss = large[2]["ingest"]["rss_peak"] - small[2]["ingest"]["rss_peak"]
        print(f"ingest memory from {small[0]:,} to {large[0]:,} lines: heap {growth / 2**20:+.1f} MiB, RSS {rss / 2**20:+.1f} MiB")


if __name__ == "__main__":
    main()
