"""What the API and the trainer both need to know about a failed write."""

from __future__ import annotations

import errno

# Write failures that mean "no room": a full disk, a quota, a file size limit. The API answers them
# 507 Insufficient Storage, the trainer a CheckpointError that says the older checkpoints are intact.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def out_of_room(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` that says the storage has no room left."""
    return isinstance(exc, OSError) and exc.errno in NO_ROOM
