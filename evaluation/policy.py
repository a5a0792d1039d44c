"""Per-namespace promotion policies: ``<policy folder>/<namespace>.yaml``.

A namespace's policy file governs every job of that namespace (a job cannot loosen it by sending
its own); namespaces without a file use the job's ``policy`` (whose defaults are the platform's).
"""

from __future__ import annotations

import yaml
from pydantic import ValidationError

from core.settings import Settings
from core.specs import CustomizationSpec, PromotionPolicy


class PolicyError(ValueError):
    """A policy file that cannot be read."""


def namespace_policy(namespace: str, settings: Settings) -> PromotionPolicy | None:
    """The policy file of a namespace, or None when it has none.

    Raises:
        PolicyError: the file is not valid YAML or not a valid policy (the message names the file).
    """
    path = settings.policies_dir / f"{namespace}.yaml"
    if not path.is_file():
        return None
    try:
        return PromotionPolicy.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"{path}: invalid policy: {problems}") from exc


def effective_policy(spec: CustomizationSpec, settings: Settings) -> tuple[PromotionPolicy, str]:
    """The policy that governs a job, and where it came from."""
    namespace = spec.output_model.partition("/")[0]
    fixed = namespace_policy(namespace, settings)
    if fixed is not None:
        return fixed, str(settings.policies_dir / f"{namespace}.yaml")
    return spec.policy, "job"
