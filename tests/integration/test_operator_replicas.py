"""Two operator replicas with kopf peering: one acts, the other waits, and takes over when the first dies."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_objects import FineTuneJobs, wait_for
from kubetune_operator.errors import Conflict
from kubetune_operator.k8s import Kube, collection_path
from operator_harness import OperatorProcess, metric_sum

pytestmark = pytest.mark.cluster

PEERING = "kubetune-replicas"
PEERING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {
        "group": "kopf.dev",
        "scope": "Namespaced",
        "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                    }
                },
            }
        ],
    },
}
# What the chart grants when operator.peering.enabled is true.
PEERING_ROLE = {
    "metadata": {"name": "kubetune-operator-peering"},
    "rules": [
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings", "kopfpeerings"],
            "verbs": ["get", "list", "watch", "patch"],
        }
    ],
}


def _create(kube: Kube, path: str, body: dict[str, Any]) -> None:
    with contextlib.suppress(Conflict):  # left by an earlier run of this session
        kube.request("POST", path, body=body)


@pytest.fixture
def replicas(
    admin: Kube, operator: OperatorProcess, operator_kubeconfig: Path, namespace: str, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    """Two replicas peering through a KopfPeering in the test's namespace; the session's operator stopped."""
    _create(admin, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", PEERING_CRD)
    wait_for(
        lambda: admin.get("/apis/kopf.dev/v1"), lambda found: found is not None, what="the peering API", timeout=30
    )
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    _create(admin, f"{rbac}/clusterroles", PEERING_ROLE)
    binding = {
        "metadata": {"name": "kubetune-operator-peering"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "kubetune-operator-peering",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "kubetune-operator", "namespace": "kubetune-system"}],
    }
    _create(admin, f"{rbac}/clusterrolebindings", binding)
    peerings = collection_path(api_version="kopf.dev/v1", plural="kopfpeerings", namespace=namespace)
    admin.request(
        "POST", peerings, body={"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}
    )
    operator.stop()
    # Namespaced peering pauses every namespace without its KopfPeering, and kopf runs no handler until the
    # indices of every watched namespace are filled: the replicas watch this namespace only, as the chart's
    # namespaced mode runs them (a KopfPeering in each namespace listed).
    env = {"KUBETUNE_PEERING_NAME": PEERING, "KUBETUNE_NAMESPACES": namespace}
    first = OperatorProcess(kubeconfig=operator_kubeconfig, log_path=tmp_path / "first.log", extra_env=env)
    second = OperatorProcess(kubeconfig=operator_kubeconfig, log_path=tmp_path / "second.log", extra_env=env)
    try:
        first.start()
        second.start()  # started later: a lower priority, so it is the standby
        yield first, second
    finally:
        first.stop()
        second.stop()
        for process in (first, second):  # shown with a failure (captured output)
            print(f"--- {process.log_path.name}\n{process.log_tail(40)}")
        operator.start()


def test_only_the_older_replica_acts_and_the_standby_takes_over_when_it_dies(
    replicas: tuple[OperatorProcess, OperatorProcess], admin: Kube, namespace: str
) -> None:
    first, second = replicas
    ftjs = FineTuneJobs(kube=admin, namespace=namespace)
    names = [f"pair-{i}" for i in range(6)]
    for name in names:
        ftjs.create(name, annotations={"kubetune.test/run-for": "4s"})
    for name in names:
        ftjs.wait_phase(name, "Succeeded", timeout=120)
    for plural in ("jobs", "configmaps", "services"):
        assert sorted(
            o["metadata"]["name"] for o in ftjs.everything(plural) if "pair-" in o["metadata"]["name"]
        ) == sorted(
            {"jobs": f"{n}-train", "configmaps": f"{n}-config", "services": f"{n}-workers"}[plural] for n in names
        ), plural
    acted = metric_sum(first.metrics(), "kubetune_operator_reconciles_total")
    assert acted >= len(names)
    assert metric_sum(second.metrics(), "kubetune_operator_reconciles_total") == 0
    assert metric_sum(second.metrics(), "kubetune_operator_status_writes_total") == 0
    writes = metric_sum(first.metrics(), "kubetune_operator_status_writes_total")
    # Each job's status changes a handful of times (created, running, succeeded): a second writer would
    # show as more writes than transitions, or as writes on the standby.
    assert len(names) * 2 <= writes <= len(names) * 5

    first.kill()  # no clean shutdown: its peering record stays until it expires
    ftjs.create("after-failover", annotations={"kubetune.test/run-for": "2s"})
    # kopf presumes a silent peer dead after its lifetime (60 s) and the standby resumes.
    ftjs.wait_phase("after-failover", "Succeeded", timeout=150)
    assert metric_sum(second.metrics(), "kubetune_operator_reconciles_total") >= 1
