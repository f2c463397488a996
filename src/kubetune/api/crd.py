"""Generate the FineTuneJob CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema 2020-12; a CRD needs a *structural* OpenAPI v3 schema: no ``$ref`` (the
definitions are inlined), a ``type`` on every node, no ``anyOf`` for ``Optional`` (omitted fields are
simply absent), ``exclusiveMinimum`` as a boolean, and no ``additionalProperties: false`` beside
``properties`` (the API server prunes unknown fields instead).
"""

from __future__ import annotations

from typing import Any

import yaml

from kubetune.api.resource import (
    CATEGORIES,
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    NAME_START_PATTERN,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from kubetune.api.spec import IMMUTABLE_SPEC_FIELDS, FineTuneJobSpec, immutable_rule
from kubetune.api.status import FineTuneJobStatus

Schema = dict[str, Any]

# JSON Schema keywords that carry meaning into the CRD; everything else (title, ...) is dropped.
_KEPT_KEYWORDS = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "x-kubernetes-validations",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


class SchemaConversionError(ValueError):
    """The pydantic schema uses a construct that has no structural equivalent."""


def structural_schema(model_schema: Schema) -> Schema:
    """Convert one pydantic ``model_json_schema()`` into a structural CRD schema."""
    defs: dict[str, Schema] = model_schema.get("$defs", {})
    return _convert(model_schema, defs, path="")


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Inline a ``$ref``, keeping the referring node's own keywords (description, default)."""
    if "$ref" not in node:
        return node
    name = node["$ref"].rsplit("/", 1)[-1]
    merged = dict(defs[name])
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def _strip_null_branch(node: Schema) -> Schema:
    """``Optional[X]`` appears as ``anyOf: [X, {type: null}]``: keep X, with the field's keywords."""
    branches = node.get("anyOf")
    if not branches:
        return node
    non_null = [b for b in branches if b.get("type") != "null"]
    if len(non_null) == len(branches):
        return node
    if len(non_null) != 1:
        raise SchemaConversionError(f"cannot express a union of {non_null} structurally")
    merged = dict(non_null[0])
    merged.update({k: v for k, v in node.items() if k != "anyOf"})
    merged["_optional"] = True
    if merged.get("default", 0) is None:
        del merged["default"]
    return merged


def _convert(node: Schema, defs: dict[str, Schema], *, path: str) -> Schema:
    node = _strip_null_branch(_resolve(node, defs))
    node = _resolve(node, defs)
    optional = node.pop("_optional", False)
    out: Schema = {}
    if "anyOf" in node:
        if not node.get("x-kubernetes-int-or-string"):
            raise SchemaConversionError(f"{path or '<root>'}: anyOf is only allowed for int-or-string")
        out["anyOf"] = node["anyOf"]
    if "const" in node:
        out["enum"] = [node["const"]]
    for key, value in node.items():
        if key in _KEPT_KEYWORDS:
            out[key] = value
    if out.get("default", 0) is None:
        # An omitted optional field is simply absent; a null default would not validate.
        del out["default"]
    if "exclusiveMinimum" in node:
        out["minimum"] = node["exclusiveMinimum"]
        out["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node:
        out["maximum"] = node["exclusiveMaximum"]
        out["exclusiveMaximum"] = True
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {}
        required = set(node.get("required", []))
        for name, prop in node["properties"].items():
            converted = _convert(prop, defs, path=f"{path}.{name}")
            is_optional_object = converted.pop("_optional_object", False)
            if (
                converted.get("type") == "object"
                and "properties" in converted
                and name not in required
                and "default" not in converted
                and not is_optional_object
            ):
                # A nested settings group with a default_factory: default it to {} so the API server
                # fills in its field defaults and CEL rules can rely on them being present.
                converted["default"] = {}
            out["properties"][name] = converted
        if required:
            out["required"] = sorted(required)
    elif isinstance(node.get("additionalProperties"), dict):
        out["type"] = "object"
        out["additionalProperties"] = _convert(node["additionalProperties"], defs, path=f"{path}.*")
    if "items" in node:
        out["items"] = _convert(node["items"], defs, path=f"{path}[]")
    if "type" not in out and "x-kubernetes-int-or-string" not in out:
        raise SchemaConversionError(f"{path or '<root>'}: no type in {node}")
    if optional and out.get("type") == "object":
        out["_optional_object"] = True
    return out


def _scrub(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _scrub(v) for k, v in node.items() if not k.startswith("_")}
    if isinstance(node, list):
        return [_scrub(v) for v in node]
    return node


def spec_schema() -> Schema:
    schema = _scrub(structural_schema(FineTuneJobSpec.model_json_schema(by_alias=True, mode="validation")))
    for field in IMMUTABLE_SPEC_FIELDS:
        prop = schema["properties"][field]
        prop.setdefault("x-kubernetes-validations", []).append(immutable_rule(field))
    assert isinstance(schema, dict)
    return schema


def status_schema() -> Schema:
    schema = _scrub(structural_schema(FineTuneJobStatus.model_json_schema(by_alias=True, mode="validation")))
    assert isinstance(schema, dict)
    return schema


PRINTER_COLUMNS: list[Schema] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent", "description": "Steps done."},
    {"name": "Loss", "type": "number", "jsonPath": ".status.metrics.loss", "description": "Training loss."},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta", "description": "Time left, estimated."},
    {
        "name": "Estimate",
        "type": "string",
        "jsonPath": ".status.estimate.duration",
        "description": "Training time the data check estimated, before any GPU was claimed.",
    },
    {"name": "GPU-h", "type": "number", "jsonPath": ".status.estimate.gpuHours", "priority": 1},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method.type", "priority": 1},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.source", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> Schema:
    """The complete CustomResourceDefinition object."""
    root: Schema = {
        "type": "object",
        "description": "FineTuneJob fine-tunes an open LLM (LoRA, QLoRA, DoRA or full) on the cluster's GPUs.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters",
            },
            {
                "rule": f"self.metadata.name.matches('{NAME_START_PATTERN}')",
                "message": "metadata.name must start with a lowercase letter",
            },
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = "# Generated by `kubetune crd` from the pydantic models in kubetune.api. Do not edit.\n"


def render_crd_yaml() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=110)
