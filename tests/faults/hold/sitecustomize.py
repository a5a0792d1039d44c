"""Loaded at start-up by every Python process of a worker the fault tests start (it is first on
their ``PYTHONPATH``). With ``FAULTS_HOLD_AT=<task name>[:<stage>]`` set, the named Prefect task
of a flow run writes ``FAULTS_HOLD_MARKER`` once its body has started and then waits there, so a
test can kill the worker while that stage is in progress, at a point it chose, every time."""

import os

_AT = os.environ.get("FAULTS_HOLD_AT")


def _install(name: str, stage: str | None, marker: str) -> None:
    import functools
    import inspect
    import time

    import prefect.tasks

    original = prefect.tasks.Task.__init__

    def held(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wait_here(*args, **kwargs):
            if stage is None or signature.bind(*args, **kwargs).arguments.get("stage") == stage:
                with open(marker, "w") as out:
                    out.write(str(os.getpid()))
                while True:
                    time.sleep(1)
            return fn(*args, **kwargs)

        return wait_here

    def __init__(self, fn=None, *args, **kwargs):
        if fn is not None and kwargs.get("name") == name:
            fn = held(fn)
        original(self, fn, *args, **kwargs)

    prefect.tasks.Task.__init__ = __init__


if _AT:
    _name, _, _stage = _AT.partition(":")
    _install(_name, _stage or None, os.environ["FAULTS_HOLD_MARKER"])
