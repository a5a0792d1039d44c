"""Principals: who may call the REST API, in which namespaces and with which roles.

A principal is a name, the namespaces its API key may use (``*``: all) and its roles:
``submit`` (create and cancel jobs), ``review`` (answer approvals) and ``admin`` (policies and
principals). The principals file (``core.auth.principals_file``: ``<data folder>/api/principals.json``)
maps each name to its namespaces, roles and the sha256 of its key; the key itself is shown once,
when the principal is added, and never stored. The file is replaced atomically with mode 0600, and
read again whenever its stat changes, so principals are added and revoked without a restart (the
REST API's ``/v1/principals`` and ``customizer keys`` both write it).

Bootstrap keys: each key of the ``api_keys`` setting is a principal too, named ``key-`` and the
first 8 hex digits of the key's sha256 (an operator finds it with ``sha256sum``), with the
namespaces the setting gives it and every role. Those names are reserved: no principal in the file
may start with ``key-``.

Authentication is on when there is a bootstrap key or the file names a principal. A file that
exists but cannot be read or parsed raises ``PrincipalsUnreadable``: whoever asks stops, it is
never taken for "no principals".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from api.schemas import _NAME_PATTERN
from core import audit
from core.auth import principals_file
from core.settings import Settings

ROLES = ("submit", "review", "admin")  # submit: create and cancel jobs; review: answer approvals; admin: policies and keys
Role = Literal["submit", "review", "admin"]
BOOTSTRAP_PREFIX = "key-"
_KEY_PREFIX = "czk_"  # marks a customizer key for secret scanners


class PrincipalsUnreadable(RuntimeError):
    """The principals file exists but cannot be read or parsed (the message names the file)."""


class PrincipalError(ValueError):
    """A principal that cannot be added or revoked: a duplicate or unknown name (the message says which)."""


class PrincipalSpec(BaseModel):
    """What an admin states about a principal: its name, namespaces and roles."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Lower-case name, e.g. alice or ci-bot; it is who the audit trail and approvals name. "
        f"Names starting with {BOOTSTRAP_PREFIX!r} are the bootstrap keys'.",
    )
    namespaces: list[str] = Field(min_length=1, description='Namespaces the key may use; "*": all.')
    roles: list[Role] = Field(min_length=1, description="Any of submit (create and cancel jobs), review (answer approvals), admin.")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9._@-]{0,127}$", name):
            raise ValueError(f"`name` {name!r}: use lower-case letters, digits and . _ @ -, starting with a letter or digit "
                             "(at most 128 characters)")
        if name.startswith(BOOTSTRAP_PREFIX):
            raise ValueError(f"`name` {name!r}: names starting with {BOOTSTRAP_PREFIX!r} are reserved for the api_keys setting's keys")
        return name

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, namespaces: list[str]) -> list[str]:
        for namespace in namespaces:
            if namespace != "*" and not re.match(_NAME_PATTERN, namespace):
                raise ValueError(f"`namespaces`: {namespace!r} is not a namespace name (letters, digits, . _ @ + : -) or \"*\"")
        return ["*"] if "*" in namespaces else sorted(set(namespaces))

    @field_validator("roles")
    @classmethod
    def _roles(cls, roles: list[str]) -> list[str]:
        return [role for role in ROLES if role in roles]


class Principal(BaseModel):
    """A principal as the platform knows it (never its key): from the file, or a bootstrap key of the setting."""

    name: str
    namespaces: list[str]
    roles: list[Role]
    created_at: str | None = None
    source: Literal["file", "setting"] = "file"


class _Entry(BaseModel):
    """One principal as the file keeps it."""

    model_config = ConfigDict(extra="forbid")

    namespaces: list[str] = Field(min_length=1)
    roles: list[Role]
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: str | None = None


def key_digest(key: str) -> str:
    """The sha256 (hex) of an API key: what the file keeps instead of the key.

    >>> key_digest("abc")[:16]
    'ba7816bf8f01cfea'
    """
    return hashlib.sha256(key.encode()).hexdigest()


def bootstrap_principals(settings: Settings) -> list[tuple[str, Principal]]:
    """The ``api_keys`` setting's keys as (sha256, principal) pairs, with every role.

    >>> [(p.name, p.namespaces) for _, p in bootstrap_principals(Settings(api_keys={"abc": ["team-a"]}))]
    [('key-ba7816bf', ['team-a'])]
    """
    found = []
    for key, namespaces in settings.api_keys.items():
        digest = key_digest(key)
        principal = Principal(
            name=f"{BOOTSTRAP_PREFIX}{digest[:8]}", namespaces=["*"] if "*" in namespaces else sorted(set(namespaces)),
            roles=list(ROLES), created_at=None, source="setting",
        )
        found.append((digest, principal))
    return found


class PrincipalStore:
    """The principals file: read again only when its stat changes (a request pays for one ``stat``),
    written under an exclusive lock so the API and the CLI do not lose each other's changes."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._entries: dict[str, _Entry] = {}

    # ---------------------------------------------------------------- reading

    def _read(self) -> dict[str, _Entry]:
        """The file's entries, parsed and checked.

        Raises:
            PrincipalsUnreadable: the file exists but cannot be read, is not JSON, or an entry is malformed.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise PrincipalsUnreadable(f"the principals file {self.path} cannot be read ({exc.strerror}); fix its "
                                       "permissions: nobody is let in until it can be read") from exc
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError(f"a JSON object of principals by name was expected, not {type(raw).__name__}")
            return {str(name): _Entry.model_validate(entry) for name, entry in raw.items()}
        except (ValueError, ValidationError) as exc:
            raise PrincipalsUnreadable(f"the principals file {self.path} is not valid ({exc}); nobody is let in until "
                                       "it is fixed (`customizer keys list` shows the same error)") from exc

    def entries(self) -> dict[str, _Entry]:
        """The entries as they stand now: the cached ones while the file's stat is unchanged.

        Raises:
            PrincipalsUnreadable: the file cannot be read or parsed.
        """
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            with self._lock:
                self._seen, self._entries = None, {}
            return {}
        except OSError as exc:
            raise PrincipalsUnreadable(f"the principals file {self.path} cannot be read ({exc.strerror})") from exc
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)  # a replaced file has a new inode
        with self._lock:
            if seen != self._seen:
                self._entries, self._seen = self._read(), seen
            return self._entries

    def principals(self) -> list[Principal]:
        """The file's principals, without their key digests, by name.

        Raises:
            PrincipalsUnreadable: the file cannot be read or parsed.
        """
        return [Principal(name=name, namespaces=e.namespaces, roles=e.roles, created_at=e.created_at)
                for name, e in sorted(self.entries().items())]

    def lookup(self, settings: Settings, key: str) -> Principal | None:
        """The principal whose key is ``key`` (a bootstrap key or one in the file), or None.

        Every digest is compared in constant time, and all of them are, so the time taken says
        nothing about which one matched.

        Raises:
            PrincipalsUnreadable: the file cannot be read or parsed.
        """
        digest = key_digest(key).encode()
        found = None
        for known, principal in bootstrap_principals(settings):
            if hmac.compare_digest(known.encode(), digest):
                found = principal
        for name, entry in self.entries().items():
            if hmac.compare_digest(entry.key_sha256.encode(), digest) and found is None:
                found = Principal(name=name, namespaces=entry.namespaces, roles=entry.roles, created_at=entry.created_at)
        return found

    def enabled(self, settings: Settings) -> bool:
        """Whether callers must authenticate: a bootstrap key, or a principal in the file.

        Raises:
            PrincipalsUnreadable: the file cannot be read or parsed (never read as "off").
        """
        return bool(settings.api_keys) or bool(self.entries())

    # ---------------------------------------------------------------- writing

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, dict]]:
        """The file's entries to change in place, under an exclusive lock; written back atomically
        (a temporary file with mode 0600 renamed over it) when the block ends without an error.

        Raises:
            PrincipalsUnreadable: the file cannot be read or parsed (nothing is written).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600), "r+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = {name: entry.model_dump() for name, entry in self._read().items()}
            yield entries
            fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".principals-", suffix=".json")  # mode 0600
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(entries, out, indent=2, sort_keys=True)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise

    def add(self, spec: PrincipalSpec) -> tuple[str, Principal]:
        """Add a principal with a new random key.

        Returns:
            The key (shown to the caller once; only its sha256 is kept) and the principal.

        Raises:
            PrincipalError: a principal of that name exists.
            PrincipalsUnreadable: the file cannot be read or parsed.
        """
        key = _KEY_PREFIX + secrets.token_urlsafe(32)
        created_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._changing() as entries:
            if spec.name in entries:
                raise PrincipalError(f"principal {spec.name!r} exists; revoke it first to give it a new key")
            entries[spec.name] = _Entry(namespaces=spec.namespaces, roles=spec.roles, key_sha256=key_digest(key),
                                        created_at=created_at).model_dump()
        return key, Principal(**spec.model_dump(), created_at=created_at)

    def revoke(self, name: str) -> Principal:
        """Remove a principal: its key stops working at the next request.

        Returns:
            The principal that was removed.

        Raises:
            PrincipalError: no principal of that name is in the file (bootstrap keys are removed from the setting).
            PrincipalsUnreadable: the file cannot be read or parsed.
        """
        entry = self._remove(name)
        return Principal(name=name, namespaces=entry["namespaces"], roles=entry["roles"], created_at=entry["created_at"])

    def _remove(self, name: str) -> dict:
        """Remove a principal and return its entry as the file held it (to put back)."""
        with self._changing() as entries:
            entry = entries.pop(name, None)
            if entry is None:
                where = " (bootstrap keys are removed from the api_keys setting)" if name.startswith(BOOTSTRAP_PREFIX) else ""
                raise PrincipalError(f"no principal named {name!r}{where}")
        return entry

    def _put_back(self, name: str, entry: dict) -> None:
        with self._changing() as entries:
            entries[name] = entry


_stores: dict[Path, PrincipalStore] = {}
_stores_lock = threading.Lock()


def store_for(settings: Settings) -> PrincipalStore:
    """The principals store of ``settings``'s data folder (one per file and process, so its cache is shared)."""
    path = principals_file(settings)
    with _stores_lock:
        return _stores.setdefault(path, PrincipalStore(path))


def add_principal(settings: Settings, spec: PrincipalSpec, actor: str | None, via: str) -> tuple[str, Principal]:
    """Add a principal and record ``principal.added`` on the audit trail; when the record cannot be
    written the principal is removed again (an unrecorded key must not work).

    Returns:
        The key (shown once) and the principal.

    Raises:
        PrincipalError: a principal of that name exists.
        PrincipalsUnreadable: the file cannot be read or parsed.
        core.audit.AuditError: the record could not be written (the principal was not kept).
    """
    store = store_for(settings)
    key, principal = store.add(spec)
    try:
        audit.record(settings, "principal.added", actor, after=principal.model_dump(exclude={"source"}), detail=f"{principal.name} ({via})")
    except audit.AuditError:
        store.revoke(principal.name)
        raise
    return key, principal


def revoke_principal(settings: Settings, name: str, actor: str | None, via: str) -> Principal:
    """Revoke a principal and record ``principal.revoked``; when the record cannot be written the
    principal is put back as it was (the revocation did not happen, and the caller is told).

    Raises:
        PrincipalError: no principal of that name is in the file.
        PrincipalsUnreadable: the file cannot be read or parsed.
        core.audit.AuditError: the record could not be written (the principal was kept).
    """
    store = store_for(settings)
    entry = store._remove(name)
    principal = Principal(name=name, namespaces=entry["namespaces"], roles=entry["roles"], created_at=entry["created_at"])
    try:
        audit.record(settings, "principal.revoked", actor, before=principal.model_dump(exclude={"source"}), detail=f"{name} ({via})")
    except audit.AuditError:
        store._put_back(name, entry)
        raise
    return principal


class FailedKeys:
    """Failed key checks per client address, so that keys cannot be guessed at speed: after ``limit``
    failures within ``window`` seconds an address waits until the oldest of them is ``window`` old.

    Only failures are counted; while an address waits its keys are not checked at all (else a guess
    would still be answered). At most ``clients`` addresses are remembered, the least recently failed
    forgotten first, so the memory is bounded whatever an attacker sends.

    >>> clock = iter([0.0, 1.0, 2.0, 60.5]).__next__
    >>> keys = FailedKeys(limit=2, window=60.0, clock=clock)
    >>> keys.failed("10.0.0.9"); keys.failed("10.0.0.9"); keys.wait("10.0.0.9"), keys.wait("10.0.0.8")
    (58, 0)
    >>> keys.wait("10.0.0.9")
    0
    """

    def __init__(self, limit: int = 10, window: float = 60.0, clients: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clients, self._clock = limit, window, clients, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, client: str) -> int:
        """Whole seconds until ``client`` may present a key again (0: now)."""
        with self._lock:
            times = self._failures.get(client)
            if times is None or len(times) < self.limit:
                return 0
            left = times[0] + self.window - self._clock()
            return math.ceil(left) if left > 0 else 0

    def failed(self, client: str) -> None:
        """Count a failed key check from ``client``."""
        with self._lock:
            now = self._clock()
            times = self._failures.pop(client, None) or deque(maxlen=self.limit)
            times.append(now)
            self._failures[client] = times  # the most recently failed last
            while len(self._failures) > self.clients:
                self._failures.popitem(last=False)
