"""The REST API under load while a job trains: latency and errors per endpoint, and what the load
costs the training, measured in the same run.

    python bench/api_load.py [--model tiny|embedded] [--epochs 8] [--clients 50] [--interval 1.0]
                             [--services-nice 10] [--torch-threads N] [--json results.json]

It starts the whole platform as ``customizer up`` does (Prefect server, the worker serving the
deployments, the MLflow UI, the REST API) with an S3 artifact store (moto's server, over HTTP), and
registers the support-tickets dataset in the Entity Store. Then, through the REST API:

1. **unloaded**: a customization job runs to completion; while it trains, one client asks for its
   status and the job list once a second: that client's latencies are the baseline;
2. **loaded**: the same job again; while it trains, ``--clients`` clients each ask, in turn, for
   the job's status and for the job list, waiting ``--interval`` seconds between requests (a NeMo
   SDK polling loop); every answer that is not a 200 counts as an error;
3. **loaded, services niced** (with ``--services-nice N``): the same, with the processes that
   answer the clients (API, Prefect server, MLflow UI) at ``nice N`` so training, which runs in
   the worker's flow-run process at normal priority, gets the CPU first.

The training throughput of each job is the ``tokens_per_second`` its trainer logged to MLflow
(real tokens since training started, over the wall time, validation included): the ratio loaded /
unloaded is what the clients cost the training (goal >= 0.90). The clients run in this process,
on the same machine: their own CPU time is reported, since on a small machine they compete with
the training as much as the API does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, moto_server, percentile  # noqa: E402

DATASET = ROOT / "customizer" / "datasets" / "support-tickets"
CONFIGS = {"embedded": "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu", "tiny": "customizer/tiny-llama@v1.0.0+cpu"}
FINISHED = {"completed", "failed", "cancelled"}
P99_GOAL = 1.0  # seconds: a status page that answers within a second under load


def start_platform(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str, Path]:
    """``customizer up`` on free ports, in its own process group; returns it, the API URL and its log."""
    ready = data_dir / "ready"
    log = data_dir / "up.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "customizer.cli", "up", "--port", "0", "--prefect-port", "0", "--mlflow-port", "0",
               "--poll-seconds", "1", "--ready-file", str(ready)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_platform(process)
            raise RuntimeError(f"customizer up did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return process, ready.read_text().splitlines()[0], log


def stop_platform(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def service_pids(up: subprocess.Popen) -> dict[str, list[int]]:
    """The processes of each platform component, by its command line (the worker's flow runs are its children)."""
    import psutil

    found: dict[str, list[int]] = {"api": [], "prefect": [], "mlflow": [], "worker": []}
    for child in psutil.Process(up.pid).children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "uvicorn" in line and "api.app" in line:
            found["api"].append(child.pid)
        elif "prefect" in line and "server" in line:
            found["prefect"].append(child.pid)
        elif "mlflow" in line:
            found["mlflow"].append(child.pid)
        elif "customizer.cli" in line and "worker" in line:
            found["worker"].append(child.pid)
    return found


def renice(pids: list[int], niceness: int) -> None:
    """Set the niceness of these processes and of everything they started (uvicorn and MLflow workers)."""
    import psutil

    for pid in pids:
        try:
            process = psutil.Process(pid)
            for each in [process, *process.children(recursive=True)]:
                each.nice(niceness)
        except psutil.Error:
            pass


def create_job(client, epochs: int, model: str, tag: str) -> str:
    body = {"config": CONFIGS[model], "dataset": "bench/support-tickets", "output_model": f"bench/load-{tag}",
            "hyperparameters": {"training_type": "sft", "finetuning_type": "lora", "epochs": epochs, "batch_size": 8,
                                "learning_rate": 0.0005, "lora": {"adapter_dim": 8, "alpha": 16}}}
    response = client.post("/v1/customization/jobs", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"POST /v1/customization/jobs answered {response.status_code}: {response.text[:500]}")
    return response.json()["id"]


async def poll(api: str, job_id: str, clients: int, interval: float) -> dict[str, list[tuple[float, bool]]]:
    """While the job trains, ``clients`` clients each ask in turn for its status and for the job list,
    ``interval`` s apart; returns (seconds, ok) per request and endpoint. An observer (not counted)
    follows the job's progress: training has begun once the status reports steps, and has ended at
    100% or when the job finishes."""
    import httpx

    endpoints = {"GET /v1/customization/jobs/{id}/status": f"/v1/customization/jobs/{job_id}/status",
                 "GET /v1/customization/jobs": "/v1/customization/jobs?page_size=10"}
    samples: dict[str, list[tuple[float, bool]]] = {name: [] for name in endpoints}
    training, trained, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def observer() -> None:
        async with httpx.AsyncClient(base_url=api, timeout=120) as client:
            while not finished.is_set():
                try:
                    status = (await client.get(endpoints["GET /v1/customization/jobs/{id}/status"])).json()
                except (httpx.HTTPError, ValueError):
                    await asyncio.sleep(0.5)
                    continue
                if status.get("steps_completed") is not None:
                    training.set()
                if (status.get("percentage_done") or 0) >= 100 or status["status"] in FINISHED:
                    training.set()
                    trained.set()
                if status["status"] in FINISHED:
                    finished.set()
                await asyncio.sleep(0.5)

    async def one(index: int) -> None:
        await training.wait()
        async with httpx.AsyncClient(base_url=api, timeout=60) as client:
            await asyncio.sleep(interval * index / clients)  # spread the clients over one interval
            turn = index
            while not trained.is_set():
                name = list(endpoints)[turn % 2]
                turn += 1
                started = time.perf_counter()
                try:
                    ok = (await client.get(endpoints[name])).status_code == 200
                except httpx.HTTPError:
                    ok = False
                samples[name].append((time.perf_counter() - started, ok))
                if interval:
                    await asyncio.sleep(interval)

    await asyncio.gather(observer(), *(one(i) for i in range(clients)))
    return samples


def summarise(samples: dict[str, list[tuple[float, bool]]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, values in samples.items():
        if not values:
            continue
        seconds = [s for s, _ in values]
        out[name] = {"count": len(values), "p50": percentile(seconds, 50), "p99": percentile(seconds, 99),
                     "error_rate": sum(1 for _, ok in values if not ok) / len(values)}
    return out


def run_job(api: str, model: str, epochs: int, tag: str, clients: int, interval: float) -> tuple[str, dict, dict]:
    """One job, polled by ``clients`` clients until it finishes; returns its id, latencies and final status."""
    import httpx

    with httpx.Client(base_url=api, timeout=120) as client:
        job_id = create_job(client, epochs, model, tag)
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        samples = asyncio.run(poll(api, job_id, clients, interval))
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        # The machine's 1-minute load average: what else competed for the cores (other work included).
        load = [load_before, os.getloadavg()[0]]
        status = client.get(f"/v1/customization/jobs/{job_id}/status").json()
    if status["status"] != "completed":
        raise RuntimeError(f"job {job_id} ended {status['status']}: {json.dumps(status.get('status_logs', []))[-1500:]}")
    client_cpu = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    return job_id, summarise(samples), {"wall": wall, "client_cpu_seconds": client_cpu, "load_average": load}


def training_rate(tracking_uri: str, job_id: str) -> dict[str, float]:
    """The job's training throughput as its trainer logged it to MLflow (last point: the whole run)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string=f"tags.`customizer.job_id` = '{job_id}'", max_results=1
    )
    history = sorted(client.get_metric_history(run.info.run_id, "tokens_per_second"), key=lambda m: m.step)
    if not history:
        raise RuntimeError(f"job {job_id}: no tokens_per_second in its MLflow run {run.info.run_id}")
    return {"tokens_per_second": history[-1].value, "steps": history[-1].step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each job (tiny: ~10 s each on 2 cores)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds each client waits between requests (0: none)")
    parser.add_argument("--services-nice", type=int, default=None, help="also run a loaded job with API, Prefect and MLflow at this niceness")
    parser.add_argument("--torch-threads", type=int, default=None, help="CPU threads the training uses (default: all cores)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-api-load-") as scratch:
        work = Path(scratch)
        data_dir = work / "data"
        with moto_server(work / "moto.log") as endpoint:
            env = dict(os.environ) | {
                "CUSTOMIZER_DATA_DIR": str(data_dir), "PREFECT_HOME": str(data_dir / "prefect"), "PYTHONPATH": str(ROOT),
                "CUSTOMIZER_STORE_URI": "s3://bench/published", "CUSTOMIZER_S3_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            }
            if args.torch_threads:
                env["CUSTOMIZER_TORCH_THREADS"] = str(args.torch_threads)
            for leaked in ("PREFECT_API_URL", "CUSTOMIZER_MLFLOW_TRACKING_URI"):
                env.pop(leaked, None)
            import boto3
            import httpx

            boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                         region_name="us-east-1").create_bucket(Bucket="bench")
            started = time.perf_counter()
            up, api, log = start_platform(data_dir, env)
            platform_start = time.perf_counter() - started
            try:
                with httpx.Client(base_url=api, timeout=60) as client:
                    dataset = shutil.copytree(DATASET, data_dir / "datasets" / DATASET.name)  # where the server may read
                    response = client.post("/v1/datasets", json={"name": "support-tickets", "namespace": "bench",
                                                                  "files_url": Path(dataset).as_uri()})
                    if response.status_code != 200:
                        raise RuntimeError(f"POST /v1/datasets answered {response.status_code}: {response.text[:500]}")
                pids = service_pids(up)
                phases = {}
                plan = [("unloaded", 1, 1.0, None), ("loaded", args.clients, args.interval, None)]
                if args.services_nice is not None:
                    plan.append(("loaded, services niced", args.clients, args.interval, args.services_nice))
                for label, clients, interval, nice in plan:
                    if nice is not None:
                        renice(pids["api"] + pids["prefect"] + pids["mlflow"], nice)
                    job_id, latencies, usage = run_job(api, args.model, args.epochs, label.split(",")[0].replace(" ", "-"), clients, interval)
                    sys.path.insert(0, str(ROOT))
                    from customizer.settings import Settings

                    rate = training_rate(Settings(data_dir=data_dir).tracking_uri, job_id)
                    phases[label] = {"job_id": job_id, "clients": clients, "interval": interval, "nice": nice,
                                     "latency": latencies, **usage, **rate}
                    print(f"{label}: job {job_id} {usage['wall']:.0f} s, training {rate['tokens_per_second']:.0f} tok/s", flush=True)
            finally:
                stop_platform(up)

    unloaded = phases["unloaded"]
    print(f"\nREST API under load: {args.clients} clients, each one request every {args.interval:g} s (status and list in turn), "
          f"while a {args.model}-model job ({args.epochs} epochs, LoRA SFT) runs; platform start {platform_start:.0f} s")
    print("(the training runs in the worker's flow-run process; the clients run in this process, on the same cores)")
    for label, phase in phases.items():
        niced = f", services at nice {phase['nice']}" if phase["nice"] is not None else ""
        print(f"\n{label} (job {phase['job_id']}, {phase['wall']:.0f} s, clients' CPU {phase['client_cpu_seconds']:.1f} s{niced}, "
              f"load average {phase['load_average'][0]:.1f} -> {phase['load_average'][1]:.1f} on {os.cpu_count()} cores)")
        print(f"  {'endpoint':42} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for name, s in phase["latency"].items():
            print(f"  {name:42} {s['count']:8d} {1000 * s['p50']:8.1f} {1000 * s['p99']:8.1f} {100 * s['error_rate']:6.1f}%")
        ratio = phase["tokens_per_second"] / unloaded["tokens_per_second"]
        print(f"  training {phase['tokens_per_second']:.0f} tok/s = {ratio:.2f}x unloaded (goal >= 0.90 under load)")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "epochs": args.epochs, "clients": args.clients, "interval": args.interval,
                                         "torch_threads": args.torch_threads, "p99_goal": P99_GOAL, "platform_start": platform_start,
                                         "phases": phases}, indent=2))


if __name__ == "__main__":
    main()
