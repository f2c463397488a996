"""The chart's RBAC: the operator's ClusterRole grants exactly kubetune_operator.rbac.RULES; users get
aggregated edit/view roles; FineTuneProfiles are written only by whoever is bound to kubetune-platform-admin."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from helm_render import NAMESPACE, Manifest, Render, by_kind, one
from kubetune_operator.rbac import RULES

Permission = tuple[str, str, str]  # (apiGroup, resource, verb)


def permissions(rules: Iterable[dict[str, Any]]) -> set[Permission]:
    """Rules flattened to single permissions: two rule lists are equivalent when these sets are equal."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def operator_role(manifests: list[Manifest]) -> Manifest:
    return one(manifests, "ClusterRole", "kubetune-operator")


def test_operator_cluster_role_grants_exactly_the_operator_rules(default_manifests: list[Manifest]) -> None:
    granted = permissions(operator_role(default_manifests)["rules"])
    needed = permissions(rule.to_wire() for rule in RULES)
    assert granted - needed == set(), "the chart grants more than kubetune_operator/rbac.py asks for"
    assert needed - granted == set(), "the chart misses rules from kubetune_operator/rbac.py"


def test_operator_role_is_bound_to_the_operator_service_account(default_manifests: list[Manifest]) -> None:
    binding = one(default_manifests, "ClusterRoleBinding", "kubetune-operator")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "kubetune-operator",
    }
    deployment = one(default_manifests, "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert one(default_manifests, "ServiceAccount", account)["metadata"]["namespace"] == NAMESPACE


def test_peering_adds_only_kopf_peering_permissions(render: Render, default_manifests: list[Manifest]) -> None:
    with_peering = permissions(operator_role(render({"operator": {"peering": {"enabled": True}}}))["rules"])
    extra = with_peering - permissions(operator_role(default_manifests)["rules"])
    assert {group for group, _, _ in extra} == {"kopf.dev"}
    assert {resource for _, resource, _ in extra} == {"clusterkopfpeerings", "kopfpeerings"}
    assert "delete" not in {verb for _, _, verb in extra}


def test_user_roles_aggregate_into_the_builtin_roles(default_manifests: list[Manifest]) -> None:
    edit = one(default_manifests, "ClusterRole", "kubetune-edit")
    view = one(default_manifests, "ClusterRole", "kubetune-view")
    edit_labels, view_labels = edit["metadata"]["labels"], view["metadata"]["labels"]
    assert edit_labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit_labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view_labels["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-edit" not in view_labels


def test_editors_manage_finetunejobs_but_cannot_write_status(default_manifests: list[Manifest]) -> None:
    edit = permissions(one(default_manifests, "ClusterRole", "kubetune-edit")["rules"])
    for verb in ("create", "get", "list", "watch", "update", "patch", "delete", "deletecollection"):
        assert ("kubetune.io", "finetunejobs", verb) in edit
    assert {v for g, r, v in edit if r == "finetunejobs/status"} == {"get", "list", "watch"}
    # The built-in edit role does not include view's rules by aggregation: edit must carry its own reads.
    assert {g for g, _, _ in edit} == {"kubetune.io"}


def test_viewers_only_read(default_manifests: list[Manifest]) -> None:
    view = permissions(one(default_manifests, "ClusterRole", "kubetune-view")["rules"])
    assert {verb for _, _, verb in view} == {"get", "list", "watch"}
    assert {resource for _, resource, _ in view} == {"finetunejobs", "finetunejobs/status", "finetuneprofiles"}


def test_no_role_aggregated_into_the_builtin_roles_writes_finetuneprofiles(default_manifests: list[Manifest]) -> None:
    aggregated = [
        role
        for role in by_kind(default_manifests, "ClusterRole")
        if any(label.startswith("rbac.authorization.k8s.io/aggregate-to-") for label in role["metadata"]["labels"])
    ]
    assert {role["metadata"]["name"] for role in aggregated} == {"kubetune-edit", "kubetune-view"}
    for role in aggregated:
        verbs = {verb for _, resource, verb in permissions(role["rules"]) if resource.startswith("finetuneprofiles")}
        assert verbs <= {"get", "list", "watch"}, role["metadata"]["name"]


def test_the_platform_admin_role_manages_finetuneprofiles_and_nothing_else(default_manifests: list[Manifest]) -> None:
    role = one(default_manifests, "ClusterRole", "kubetune-platform-admin")
    assert not [k for k in role["metadata"]["labels"] if k.startswith("rbac.authorization.k8s.io/")]
    verbs = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
    assert permissions(role["rules"]) == {("kubetune.io", "finetuneprofiles", verb) for verb in verbs}


def test_the_profile_reader_role_reads_finetuneprofiles_only(default_manifests: list[Manifest]) -> None:
    role = one(default_manifests, "ClusterRole", "kubetune-profile-reader")
    assert not [k for k in role["metadata"]["labels"] if k.startswith("rbac.authorization.k8s.io/")]
    assert permissions(role["rules"]) == {("kubetune.io", "finetuneprofiles", v) for v in ("get", "list", "watch")}


def test_the_profile_roles_are_bound_to_no_one(default_manifests: list[Manifest]) -> None:
    bound = {binding["roleRef"]["name"] for binding in by_kind(default_manifests, "ClusterRoleBinding")} | {
        binding["roleRef"]["name"] for binding in by_kind(default_manifests, "RoleBinding")
    }
    assert not bound & {"kubetune-platform-admin", "kubetune-profile-reader"}


def test_rbac_can_be_left_to_the_platform_team(render: Render) -> None:
    manifests = render({"rbac": {"create": False, "aggregateToDefaultRoles": False, "profileRoles": False}})
    assert by_kind(manifests, "ClusterRole") == []
    assert by_kind(manifests, "ClusterRoleBinding") == []


def test_the_operator_role_in_its_namespace_grants_exactly_the_ca_secret_rules(
    render: Render, default_manifests: list[Manifest]
) -> None:
    from kubetune_operator.rbac import namespace_rules

    role = one(default_manifests, "Role", "kubetune-operator")
    assert role["metadata"]["namespace"] == NAMESPACE
    deployment = one(default_manifests, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    namespace, _, secret = env["KUBETUNE_REPORTS_CA_SECRET"].partition("/")
    assert namespace == NAMESPACE
    assert role["rules"] == [rule.to_wire() for rule in namespace_rules(ca_secret=secret)]
    binding = one(default_manifests, "RoleBinding", "kubetune-operator")
    assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] == role["metadata"]["name"]
    # A certificate of the platform's own needs no CA Secret, so no Role either.
    own_cert = render({"reports": {"tls": {"secretName": "reports-cert"}}})
    assert not by_kind(own_cert, "Role")
    own_env = one(own_cert, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "KUBETUNE_REPORTS_CA_SECRET" not in {e["name"] for e in own_env}
