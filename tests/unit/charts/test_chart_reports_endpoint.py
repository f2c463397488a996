"""The operator's progress-report endpoint: its Service, container port, settings and NetworkPolicy rule.

Trainers (rank 0 of each FineTuneJob, in any watched namespace) POST their progress to it over HTTPS.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest
from helm_render import NAMESPACE, Manifest, Render, one, selects, trainer_pod_template
from kubetune_operator.settings import OperatorSettings

from kubetune.api.reports import report_path


def operator_container(manifests: list[Manifest]) -> dict[str, Any]:
    (container,) = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = container
    return found


def operator_env(manifests: list[Manifest]) -> dict[str, str]:
    return {v["name"]: v["value"] for v in operator_container(manifests)["env"]}


def reports_rule(manifests: list[Manifest]) -> dict[str, Any]:
    ingress: list[dict[str, Any]] = one(manifests, "NetworkPolicy")["spec"]["ingress"]
    (rule,) = [r for r in ingress if r["ports"][0]["port"] == "reports"]
    return rule


def test_reports_service_forwards_its_port_to_the_operator_pod(default_manifests: list[Manifest]) -> None:
    service = one(default_manifests, "Service", "kubetune-reports")
    pod_labels = one(default_manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["metadata"]["namespace"] == NAMESPACE
    assert service["spec"]["type"] == "ClusterIP"
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels)
    assert service["spec"]["ports"] == [{"name": "reports", "port": 8443, "targetPort": "reports", "protocol": "TCP"}]
    ports = {p["name"]: p["containerPort"] for p in operator_container(default_manifests)["ports"]}
    assert ports["reports"] == 8443


def test_the_operator_listens_on_the_reports_port_and_hands_out_the_services_url(
    default_manifests: list[Manifest],
) -> None:
    env = operator_env(default_manifests)
    assert env["KUBETUNE_REPORT_URL_BASE"] == "https://kubetune-reports.kubetune-system.svc:8443"
    settings = OperatorSettings.from_env(environ=env)
    assert settings.reports_port == 8443
    assert settings.report_url_base == env["KUBETUNE_REPORT_URL_BASE"]
    assert settings.report_cert_hosts == ()
    # No Secret given: the operator makes its own CA and certificate.
    assert settings.reports_tls_dir is None


@pytest.mark.parametrize("metrics_enabled", [True, False])
def test_report_url_names_the_reports_service_at_its_port(render: Render, metrics_enabled: bool) -> None:
    manifests = render({"fullnameOverride": "ft", "reports": {"port": 9443}, "metrics": {"enabled": metrics_enabled}})
    service = one(manifests, "Service", "ft-reports")
    url = urllib.parse.urlsplit(
        operator_env(manifests)["KUBETUNE_REPORT_URL_BASE"] + report_path(namespace="a", name="b")
    )
    assert (url.scheme, url.hostname, url.port) == ("https", f"ft-reports.{NAMESPACE}.svc", 9443)
    assert url.path == "/v1/reports/a/b"
    assert service["spec"]["ports"][0]["port"] == 9443
    assert {p["name"]: p["containerPort"] for p in operator_container(manifests)["ports"]}["reports"] == 9443
    assert OperatorSettings.from_env(environ=operator_env(manifests)).reports_port == 9443


def test_report_values_reach_the_operator_settings(render: Render) -> None:
    values = {
        "reports": {
            "statusWriteIntervalSeconds": 2.5,
            "certHosts": ["reports.example.com", "10.0.0.7"],
            "tls": {"secretName": "kubetune-reports-tls"},
        }
    }
    manifests = render(values)
    settings = OperatorSettings.from_env(environ=operator_env(manifests))
    assert settings.report_write_interval_seconds == 2.5
    assert settings.report_cert_hosts == ("reports.example.com", "10.0.0.7")
    assert settings.reports_tls_dir == "/etc/kubetune/reports-tls"
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "reports-tls", "secret": {"secretName": "kubetune-reports-tls"}} in pod["volumes"]
    mounts = {m["name"]: m for m in operator_container(manifests)["volumeMounts"]}
    assert mounts["reports-tls"] == {"name": "reports-tls", "mountPath": "/etc/kubetune/reports-tls", "readOnly": True}


def test_network_policy_admits_reports_from_trainer_pods_of_every_namespace(render: Render) -> None:
    rule = reports_rule(render({"networkPolicy": {"enabled": True}}))
    (peer,) = rule["from"]
    assert peer["namespaceSelector"] == {}
    trainer = trainer_pod_template()["metadata"]["labels"]
    assert selects(peer["podSelector"], trainer)
    assert not selects(peer["podSelector"], {"app.kubernetes.io/name": "something-else"})


def test_network_policy_admits_reports_only_from_the_watched_namespaces(render: Render) -> None:
    rule = reports_rule(render({"networkPolicy": {"enabled": True}, "operator": {"watchNamespaces": ["ml", "nlp"]}}))
    (peer,) = rule["from"]
    namespace_selector = peer["namespaceSelector"]
    assert selects(namespace_selector, {"kubernetes.io/metadata.name": "ml"})
    assert not selects(namespace_selector, {"kubernetes.io/metadata.name": "default"})
    assert selects(peer["podSelector"], trainer_pod_template(namespace="ml")["metadata"]["labels"])


def test_reports_from_replaces_the_default_peers(render: Render) -> None:
    mesh = {"ipBlock": {"cidr": "10.0.0.0/8"}}
    manifests = render({"networkPolicy": {"enabled": True, "reportsFrom": [mesh]}})
    assert reports_rule(manifests) == {"ports": [{"port": "reports", "protocol": "TCP"}], "from": [mesh]}
    # The other rules are unchanged.
    assert [r["ports"][0]["port"] for r in one(manifests, "NetworkPolicy")["spec"]["ingress"]] == [
        "metrics",
        "reports",
        "health",
    ]
