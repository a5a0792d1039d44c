"""``customizer worker``: serve the flows as deployments, exactly as ``prefect.yaml`` defines them.

``prefect.yaml`` is the one definition of the deployments (entrypoint, description, tags, schedule,
concurrency): ``prefect deploy --all`` reads it for work pools, and the worker reads the same file to
serve them from its own process. Only the names of the ``customize`` and ``evaluate`` deployments
come from settings (the REST API starts runs by those names).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.settings import Settings
from core.storage import private_umask

# prefect.yaml sits at the root of the checkout the flows are deployed from, beside flows/.
DEPLOYMENTS_FILE = Path(__file__).resolve().parents[1] / "prefect.yaml"


class DeploymentsError(Exception):
    """prefect.yaml is missing or does not define a deployment the worker needs."""


@dataclass(frozen=True)
class Deployment:
    """One entry of prefect.yaml's ``deployments``, as the worker serves it."""

    entrypoint: str  # "flows/customize.py:customize"
    name: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    crons: list[str] = field(default_factory=list)
    concurrency: dict[str, Any] | None = None

    @property
    def flow_name(self) -> str:
        return self.entrypoint.rpartition(":")[2]

    @property
    def module(self) -> str:
        """The entrypoint as a module path (``flows.customize``): runs import it, not a file."""
        return self.entrypoint.partition(":")[0].removesuffix(".py").replace("/", ".")


def read_deployments(path: Path = DEPLOYMENTS_FILE) -> list[Deployment]:
    """The deployments prefect.yaml defines.

    Raises:
        DeploymentsError: the file cannot be read or an entry lacks ``name`` or ``entrypoint``.
    """
    try:
        entries = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("deployments") or []
    except (OSError, yaml.YAMLError) as exc:
        raise DeploymentsError(f"cannot read the deployments from {path}: {exc}") from exc
    found = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("entrypoint"):
            raise DeploymentsError(f"{path}: deployment {number} needs a `name` and an `entrypoint`")
        found.append(Deployment(
            entrypoint=entry["entrypoint"], name=entry["name"], description=" ".join(str(entry.get("description") or "").split()),
            tags=list(entry.get("tags") or []), crons=[s["cron"] for s in entry.get("schedules") or [] if s.get("active", True) and "cron" in s],
            concurrency=entry.get("concurrency_limit"),
        ))
    return found


def deployment_names(settings: Settings) -> dict[str, str]:
    """The deployment names settings give the ``customize`` and ``evaluate`` flows.

    Raises:
        DeploymentsError: a name is not ``<flow>/<deployment name>``.
    """
    names = {}
    for flow_name, name in (("customize", settings.customize_deployment), ("evaluate", settings.evaluate_deployment)):
        prefix, _, deployment = name.partition("/")
        if prefix != flow_name or not deployment:
            raise DeploymentsError(f"deployment {name!r} must be {flow_name}/<deployment name>")
        names[flow_name] = deployment
    return names


def runner_deployments(settings: Settings, path: Path = DEPLOYMENTS_FILE) -> list[Any]:
    """prefect.yaml's deployments as Prefect runner deployments, ready for ``prefect.serve``.

    Raises:
        DeploymentsError: as ``read_deployments`` and ``deployment_names``.
    """
    private_umask()  # the flow runs it starts inherit it: what they write is the platform user's alone
    names = deployment_names(settings)  # checked before Prefect is imported: a misconfigured worker fails at once
    # delayed: Prefect is heavy, and settings must reach the environment before it is imported (start-up)
    from prefect.client.schemas.objects import (
        ConcurrencyLimitConfig,
        ConcurrencyLimitStrategy,
    )
    from prefect.deployments.runner import EntrypointType

    served = []
    for entry in read_deployments(path):
        flow = getattr(importlib.import_module(entry.module), entry.flow_name)
        limit = None
        if entry.concurrency:
            limit = ConcurrencyLimitConfig(
                limit=entry.concurrency["limit"],
                collision_strategy=ConcurrencyLimitStrategy(entry.concurrency.get("collision_strategy", "ENQUEUE")),
            )
        served.append(flow.to_deployment(
            name=names.get(entry.flow_name, entry.name), description=entry.description or None, tags=entry.tags,
            cron=entry.crons or None, concurrency_limit=limit, entrypoint_type=EntrypointType.MODULE_PATH,
        ))
    return served
