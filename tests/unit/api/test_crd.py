"""The generated CRDs (FineTuneJob, FineTuneProfile) are structural, complete and committed up to date."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.crd import (
    FINETUNEPROFILE,
    KINDS,
    CrdKind,
    SchemaConversionError,
    build_crd,
    kind_named,
    render_crd_yaml,
    structural_schema,
)
from kubetune.api.profile import PROFILE_LABEL, FineTuneProfileSpec

REPO = Path(__file__).resolve().parents[3]


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict) and ("type" in node or "x-kubernetes-int-or-string" in node or "properties" in node):
        out.append((path, node))
        for name, prop in node.get("properties", {}).items():
            out.extend(_walk(prop, f"{path}.{name}"))
        if isinstance(node.get("items"), dict):
            out.extend(_walk(node["items"], f"{path}[]"))
        if isinstance(node.get("additionalProperties"), dict):
            out.extend(_walk(node["additionalProperties"], f"{path}.*"))
    return out


def _root(kind: CrdKind | None = None) -> dict[str, Any]:
    crd = build_crd() if kind is None else build_crd(kind)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_committed_crd_matches_the_models(kind: CrdKind) -> None:
    committed = (REPO / "crds" / kind.file_name).read_text(encoding="utf-8")
    assert committed == render_crd_yaml(kind), f"crds/{kind.file_name} is stale: run `kubetune crd -o crds/`"


def test_crds_folder_holds_one_file_per_kind() -> None:
    assert sorted(p.name for p in (REPO / "crds").iterdir()) == sorted(k.file_name for k in KINDS)


@pytest.mark.parametrize(
    ("kind", "least_nodes"),
    [pytest.param(KINDS[0], 80, id="FineTuneJob"), pytest.param(FINETUNEPROFILE, 40, id="FineTuneProfile")],
)
def test_every_schema_node_is_structural(kind: CrdKind, least_nodes: int) -> None:
    nodes = _walk(_root(kind))
    assert len(nodes) > least_nodes
    for path, node in nodes:
        assert "$ref" not in node and "$defs" not in node and "title" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf outside int-or-string"
            assert all(set(branch) == {"type"} for branch in node["anyOf"]), path
        if "properties" in node:
            assert "additionalProperties" not in node, path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_fields_carry_descriptions_for_kubectl_explain() -> None:
    spec = _root()["properties"]["spec"]
    for group in ("model", "dataset", "method", "hyperparameters", "resources", "output", "runPolicy"):
        assert spec["properties"][group].get("description"), group
    method = spec["properties"]["method"]["properties"]
    assert "low-rank adapters" in method["type"]["description"]
    assert method["type"]["enum"] == ["lora", "qlora", "dora", "full"]
    assert method["rank"]["minimum"] == 1


def test_optional_groups_default_to_empty_object_so_field_defaults_apply() -> None:
    spec = _root()["properties"]["spec"]["properties"]
    assert spec["runPolicy"]["default"] == {}
    assert spec["method"]["default"] == {}
    # Optional groups whose presence means something must not be defaulted into existence.
    assert "default" not in spec["method"]["properties"]["quantization"]
    assert "default" not in spec["dataset"]["properties"]["fieldMapping"]


def test_cross_field_rules_are_cel_validations() -> None:
    spec = _root()["properties"]["spec"]
    messages = [rule["message"] for _, node in _walk(spec) for rule in node.get("x-kubernetes-validations", [])]
    assert "method.quantization is only valid with method.type qlora" in messages
    assert "set either hyperparameters.epochs or hyperparameters.maxSteps, not both" in messages
    assert "set either dataset.validation or dataset.validationSplit, not both" in messages
    assert "spec.model is immutable; create a new FineTuneJob" in messages
    assert "spec.resources can change only while the job is suspended" in messages


def test_cpu_jobs_are_allowed_and_their_cross_field_rules_are_cel() -> None:
    spec = _root()["properties"]["spec"]
    resources = spec["properties"]["resources"]
    assert resources["properties"]["gpusPerNode"]["minimum"] == 0
    assert {
        "rule": "self.gpusPerNode > 0 || !has(self.gpuProduct)",
        "message": "resources.gpuProduct must be unset when resources.gpusPerNode is 0 (CPU training)",
    } in resources["x-kubernetes-validations"]
    assert {
        "rule": "self.resources.gpusPerNode > 0 || self.hyperparameters.precision in ['auto', 'fp32']",
        "message": "hyperparameters.precision must be auto or fp32 when resources.gpusPerNode is 0 (CPU training)",
    } in spec["x-kubernetes-validations"]


def test_int_or_auto_fields_use_the_structural_int_or_string_shape() -> None:
    epochs = _root()["properties"]["spec"]["properties"]["hyperparameters"]["properties"]["epochs"]
    assert epochs["x-kubernetes-int-or-string"] is True
    assert "self == 'auto'" in epochs["x-kubernetes-validations"][0]["rule"]


def test_printer_columns_and_names() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "finetunejobs.kubetune.io"
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:3] == ["Phase", "Progress", "Loss"] and columns[-1] == "Age"
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_yaml_round_trips(kind: CrdKind) -> None:
    assert yaml.safe_load(render_crd_yaml(kind)) == build_crd(kind)


def test_the_profile_crd_is_cluster_scoped_with_its_names_and_no_status() -> None:
    crd = build_crd(FINETUNEPROFILE)
    assert crd["metadata"]["name"] == "finetuneprofiles.kubetune.io"
    assert crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"] == {
        "kind": "FineTuneProfile",
        "listKind": "FineTuneProfileList",
        "plural": "finetuneprofiles",
        "singular": "finetuneprofile",
        "shortNames": ["ftprofile"],
        "categories": ["kubetune"],
    }
    (version,) = crd["spec"]["versions"]
    assert "subresources" not in version
    assert set(version["schema"]["openAPIV3Schema"]["properties"]) == {"apiVersion", "kind", "metadata", "spec"}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Default": ".spec.default",
        "Max GPUs/node": ".spec.limits.maxGpusPerNode",
        "Max nodes": ".spec.limits.maxNodes",
        "Description": ".spec.description",
        "Age": ".metadata.creationTimestamp",
    }


def test_every_profile_field_is_described_for_kubectl_explain() -> None:
    spec = _root(FINETUNEPROFILE)["properties"]["spec"]
    undescribed = [path for path, node in _walk(spec, "spec") if not node.get("description")]
    # Map values and list items are described by the field holding them.
    assert [p for p in undescribed if not p.endswith((".*", "[]"))] == []
    assert PROFILE_LABEL in _root(FINETUNEPROFILE)["description"]


def test_a_profile_name_fits_in_the_namespace_label_that_names_it() -> None:
    (rule,) = _root(FINETUNEPROFILE)["x-kubernetes-validations"]
    assert rule["rule"] == "self.metadata.name.size() <= 63"


def test_profile_groups_default_so_the_admission_policy_can_read_their_fields() -> None:
    spec = _root(FINETUNEPROFILE)["properties"]["spec"]
    assert _root(FINETUNEPROFILE)["required"] == ["spec"]
    assert spec["properties"]["limits"]["default"] == {}
    assert spec["properties"]["defaults"]["default"] == {}
    assert spec["properties"]["default"]["default"] is False
    assert spec["properties"]["limits"]["properties"]["allowImageOverride"]["default"] is True
    # No CEL: the admission policy reads the limits, and the profile itself has no cross-field rules.
    assert not [p for p, node in _walk(spec["properties"]["limits"]) if node.get("x-kubernetes-validations")]


_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}
_LENGTH_BOUNDS = {str: ("minLength", "maxLength"), list: ("minItems", "maxItems"), dict: ("", "maxProperties")}


def _problems(schema: dict[str, Any], value: Any, path: str = "spec") -> list[str]:
    """What the structural schema's own keywords (no CEL) refuse in value: the subset the profile uses."""
    kind = schema.get("type")
    if kind is not None and (
        not isinstance(value, _PYTHON_TYPES[kind]) or (kind != "boolean" and isinstance(value, bool))
    ):
        return [f"{path}: not {kind}"]
    out = []
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: not one of {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        out.append(f"{path}: under {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        out.append(f"{path}: over {schema['maximum']}")
    if type(value) in _LENGTH_BOUNDS:
        low, high = _LENGTH_BOUNDS[type(value)]
        if not schema.get(low, 0) <= len(value) <= schema.get(high, len(value)):
            out.append(f"{path}: {len(value)} long")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        out.append(f"{path}: does not match {schema['pattern']}")
    if isinstance(value, dict) and "properties" in schema:
        out += [f"{path}.{k}: unknown field" for k in value if k not in schema["properties"]]
        out += [f"{path}.{k}: required" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            if key in schema["properties"]:
                out += _problems(schema["properties"][key], item, f"{path}.{key}")
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            out += _problems(schema["additionalProperties"], item, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            out += _problems(schema["items"], item, f"{path}[{index}]")
    return out


SAMPLE_PROFILE: dict[str, Any] = {
    "default": True,
    "description": "Team A: one node, up to 4 H100s, LoRA family only.",
    "defaults": {
        "trainerImage": "registry.example/kubetune/trainer:0.1.0",
        "gpuProduct": "NVIDIA-H100-80GB-HBM3",
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "queueName": "team-a",
        "outputBase": "s3://ml-artifacts/{namespace}",
        "hyperparameters": {"epochs": "auto", "learningRate": 0.0002},
    },
    "limits": {
        "maxGpusPerNode": 4,
        "maxNodes": 1,
        "allowedGpuProducts": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"],
        "allowedModelSources": ["hf://meta-llama/", "pvc://models/"],
        "allowedMethods": ["lora", "qlora", "dora"],
        "maxActiveDeadlineSeconds": 86400,
        "allowImageOverride": False,
    },
}


def test_the_profile_schema_accepts_a_sample_profile_the_models_accept() -> None:
    spec = _root(FINETUNEPROFILE)["properties"]["spec"]
    FineTuneProfileSpec.model_validate(SAMPLE_PROFILE)
    assert _problems(spec, SAMPLE_PROFILE) == []


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ({"maxGpusPerNode": 17}, "spec.limits.maxGpusPerNode: over 16"),
        ({"maxNodes": 0}, "spec.limits.maxNodes: under 1"),
        (
            {"allowedMethods": ["lora", "sft"]},
            "spec.limits.allowedMethods[1]: not one of ['lora', 'qlora', 'dora', 'full']",
        ),
        ({"allowedGpuProducts": [""]}, "spec.limits.allowedGpuProducts[0]: 0 long"),
        ({"allowImageOverride": "no"}, "spec.limits.allowImageOverride: not boolean"),
        ({"maxActiveDeadlineSeconds": 0}, "spec.limits.maxActiveDeadlineSeconds: under 1"),
    ],
)
def test_the_profile_schema_refuses_limits_out_of_bounds(limits: dict[str, Any], problem: str) -> None:
    spec = _root(FINETUNEPROFILE)["properties"]["spec"]
    assert _problems(spec, {**SAMPLE_PROFILE, "limits": limits}) == [problem]


def test_kinds_are_found_by_any_of_their_names() -> None:
    for name in ("FineTuneProfile", "finetuneprofiles", "finetuneprofile", "ftprofile", "FTPROFILE"):
        assert kind_named(name) is FINETUNEPROFILE
    assert kind_named("ftj") is KINDS[0]
    with pytest.raises(KeyError, match="FineTuneJob, FineTuneProfile"):
        kind_named("jobs")


def test_a_real_union_is_refused() -> None:
    with pytest.raises(SchemaConversionError, match="anyOf"):
        structural_schema({"anyOf": [{"type": "integer"}, {"type": "boolean"}]})


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_whole_number_defaults_pass_their_bounds_when_checked_as_integers(kind: CrdKind) -> None:
    # Helm turns YAML into JSON, so a default of 0.0 reaches the API server as the integer 0, which it then
    # checks against the bounds as integers: 0 against an exclusive maximum of 0.5 is "0 < 0" and the CRD is
    # refused. Every whole-number default must pass its bounds with the bounds truncated to integers.
    for path, node in _walk(_root(kind)):
        default = node.get("default")
        if not isinstance(default, int | float) or isinstance(default, bool) or float(default) != int(default):
            continue
        value = int(default)
        if "maximum" in node:
            limit = int(node["maximum"])
            assert value < limit if node.get("exclusiveMaximum") else value <= limit, path
        if "minimum" in node:
            limit = int(node["minimum"])
            assert value > limit if node.get("exclusiveMinimum") else value >= limit, path
