"""The REST API under load while a job trains: latency and errors per endpoint, and what the load
costs the training, measured in the same run.

    python bench/api_load.py [--model tiny|embedded] [--epochs 8] [--clients 50] [--interval 1.0]
                             [--repeat 1] [--services-nice N] [--torch-threads N] [--json results.json]

It starts the whole platform as ``customizer up`` does (Prefect server, the worker serving the
deployments, the MLflow UI, the REST API; the services at their default niceness unless
``--services-nice`` says otherwise) with an S3 artifact store (moto's server, over HTTP), and
registers the support-tickets dataset in the Entity Store. Then, through the REST API, ``--repeat``
times in turn:

1. **unloaded**: a customization job runs to completion; while it trains, one client asks for its
   status and the job list once a second: that client's latencies are the baseline;
2. **loaded**: the same job again; while it trains, ``--clients`` clients each ask, in turn, for
   the job's status and for the job list, waiting ``--interval`` seconds between requests (a NeMo
   SDK polling loop) over a keep-alive connection; every answer that is not a 200 counts as an error.

The training throughput of each job is the ``tokens_per_second`` its trainer logged to MLflow
(real tokens since training started, over the wall time, validation included): the ratio of the
medians loaded / unloaded is what the clients cost the training (goal >= 0.90). The clients run in
this process, on the same machine, so their CPU is taken from the training too: the CPU seconds
each component (API, Prefect server, MLflow, worker + training, clients) spent while the jobs ran
are reported with its niceness.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, moto_server, percentile  # noqa: E402

from core.processes import stop_processes  # noqa: E402 (common puts the repository on the path)

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
    """Stop ``customizer up``: it stops its services on SIGTERM; what is left after 90 s is killed."""
    stop_processes(process, grace=90, kill_wait=10)


def component_cpu(up: subprocess.Popen) -> dict[int, tuple[str, float, int]]:
    """CPU seconds so far of every process of the platform: ``pid -> (component, seconds, niceness)``.
    A component is one of the processes ``customizer up`` started with everything it started (the
    worker's children are the flow runs: the training)."""
    import psutil  # delayed: only this measurement needs it

    names = {"uvicorn": "api", "prefect": "prefect server", "mlflow": "mlflow", "worker": "worker + training"}
    found = {}
    for top in psutil.Process(up.pid).children():
        try:
            line = " ".join(top.cmdline())
            name = next((n for key, n in names.items() if key in line), line[:40])
            for process in [top, *top.children(recursive=True)]:
                times = process.cpu_times()
                found[process.pid] = (name, times.user + times.system, process.nice())
        except psutil.Error:
            continue
    return found


def cpu_spent(before: dict[int, tuple[str, float, int]], after: dict[int, tuple[str, float, int]]) -> dict[str, dict[str, float]]:
    """CPU seconds per component between two ``component_cpu`` snapshots (a process that started in
    between counts from zero; one that ended in between is lost), with the component's niceness."""
    spent: dict[str, dict[str, float]] = {}
    for pid, (name, seconds, nice) in after.items():
        entry = spent.setdefault(name, {"cpu_seconds": 0.0, "nice": nice})
        entry["cpu_seconds"] += seconds - before.get(pid, (name, 0.0, nice))[1]
    return spent


def create_job(client, epochs: int, model: str, tag: str) -> str:
    body = {"config": CONFIGS[model], "dataset": "bench/support-tickets", "output_model": f"bench/load-{tag}",
            "hyperparameters": {"training_type": "sft", "finetuning_type": "lora", "epochs": epochs, "batch_size": 8,
                                "learning_rate": 0.0005, "lora": {"adapter_dim": 8, "alpha": 16}}}
    response = client.post("/v1/customization/jobs", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"POST /v1/customization/jobs answered {response.status_code}: {response.text[:500]}")
    return response.json()["id"]


class Connection:
    """One keep-alive HTTP/1.1 connection that sends GETs and reads the answers: a load generator
    should cost little next to the server it loads (httpx spends ~3 ms of CPU per request, more than
    the API takes to answer it), since on one machine every client's CPU is taken from the training."""

    def __init__(self, api: str):
        from urllib.parse import urlsplit

        parts = urlsplit(api)
        self.host, self.port = parts.hostname, parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        """The answer's status code (its body is read and dropped); raises OSError/ValueError on a broken answer.
        A kept-alive connection the server closed meanwhile (uvicorn closes idle ones after 5 s) is
        opened again and the request sent once more, as HTTP clients do for an idempotent request."""
        reused = self.writer is not None
        if not reused:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: application/json\r\n\r\n".encode())
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                    raise
                self.close()  # closed while idle: nothing of an answer came, so ask again on a new connection
                return await self.get(path)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
            if "content-length" not in headers:
                raise ValueError(f"answer without Content-Length: {lines[0]}")
            await self.reader.readexactly(int(headers["content-length"]))
        except (OSError, ValueError, asyncio.IncompleteReadError):
            self.close()
            raise
        if headers.get("connection") == "close":
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def poll(api: str, job_id: str, clients: int, interval: float) -> dict[str, list[tuple[float, bool]]]:
    """While the job trains, ``clients`` clients each ask in turn for its status and for the job list,
    ``interval`` s apart; returns (seconds, ok) per request and endpoint. An observer (not counted)
    follows the job's progress: training has begun once the status reports steps, and has ended at
    100% or when the job finishes."""
    import httpx  # delayed: only the load and health checks need it (start-up time)

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
        connection = Connection(api)
        await asyncio.sleep(interval * index / clients)  # spread the clients over one interval
        turn = index
        while not trained.is_set():
            name = list(endpoints)[turn % 2]
            turn += 1
            started = time.perf_counter()
            try:
                ok = await asyncio.wait_for(connection.get(endpoints[name]), 60) == 200
            except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
                ok = False
                connection.close()
            samples[name].append((time.perf_counter() - started, ok))
            if interval:
                await asyncio.sleep(interval)
        connection.close()

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


def run_job(up: subprocess.Popen, api: str, model: str, epochs: int, tag: str, clients: int, interval: float) -> tuple[str, dict, dict]:
    """One job, polled by ``clients`` clients until it finishes; returns its id, latencies, and the
    wall time, CPU per component and load average while it ran."""
    import httpx  # delayed: only the load and health checks need it (start-up time)

    with httpx.Client(base_url=api, timeout=120) as client:
        job_id = create_job(client, epochs, model, tag)
        processes = component_cpu(up)
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        samples = asyncio.run(poll(api, job_id, clients, interval))
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        components = cpu_spent(processes, component_cpu(up))
        # The machine's 1-minute load average: what else competed for the cores (other work included).
        load = [load_before, os.getloadavg()[0]]
        status = client.get(f"/v1/customization/jobs/{job_id}/status").json()
    if status["status"] != "completed":
        raise RuntimeError(f"job {job_id} ended {status['status']}: {json.dumps(status.get('status_logs', []))[-1500:]}")
    client_cpu = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    components["clients (this process)"] = {"cpu_seconds": client_cpu, "nice": os.nice(0)}
    return job_id, summarise(samples), {"wall": wall, "client_cpu_seconds": client_cpu, "load_average": load, "cpu": components}


def training_rate(tracking_uri: str, job_id: str) -> dict[str, float]:
    """The job's training throughput as its trainer logged it to MLflow (last point: the whole run)."""
    from mlflow.tracking import MlflowClient  # delayed: mlflow is heavy (start-up time)

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
    parser.add_argument("--repeat", type=int, default=1, help="unloaded and loaded jobs, in turn, this many times each (medians reported)")
    parser.add_argument("--services-nice", type=int, default=None,
                        help="niceness of the API, Prefect server and MLflow UI (CUSTOMIZER_SERVICES_NICE; default: the platform's)")
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
            if args.services_nice is not None:
                env["CUSTOMIZER_SERVICES_NICE"] = str(args.services_nice)
            for leaked in ("PREFECT_API_URL", "CUSTOMIZER_MLFLOW_TRACKING_URI"):
                env.pop(leaked, None)
            import boto3  # delayed: boto3 and httpx are heavy (start-up time)
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
                sys.path.insert(0, str(ROOT))
                from core.settings import Settings

                tracking_uri = Settings(data_dir=data_dir).tracking_uri
                runs: dict[str, list[dict]] = {"unloaded": [], "loaded": []}
                plan = [("unloaded", 1, 1.0), ("loaded", args.clients, args.interval)] * args.repeat
                for number, (label, clients, interval) in enumerate(plan):
                    job_id, latencies, usage = run_job(up, api, args.model, args.epochs, f"{label}-{number}", clients, interval)
                    rate = training_rate(tracking_uri, job_id)
                    runs[label].append({"job_id": job_id, "latency": latencies, **usage, **rate})
                    print(f"{label}: job {job_id} {usage['wall']:.0f} s, training {rate['tokens_per_second']:.0f} tok/s", flush=True)
            finally:
                stop_platform(up)

    phases = {label: merged(each, clients) for (label, clients) in (("unloaded", 1), ("loaded", args.clients)) for each in [runs[label]]}
    report(args, phases, platform_start)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "epochs": args.epochs, "clients": args.clients, "interval": args.interval,
                                         "repeat": args.repeat, "torch_threads": args.torch_threads, "p99_goal": P99_GOAL,
                                         "platform_start": platform_start, "phases": phases}, indent=2))


def merged(runs: list[dict], clients: int) -> dict:
    """One phase over its repeats: the median training rate, latencies over every request, CPU summed."""
    latency: dict[str, dict[str, float]] = {}
    for name in runs[0]["latency"]:
        every = [r["latency"][name] for r in runs if name in r["latency"]]
        latency[name] = {"count": sum(e["count"] for e in every), "p50": statistics.median(e["p50"] for e in every),
                         "p99": max(e["p99"] for e in every),
                         "error_rate": sum(e["error_rate"] * e["count"] for e in every) / max(1, sum(e["count"] for e in every))}
    cpu: dict[str, dict[str, float]] = {}
    for run in runs:
        for name, entry in run["cpu"].items():
            cpu.setdefault(name, {"cpu_seconds": 0.0, "nice": entry["nice"]})["cpu_seconds"] += entry["cpu_seconds"]
    return {"clients": clients, "tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs),
            "wall": sum(r["wall"] for r in runs), "load_average": [min(r["load_average"][0] for r in runs), max(r["load_average"][1] for r in runs)],
            "client_cpu_seconds": sum(r["client_cpu_seconds"] for r in runs), "latency": latency, "cpu": cpu, "runs": runs}


def report(args: argparse.Namespace, phases: dict[str, dict], platform_start: float) -> None:
    unloaded = phases["unloaded"]
    print(f"\nREST API under load: {args.clients} clients, each one request every {args.interval:g} s (status and list in turn), "
          f"while a {args.model}-model job ({args.epochs} epochs, LoRA SFT) runs; {args.repeat} job(s) per phase; platform start {platform_start:.0f} s")
    print("(the training runs in the worker's flow-run process; the clients run in this process, on the same cores)")
    for label, phase in phases.items():
        print(f"\n{label} ({len(phase['runs'])} job(s), {phase['wall']:.0f} s, load average {phase['load_average'][0]:.1f} -> "
              f"{phase['load_average'][1]:.1f} on {os.cpu_count()} cores)")
        print(f"  {'endpoint':42} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for name, s in phase["latency"].items():
            print(f"  {name:42} {s['count']:8d} {1000 * s['p50']:8.1f} {1000 * s['p99']:8.1f} {100 * s['error_rate']:6.1f}%")
        print("  CPU while the jobs ran: " + ", ".join(f"{name} {e['cpu_seconds']:.1f} s (nice {e['nice']})" for name, e in phase["cpu"].items()))
        rates = ", ".join(f"{r['tokens_per_second']:.0f}" for r in phase["runs"])
        ratio = phase["tokens_per_second"] / unloaded["tokens_per_second"]
        print(f"  training {phase['tokens_per_second']:.0f} tok/s (median of {rates}) = {ratio:.2f}x unloaded (goal >= 0.90 under load)")


if __name__ == "__main__":
    main()
