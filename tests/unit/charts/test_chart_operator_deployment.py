"""The operator Deployment: restricted Pod Security, settings passed as KUBETUNE_* variables, images."""

from __future__ import annotations

from typing import Any

import pytest
from helm_render import Manifest, Render, one
from kubetune_operator.settings import ENV_PREFIX, OperatorSettings


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(manifests: list[Manifest]) -> dict[str, Any]:
    containers = pod_spec(manifests)["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    found: dict[str, Any] = containers[0]
    return found


def env(manifests: list[Manifest]) -> dict[str, str]:
    variables = container(manifests)["env"]
    names = [v["name"] for v in variables]
    assert len(names) == len(set(names)), f"duplicate env vars: {names}"
    return {v["name"]: v["value"] for v in variables}


def test_pod_meets_the_restricted_pod_security_standard(default_manifests: list[Manifest]) -> None:
    pod = pod_spec(default_manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] > 0
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(field)
    assert all("hostPath" not in volume for volume in pod.get("volumes", []))
    sc = container(default_manifests)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert not sc.get("privileged")


def test_platform_assigned_uids_leave_run_as_user_out(render: Render) -> None:
    pod = pod_spec(render({"securityContext": {"runAsUser": None, "runAsGroup": None}}))
    assert "runAsUser" not in pod["securityContext"]
    assert "runAsGroup" not in pod["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_every_chart_variable_is_an_operator_setting_and_every_setting_is_set(
    default_manifests: list[Manifest], render: Render
) -> None:
    fields = {ENV_PREFIX + name.upper() for name in OperatorSettings.model_fields}
    # Peering and a given TLS Secret add the variables that are set only when they are on.
    everything_on = env(
        render(
            {
                "operator": {"peering": {"enabled": True}},
                "reports": {"tls": {"secretName": "reports-tls"}},
                "dataCheck": {"queueName": "cpu-checks"},
            }
        )
    )
    # The CA Secret is the default; a given TLS Secret replaces it.
    rendered = {name for name in [*everything_on, *env(default_manifests)] if name.startswith(ENV_PREFIX)}
    assert fields - rendered == set(), "operator settings the chart cannot set"
    assert rendered - fields == set(), "chart variables the operator does not read"


def test_default_environment_is_valid_operator_settings(default_manifests: list[Manifest]) -> None:
    settings = OperatorSettings.from_env(environ=env(default_manifests))
    assert settings.namespaces == ()
    assert settings.trainer_image == "kubetune/trainer:0.1.0"
    assert settings.metrics_port == 8080
    assert settings.health_port == 8081
    # The kwok test hook is not a production default.
    assert settings.pod_annotation_prefixes == ()
    assert settings.log_level == "info"
    # One replica, no peering: kopf runs standalone.
    assert settings.peering_name is None
    # The data check takes no Kueue queue unless one is named.
    assert settings.preflight_queue_name is None and settings.preflight_memory == "4Gi"


def test_values_reach_the_operator_settings(render: Render) -> None:
    values = {
        "operator": {
            "watchNamespaces": ["team-a", "team-b"],
            "logLevel": "debug",
            "maxWorkers": 4,
            "pendingTimeoutSeconds": 1800,
            "peering": {"enabled": True, "name": "kubetune-ha"},
        },
        "trainer": {
            "image": {"registry": "registry.example", "repository": "ml/trainer", "tag": "1.2.3"},
            "imagePullPolicy": "Always",
            "terminationGracePeriodSeconds": 900,
            "runAsUser": 2000,
            "podAnnotationPrefixes": ["cost.example/", "sidecar.istio.io/"],
        },
        "metrics": {"port": 9100},
        "health": {"port": 9101},
        "dataCheck": {"cpu": "500m", "memory": "2Gi", "activeDeadlineSeconds": 600, "queueName": "cpu-checks"},
    }
    settings = OperatorSettings.from_env(environ=env(render(values)))
    assert (settings.preflight_cpu, settings.preflight_memory) == ("500m", "2Gi")
    assert settings.preflight_deadline_seconds == 600 and settings.preflight_queue_name == "cpu-checks"
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.log_level == "debug"
    assert settings.peering_name == "kubetune-ha"
    assert settings.max_workers == 4
    assert settings.pending_timeout_seconds == 1800
    assert settings.trainer_image == "registry.example/ml/trainer:1.2.3"
    assert settings.trainer_image_pull_policy == "Always"
    assert settings.termination_grace_period_seconds == 900
    assert settings.run_as_user == 2000
    assert settings.pod_annotation_prefixes == ("cost.example/", "sidecar.istio.io/")
    assert (settings.metrics_port, settings.health_port) == (9100, 9101)


def test_disabling_metrics_turns_the_endpoint_off(render: Render) -> None:
    manifests = render({"metrics": {"enabled": False}})
    assert OperatorSettings.from_env(environ=env(manifests)).metrics_port == 0
    assert [p["name"] for p in container(manifests)["ports"]] == ["reports", "health"]


def test_probes_use_the_health_port(default_manifests: list[Manifest]) -> None:
    c = container(default_manifests)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "reports": 8443, "health": 8081}
    for probe in ("livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ({}, "kubetune/operator:0.1.0"),
        ({"registry": "mirror.example:5000", "tag": "0.1.1"}, "mirror.example:5000/kubetune/operator:0.1.1"),
        ({"digest": "sha256:" + "a" * 64}, "kubetune/operator:0.1.0@sha256:" + "a" * 64),
    ],
)
def test_operator_image_reference(render: Render, image: dict[str, str], expected: str) -> None:
    assert container(render({"image": image}))["image"] == expected


def test_single_replica_without_peering_is_replaced_not_rolled(default_manifests: list[Manifest]) -> None:
    deployment = one(default_manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_scheduling_values_reach_the_pod(render: Render) -> None:
    values = {
        "nodeSelector": {"node-role.example/system": "true"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example/scrape": "true"},
        "imagePullSecrets": [{"name": "regcred"}],
    }
    pod = pod_spec(render(values))
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
