"""Adapter hot-load latency of ``customizer serve-models`` (p50, p99), against a request to an
adapter that is already in memory, measured in the same run.

Each published version is new to the server, so every cold measurement includes the fetch from
the store, the sha256 check of every file against the manifest, and the PEFT load:
- ``load route``: ``POST /v1/load_lora_adapter`` with a published version's URI;
- ``first request``: a 1-token chat request naming an unseen ``namespace/name@version`` (time to
  first token, including the hot-load);
- ``after eviction``: the same, for an adapter the LRU bound evicted (back from its local copy);
- ``in memory`` (the baseline): the same request to an adapter already loaded.

    python bench/hotload_latency.py [--model tiny|embedded] [--count 40] [--store file|s3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_adapters, moto_server, percentile, prepare_base, serve_models

from core import objects  # common puts the repository on the path
from core.settings import Settings
from deploy.store import publish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "embedded"], default="tiny")
    parser.add_argument("--count", type=int, default=40, help="published versions per cold measurement")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--store", choices=["file", "s3"], default="file")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the server")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    import httpx  # delayed: httpx is slow to import (start-up time)

    with tempfile.TemporaryDirectory(prefix="bench-hotload-") as tmp:
        work = Path(tmp)
        urn, base_name, base_dir, env = prepare_base(args.model, work, work / "data")
        adapters = make_adapters(base_dir, base_name, work / "adapters", 4, args.rank, ["q_proj", "k_proj", "v_proj", "o_proj"])
        with moto_server(work / "moto.log") if args.store == "s3" else nullcontext() as endpoint:
            if endpoint:
                objects.s3_client(Settings(s3_endpoint_url=endpoint)).create_bucket(Bucket="bench")
                store_env = {"CUSTOMIZER_STORE_URI": "s3://bench/adapters", "CUSTOMIZER_S3_ENDPOINT_URL": endpoint}
            else:
                store_env = {"CUSTOMIZER_STORE_URI": (work / "store").as_uri()}
            settings = Settings(data_dir=work / "publisher", store_uri=store_env["CUSTOMIZER_STORE_URI"], s3_endpoint_url=endpoint)
            files = ["adapter_config.json", "adapter_model.safetensors"]
            # 2 x count distinct versions (cycling 4 weight sets): the server has seen none of them.
            uris = [publish(adapters[i % 4], files, f"bench/hot-{i}", "1", base_name, {}, settings).uri for i in range(2 * args.count)]
            size = sum((adapters[0] / f).stat().st_size for f in files)
            with serve_models(urn, env | store_env, 4, args.threads, work / "server.log") as url:
                client = httpx.Client(base_url=url, timeout=600)

                def ask(model: str) -> float:
                    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0}
                    started = time.perf_counter()
                    client.post("/v1/chat/completions", json=body).raise_for_status()
                    return time.perf_counter() - started

                ask(base_name)
                route, first = [], []
                for i in range(args.count):
                    started = time.perf_counter()
                    client.post("/v1/load_lora_adapter", json={"lora_name": f"route-{i}", "lora_path": uris[i]}).raise_for_status()
                    route.append(time.perf_counter() - started)
                for i in range(args.count, 2 * args.count):
                    first.append(ask(f"bench/hot-{i}@1"))
                # The server holds 4: these were evicted long ago, their verified copies are on disk.
                evicted = [ask(f"bench/hot-{i}@1") for i in range(args.count, 2 * args.count)]
                warm_name = f"bench/hot-{2 * args.count - 1}@1"
                warm = [ask(warm_name) for _ in range(args.count)]

    rows = [
        ("in memory (baseline)", warm),
        ("load route (fetch+verify+load)", route),
        ("first request, unseen version", first),
        ("first request after eviction", evicted),
    ]
    base_p50 = percentile(warm, 50)
    print(f"\nhot-load latency, {args.model} model ({base_name}), adapters r={args.rank} on q/k/v/o ({size / 1024:.0f} KiB), "
          f"{args.store} store, {args.count} samples each; the server holds at most 4 adapters")
    print(f"{'':34} {'p50 ms':>8} {'p99 ms':>8} {'p50 vs in memory':>17}")
    for label, values in rows:
        print(f"{label:34} {1000 * percentile(values, 50):8.1f} {1000 * percentile(values, 99):8.1f} {percentile(values, 50) / base_p50:16.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "store": args.store, "count": args.count,
                                         "p50": {label: percentile(values, 50) for label, values in rows},
                                         "p99": {label: percentile(values, 99) for label, values in rows}}, indent=2))


if __name__ == "__main__":
    main()
