"""values.yaml and values.schema.json: lint clean, strict (no unknown key anywhere), documented."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_render import CHART, KUBE_VERSION, run_helm

SCHEMA = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
VALUES = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
Run = Callable[..., subprocess.CompletedProcess[str]]

# Helm copies a parent chart's `global` values into every subchart; rejecting unknown keys there would break
# anyone who installs kubetune as a dependency. It is the one object the schema leaves open.
OPEN_OBJECTS = {"global"}


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/definitions/")
        resolved: dict[str, Any] = SCHEMA["definitions"][name]
        return resolved
    return node


def _objects(node: dict[str, Any], path: str, seen: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object schema reachable from node, following $refs once each."""
    if "$ref" in node:
        if node["$ref"] in seen:
            return
        seen = seen | {node["$ref"]}
        node = _resolve(node)
    types = node.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types):
        yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _objects(child, f"{path}.{name}", seen)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _objects(node["additionalProperties"], f"{path}.*", seen)
    if isinstance(node.get("items"), dict):
        yield from _objects(node["items"], f"{path}[]", seen)


def test_lint_passes_strict(helm: Path, tmp_path: Path) -> None:
    result = run_helm(
        helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, values=None, tmp_dir=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    "values",
    [
        {"operator": {"watchNamespaces": ["team-a"], "peering": {"enabled": True}}, "replicaCount": 2},
        {"networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.1/32"]}},
        {"metrics": {"serviceMonitor": {"enabled": True}}, "serviceAccount": {"create": False, "name": "ops"}},
        {
            "metrics": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True, "pendingFor": "2h"}},
            "dashboards": {"enabled": True},
            "reports": {"tls": {"secretName": "reports-tls"}},
        },
    ],
    ids=["peering-namespaced", "network-policy", "service-monitor-existing-sa", "monitoring-reports-tls"],
)
def test_lint_passes_with_optional_features(helm: Path, tmp_path: Path, values: dict[str, Any]) -> None:
    result = run_helm(
        helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, values=values, tmp_dir=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_object_in_the_schema_forbids_unknown_keys() -> None:
    loose = []
    for path, node in _objects(SCHEMA, "", set()):
        if path.lstrip(".") in OPEN_OBJECTS:
            continue
        extra = node.get("additionalProperties")
        # A map (labels, annotations, nodeSelector) types its values instead; any other object closes.
        if extra is not False and not (isinstance(extra, dict) and "properties" not in node):
            loose.append(path or "<root>")
    assert loose == []


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"operator": {"logLevl": "debug"}}, "additional properties 'logLevl' not allowed"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "additional properties 'enable' not allowed"),
        ({"affinity": {"nodeAffinity": {"required": {}}}}, "additional properties 'required' not allowed"),
        ({"resources": {"requests": {"cpus": "1"}}}, "additional properties 'cpus' not allowed"),
        ({"operator": {"logLevel": "verbose"}}, "at '/operator/logLevel': value must be one of"),
        ({"trainer": {"terminationGracePeriodSeconds": 5}}, "at '/trainer/terminationGracePeriodSeconds'"),
        ({"metrics": {"prometheusRule": {"pendingFor": "30min"}}}, "at '/metrics/prometheusRule/pendingFor'"),
    ],
    ids=["top-level", "nested", "deep", "affinity", "resources", "enum", "bound", "duration"],
)
def test_schema_rejects_unknown_keys_and_bad_values(render_result: Run, values: dict[str, Any], complaint: str) -> None:
    result = render_result(values)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr


def test_more_than_one_replica_without_peering_is_refused(render_result: Run) -> None:
    result = render_result({"replicaCount": 2})
    assert result.returncode != 0
    assert "replicaCount > 1 needs operator.peering.enabled=true" in result.stderr


def test_chart_works_as_a_dependency_of_a_chart_with_global_values(helm: Path, tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    shutil.copytree(CHART, parent / "charts" / "kubetune")
    (parent / "Chart.yaml").write_text("apiVersion: v2\nname: platform\nversion: 1.0.0\n")
    (parent / "values.yaml").write_text("global:\n  imageRegistry: mirror.example\n")
    result = run_helm(
        helm, "template", "platform", str(parent), "--kube-version", KUBE_VERSION, values=None, tmp_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "kind: Deployment" in result.stdout


def test_values_yaml_sets_every_key_the_schema_defines() -> None:
    """Every setting has a default and a comment in values.yaml, at the levels the chart itself defines."""

    def compare(schema: dict[str, Any], values: dict[str, Any], path: str) -> list[str]:
        schema = _resolve(schema)
        if "properties" not in schema or not values:
            return []
        declared = set(schema["properties"]) - OPEN_OBJECTS
        problems = [f"{path}.{k}: in the schema, not in values.yaml" for k in sorted(declared - set(values))]
        problems += [f"{path}.{k}: in values.yaml, not in the schema" for k in sorted(set(values) - declared)]
        for key in declared & set(values):
            if isinstance(values[key], dict):
                problems += compare(schema["properties"][key], values[key], f"{path}.{key}")
        return problems

    # Kubernetes types (resources, affinity, ...) may leave optional fields out of values.yaml.
    kubernetes_typed = {"resources", "affinity", "tolerations", "nodeSelector", "podAnnotations", "podLabels"}
    top = {k: v for k, v in VALUES.items() if k not in kubernetes_typed}
    schema_top = {**SCHEMA, "properties": {k: v for k, v in SCHEMA["properties"].items() if k not in kubernetes_typed}}
    assert compare(schema_top, top, "") == []
