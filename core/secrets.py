"""Secrets a client sends with a job (e.g. the ``wandb-api-key`` header): sealed with a key kept in
the data folder (readable by its owner only) before they are stored or handed to the job's flow
run; never echoed or logged. The training task unseals them into its environment while it runs.

The same key signs what only the platform may say, such as a reviewer's answer to an approval
(``sign`` / ``verify``): the REST API and ``customizer approve`` sign it, the flow checks it, and an
answer typed into a form elsewhere carries no valid signature."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
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


def _signing_key(settings: Settings) -> bytes:
    """A key for signatures derived from the platform key, so a signature reveals nothing about the
    key that seals secrets."""
    return hmac.new(_key(settings), b"customizer signature v1", hashlib.sha256).digest()


def sign(settings: Settings, message: str) -> str:
    """An HMAC-SHA256 signature (hex) of ``message`` that only a process holding the platform key can make.

    >>> import tempfile; from pathlib import Path
    >>> settings = Settings(data_dir=Path(tempfile.mkdtemp()))
    >>> verify(settings, "approve job 1", sign(settings, "approve job 1")), verify(settings, "approve job 2", sign(settings, "approve job 1"))
    (True, False)
    """
    return hmac.new(_signing_key(settings), message.encode(), hashlib.sha256).hexdigest()


def verify(settings: Settings, message: str, signature: str) -> bool:
    """Whether ``signature`` is the platform's signature of ``message`` (compared in constant time)."""
    return bool(signature) and hmac.compare_digest(sign(settings, message), signature)


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
