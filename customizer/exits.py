"""What the ``customizer`` command's exit status means, for scripts, and the errors that set it.

    0  done (for ``run``, ``demo`` and ``jobs status --wait``: the job completed)
    1  the job failed or was cancelled
    2  a usage error: bad flags or arguments, a file named that cannot be read, an unknown config
    3  invalid data: a spec, dataset or request the platform refused, named by field, file and line
    4  the platform could not be reached, or refused the caller (no key, no access, not found)
    5  the candidate was rejected, or held for a reviewer, and ``--fail-on`` names that outcome

Every error is one message on stderr (``customizer: error: ...``), never a traceback.
"""

from __future__ import annotations

OK = 0
JOB_FAILED = 1
USAGE = 2
INVALID_DATA = 3
UNAVAILABLE = 4
NOT_PROMOTED = 5


class UsageError(Exception):
    """A user error: printed as one clear message; the exit status is the class's ``code``."""

    code = USAGE


class InvalidData(UsageError):
    """The spec, dataset or request is invalid (the message names the field, file and line)."""

    code = INVALID_DATA


class Unavailable(UsageError):
    """The platform could not be reached, or it refused the caller."""

    code = UNAVAILABLE


class JobFailed(UsageError):
    """The job failed or was cancelled."""

    code = JOB_FAILED


class NotPromoted(UsageError):
    """The candidate was rejected or held, and the caller asked for that to fail (``--fail-on``)."""

    code = NOT_PROMOTED
