"""API keys for serve-models: the platform's keys, each granting the namespaces it grants on the REST API.

The keys are the REST API's: the ``api_keys`` setting's (bootstrap keys) and the principals file
(``core.auth.principals_file``) that ``customizer keys`` and ``/v1/principals`` write, read again
when it changes, so a revoked key stops working here too. Authentication is on exactly when
``core.auth.enabled`` says so. A key sent as ``Authorization: Bearer <key>`` (what the ``openai``
client sends) may use the models of its namespaces: ``team-a/bot@3`` is in ``team-a``; the base
model, and adapters loaded under a name without a namespace, are open to every valid key; loading
and unloading adapters and ``/metrics`` need a key for all namespaces (``*``). ``/health`` is open.

This reads the file with ``json`` as ``core.auth`` does (serving sits below the REST API and does
not import it); a file that exists but cannot be read lets nobody in (503), never everyone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading

from core.auth import enabled, principals_file
from core.settings import Settings
from serving.schemas import ServingError

log = logging.getLogger("customizer.serving")


def namespace_of(model: str) -> str | None:
    """The namespace a model name belongs to (None for a name without one).

    >>> namespace_of("team-a/bot@3"), namespace_of("team-a/bot"), namespace_of("mine")
    ('team-a', 'team-a', None)
    """
    return model.split("/", 1)[0] if "/" in model else None


class Keys:
    """Checks a request's key against the platform's keys."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._entries: list[tuple[str, list[str]]] = []  # (key sha256, namespaces) from the principals file

    def _file_entries(self) -> list[tuple[str, list[str]]]:
        path = principals_file(self.settings)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return []
        except OSError as exc:  # the path stays in the server log; a caller learns nothing of where keys are kept
            log.error("The API keys cannot be checked: %s cannot be read (%s)", path, exc.strerror)
            raise ServingError(503, "the API keys cannot be checked now; try again", kind="auth_unavailable") from exc
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            if seen != self._seen:
                try:
                    raw = json.loads(path.read_text(encoding="utf-8"))
                    entries = [(str(e["key_sha256"]), list(e["namespaces"])) for e in raw.values()]
                except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                    log.error("The API keys cannot be checked: %s is not a valid principals file (%s)", path, exc)
                    raise ServingError(503, "the API keys cannot be checked now; try again", kind="auth_unavailable") from exc
                self._entries, self._seen = entries, seen
            return self._entries

    def namespaces(self, authorization: str | None) -> frozenset[str] | None:
        """The namespaces the request's key may use; None when it may use all (or keys are off).

        Raises:
            ServingError: 401 when keys are on and the key is missing, unknown or revoked; 503 when
                the principals file cannot be read.
        """
        if not enabled(self.settings):
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServingError(401, "missing API key: send `Authorization: Bearer <key>`", kind="AuthenticationError")
        digest = hashlib.sha256(token.strip().encode()).hexdigest().encode()
        found = None
        candidates = [(hashlib.sha256(key.encode()).hexdigest(), list(ns)) for key, ns in self.settings.api_keys.items()]
        for known, namespaces in candidates + self._file_entries():  # every digest is compared, in constant time
            if hmac.compare_digest(known.encode(), digest) and found is None:
                found = namespaces
        if found is None:
            raise ServingError(401, "unknown or revoked API key", kind="AuthenticationError")
        return None if "*" in found else frozenset(found)


def check_model(namespaces: frozenset[str] | None, model: str, base: bool) -> None:
    """Raises a 403 ServingError when a key for ``namespaces`` may not use ``model``.

    >>> check_model(frozenset({"team-a"}), "team-a/bot@1", base=False)
    >>> check_model(frozenset({"team-a"}), "team-b/bot", base=False)
    Traceback (most recent call last):
    ...
    serving.schemas.ServingError: this API key may not use namespace 'team-b' (model `team-b/bot`)
    """
    namespace = namespace_of(model)
    if namespaces is None or base or namespace is None or namespace in namespaces:
        return
    raise ServingError(403, f"this API key may not use namespace {namespace!r} (model `{model}`)", kind="PermissionDeniedError", param="model")


def check_all(namespaces: frozenset[str] | None, what: str) -> None:
    """Raises a 403 ServingError unless the key may use every namespace (``what`` says what it asked for)."""
    if namespaces is not None:
        raise ServingError(403, f"{what} needs an API key for all namespaces (\"*\")", kind="PermissionDeniedError")
