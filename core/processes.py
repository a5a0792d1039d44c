"""The processes the project starts: how to stop them, a free port for a server to bind, and a wait
for a server's health answer.

Servers, workers and distributed training runs are started with ``start_new_session=True``, so each
leads a process group holding everything it spawns (flow runs, ``torchrun`` ranks, uvicorn
workers). ``stop_processes`` stops such a group as one: SIGTERM, a grace period to shut down
cleanly, then SIGKILL for whatever is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def _signal(process: subprocess.Popen, sig: signal.Signals, group: bool) -> None:
    try:
        if group:
            os.killpg(process.pid, sig)
        elif process.poll() is None:
            process.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass  # gone already (macOS answers EPERM for a group whose leader is a zombie)


def stop_processes(
    *processes: subprocess.Popen, grace: float = 10.0, group: bool = True, kill_wait: float = 5.0,
    first: signal.Signals = signal.SIGTERM,
) -> list[subprocess.Popen]:
    """Stop processes: SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left.

    All processes get SIGTERM at once and share one grace period, so stopping several costs at
    most ``grace`` seconds, not one grace period each. With ``group`` (the default) every signal
    goes to the process group each one leads, and SIGKILL goes to the group even when its leader
    has exited in time: members still running then (children that outlived their parent) are
    stopped with it. ``grace=0`` sends SIGKILL alone, as a crash or a lost machine would: nothing
    gets to run its clean-up.

    Args:
        processes: started with ``subprocess.Popen``; with ``group``, each with
            ``start_new_session=True`` (or ``process_group=0``). Ones that have exited are fine.
        grace: seconds the processes have to exit after SIGTERM.
        group: signal each process's group rather than the process alone.
        kill_wait: seconds to wait for each process to be reaped after SIGKILL.
        first: the signal that asks them to stop; SIGINT for a program whose clean-up runs on
            Ctrl-C (``KeyboardInterrupt``).

    Returns:
        The processes still running after SIGKILL and ``kill_wait`` (normally none).

    Raises:
        ValueError: ``grace`` is negative, or ``group`` is set and a running process does not lead
            its own process group (signalling "its group" would reach nothing, or the caller).
    """
    if grace < 0:
        raise ValueError(f"`grace` must be at least 0 seconds, got {grace}")
    if group:
        for process in processes:
            try:
                leads = process.poll() is not None or os.getpgid(process.pid) == process.pid
            except ProcessLookupError:
                leads = True  # exited between the two calls
            if not leads:
                raise ValueError(f"process {process.pid} does not lead its own process group: start it with "
                                 "start_new_session=True, or stop it with group=False")
    if grace > 0:
        for process in processes:
            _signal(process, first, group)
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    left = []
    for process in processes:
        _signal(process, signal.SIGKILL, group)
        try:
            process.wait(timeout=kill_wait)
        except subprocess.TimeoutExpired:
            left.append(process)
    return left


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now, for a server about to start on ``host``.

    The port is free when this returns; another process may still take it before the server binds,
    so a server that can bind port 0 itself (and report the port) should.

    >>> 0 < free_port() < 65536
    True
    """
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class NotHealthy(RuntimeError):
    """A server exited, or did not answer its health check in time (the message ends with its log)."""


def wait_until_healthy(
    url: str, process: subprocess.Popen, timeout: float, log: Path | None = None, what: str = "the server", *, says: str | None = None,
) -> None:
    """Wait until ``GET url`` answers 200, polling every half second, and then, with ``says``, until
    that text is in ``log`` (a launcher that says when the server behind it is ready, within the same
    ``timeout``).

    Raises:
        NotHealthy: ``process`` exited first, or ``timeout`` seconds passed; the message names
            ``what`` and ends with the last 3000 characters of ``log``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                healthy = answer.status == 200
        except (urllib.error.URLError, OSError):
            healthy = False
        if healthy and (says is None or (log is not None and log.exists() and says in log.read_text(errors="replace"))):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            why = (f"exited with {process.returncode}" if process.returncode is not None
                   else f"did not say {says!r} within {timeout:.0f} s" if healthy else f"did not answer {url} within {timeout:.0f} s")
            tail = f":\n{log.read_text(errors='replace')[-3000:]}" if log is not None and log.exists() else ""
            raise NotHealthy(f"{what} {why}{tail}")
        time.sleep(0.5)
