"""Generate the CustomResourceDefinitions (FineTuneJob, FineTuneProfile) from the pydantic models.

One function builds any kind's CRD from a :class:`CrdKind`: its names, spec and status models, printer
columns, scope and object-level rules.

Pydantic emits JSON Schema 2020-12; a CRD needs a *structural* OpenAPI v3 schema: no ``$ref`` (the
definitions are inlined), a ``type`` on every node, no ``anyOf`` for ``Optional`` (omitted fields are
simply absent), ``exclusiveMinimum`` as a boolean, and no ``additionalProperties: false`` beside
``properties`` (the API server prunes unknown fields instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from kubetune.api.profile import (
    PROFILE_KIND,
    PROFILE_LABEL,
    PROFILE_PLURAL,
    PROFILE_SHORT_NAMES,
    PROFILE_SINGULAR,
    FineTuneProfileSpec,
)
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


def model_schema(model: type[BaseModel]) -> Schema:
    """One pydantic model's structural schema, as the CRD carries it."""
    schema = _scrub(structural_schema(model.model_json_schema(by_alias=True, mode="validation")))
    assert isinstance(schema, dict)
    return schema


# A namespace names its FineTuneProfile in a label, and label values are at most 63 characters.
LABEL_VALUE_MAX_LENGTH = 63


@dataclass(frozen=True, kw_only=True)
class CrdKind:
    """What makes one kind's CustomResourceDefinition: names, models, columns, scope and object-level rules."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    scope: Literal["Namespaced", "Cluster"]
    # The root's description: the first line of `kubectl explain <kind>`.
    description: str
    spec_model: type[BaseModel]
    # None: the kind has no status, and no status subresource.
    status_model: type[BaseModel] | None
    printer_columns: tuple[Schema, ...]
    # CEL rules on the whole object (metadata.name bounds the schema cannot state).
    root_rules: tuple[Schema, ...] = ()
    # spec fields that may not change once the object exists.
    immutable_spec_fields: tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        """The file under crds/ (and the chart's crds/) that holds this kind's CRD."""
        return f"{self.plural}.yaml"


FINETUNEJOB = CrdKind(
    kind=KIND,
    plural=PLURAL,
    singular=SINGULAR,
    short_names=SHORT_NAMES,
    scope="Namespaced",
    description="FineTuneJob fine-tunes an open LLM (LoRA, QLoRA, DoRA or full) on the cluster's GPUs.",
    spec_model=FineTuneJobSpec,
    status_model=FineTuneJobStatus,
    printer_columns=(
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
    ),
    root_rules=(
        {
            "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
            "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters",
        },
        {
            "rule": f"self.metadata.name.matches('{NAME_START_PATTERN}')",
            "message": "metadata.name must start with a lowercase letter",
        },
    ),
    immutable_spec_fields=IMMUTABLE_SPEC_FIELDS,
)

FINETUNEPROFILE = CrdKind(
    kind=PROFILE_KIND,
    plural=PROFILE_PLURAL,
    singular=PROFILE_SINGULAR,
    short_names=PROFILE_SHORT_NAMES,
    scope="Cluster",
    description=(
        "FineTuneProfile holds a platform team's defaults and limits for tenants' FineTuneJobs. A job runs under "
        f"the profile its namespace's {PROFILE_LABEL} label names, else the one its spec.profile names, else the "
        "profile with spec.default true, else none."
    ),
    spec_model=FineTuneProfileSpec,
    status_model=None,
    printer_columns=(
        {"name": "Default", "type": "boolean", "jsonPath": ".spec.default", "description": "The default profile."},
        {
            "name": "Max GPUs/node",
            "type": "integer",
            "jsonPath": ".spec.limits.maxGpusPerNode",
            "description": "Most spec.resources.gpusPerNode a job may ask for.",
        },
        {
            "name": "Max nodes",
            "type": "integer",
            "jsonPath": ".spec.limits.maxNodes",
            "description": "Most spec.resources.nodes a job may ask for.",
        },
        {"name": "Description", "type": "string", "jsonPath": ".spec.description", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
    root_rules=(
        {
            "rule": f"self.metadata.name.size() <= {LABEL_VALUE_MAX_LENGTH}",
            "message": (
                f"metadata.name must be at most {LABEL_VALUE_MAX_LENGTH} characters (a label value: namespaces name "
                f"it in {PROFILE_LABEL})"
            ),
        },
    ),
)

# Every kind of the kubetune.io group, in the order the reference documents them.
KINDS = (FINETUNEJOB, FINETUNEPROFILE)


def spec_schema(kind: CrdKind = FINETUNEJOB) -> Schema:
    schema = model_schema(kind.spec_model)
    for field in kind.immutable_spec_fields:
        prop = schema["properties"][field]
        prop.setdefault("x-kubernetes-validations", []).append(immutable_rule(field))
    return schema


def build_crd(kind: CrdKind = FINETUNEJOB) -> Schema:
    """The complete CustomResourceDefinition object of one kind (FineTuneJob unless told)."""
    properties: Schema = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": spec_schema(kind),
    }
    if kind.status_model is not None:
        properties["status"] = model_schema(kind.status_model)
    root: Schema = {"type": "object", "description": kind.description, "required": ["spec"], "properties": properties}
    if kind.root_rules:
        root["x-kubernetes-validations"] = [dict(rule) for rule in kind.root_rules]
    version: Schema = {"name": VERSION, "served": True, "storage": True}
    if kind.status_model is not None:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = [dict(column) for column in kind.printer_columns]
    version["schema"] = {"openAPIV3Schema": root}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": kind.scope,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(CATEGORIES),
            },
            "versions": [version],
        },
    }


def kind_named(name: str) -> CrdKind:
    """The kind called ``name``: its kind, plural, singular or a short name, in any case."""
    wanted = name.lower()
    for kind in KINDS:
        if wanted in {kind.kind.lower(), kind.plural, kind.singular, *kind.short_names}:
            return kind
    known = ", ".join(kind.kind for kind in KINDS)
    raise KeyError(f"no kind {name!r} in {GROUP}: {known}")


HEADER = "# Generated by `kubetune crd` from the pydantic models in kubetune.api. Do not edit.\n"


def render_crd_yaml(kind: CrdKind = FINETUNEJOB) -> str:
    """One kind's CRD as the YAML file crds/<plural>.yaml holds."""
    return HEADER + yaml.safe_dump(build_crd(kind), sort_keys=False, width=110)
