"""``/metrics`` of serve-models in Prometheus' text format (``prometheus_client``).

Requests by model and status, prompt and generated tokens by model, batch sizes and how long
requests waited in the queue before their batch started. Each server has its own registry, so two
servers in one process (the tests) count apart.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

PREFIX = "customizer_serving"


class ServingMetrics:
    """The counters and histograms one server updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(f"{PREFIX}_requests", "Generation requests answered, by model and HTTP status.",
                                ["model", "status"], registry=self.registry)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens processed, by model.", ["model"], registry=self.registry)
        self.generated_tokens = Counter(f"{PREFIX}_generated_tokens", "Tokens generated, by model.", ["model"], registry=self.registry)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Rows of a batch when requests start it or join it.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.queue_wait = Histogram(f"{PREFIX}_queue_wait_seconds", "Time from a request's arrival to the start of its batch.",
                                    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry)

    def started(self, jobs: list[Any], rows: int) -> None:
        """Record requests starting (how long each waited) and the rows of the batch they start or join."""
        now = time.monotonic()
        self.batch_size.observe(rows)
        for job in jobs:
            self.queue_wait.observe(now - job.enqueued)

    def answered(self, model: str, status: int) -> None:
        """Record one request's outcome."""
        self.requests.labels(model=model, status=str(status)).inc()

    def tokens(self, model: str, prompt_tokens: int, generated_tokens: int) -> None:
        """Record the tokens one request's answer took."""
        if prompt_tokens:
            self.prompt_tokens.labels(model=model).inc(prompt_tokens)
        if generated_tokens:
            self.generated_tokens.labels(model=model).inc(generated_tokens)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
