"""Secrets a client sends with a job (e.g. the ``wandb-api-key`` header): sealed with a key kept in
the data folder (readable by its owner only) before they are stored; never echoed or logged."""

from __future__ import annotations

import os

from customizer.settings import Settings


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
