"""Seconds from a customize job's ``Completed`` to its adapter answering through vLLM.

    python bench/vllm_golive.py [--json results.json]

vLLM runs as users run it beside customizer (``customizer serving start``, ``make vllm``), on the
benchmarks' tiny Llama; ``CUSTOMIZER_SERVING_ENDPOINT`` points the platform's hand-off at it. A real
``customize`` job (Prefect's local API, MLflow on SQLite, a file store) trains a LoRA adapter on a
task the tiny model learns in a few steps ("reply ok"), evaluates, gates, registers, publishes,
promotes and hands the adapter off. The moment the flow run turns ``Completed`` (Prefect's state
timestamp) starts the clock; a client then asks vLLM for ``namespace/name`` (and ``@version``)
until it answers 200, and the clock stops at the answer. The go-live task's own duration (the
hand-off) is reported beside it.

The tiny model's general-benchmark scores are noise, so the operator policy opens the forgetting
limit (as the platform's own tests of the hand-off do); everything else is the default gate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_tiny_model, isolate_platform, vllm_serving
from customize_overhead import task_durations

from core.settings import Settings  # common puts the repository on the path
from training.tiny import write_tiny_config
from serving.vllm import vllm_installed

CONFIG = "bench/tiny-golive@v1.0.0+cpu"
BASE_NAME = "bench/tiny-golive"
OUTPUT = "bench/golive"
GOAL_SECONDS = 2.0


def write_world(work: Path) -> tuple[Path, Path]:
    """The tiny base, a config naming it, and a dataset it learns; returns (config folder, dataset folder)."""
    base = build_tiny_model(work / "base")
    configs = work / "configs"
    configs.mkdir()
    write_tiny_config(configs, CONFIG, BASE_NAME, base)
    dataset = work / "dataset"
    for split, rows in (("training", range(40)), ("testing", range(100, 108))):
        (dataset / split).mkdir(parents=True)
        (dataset / split / "data.jsonl").write_text("".join(
            json.dumps({"prompt": f"Reply with the word ok. Item {i}", "completion": "ok"}) + "\n" for i in rows))
    return configs, dataset


def first_answer(url: str, model: str, deadline: float) -> tuple[datetime, int]:
    """Ask ``model`` until it answers 200; (when it answered, requests it took)."""
    import httpx  # delayed: httpx is slow to import (start-up time)

    body = {"model": model, "messages": [{"role": "user", "content": "Reply with the word ok. Item 7"}], "max_tokens": 2, "temperature": 0}
    attempts = 0
    while True:
        attempts += 1
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        if response.status_code == 200:
            return datetime.now(timezone.utc), attempts
        if time.monotonic() > deadline:
            raise RuntimeError(f"{model} did not answer through vLLM: {response.status_code} {response.text[:300]}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not vllm_installed(Settings()):
        raise SystemExit("vLLM is not installed: run `make vllm` first")

    with tempfile.TemporaryDirectory(prefix="bench-golive-") as scratch:
        work = Path(scratch)
        configs, dataset = write_world(work)
        env = isolate_platform(work, CUSTOMIZER_CONFIG_DIRS=json.dumps([str(configs)]),
                               CUSTOMIZER_ALLOWED_FILE_ROOTS=json.dumps([str(work)]))
        with vllm_serving(CONFIG, env, work / "vllm.log", max_loras=2, max_rank=8) as url:
            os.environ["CUSTOMIZER_SERVING_ENDPOINT"] = url
            # delayed: Prefect reads PREFECT_HOME and its other settings when imported, so these come after the
            # environment above (and Prefect is heavy: start-up time)
            from core.settings import apply_environment, get_settings
            from core.specs import CustomizationSpec
            from evaluation.policy import PromotionPolicy, write_policy
            from flows.customize import customize

            settings = get_settings()
            apply_environment(settings)
            write_policy(settings, None, PromotionPolicy(max_general_drop=100.0))
            spec = CustomizationSpec.model_validate({
                "config": CONFIG, "dataset": str(dataset), "output_model": OUTPUT,
                "hyperparameters": {"epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "lora": {"adapter_dim": 8, "alpha": 16}},
                "evaluation": {"general_benchmarks": ["capitals"], "limit": 8, "max_new_tokens": 4},
            })
            state = customize(spec, return_state=True)
            result = state.result()  # raises if the flow failed
            completed = state.timestamp
            if result.decision is None or result.decision.action != "promote" or result.registered is None:
                raise SystemExit(f"the job was not promoted ({result.outcome}, {result.decision}); nothing went live")
            deadline = time.monotonic() + 300
            answered, attempts = first_answer(url, OUTPUT, deadline)
            versioned, _ = first_answer(url, f"{OUTPUT}@{result.registered.version}", deadline)
            durations = dict(task_durations(state.state_details.flow_run_id))

    seconds = (answered - completed).total_seconds()
    go_live = sum(v for k, v in durations.items() if k.startswith("go-live"))
    print(f"\ncustomize job on {BASE_NAME}, handed off to vLLM at {url}")
    print(f"Completed at {completed.isoformat()}; {OUTPUT} answered through vLLM at {answered.isoformat()} "
          f"({attempts} request(s)): {seconds:.2f} s (goal <= {GOAL_SECONDS:.1f} s)")
    print(f"the go-live task (hand-off inside the job): {go_live:.2f} s; the version's own name answered "
          f"{(versioned - completed).total_seconds():.2f} s after Completed")
    if args.json:
        args.json.write_text(json.dumps({
            "model": "tiny", "seconds": seconds, "attempts": attempts, "go_live_task": go_live, "goal": GOAL_SECONDS,
            "completed": completed.isoformat(), "answered": answered.isoformat(), "tasks": durations,
        }, indent=2))


if __name__ == "__main__":
    main()
