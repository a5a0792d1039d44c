"""Ingest against a plain ``json.loads`` loop, as ``bench/ingest.py`` measures it, written as JSON
for the benchmark table: per size the best time of each (interleaved runs, each a fresh
interpreter) and each one's peak Python heap and peak RSS.

    python bench/ingest_summary.py --sizes 50000 500000 --repeat 3 --json results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import generate, measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 500_000])
    parser.add_argument("--format", choices=["chat", "completion"], default="chat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    sizes = []
    with tempfile.TemporaryDirectory(prefix="customizer-bench-") as scratch:
        for size in args.sizes:
            dataset = Path(scratch) / f"ds-{size}"
            generate(dataset / "training" / "records.jsonl", size, args.format)
            timed: dict[str, list[dict]] = {"plain": [], "ingest": []}
            for _ in range(args.repeat):
                for kind in timed:
                    timed[kind].append(measure(kind, dataset, Path(scratch) / "out"))
            best = {kind: min(runs, key=lambda r: r["seconds"]) for kind, runs in timed.items()}
            traced = {kind: measure(kind, dataset, Path(scratch) / "out", trace=True) for kind in timed}
            if not best["ingest"]["lines"] == best["plain"]["lines"] == size:
                raise RuntimeError(f"{size} lines generated, ingest counted {best['ingest']['lines']}, the plain loop {best['plain']['lines']}")
            sizes.append({"lines": size, "plain_seconds": best["plain"]["seconds"], "ingest_seconds": best["ingest"]["seconds"],
                          "plain_heap": traced["plain"]["heap_peak"], "ingest_heap": traced["ingest"]["heap_peak"],
                          "plain_rss": best["plain"]["rss_peak"], "ingest_rss": best["ingest"]["rss_peak"]})
            print(f"{size:>9,} lines: plain {best['plain']['seconds']:.2f} s, ingest {best['ingest']['seconds']:.2f} s, "
                  f"ingest peak heap {traced['ingest']['heap_peak'] / 2**20:.1f} MiB", flush=True)
    args.json.write_text(json.dumps({"format": args.format, "repeat": args.repeat, "sizes": sizes}, indent=2))


if __name__ == "__main__":
    main()
