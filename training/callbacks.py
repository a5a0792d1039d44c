"""Trainer callbacks: stream metrics and progress to whoever tracks the job, log a progress line
with an ETA, and stop promptly when the job is cancelled."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger("customizer.training")

# (name, value, step) -> None, e.g. to MLflow. Names: train_loss, val_loss, forgetting_kl (at each
# validation, see training.forgetting), learning_rate, token_accuracy, tokens_per_second, and
# method-specific ones (reward, rewards/<fn>, ...).
MetricSink = Callable[[str, float, int], None]
# Progress snapshots in NeMo's status shape: steps_completed, epochs_completed, percentage_done, ...
ProgressSink = Callable[[dict[str, Any]], None]

_RENAMED = {"loss": "train_loss", "eval_loss": "val_loss", "mean_token_accuracy": "token_accuracy", "eval_mean_token_accuracy": "val_token_accuracy"}
_SKIPPED = {"epoch", "total_flos", "step_time"}


class MetricsCallback(TrainerCallback):
    """Forward every logged number to a sink (losses under NeMo's names), publish progress
    snapshots, and log ``step n/N [#####.....] loss, s/step, time left`` and, at each validation,
    ``val_loss (best), forgetting_kl``. A validation whose forgetting_kl exceeds ``forgetting_limit``
    is not kept (``training.forgetting``), so it does not count as the best val_loss."""

    def __init__(
        self, sink: MetricSink | None = None, progress: ProgressSink | None = None, tokens_per_example: float = 0.0,
        forgetting_limit: float | None = None,
    ):
        self.sink = sink
        self.progress = progress
        self.tokens_per_example = tokens_per_example
        self.forgetting_limit = forgetting_limit
        self.best_val: float | None = None
        self._started = 0.0
        self._first_step = 0
        self._last_logged = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.monotonic()
        self._first_step = state.global_step  # > 0 when resuming from a checkpoint
        log.info("Training: %d steps over %s epoch(s)%s", state.max_steps, args.num_train_epochs,
                 f", resuming at step {state.global_step}" if state.global_step else "")
        self._report(args, state, "running")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        step = state.global_step
        if "train_runtime" in logs:  # the end-of-training summary repeats what was already streamed
            return
        for key, value in logs.items():
            if key in _SKIPPED or not isinstance(value, (int, float)):
                continue
            self._emit(_RENAMED.get(key, key), float(value), step)
        done = step - self._first_step
        elapsed = time.monotonic() - self._started
        if "loss" in logs and done > 0 and state.is_world_process_zero:
            per_step = elapsed / done
            tokens = done * args.train_batch_size * args.gradient_accumulation_steps * args.world_size * self.tokens_per_example
            if tokens:
                self._emit("tokens_per_second", tokens / elapsed, step)
            share = step / max(state.max_steps, 1)
            bar = "#" * round(20 * share) + "." * (20 - round(20 * share))
            log.info(
                "step %d/%d [%s] %3.0f%% train_loss %.4f | %.1f s/step, about %s left",
                step, state.max_steps, bar, 100 * share, logs["loss"], per_step,
                _duration((state.max_steps - step) * per_step),
            )
        if "eval_loss" in logs:
            value = float(logs["eval_loss"])
            kl = logs.get("forgetting_kl")
            rejected = kl is not None and self.forgetting_limit is not None and not kl <= self.forgetting_limit
            if not rejected:
                self.best_val = value if self.best_val is None else min(self.best_val, value)
            log.info(
                "epoch %.2f: val_loss %.4f (best %s)%s", logs.get("epoch", state.epoch or 0), value,
                "n/a" if self.best_val is None else f"{self.best_val:.4f}",
                "" if kl is None else f", forgetting_kl {kl:.4f}" + (f" > max {self.forgetting_limit:g}" if rejected else ""),
            )
        self._report(args, state, "running")

    def on_train_end(self, args, state, control, **kwargs):
        self._report(args, state, "trained")

    def _emit(self, name: str, value: float, step: int) -> None:
        if self.sink is not None:
            self.sink(name, value, step)

    def _report(self, args, state, phase: str) -> None:
        if self.progress is None:
            return
        per_epoch = state.max_steps / args.num_train_epochs if args.num_train_epochs and args.max_steps <= 0 else state.max_steps
        self.progress(
            {
                "phase": phase,
                "steps_completed": state.global_step,
                "max_steps": state.max_steps,
                "steps_per_epoch": round(per_epoch) if per_epoch else None,
                "epochs_completed": int(state.epoch or 0),
                "percentage_done": round(100.0 * state.global_step / max(state.max_steps, 1), 2),
                "best_val_loss": self.best_val,
                "elapsed_time": time.monotonic() - self._started,
            }
        )


class StopCallback(TrainerCallback):
    """Stop at the next step boundary once ``should_stop()`` says so (checked at most once a second)."""

    def __init__(self, should_stop: Callable[[], bool], interval: float = 1.0):
        self.should_stop = should_stop
        self.interval = interval
        self.stopped = False
        self._checked = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        if now - self._checked >= self.interval:
            self._checked = now
            if self.should_stop():
                self.stopped = True
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False
                log.warning("Cancelled at step %d: stopping", state.global_step)
        return control


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
