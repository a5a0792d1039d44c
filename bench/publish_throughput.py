"""Publication throughput: ``deploy.store.publish`` against a plain boto3 ``upload_file`` of the same
files to the same S3 server (moto, in its own process), measured in the same run.

publish does more than upload: it hashes every file (sha256 into the manifest and the object
metadata), checks what is already stored, and writes the manifest last. The goal is >= 0.9x the
plain upload's throughput. A re-publish of identical content is timed too (it should send 0 bytes).
The two sides alternate which goes first, and each starts from the same server: what the other
stored is deleted and flushed first.

    python bench/publish_throughput.py [--shard-mib 64] [--shards 3] [--repeats 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, moto_server

from core import objects  # common puts the repository on the path
from core.settings import Settings
from deploy.store import publish


def _delete(s3, prefix: str) -> None:
    """Remove what one side stored, so the server holds the same for every timed side."""
    keys = [{"Key": key} for key, _ in objects.list_keys(s3, "bench", prefix)]
    s3.delete_objects(Bucket="bench", Delete={"Objects": keys})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-mib", type=int, default=64, help="size of each weight shard (MiB)")
    parser.add_argument("--shards", type=int, default=3, help="number of shards (a full-weights model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        work = Path(tmp)
        folder = work / "model"
        folder.mkdir()
        names = []
        for i in range(args.shards):
            name = f"model-{i + 1:05d}-of-{args.shards:05d}.safetensors"
            (folder / name).write_bytes(os.urandom(args.shard_mib << 20))
            names.append(name)
        (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
        (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
        names += ["config.json", "model.safetensors.index.json"]
        total = sum((folder / n).stat().st_size for n in names)

        with moto_server(work / "moto.log") as endpoint:
            settings = Settings(data_dir=work / "data", store_uri="s3://bench/published", s3_endpoint_url=endpoint)
            s3 = objects.s3_client(settings)  # the baseline: the same client, plain upload_file calls
            s3.create_bucket(Bucket="bench")
            ours, plain, again = [], [], []
            for repeat in range(args.repeats):
                # Alternate which goes first, so neither always meets a warmer server.
                order = ["plain", "ours"] if repeat % 2 == 0 else ["ours", "plain"]
                for which in order:
                    # Each side starts from the same server and disk: moto keeps large objects in
                    # temporary files, whose write-back would otherwise land on the side timed next.
                    os.sync()
                    started = time.perf_counter()
                    if which == "plain":
                        for name in names:
                            s3.upload_file(str(folder / name), "bench", f"plain/{repeat}/{name}")
                        plain.append(time.perf_counter() - started)
                        _delete(s3, f"plain/{repeat}/")
                    else:
                        result = publish(folder, names, "bench/model", str(repeat), "bench/base", {}, settings)
                        ours.append(time.perf_counter() - started)
                        assert len(result.uploaded) == len(names)
                        started = time.perf_counter()
                        result = publish(folder, names, "bench/model", str(repeat), "bench/base", {}, settings)
                        again.append(time.perf_counter() - started)
                        assert result.bytes_uploaded == 0 and result.uploaded == []
                        _delete(s3, f"published/bench/model/{repeat}/")

    mib = total / (1 << 20)
    plain_rate, ours_rate = mib / median(plain), mib / median(ours)
    print(f"\npublication of {len(names)} files, {mib:.0f} MiB, to moto S3 over HTTP (median of {args.repeats})")
    print(f"{'':34} {'seconds':>8} {'MiB/s':>8} {'ratio':>6}")
    print(f"{'boto3 upload_file (baseline)':34} {median(plain):8.2f} {plain_rate:8.1f} {1.0:6.2f}")
    print(f"{'customizer publish':34} {median(ours):8.2f} {ours_rate:8.1f} {ours_rate / plain_rate:6.2f}   goal >= 0.90")
    print(f"{'re-publish, identical (0 bytes)':34} {median(again):8.2f}")
    print(f"runs (s): baseline {', '.join(f'{t:.2f}' for t in plain)}; publish {', '.join(f'{t:.2f}' for t in ours)}")
    # Each repeat's two sides ran back to back: their ratios drift less with the machine's load.
    paired = [p / o for p, o in zip(plain, ours)]
    print(f"ratio per repeat: {', '.join(f'{r:.2f}' for r in paired)} (median {median(paired):.2f})")
    if args.json:
        args.json.write_text(json.dumps({"files": len(names), "mib": mib, "plain_seconds": plain, "ours_seconds": ours,
                                         "republish_seconds": again, "plain_mib_s": plain_rate, "ours_mib_s": ours_rate,
                                         "paired_ratios": paired}, indent=2))


if __name__ == "__main__":
    main()
