"""Serving throughput of ``customizer serve-models``: requests spread over 8 distinct LoRA adapters
against the same requests to the base model alone, on the same server in the same run.

The server runs in its own process; client threads keep it busy. Every request generates exactly
``--max-tokens`` tokens (``ignore_eos``), so tokens/s compare like for like. Phases alternate
(base, adapters, base, ...) and the median of each is compared. Goal: >= 0.8x the base.

    python bench/serving_throughput.py [--model tiny|embedded] [--adapters 8] [--rank 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_adapters, median, prepare_base, serve_models

from core.settings import Settings  # common puts the repository on the path
from deploy.store import publish


def run_phase(url: str, models: list[str], max_tokens: int, clients: int) -> tuple[float, int]:
    """Send one request per entry of ``models``; returns (seconds, completion tokens)."""
    import httpx  # delayed: httpx is slow to import (start-up time)

    def one(model: str) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": "Write a short note about the weather."}],
                "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(one, models))
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "embedded"], default="tiny")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32, help="requests per phase")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the server")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        urn, base_name, base_dir, env = prepare_base(args.model, work, work / "data")
        store = work / "store"
        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
        adapters = make_adapters(base_dir, base_name, work / "adapters", args.adapters, args.rank, targets)
        settings = Settings(data_dir=work / "data", store_uri=store.as_uri())
        names = []
        for i, folder in enumerate(adapters):
            publish(folder, ["adapter_config.json", "adapter_model.safetensors"], f"bench/adapter-{i}", "1", base_name, {}, settings)
            names.append(f"bench/adapter-{i}@1")
        env["CUSTOMIZER_STORE_URI"] = store.as_uri()
        with serve_models(urn, env, args.adapters, args.threads, work / "server.log") as url:
            run_phase(url, [base_name, *names], 4, args.clients)  # warm-up: every adapter loaded once
            mixed = [names[i % len(names)] for i in range(args.requests)]
            base_runs, adapter_runs = [], []
            for _ in range(args.repeats):
                seconds, tokens = run_phase(url, [base_name] * args.requests, args.max_tokens, args.clients)
                base_runs.append(tokens / seconds)
                seconds, tokens = run_phase(url, mixed, args.max_tokens, args.clients)
                adapter_runs.append(tokens / seconds)

    base_rate, adapter_rate = median(base_runs), median(adapter_runs)
    print(f"\nserve-models throughput, {args.model} model ({base_name}), {args.requests} requests x {args.max_tokens} tokens, "
          f"{args.clients} clients, median of {args.repeats}")
    print(f"{'':44} {'tokens/s':>9} {'ratio':>6}")
    print(f"{'base model alone (baseline)':44} {base_rate:9.1f} {1.0:6.2f}")
    print(f"{f'{args.adapters} distinct adapters (r={args.rank}, q/k/v/o)':44} {adapter_rate:9.1f} {adapter_rate / base_rate:6.2f}   goal >= 0.80")
    print(f"runs (tokens/s): base {', '.join(f'{r:.1f}' for r in base_runs)}; adapters {', '.join(f'{r:.1f}' for r in adapter_runs)}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "adapters": args.adapters, "rank": args.rank, "base_runs": base_runs,
                                         "adapter_runs": adapter_runs, "base_tokens_per_second": base_rate,
                                         "adapter_tokens_per_second": adapter_rate}, indent=2))


if __name__ == "__main__":
    main()
