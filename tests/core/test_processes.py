"""Stopping processes: SIGTERM, a grace period, then SIGKILL, for one process or its whole group."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from core.processes import NotHealthy, free_port, stop_processes, wait_until_healthy

WELL_BEHAVED = "import time; print('ready', flush=True); time.sleep(120)"
IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"


def _start(code: str, *args: str, session: bool = True) -> subprocess.Popen:
    """A Python child running ``code``, returned once it says it is ready (its handlers are set)."""
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, start_new_session=session)
    assert process.stdout.readline().strip() == "ready"
    return process


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its new parent to reap it counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_a_well_behaved_process_stops_on_sigterm_without_waiting_out_the_grace_period():
    process = _start(WELL_BEHAVED)
    started = time.monotonic()
    assert stop_processes(process, grace=30) == []
    assert process.returncode == -signal.SIGTERM
    assert time.monotonic() - started < 10


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period():
    process = _start(IGNORES_TERM)
    started = time.monotonic()
    assert stop_processes(process, grace=1.0) == []
    assert process.returncode == -signal.SIGKILL
    assert time.monotonic() - started >= 1.0


def test_the_children_in_a_process_group_are_stopped_with_their_parent():
    # The parent starts a child that ignores SIGTERM in its own group, then stops on SIGTERM itself.
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {IGNORES_TERM!r}], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        print(child.pid, flush=True)
        print("ready", flush=True)
        time.sleep(120)
    """)
    process = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child_pid = int(process.stdout.readline())
    assert process.stdout.readline().strip() == "ready"
    assert stop_processes(process, grace=1.0) == []
    assert process.returncode == -signal.SIGTERM
    assert _gone(child_pid), f"the child {child_pid} outlived its stopped group"


def test_a_program_that_cleans_up_on_ctrl_c_is_interrupted_with_sigint():
    process = _start("import time\ntry:\n    print('ready', flush=True); time.sleep(120)\nexcept KeyboardInterrupt:\n    raise SystemExit(3)")
    assert stop_processes(process, grace=30, first=signal.SIGINT) == []
    assert process.returncode == 3


def test_several_processes_share_one_grace_period():
    processes = [_start(IGNORES_TERM) for _ in range(3)]
    started = time.monotonic()
    assert stop_processes(*processes, grace=1.0) == []
    assert [p.returncode for p in processes] == [-signal.SIGKILL] * 3
    assert time.monotonic() - started < 2.5  # one grace period, not three


def test_no_grace_kills_at_once_so_no_clean_up_runs(tmp_path: Path):
    marker = tmp_path / "cleaned-up"
    code = textwrap.dedent(f"""
        import pathlib, signal, sys, time
        def clean_up(*_):
            pathlib.Path({str(marker)!r}).write_text("ran")
            sys.exit(0)
        signal.signal(signal.SIGTERM, clean_up)
        print("ready", flush=True)
        time.sleep(120)
    """)
    process = _start(code)
    assert stop_processes(process, grace=0) == []
    assert process.returncode == -signal.SIGKILL
    assert not marker.exists()


def test_a_process_alone_is_stopped_when_it_leads_no_group():
    process = _start(WELL_BEHAVED, session=False)
    with pytest.raises(ValueError, match="does not lead its own process group"):
        stop_processes(process, grace=5)  # its "group" is the test's own
    assert process.poll() is None
    assert stop_processes(process, grace=5, group=False) == []
    assert process.returncode == -signal.SIGTERM


def test_a_process_that_has_exited_already_is_fine():
    process = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    process.wait(timeout=30)
    assert stop_processes(process, grace=5) == []
    assert process.returncode == 0


def test_a_negative_grace_period_is_refused():
    with pytest.raises(ValueError, match="`grace` must be at least 0"):
        stop_processes(grace=-1)


def test_a_free_port_can_be_bound():
    port = free_port("127.0.0.1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_server_is_waited_for_until_it_answers_and_one_that_exits_is_reported_with_its_log(tmp_path):
    port = free_port()
    serve = f"import http.server as h; h.HTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler).serve_forever()"
    server = subprocess.Popen([sys.executable, "-c", serve], cwd=tmp_path, start_new_session=True)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/", server, 60)
        assert server.poll() is None
    finally:
        stop_processes(server)

    log = tmp_path / "crash.log"
    log.write_text("boot failed: no model\n")
    crashed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    with pytest.raises(NotHealthy, match=r"(?s)the server exited with 3.*boot failed: no model"):
        wait_until_healthy(f"http://127.0.0.1:{free_port()}/", crashed, 60, log)


def test_a_launcher_is_waited_for_until_its_log_says_it_is_ready(tmp_path):
    port, log = free_port(), tmp_path / "launcher.log"
    launcher = (f"import http.server as h, threading, time; s = h.HTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler); "
                "threading.Thread(target=s.serve_forever, daemon=True).start(); time.sleep(1.5); "
                "print('engine is serving', flush=True); time.sleep(120)")
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-c", launcher], cwd=tmp_path, stdout=out, start_new_session=True)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/", server, 60, log, says="engine is serving")
        assert "engine is serving" in log.read_text()  # healthy a moment earlier, but not yet ready
        with pytest.raises(NotHealthy, match="did not say 'never printed' within 1 s"):
            wait_until_healthy(f"http://127.0.0.1:{port}/", server, 1, log, says="never printed")
    finally:
        stop_processes(server)
