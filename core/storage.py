"""What the API and the trainer both need to know about a failed write, and how the data folder is
kept private to the platform's user."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# Write failures that mean "no room": a full disk, a quota, a file size limit. The API answers them
# 507 Insufficient Storage, the trainer a CheckpointError that says the older checkpoints are intact.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def out_of_room(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` that says the storage has no room left."""
    return isinstance(exc, OSError) and exc.errno in NO_ROOM


# Group and other permission bits: nothing the platform writes is for anyone but its own user.
_OPEN_TO_OTHERS = 0o077


class NotPrivate(PermissionError):
    """The data folder cannot be made private (the message names the entry and what to do)."""


def private_umask() -> None:
    """Create everything from here on 0700 (folders) and 0600 (files), in this process and the ones it
    starts (the Prefect server, MLflow, flow runs inherit the umask)."""
    os.umask(_OPEN_TO_OTHERS)


def make_private(root: Path) -> None:
    """Create ``root`` if needed, make it 0700 and take group and other bits off everything under it.

    One walk; links are neither followed nor changed (a link's own bits mean nothing). An entry that
    is already private costs one ``lstat``.

    Args:
        root: the data folder (resolved).

    Raises:
        NotPrivate: ``root`` is the file system's root or the home folder itself (its data folder must be a
            folder of its own), or an entry cannot be changed (e.g. another user owns it).

    >>> import tempfile, stat; root = Path(tempfile.mkdtemp()); _ = (root / "db").write_text("x"); (root / "db").chmod(0o644)
    >>> make_private(root); oct(stat.S_IMODE((root / "db").stat().st_mode)), oct(stat.S_IMODE(root.stat().st_mode))
    ('0o600', '0o700')
    """
    if root == Path(root.anchor) or root == Path.home().resolve():
        raise NotPrivate(f"the data folder {root} must be a folder of its own (not / or the home folder): set data_dir")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(root)
    for folder, dirs, files in os.walk(root, onerror=_raise):
        for name in dirs + files:
            _tighten(Path(folder, name))


def _tighten(path: Path) -> None:
    try:
        info = path.lstat()
        if not stat.S_ISLNK(info.st_mode) and info.st_mode & _OPEN_TO_OTHERS:
            path.chmod(stat.S_IMODE(info.st_mode) & ~_OPEN_TO_OTHERS)
    except FileNotFoundError:
        return  # removed while walking (a finished run's scratch files): nothing left to protect
    except OSError as exc:
        raise NotPrivate(f"cannot take group and other permissions off {path} ({exc.strerror}): "
                         f"run `chmod -R go-rwx {path}` as its owner, then start again") from exc


def _raise(exc: OSError) -> None:
    """``os.walk`` skips folders it cannot list; here a folder that cannot be listed cannot be checked."""
    if not isinstance(exc, FileNotFoundError):
        raise NotPrivate(f"cannot list {exc.filename} ({exc.strerror}): make it readable by the platform's user, "
                         "then start again") from exc
