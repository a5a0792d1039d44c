"""The matmul throughput of the device training runs on: measured once per machine, then cached.

A training cost is FLOPs over FLOP/s; a data-sheet peak says little about a CPU (its cores, vector
units and threads vary by machine) and nothing about a GPU shared or clocked down. A short square
matmul in the precision training uses measures what this device sustains. The answer is kept in a
small JSON file, keyed by the device's name, torch's version, the thread count and the dtype, so
only the first estimate on a machine pays for the probe, and every estimate on it uses the same
figure. A probe run while other work loads the machine reads low; the utilisation that finished jobs
achieve is measured against the same cached figure, so calibration corrects for it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

log = logging.getLogger("customizer.probe")

Dtype = Literal["float32", "bfloat16"]
CACHE_FILE = "device-peaks.json"
BURSTS = 4


class DevicePeak(BaseModel):
    """A device's measured matmul throughput in one precision."""

    device: str  # the CPU model or GPU name
    kind: Literal["cpu", "cuda"]
    dtype: Dtype
    tflops: float
    cached: bool = False  # read from the cache file instead of measured now


def matmul_peak(dtype_name: str, size: int = 1024, seconds: float = 3.0, device: str = "cpu") -> float:
    """Sustained GFLOP/s of a square ``size`` matmul on ``device`` (0 when the dtype is not supported).

    Args:
        dtype_name: a torch dtype's name (``float32``, ``bfloat16``).
        size: the matrices' side.
        seconds: how long to keep multiplying (after one warm-up product).
        device: ``cpu`` or ``cuda``.
    """
    import torch

    dtype = getattr(torch, dtype_name)
    try:
        a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
        a @ b
    except RuntimeError:  # the backend has no kernel for this dtype
        return 0.0
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
        if device == "cuda" and count % 16:
            continue  # GPU kernels queue; the clock is read after synchronising every 16 products
        sync()
    sync()
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e9


def device_name(kind: Literal["cpu", "cuda"]) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo`` on Linux; the platform's answer elsewhere)."""
    if kind == "cuda":
        import torch

        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass  # not Linux: the platform names the processor
    return platform.processor() or platform.machine() or "cpu"


def cache_key(name: str, dtype: Dtype, threads: int) -> str:
    import torch

    return f"{name} | torch {torch.__version__} | {threads} threads | {dtype}"


def device_peak(dtype: Dtype, cache_dir: Path, kind: Literal["cpu", "cuda"] = "cpu", seconds: float = 0.3) -> DevicePeak:
    """This machine's matmul TFLOP/s in ``dtype``: from the cache file in ``cache_dir``, else measured
    (a fraction of a second) and written there.

    Args:
        dtype: the precision training computes in.
        cache_dir: the folder of the cache file (the platform's cache folder).
        kind: probe the CPU or the (first) CUDA GPU.
        seconds: how long a measurement runs.
    """
    import torch

    name = device_name(kind)
    key = cache_key(name, dtype, torch.get_num_threads() if kind == "cpu" else 1)
    path = cache_dir / CACHE_FILE
    cache = _read(path)
    if key in cache:
        return DevicePeak(device=name, kind=kind, dtype=dtype, tflops=cache[key], cached=True)
    size = 4096 if kind == "cuda" else 1024
    # The best of a few bursts: a burst that other work on the machine interrupted does not count.
    tflops = max(matmul_peak(dtype, size=size, seconds=seconds / BURSTS, device=kind) for _ in range(BURSTS)) / 1000
    cache[key] = tflops
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(cache, indent=2, sort_keys=True))
        partial.replace(path)  # whole or not at all: two estimates at once never leave half a file
    except OSError as exc:  # a read-only data folder: the next estimate measures again
        log.warning("cannot write the device peak cache %s: %s", path, exc)
    return DevicePeak(device=name, kind=kind, dtype=dtype, tflops=tflops)


def _read(path: Path) -> dict[str, float]:
    """The cache's entries; a missing or unreadable file is an empty cache (it only saves a probe)."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable device peak cache %s: %s", path, exc)
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: float(v) for k, v in value.items() if isinstance(v, (int, float)) and v > 0}
