"""docs/security.md says what is installed: its tables are compared with the code and the rendered chart.

A failing test prints the rows the doc should have (the ``why`` column is the doc's own).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_render import Manifest, Render, one
from kubetune_operator.builders.pod import build_pod_template
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.rbac import RULES
from kubetune_operator.settings import OperatorSettings
from prometheus_client.metrics import MetricWrapperBase

from kubetune.api.resource import FineTuneJob

DOC = Path(__file__).resolve().parents[3] / "docs" / "security.md"

Rule = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # (apiGroups, resources, verbs)


def tables_under(heading: str) -> list[list[list[str]]]:
    """The Markdown tables between ``heading`` and the next heading of any level: rows of cells, no header."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    tables: list[list[list[str]]] = []
    rows: list[list[str]] = []
    for line in [*lines[start:end], ""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            tables.append(rows[2:])  # header and separator
            rows = []
    return tables


def codes(cell: str) -> tuple[str, ...]:
    """The `code` spans of a cell; `""` is the core API group."""
    return tuple("" if code == '""' else code for code in re.findall(r"`([^`]*)`", cell))


def rule_rows(rows: list[list[str]], *, first: int = 0) -> list[Rule]:
    return [(codes(r[first]), codes(r[first + 1]), codes(r[first + 2])) for r in rows]


def as_rules(rules: list[dict[str, Any]]) -> list[Rule]:
    return [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in rules]


def markdown(rules: list[Rule]) -> str:
    def cell(items: tuple[str, ...]) -> str:
        return ", ".join(f"`{item}`" if item else '`""`' for item in items)

    return "\n".join(f"| {cell(g)} | {cell(r)} | {cell(v)} | ... |" for g, r, v in rules)


def settings_rows(rows: list[list[str]]) -> dict[str, Any]:
    return {codes(r[0])[0]: yaml.safe_load(codes(r[1])[0]) for r in rows}


def flattened(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out |= flattened(item, f"{prefix}.{key}" if prefix else key)
        return out
    return {prefix: value}


def pod_security(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The pod's and its one container's security settings, as the doc's ``setting`` column names them."""
    (container,) = pod_spec["containers"]
    settings = flattened(pod_spec["securityContext"], "securityContext")
    settings |= flattened(container["securityContext"], "containers[].securityContext")
    for key in ("automountServiceAccountToken", "enableServiceLinks"):
        if key in pod_spec:
            settings[key] = pod_spec[key]
    return settings


def test_the_operator_rules_are_rbac_rules_in_order() -> None:
    table = tables_under("### The operator's ClusterRole")[0]
    expected = as_rules([rule.to_wire() for rule in RULES])
    assert rule_rows(table) == expected, f"docs/security.md should list:\n{markdown(expected)}"


def test_the_peering_rules_are_what_the_chart_adds(render: Render, default_manifests: list[Manifest]) -> None:
    peering = tables_under("### The operator's ClusterRole")[1]
    default = as_rules(one(default_manifests, "ClusterRole", "kubetune-operator")["rules"])
    with_peering = as_rules(
        one(render({"operator": {"peering": {"enabled": True}}}), "ClusterRole", "kubetune-operator")["rules"]
    )
    added = [rule for rule in with_peering if rule not in default]
    assert rule_rows(peering) == added, f"docs/security.md should list:\n{markdown(added)}"


@pytest.mark.parametrize("role", ["kubetune-edit", "kubetune-view"])
def test_the_user_roles_are_the_charts(role: str, default_manifests: list[Manifest]) -> None:
    (table,) = tables_under("### Roles for people who run fine-tunes")
    documented = rule_rows([row for row in table if codes(row[0]) == (role,)], first=1)
    rendered = as_rules(one(default_manifests, "ClusterRole", role)["rules"])
    assert documented == rendered, f"docs/security.md should list for {role}:\n{markdown(rendered)}"


@pytest.mark.parametrize("role", ["kubetune-platform-admin", "kubetune-profile-reader"])
def test_the_platform_roles_are_the_charts(role: str, default_manifests: list[Manifest]) -> None:
    (table,) = tables_under("### Roles for the platform team")
    documented = rule_rows([row for row in table if codes(row[0]) == (role,)], first=1)
    rendered = as_rules(one(default_manifests, "ClusterRole", role)["rules"])
    assert documented == rendered, f"docs/security.md should list for {role}:\n{markdown(rendered)}"


def test_the_operator_pod_settings_are_the_charts(default_manifests: list[Manifest]) -> None:
    (table,) = tables_under("### The operator pod")
    rendered = pod_security(one(default_manifests, "Deployment")["spec"]["template"]["spec"])
    assert settings_rows(table) == rendered


def test_the_trainer_pod_settings_are_the_builders() -> None:
    (table,) = tables_under("### The trainer pods")
    spec = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"]},
        "output": {"destination": "s3://outputs/run-1"},
    }
    metadata = {"name": "demo", "namespace": "team-a", "uid": "uid", "generation": 1}
    ftj = FineTuneJob.from_object(
        {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": metadata, "spec": spec}
    )
    built = pod_security(build_pod_template(ftj=ftj, settings=OperatorSettings())["spec"])
    assert settings_rows(table) == built


def test_the_metric_labels_named_in_the_credentials_rules_are_all_there_are() -> None:
    (table,) = tables_under("## Credentials")
    row = next(r for r in table if "No secret values" in r[0])
    metrics = OperatorMetrics()
    # prometheus-client keeps a metric's label names in _labelnames; samples exist only once a label is used.
    labels = {
        name
        for metric in vars(metrics).values()
        if isinstance(metric, MetricWrapperBase)
        for name in metric._labelnames
    }
    listed = re.search(r"metric labels are only (.*?) \(", row[1])
    assert listed is not None, row[1]
    assert set(codes(listed.group(1))) == labels
