"""The operator's RBAC rules: one list, minimal (tests/unit/charts/ checks the chart grants exactly these)."""

from __future__ import annotations

from kubetune_operator.rbac import RULES, cluster_role


def verbs_for(group: str, resource: str) -> set[str]:
    return {v for r in RULES if group in r.api_groups and resource in r.resources for v in r.verbs}


def test_operator_can_watch_finetunejobs_and_write_only_their_status_and_annotations() -> None:
    assert verbs_for("kubetune.io", "finetunejobs") == {"get", "list", "watch", "patch", "delete"}
    assert verbs_for("kubetune.io", "finetunejobs/status") == {"get", "patch"}


def test_operator_only_observes_pods_and_deletes_no_child_but_a_stopped_job() -> None:
    assert verbs_for("", "pods") == {"get", "list", "watch"}
    for group, resource in (("", "configmaps"), ("", "services")):
        assert "delete" not in verbs_for(group, resource)
    assert {"create", "delete"} <= verbs_for("batch", "jobs")


def test_no_wildcards_and_no_access_to_secrets() -> None:
    for rule in RULES:
        assert "*" not in rule.verbs + rule.resources + rule.api_groups
    assert verbs_for("", "secrets") == set()


def test_cluster_role_renders_every_rule() -> None:
    role = cluster_role(name="kubetune-operator")
    assert role["kind"] == "ClusterRole" and role["metadata"] == {"name": "kubetune-operator"}
    assert role["rules"] == [r.to_wire() for r in RULES]
