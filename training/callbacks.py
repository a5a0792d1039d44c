"""Trainer callbacks: stream losses to whoever tracks the job, and log progress with an ETA."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from transformers import TrainerCallback

log = logging.getLogger("customizer.training")

# (name, value, step) -> None; e.g. logs to MLflow. Names: "train_loss", "val_loss", "learning_rate".
MetricSink = Callable[[str, float, int], None]


class MetricsCallback(TrainerCallback):
    """Forward train loss (every logging step) and validation loss (every evaluation) to a sink,
    keep the curves, and log a progress line with the step, loss and time left."""

    def __init__(self, sink: MetricSink | None = None):
        self.sink = sink
        self.train_loss: list[tuple[int, float]] = []
        self.val_loss: list[tuple[int, float]] = []
        self._started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.monotonic()
        self._first_step = state.global_step  # > 0 when resuming from a checkpoint
        log.info("Training: %d steps over %s epoch(s)", state.max_steps, args.num_train_epochs)

    def _emit(self, name: str, value: float, step: int) -> None:
        if self.sink is not None:
            self.sink(name, value, step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        step = state.global_step
        if "loss" in logs:
            self.train_loss.append((step, float(logs["loss"])))
            self._emit("train_loss", float(logs["loss"]), step)
            if "learning_rate" in logs:
                self._emit("learning_rate", float(logs["learning_rate"]), step)
            done = step - self._first_step
            elapsed = time.monotonic() - self._started
            left = (state.max_steps - step) * elapsed / done if done else 0.0
            log.info(
                "step %d/%d (%.0f%%) train_loss %.4f | %.1f s/step, about %s left",
                step, state.max_steps, 100 * step / max(state.max_steps, 1), logs["loss"],
                elapsed / max(done, 1), _duration(left),
            )
        if "eval_loss" in logs:
            self.val_loss.append((step, float(logs["eval_loss"])))
            self._emit("val_loss", float(logs["eval_loss"]), step)
            log.info("epoch %.2f: val_loss %.4f", logs.get("epoch", state.epoch or 0), logs["eval_loss"])


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
