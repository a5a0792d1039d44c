"""Secrets a client sends with a job (e.g. the ``wandb-api-key`` header): sealed with a key kept in
the data folder (readable by its owner only) before they are stored or handed to the job's flow
run; never echoed or logged. The training task unseals them into its environment while it runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from core.settings import Settings


def _key(settings: Settings) -> bytes:
    from cryptography.fernet import Fernet

    path = settings.root / "api" / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another request created it first
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
    return path.read_bytes().strip()


def seal(settings: Settings, value: str) -> str:
    """Encrypt a secret for storage."""
    from cryptography.fernet import Fernet

    return Fernet(_key(settings)).encrypt(value.encode()).decode()


def unseal(settings: Settings, token: str) -> str:
    """Decrypt a stored secret (for the run that needs it)."""
    from cryptography.fernet import Fernet

    return Fernet(_key(settings)).decrypt(token.encode()).decode()


# Secret name (as sent, e.g. the request header) -> the environment variable the run sees.
ENVIRONMENT = {"wandb-api-key": "WANDB_API_KEY"}


@contextlib.contextmanager
def unsealed_environment(settings: Settings, sealed: dict[str, str]) -> Iterator[list[str]]:
    """Put a job's sealed secrets into the environment (for the training code and any process it
    starts) while the block runs; restore the environment after. Yields the variables set."""
    previous = {}
    for name, token in sealed.items():
        variable = ENVIRONMENT[name]
        previous[variable] = os.environ.get(variable)
        os.environ[variable] = unseal(settings, token)
    try:
        yield sorted(previous)
    finally:
        for variable, value in previous.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value
