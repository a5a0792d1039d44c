"""Whether the platform authenticates its callers, for code below the REST API that must act on it.

Authentication is on when API keys are configured or the principals file
(``<data folder>/api/principals.json``) holds any entry. The REST API owns that file; this reads
it with ``json`` only, so flows and tasks can ask without importing the API. What changes with
authentication on: an approval answer must carry the platform's signature (``approval_message``,
signed with ``core.secrets.sign``), so only the REST API and ``customizer approve`` can answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.settings import Settings


def principals_file(settings: Settings) -> Path:
    """Where the REST API keeps its principals."""
    return settings.root / "api" / "principals.json"


def enabled(settings: Settings) -> bool:
    """True when callers are authenticated: API keys are set, ``auth_required`` is, or the principals file has an entry.

    A principals file that exists but cannot be read, parsed, or is not a mapping counts as on (fail closed: an answer
    then needs the platform's signature, which the platform's own front doors always give).

    >>> import tempfile; from pathlib import Path
    >>> settings = Settings(data_dir=Path(tempfile.mkdtemp()))
    >>> enabled(settings), enabled(settings.model_copy(update={"api_keys": {"k": ["*"]}}))
    (False, True)
    >>> principals_file(settings).parent.mkdir(parents=True); _ = principals_file(settings).write_text("{}")
    >>> enabled(settings)
    False
    >>> _ = principals_file(settings).write_text('{"alice": {"roles": ["review"]}}')
    >>> enabled(settings)
    True
    """
    if settings.api_keys or settings.auth_required:
        return True
    path = principals_file(settings)
    if not path.exists():
        return False
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return not isinstance(entries, dict) or bool(entries)  # anything but a mapping is unreadable: on


def approval_message(flow_run_id: object, key: str, approved: bool, reviewer: str) -> str:
    """The text an approval answer's signature covers: which run, which wait, the answer and who gave it.

    >>> approval_message("f1", "training-approval-0", True, "bob")
    '["f1","training-approval-0",true,"bob"]'
    """
    return json.dumps([str(flow_run_id), key, bool(approved), reviewer], separators=(",", ":"))
