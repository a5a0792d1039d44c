"""What polling costs: one refresh of a job's state shared by every client that polls it
(``SharedRefresh``), and one read of a job list shared by every client that lists (``Answers``).

A job's status lives in Prefect (its flow run) and MLflow (its metrics); asking them costs tens of
milliseconds of CPU across three processes. Fifty clients polling the same job would ask fifty
times a second and take the CPU its training needs, so a ``SharedRefresh`` asks at most once per
job every ``seconds``: a job refreshed that recently (and not saved since) is answered as it was,
and while one request refreshes a job the others answer with its last refresh (or, when there is
none yet, wait for this one) instead of asking again. A job that reached a final state is not
asked about again (it is saved with its final details by the refresh). An action that changes a
job's run (cancel, approval) calls ``forget`` so the next request sees it at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from api.db import Store
from core.settings import Settings

Job = dict[str, Any]
# (store, settings, unfinished jobs, detailed) -> the same jobs, as they are now
Refresh = Callable[[Store, Settings, list[Job], bool], list[Job]]


@dataclass
class _Refreshed:
    at: float  # time.monotonic()
    detailed: bool
    job: Job


class SharedRefresh:
    def __init__(self, refresh: Refresh, final: frozenset[str] | set[str], seconds: float = 2.0):
        self.refresh, self.final, self.seconds = refresh, final, seconds
        self._last: dict[str, _Refreshed] = {}
        self._busy: set[str] = set()  # jobs a request is refreshing now
        self._done = threading.Condition()

    def jobs(self, store: Store, settings: Settings, jobs: list[Job], detailed: bool = False) -> list[Job]:
        """``jobs`` with the unfinished ones brought up to date (``detailed``: with their metrics)."""
        open_jobs = [j for j in jobs if j["status"] not in self.final]
        if not open_jobs:
            return jobs
        answers: dict[str, Job] = {}
        with self._done:
            while True:
                clock, todo, wait = time.monotonic(), [], False
                for job in open_jobs:
                    last = self._last.get(job["id"])
                    usable = last is not None and (last.detailed or not detailed) and last.job["updated_at"] >= job["updated_at"]
                    if usable and (clock - last.at < self.seconds or job["id"] in self._busy):
                        answers[job["id"]] = last.job
                    elif job["id"] in self._busy:
                        wait = True
                    else:
                        todo.append(job)
                if not wait:
                    break
                answers.clear()
                self._done.wait(timeout=60)
            self._busy.update(job["id"] for job in todo)
        if todo:
            refreshed: list[Job] = []
            try:
                refreshed = self.refresh(store, settings, todo, detailed)
            finally:
                with self._done:
                    self._busy.difference_update(job["id"] for job in todo)
                    for job in refreshed:
                        if job["status"] in self.final:
                            self._last.pop(job["id"], None)
                        else:
                            self._last[job["id"]] = _Refreshed(time.monotonic(), detailed, job)
                    self._done.notify_all()
            answers.update((job["id"], job) for job in refreshed)
        return [answers.get(j["id"], j) for j in jobs]

    def recent(self, job_id: str, detailed: bool = False) -> Job | None:
        """The job as refreshed less than ``seconds`` ago (None: not that recently), without asking
        the database or Prefect: a polled job's status then costs no more than answering it."""
        with self._done:
            last = self._last.get(job_id)
        if last is None or (detailed and not last.detailed) or time.monotonic() - last.at >= self.seconds:
            return None
        return last.job

    def forget(self, job_id: str) -> None:
        """The next refresh of this job asks again (after an action that changed its run)."""
        with self._done:
            self._last.pop(job_id, None)


class Answers:
    """Serialized answers of a list endpoint, per caller and query, reused for at most ``seconds``
    while this process writes nothing of the listed kind: fifty clients listing jobs cost one read
    of every job (and its metrics) per interval instead of fifty a second. Like a refreshed status,
    a list may be up to ``seconds`` old for changes made by another API process."""

    def __init__(self, seconds: float = 2.0, size: int = 256):
        self.seconds, self.size = seconds, size
        self._answers: dict[Any, tuple[float, int, bytes]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, writes: int) -> bytes | None:
        with self._lock:
            hit = self._answers.get(key)
        if hit is None or hit[1] != writes or time.monotonic() - hit[0] >= self.seconds:
            return None
        return hit[2]

    def put(self, key: Any, writes: int, body: bytes) -> None:
        clock = time.monotonic()
        with self._lock:
            if len(self._answers) >= self.size:  # forget the expired ones, or all when none has expired
                kept = {k: v for k, v in self._answers.items() if clock - v[0] < self.seconds}
                self._answers = kept if len(kept) < self.size else {}
            self._answers[key] = (clock, writes, body)
