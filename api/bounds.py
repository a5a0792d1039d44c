"""Bounds on everything a request carries, so nothing a caller sends can reach a store, the orchestrator
or a response it cannot hold.

Every request model derives from ``Bounded``: before its fields are read, the raw input passes
``core.values.check_value`` (the rule the job spec's own models apply), free-form objects such as
``custom_fields`` included: no number that is not finite, no integer outside 64 bits (what SQLite,
PostgreSQL and Prefect's run parameters hold), no text that is not valid Unicode (a lone surrogate)
or holds NUL, no nesting deeper than 32 levels. It runs first because FastAPI's JSON parser accepts
``NaN``, ``Infinity`` and a lone ``\\ud800`` escape, and a refusal that echoed such a value could not
itself be written as JSON; the 422 names the field by its dotted path. Fields then carry their own
ranges (``Positive``, ...), which the OpenAPI schema shows as minimum and maximum.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.values import INT32_MAX, check_value

Positive = Annotated[int, Field(ge=1, le=INT32_MAX, description="A count, 1 or more (below 2^31).")]


class Bounded(BaseModel):
    """A request model: its raw input passes ``check_value`` before any field is read, and no float
    field takes NaN or Infinity."""

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        check_value(data)
        return data
