"""Errors the API's logic raises, and what a caller may see of any text: ``ApiError`` and its kinds
become HTTP answers ``{"detail": ...}`` at the edge; ``for_caller`` takes tracebacks and server paths
out of every text that leaves the API (error details, job status messages, run logs)."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import site
import sys
from pathlib import Path

from core.settings import Settings

log = logging.getLogger("customizer.api")


class ApiError(Exception):
    """An error with a status code and a message that says what to fix (``headers``: sent with the answer)."""

    status_code = 400
    headers: dict[str, str] = {}

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class BadRequest(ApiError):
    status_code = 400


class Unauthorized(ApiError):
    status_code = 401


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    """A duplicate: answered with ``x-should-retry: false`` so NeMo's SDK does not retry it."""

    status_code = 409


class Unprocessable(ApiError):
    status_code = 422


class StoreUnavailable(ApiError):
    """The artifact store or the registry behind it cannot be read, or holds files that do not match their manifest."""

    status_code = 502


class TooManyRequests(ApiError):
    """Too many failed attempts from one client: answered 429 with ``Retry-After`` (seconds)."""

    status_code = 429

    def __init__(self, detail: str, retry_after: int):
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


# A traceback's first line (also an exception group's, whose frames are drawn with "|"), and the lines
# Python puts between chained tracebacks.
_TRACEBACK = re.compile(r"^\s*(\+\s*)?(Exception Group )?Traceback \(most recent call last\):\s*$")
_CHAINED = ("The above exception was the direct cause", "During handling of the above exception")


def for_caller(text: str, settings: Settings, reference: str | None = None) -> str:
    """``text`` as a caller may see it: each traceback block reduced to its exception line, and the
    server's own folders (data folder, virtual environment, site-packages, Python, the application,
    the home folder) replaced by placeholders such as ``<data>``. When a traceback was removed the
    text ends by saying where its full form is: ``reference`` (e.g. ``flow run <id>``, whose log
    keeps it), or else a reference id under which the full text is logged here.

    Args:
        text: an error message, status message or log line, as the server has it.
        settings: where the data folder is.
        reference: where the full text already is; None: log it now under a new reference id.

    Returns:
        The text without tracebacks or server paths.

    >>> settings = Settings(data_dir=Path("/srv/customizer"))
    >>> for_caller("FileNotFoundError: [Errno 2] No such file: '/srv/customizer/jobs/cust-1/x.jsonl'", settings)
    "FileNotFoundError: [Errno 2] No such file: '<data>/jobs/cust-1/x.jsonl'"
    >>> for_caller("/srv/customizer-old/x stays: it is not the data folder", settings)
    '/srv/customizer-old/x stays: it is not the data folder'
    >>> trace = ('Encountered exception during execution:\\nTraceback (most recent call last):\\n'
    ...          f'  File "{sys.prefix}/lib/python3.11/site-packages/prefect/engine.py", line 1, in run\\n'
    ...          '    result = call()\\nValueError: `learning_rate` must be positive')
    >>> print(for_caller(trace, settings, reference="flow run 7f3a"))
    Encountered exception during execution:
    ValueError: `learning_rate` must be positive (traceback removed; the server log of flow run 7f3a has it)
    """
    kept, removed, in_traceback = [], False, False
    for line in text.splitlines():
        if _TRACEBACK.match(line):
            in_traceback = removed = True
            continue
        if in_traceback and (not line.strip() or line[:1].isspace()):
            continue  # a frame, its source line or a caret line
        if line.startswith(_CHAINED):
            continue
        in_traceback = False
        kept.append(line)
    placeholders = _placeholders(settings.root, settings.data_dir.expanduser().absolute())
    summary = _pattern(tuple(sorted(placeholders, key=len, reverse=True))).sub(lambda m: placeholders[m.group(0)], "\n".join(kept))
    if not removed:
        return summary
    if reference is None:
        reference = hashlib.sha256(text.encode()).hexdigest()[:12]  # the same text, the same reference
        log.warning("Detail withheld from the caller, reference %s:\n%s", reference, text)
        return f"{summary} (traceback removed; the server log has it under reference {reference})"
    return f"{summary} (traceback removed; the server log of {reference} has it)"


@functools.lru_cache(maxsize=8)
def _placeholders(root: Path, data_dir: Path) -> dict[str, str]:
    """Each server folder (as text) and what a caller sees instead (cached: it resolves links)."""
    named = [(root, "<data>"), (data_dir, "<data>"),
             *[(Path(p), "<site-packages>") for p in site.getsitepackages()], (Path(sys.prefix), "<venv>"),
             (Path(sys.base_prefix), "<python>"), (Path(__file__).resolve().parents[1], "<app>"), (Path.home(), "~")]
    found: dict[str, str] = {}
    for folder, placeholder in named:
        for form in {str(folder), str(folder.resolve())}:
            if len(Path(form).parts) > 1:  # never "/" itself
                found.setdefault(form, placeholder)
    return found


@functools.lru_cache(maxsize=8)
def _pattern(folders: tuple[str, ...]) -> re.Pattern[str]:
    # A folder matches only whole: /srv/data is not the start of /srv/database.
    return re.compile("(?:" + "|".join(re.escape(folder) for folder in folders) + r")(?![\w.\-])")
