"""Objects behind values: metrics Service and ServiceMonitor, NetworkPolicy, kopf peering, ServiceAccount.

The reports Service, the PodMonitor, the PrometheusRule and the dashboard: test_chart_observability.py.
"""

from __future__ import annotations

from helm_render import NAMESPACE, Manifest, Render, by_kind, one


def pod_labels(manifests: list[Manifest]) -> dict[str, str]:
    labels: dict[str, str] = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_default_install_has_metrics_and_reports_services_and_nothing_optional(
    default_manifests: list[Manifest],
) -> None:
    kinds = sorted(m["kind"] for m in default_manifests)
    assert kinds == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    assert all(m["metadata"].get("namespace") in (None, NAMESPACE) for m in default_manifests)


def test_metrics_service_selects_the_operator_pod_on_the_metrics_port(default_manifests: list[Manifest]) -> None:
    service = one(default_manifests, "Service", "kubetune-metrics")
    assert service["metadata"]["namespace"] == NAMESPACE
    assert matches(service["spec"]["selector"], pod_labels(default_manifests))
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]


def test_service_monitor_selects_the_metrics_service(render: Render) -> None:
    manifests = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}})
    monitor = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service", "kubetune-metrics")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # Per-job series carry the FineTuneJob's namespace, which must win over the operator's.
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_disabling_metrics_drops_service_and_monitor(render: Render) -> None:
    manifests = render({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    # Trainers still need the reports Service.
    assert [s["metadata"]["name"] for s in by_kind(manifests, "Service")] == ["kubetune-reports"]
    assert by_kind(manifests, "ServiceMonitor") == []


def test_network_policy_admits_only_metrics_reports_and_health(render: Render) -> None:
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    manifests = render({"networkPolicy": {"enabled": True, "metricsFrom": [scraper]}})
    policy = one(manifests, "NetworkPolicy")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels(manifests))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    metrics_rule, reports_rule, health_rule = policy["spec"]["ingress"]
    assert metrics_rule == {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [scraper]}
    assert reports_rule["ports"] == [{"port": "reports", "protocol": "TCP"}]
    assert health_rule == {"ports": [{"port": "health", "protocol": "TCP"}]}


def test_network_policy_restricts_egress_to_dns_and_the_api_server_when_given_its_cidrs(render: Render) -> None:
    manifests = render({"networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.1/32", "10.0.0.2/32"]}})
    policy = one(manifests, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    dns, api = policy["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}, {"ipBlock": {"cidr": "10.0.0.2/32"}}]
    assert {p["port"] for p in api["ports"]} == {443, 6443}


def test_cluster_wide_peering_creates_kopf_crds_and_one_cluster_peering(render: Render) -> None:
    manifests = render({"operator": {"peering": {"enabled": True}}, "replicaCount": 2})
    crds = {m["metadata"]["name"] for m in by_kind(manifests, "CustomResourceDefinition")}
    assert crds == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    for crd in by_kind(manifests, "CustomResourceDefinition"):
        # Other kopf operators may use these CRDs: uninstalling kubetune must not delete them.
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert [m["metadata"]["name"] for m in by_kind(manifests, "ClusterKopfPeering")] == ["kubetune"]
    assert by_kind(manifests, "KopfPeering") == []
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]


def test_namespaced_peering_creates_a_peering_in_each_watched_namespace(render: Render) -> None:
    values = {"operator": {"watchNamespaces": ["team-a", "team-b"], "peering": {"enabled": True, "name": "kt"}}}
    peerings = by_kind(render(values), "KopfPeering")
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings] == [
        ("team-a", "kt"),
        ("team-b", "kt"),
    ]


def test_an_existing_service_account_is_used_not_created(render: Render) -> None:
    manifests = render({"serviceAccount": {"create": False, "name": "platform-operator"}})
    assert by_kind(manifests, "ServiceAccount") == []
    assert one(manifests, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    assert one(manifests, "ClusterRoleBinding")["subjects"][0]["name"] == "platform-operator"


def test_release_names_prefix_every_resource(render: Render) -> None:
    manifests = render({"fullnameOverride": "ft"})
    names = {m["metadata"]["name"] for m in manifests}
    assert names == {
        "ft",
        "ft-metrics",
        "ft-reports",
        "ft-operator",
        "ft-edit",
        "ft-view",
        "ft-platform-admin",
        "ft-profile-reader",
        "ft-profile-limits",
    }
    policy = one(manifests, "ValidatingAdmissionPolicyBinding")
    assert policy["spec"]["policyName"] == "ft-profile-limits"
