"""The generated CRD is structural, complete and committed up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.crd import SchemaConversionError, build_crd, render_crd_yaml, structural_schema

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


def _root() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crd_matches_the_models() -> None:
    committed = (REPO / "crds" / "finetunejobs.yaml").read_text(encoding="utf-8")
    assert committed == render_crd_yaml(), (
        "crds/finetunejobs.yaml is stale: run `kubetune crd -o crds/finetunejobs.yaml`"
    )


def test_every_schema_node_is_structural() -> None:
    nodes = _walk(_root())
    assert len(nodes) > 80
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


def test_yaml_round_trips() -> None:
    assert yaml.safe_load(render_crd_yaml()) == build_crd()


def test_a_real_union_is_refused() -> None:
    with pytest.raises(SchemaConversionError, match="anyOf"):
        structural_schema({"anyOf": [{"type": "integer"}, {"type": "boolean"}]})
