"""The test control plane behaves like a real cluster with GPU nodes (see docs/testing.md)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kube_objects import wait_for
from kubernetes import client
from kubetune_testenv.cluster import Cluster
from kubetune_testenv.nodes import GPU_PRODUCT_LABEL
from kubetune_testenv.stages import EXIT_CODE, PREEMPT_AFTER, REASON, RUN_FOR

pytestmark = pytest.mark.cluster


def job_manifest(
    name: str,
    *,
    gpus: int = 0,
    annotations: dict[str, str] | None = None,
    backoff_limit: int = 0,
    parallelism: int = 1,
    pod_failure_policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {"requests": {"cpu": "100m"}}
    spec: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        "parallelism": parallelism,
        "completions": parallelism,
        "template": {
            "metadata": {"annotations": annotations or {}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "trainer", "image": "kubetune/fake-trainer:test", "resources": resources}],
            },
        },
    }
    if pod_failure_policy is not None:
        spec["podFailurePolicy"] = pod_failure_policy
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def job_condition(job: Any, kind: str) -> bool:
    return any(c.type == kind and c.status == "True" for c in job.status.conditions or [])


def job_pods(core: Any, namespace: str, job: str) -> list[Any]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items)


def terminated(pod: Any) -> Any:
    return pod.status.container_statuses[0].state.terminated


@pytest.fixture
def api(cluster: Cluster) -> Any:
    with cluster.api_client() as api_client:
        yield api_client


def test_job_requesting_8_gpus_runs_on_an_h100_node_and_completes(api: Any, namespace: str) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, job_manifest("h100", gpus=8, annotations={RUN_FOR: "3s"}))

    running = wait_for(
        lambda: job_pods(core, namespace, "h100"),
        lambda pods: len(pods) == 1 and pods[0].status.phase == "Running",
        what="a running pod",
    )
    node = core.read_node(running[0].spec.node_name)
    assert node.metadata.labels[GPU_PRODUCT_LABEL] == "NVIDIA-H100-80GB-HBM3"

    job = wait_for(
        lambda: batch.read_namespaced_job("h100", namespace),
        lambda job: job_condition(job, "Complete"),
        what="Job Complete",
    )
    assert job.status.succeeded == 1
    pod = job_pods(core, namespace, "h100")[0]
    assert pod.status.phase == "Succeeded"
    assert terminated(pod).exit_code == 0
    assert terminated(pod).reason == "Completed"


def test_pod_without_annotations_runs_about_two_seconds_then_exits_zero(api: Any, namespace: str) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, job_manifest("default"))

    wait_for(
        lambda: batch.read_namespaced_job("default", namespace),
        lambda job: job_condition(job, "Complete"),
        what="Job Complete",
    )
    state = terminated(job_pods(core, namespace, "default")[0])
    assert state.exit_code == 0
    assert 1 <= (state.finished_at - state.started_at).total_seconds() <= 10


def test_exit_code_annotation_fails_pods_and_the_job_after_its_backoff_limit(api: Any, namespace: str) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    batch.create_namespaced_job(
        namespace, job_manifest("exit3", gpus=1, annotations={EXIT_CODE: "3", RUN_FOR: "1s"}, backoff_limit=1)
    )

    job = wait_for(
        lambda: batch.read_namespaced_job("exit3", namespace),
        lambda job: job_condition(job, "Failed"),
        what="Job Failed",
        timeout=90,
    )
    failed = next(c for c in job.status.conditions if c.type == "Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert job.status.failed == 2  # the first try and one retry (backoffLimit 1)
    pods = job_pods(core, namespace, "exit3")
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Failed"
        assert terminated(pod).exit_code == 3
        assert terminated(pod).reason == "Error"


def test_oomkilled_reason_terminates_the_container_with_exit_code_137(api: Any, namespace: str) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, job_manifest("oom", annotations={REASON: "OOMKilled", RUN_FOR: "1s"}))

    wait_for(
        lambda: batch.read_namespaced_job("oom", namespace), lambda job: job_condition(job, "Failed"), what="Job Failed"
    )
    pod = job_pods(core, namespace, "oom")[0]
    assert pod.status.phase == "Failed"
    assert terminated(pod).reason == "OOMKilled"
    assert terminated(pod).exit_code == 137


def test_preempted_pod_gets_disruption_target_and_is_ignored_by_the_pod_failure_policy(
    api: Any, namespace: str
) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    ignore_disruptions = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    batch.create_namespaced_job(
        namespace,
        job_manifest("preempt", gpus=8, annotations={PREEMPT_AFTER: "2s"}, pod_failure_policy=ignore_disruptions),
    )
    first = wait_for(lambda: job_pods(core, namespace, "preempt"), lambda pods: len(pods) == 1, what="the first pod")[
        0
    ].metadata.name

    def replaced(pods: list[Any]) -> bool:
        return bool(pods) and first not in {pod.metadata.name for pod in pods}

    wait_for(lambda: job_pods(core, namespace, "preempt"), replaced, what="the first pod deleted and replaced")
    job = batch.read_namespaced_job("preempt", namespace)
    assert not job_condition(job, "Failed")  # backoffLimit 0, yet the disruption did not count
    assert not job.status.failed
    reasons = {
        event.reason
        for event in core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={first}").items
    }
    assert "Preempted" in reasons


def test_pod_asking_16_gpus_stays_pending_and_unschedulable(api: Any, namespace: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "too-big"},
            "spec": {
                "containers": [
                    {"name": "main", "image": "kubetune/fake:test", "resources": {"limits": {"nvidia.com/gpu": "16"}}}
                ]
            },
        },
    )

    def unschedulable(pod: Any) -> bool:
        return any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
            for c in pod.status.conditions or []
        )

    pod = wait_for(
        lambda: core.read_namespaced_pod("too-big", namespace), unschedulable, what="PodScheduled=False/Unschedulable"
    )
    assert pod.status.phase == "Pending"
    assert "nvidia.com/gpu" in next(c.message for c in pod.status.conditions if c.type == "PodScheduled")


def test_deleting_a_job_garbage_collects_its_pods(api: Any, namespace: str) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, job_manifest("gc", gpus=1, parallelism=2, annotations={RUN_FOR: "1h"}))
    wait_for(
        lambda: job_pods(core, namespace, "gc"),
        lambda pods: len(pods) == 2 and all(p.status.phase == "Running" for p in pods),
        what="two running pods",
    )

    batch.delete_namespaced_job("gc", namespace, propagation_policy="Background")

    wait_for(lambda: job_pods(core, namespace, "gc"), lambda pods: not pods, what="pods garbage-collected")


def test_service_account_is_forbidden_until_a_role_grants_access(cluster: Cluster, api: Any, namespace: str) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    with cluster.sa_api_client(namespace, "reader") as reader_api:
        reader = client.CoreV1Api(reader_api)
        with pytest.raises(client.ApiException) as forbidden:
            reader.list_namespaced_pod(namespace)
        assert forbidden.value.status == 403

        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "reader-reads-pods"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        )

        def allowed() -> bool:
            try:
                reader.list_namespaced_pod(namespace)
            except client.ApiException as error:
                if error.status != 403:
                    raise
                return False
            return True

        wait_for(allowed, bool, what="the RoleBinding to take effect", timeout=15)


def test_crd_cel_validation_rejects_a_bad_object_with_the_rules_message(api: Any, namespace: str) -> None:
    extensions, custom = client.ApiextensionsV1Api(api), client.CustomObjectsApi(api)
    group = f"g{uuid.uuid4().hex[:8]}.kubetune.test"
    message = "minReplicas must not exceed maxReplicas"
    extensions.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"widgets.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "properties": {
                                            "minReplicas": {"type": "integer"},
                                            "maxReplicas": {"type": "integer"},
                                        },
                                        "x-kubernetes-validations": [
                                            {"rule": "self.minReplicas <= self.maxReplicas", "message": message}
                                        ],
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    try:
        wait_for(
            lambda: extensions.read_custom_resource_definition(f"widgets.{group}"),
            lambda crd: any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []),
            what="CRD Established",
        )

        def widget(name: str, low: int, high: int) -> dict[str, Any]:
            return {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": name},
                "spec": {"minReplicas": low, "maxReplicas": high},
            }

        def create(body: dict[str, Any]) -> Any:
            return custom.create_namespaced_custom_object(group, "v1", namespace, "widgets", body)

        # Discovery of a new CRD reaches every apiserver handler within moments; retry 404s briefly.
        wait_for(lambda: _created_or_404(create, widget("good", 1, 2)), bool, what="a valid Widget")
        with pytest.raises(client.ApiException) as rejected:
            create(widget("bad", 3, 2))
        assert rejected.value.status == 422
        assert message in str(rejected.value.body)
    finally:
        extensions.delete_custom_resource_definition(f"widgets.{group}")


def _created_or_404(create: Callable[[dict[str, Any]], Any], body: dict[str, Any]) -> bool:
    try:
        create(body)
    except client.ApiException as error:
        if error.status == 404:
            return False
        raise
    return True
