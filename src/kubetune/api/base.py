"""The base class of every API model: camelCase on the wire, strict, immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Fields are snake_case in Python and camelCase in YAML/JSON, as Kubernetes APIs are.

    ``extra="forbid"`` makes a typo in a manifest or trainer config an error instead of a silently
    ignored field; ``frozen`` keeps a parsed spec from being edited on its way through the builders.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=False,
    )

    def to_wire(self) -> dict[str, object]:
        """The camelCase JSON-compatible dict, without fields left unset at their ``None`` default."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
