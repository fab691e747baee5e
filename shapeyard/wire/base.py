"""Base classes for wire schemas.

The control plane speaks camelCase JSON (protojson style); the trainer protocol and inference speak snake_case.
Every wire type derives from one of these so that server, workers and client serialise identically.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    """A camelCase JSON object; Python code uses snake_case attribute names."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StrictCamelModel(CamelModel):
    """A request body: unknown fields are refused with an error that names them."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class WireModel(BaseModel):
    """A snake_case JSON object. Unknown fields are ignored: the official clients add optional keys over versions
    (prompt_cache_key, perf_metrics_in_response, ...)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
