"""The GPU readiness check: its tiny mode starts, trains both parts on the CPU and prints its table;
MFU is counted at 4N for LoRA and 6N per GPU for full weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check

REPO = Path(__file__).resolve().parents[2]


def test_mfu_counts_flops_per_token_per_gpu():
    side = {"tokens": 8000.0, "seconds": 2.0, "precision": "bf16-mixed", "final_loss": 1.5, "peak_gpu_mb": 1000.0}
    lora = gpu_check.row("LoRA SFT", "llama-3.1-8b", 8_000_000_000, 1, 4, side, 1000.0, None)
    assert lora["mfu"] == pytest.approx(4 * 8e9 * 4000 / 1e15) and lora["mfu_at"] == "4N"
    full = gpu_check.row("full weights, FSDP", "llama-3.2-1b", 1_000_000_000, 4, 6, side, 1000.0, None)
    assert full["mfu"] == pytest.approx(6 * 1e9 * 4000 / 4 / 1e15)
    assert gpu_check.row("LoRA SFT", "tiny", 10, 1, 4, side, None, None)["mfu"] is None  # no GPU, no peak
    failed = gpu_check.row("LoRA SFT", "tiny", 10, 1, 4, None, None, "exit status 1: boom")
    assert failed["error"] == "exit status 1: boom" and "tokens_per_second" not in failed


def test_tiny_mode_runs_both_parts_and_prints_the_table(tmp_path: Path):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "CUSTOMIZER_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", "--out", str(tmp_path / "out"), "--json", str(tmp_path / "r.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "GPU readiness on" in done.stdout and "real tok/s" in done.stdout and "FAILED" not in done.stdout
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [(r["part"].split(",")[0], r["mfu_at"], r["error"]) for r in rows] == [("LoRA SFT", "4N", None), ("full weights", "6N", None)]
    assert all(r["tokens_per_second"] > 0 and r["final_loss"] > 0 for r in rows)
    assert not (tmp_path / "out" / "tiny").exists(), "the random weights are removed after each part"
