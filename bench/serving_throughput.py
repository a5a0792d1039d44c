"""Serving throughput of both engines, side by side: ``customizer serve-models`` (batching) and vLLM
(``customizer serving start``, where ``make vllm`` installed it), at 1, 8 and 16 concurrent clients,
all asking one adapter or spread over 8 distinct adapters (published versions, loaded from the
store on first request), against each engine's serial throughput (one client, one adapter).

Each server runs in its own process, one engine after the other; client threads keep it busy. Every
request generates exactly ``--max-tokens`` tokens (``ignore_eos``), so tokens/s compare like for
like. Phases alternate and the median of each over ``--repeats`` is compared. Goals (serve-models):
16 clients >= 3x serial; 8 mixed adapters >= 0.8x one adapter (at 16 clients). vLLM's rows are
reported beside them, with vLLM / serve-models at each point.

    python bench/serving_throughput.py [--quick] [--model tiny|embedded] [--adapters 8] [--rank 16] [--engines serve-models vllm]
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
from common import make_adapters, median, prepare_base, serve_models, vllm_serving

from core.settings import Settings  # common puts the repository on the path
from deploy.store import publish
from serving.vllm import vllm_installed


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


CLIENTS = (1, 8, 16)
ENGINES = ("serve-models", "vllm")


def measure(url: str, base_name: str, names: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    """tokens/s of every (adapters, clients) phase on one server, each phase ``args.repeats`` times."""
    runs: dict[str, list[float]] = {}
    run_phase(url, [base_name, *names], 4, 4)  # warm-up: every adapter loaded once
    single = [names[0]] * args.requests
    mixed = [names[i % len(names)] for i in range(args.requests)]
    for _ in range(args.repeats):
        for clients in CLIENTS:
            for label, models in (("one adapter", single), (f"{args.adapters} adapters", mixed)):
                seconds, tokens = run_phase(url, models, args.max_tokens, clients)
                runs.setdefault(f"{label}, {clients} clients", []).append(tokens / seconds)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "embedded"], default="tiny")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48, help="requests per phase")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in serve-models")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES),
                        help="engines to measure (vLLM only where `make vllm` installed it)")
    parser.add_argument("--quick", action="store_true", help="fewer requests and two repeats (minutes on 2 cores)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.repeats = 32, 2
    engines = [e for e in args.engines if e != "vllm" or vllm_installed(Settings())]
    if "vllm" in args.engines and "vllm" not in engines:
        print("vLLM is not installed (`make vllm`): measuring serve-models only")

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
        runs: dict[str, dict[str, list[float]]] = {}
        for engine in engines:
            log = work / f"{engine}.log"
            server = serve_models(urn, env, args.adapters, args.threads, log) if engine == "serve-models" else vllm_serving(
                urn, env, log, max_loras=args.adapters, max_rank=args.rank)
            with server as url:
                runs[engine] = measure(url, base_name, names, args)

    rates = {engine: {key: median(values) for key, values in phases.items()} for engine, phases in runs.items()}
    print(f"\nserving throughput, {args.model} model ({base_name}), {args.requests} requests x {args.max_tokens} tokens "
          f"per phase, median of {args.repeats}")
    print(f"{'':36} " + " ".join(f"{engine + ' tok/s':>18} {'x serial':>9}" for engine in rates)
          + (f" {'vllm / serve-models':>20}" if len(rates) == 2 else ""))
    for key in rates[engines[0]]:
        cells = " ".join(f"{r[key]:18.1f} {r[key] / r['one adapter, 1 clients']:9.2f}" for r in rates.values())
        versus = f" {rates['vllm'][key] / rates['serve-models'][key]:20.2f}" if len(rates) == 2 else ""
        print(f"{key:36} {cells}{versus}")
    results: dict = {"model": args.model, "adapters": args.adapters, "rank": args.rank, "requests": args.requests,
                     "max_tokens": args.max_tokens, "engines": engines, "runs": runs, "tokens_per_second_by_engine": rates}
    for engine, rate in rates.items():
        single16, mixed16 = rate["one adapter, 16 clients"], rate[f"{args.adapters} adapters, 16 clients"]
        serial = rate["one adapter, 1 clients"]
        print(f"{engine}: 16 clients vs serial {single16 / serial:.2f} (goal >= 3.00 for serve-models); "
              f"{args.adapters} adapters vs one at 16 clients {mixed16 / single16:.2f} (goal >= 0.80 for serve-models)")
        if engine == "serve-models":  # the keys the table has always read
            results |= {"tokens_per_second": rate, "serial_tokens_per_second": serial,
                        "clients16_vs_serial": single16 / serial, "mixed_vs_single": mixed16 / single16}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
