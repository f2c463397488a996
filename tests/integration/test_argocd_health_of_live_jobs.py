"""The Argo CD health check on live FineTuneJobs, phase by phase (kwok plays the trainer pods).

Every observation goes through ``deploy/argocd/finetunejob-health.lua`` as Argo CD would run it and must give
``argocd_health.EXPECTED``. With ``KUBETUNE_RECORD_ARGOCD_FIXTURES=1`` each one is also saved (its
``metadata.generation`` and ``status`` only) as ``tests/fixtures/argocd/<name>.json``: the fixtures
``tests/unit/deploy/test_argocd_health.py`` checks without a cluster. To record them again:

    KUBETUNE_RECORD_ARGOCD_FIXTURES=1 .venv/bin/python -m pytest tests/integration/test_argocd_health_of_live_jobs.py

A spec change is observed in the PATCH response: the object as stored by that write, before the operator
could react, which is what Argo CD sees right after a sync.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from argocd_health import CM_KEY, CM_PATCH, EXPECTED, FIXTURES, HEALTH_SCRIPT, health_of, trimmed
from kube_objects import FineTuneJobs, minimal_spec, status_of, wait_for
from kubetune_operator.k8s import Kube
from kubetune_testenv.cluster import Cluster, ControlPlane
from operator_harness import OperatorProcess, metric_sum

pytestmark = pytest.mark.cluster

RECORD = os.environ.get("KUBETUNE_RECORD_ARGOCD_FIXTURES") == "1"


def observe(name: str, obj: dict[str, Any]) -> None:
    """The health of ``obj`` is what ``EXPECTED[name]`` says; recorded when asked."""
    observed = trimmed(obj)
    health = health_of(observed)
    expected = EXPECTED[name]
    assert (health.status, expected.message in health.message) == (expected.status, True), (
        f"{name}: Argo CD would show {health}, expected {expected}; object:\n{json.dumps(observed, indent=2)}"
    )
    if RECORD:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        (FIXTURES / f"{name}.json").write_text(json.dumps(observed, indent=2, sort_keys=True) + "\n")


def updates_handled(operator: OperatorProcess) -> float:
    """Reconciles the operator ran for a FineTuneJob's MODIFIED event (spec, metadata or its own status)."""
    return metric_sum(operator.metrics(), "kubetune_operator_reconciles_total", trigger="update")


def test_created_running_succeeded_and_an_edit_after_success(ftjs: FineTuneJobs, operator: OperatorProcess) -> None:
    observe("created", ftjs.create("fine", annotations={"kubetune.test/run-for": "6s"}))
    observe("running", ftjs.wait_phase("fine", "Running"))
    succeeded = ftjs.wait_phase("fine", "Succeeded")
    observe("succeeded", succeeded)
    # Succeeded is final: the operator handles the edit but writes no status, so observedGeneration stays.
    # The operator keeps no mark on the object of what it handled; its reconcile counter says it ran again.
    before = updates_handled(operator)
    edited = ftjs.patch_spec("fine", {"runPolicy": {"backoffLimit": 5}})
    assert edited["metadata"]["generation"] == succeeded["metadata"]["generation"] + 1
    wait_for(lambda: updates_handled(operator), lambda count: count > before, what="a reconcile after the edit")
    after = ftjs.get("fine")
    assert after is not None
    assert status_of(after) == status_of(succeeded)
    assert status_of(after)["observedGeneration"] < after["metadata"]["generation"]
    observe("succeeded-then-edited", after)


def test_suspend_and_resume_show_the_request_until_the_operator_observes_it(ftjs: FineTuneJobs) -> None:
    ftjs.create("pausable", annotations={"kubetune.test/run-for": "10m"})
    ftjs.wait_phase("pausable", "Running")
    observe("suspend-requested", ftjs.patch_spec("pausable", {"runPolicy": {"suspend": True}}))
    observe("suspended", ftjs.wait_phase("pausable", "Suspended"))
    observe("resume-requested", ftjs.patch_spec("pausable", {"runPolicy": {"suspend": False}}))
    resumed = ftjs.wait_phase("pausable", "Running")
    assert health_of(trimmed(resumed)).status == "Progressing"


def test_failures_are_degraded_with_their_reason(ftjs: FineTuneJobs) -> None:
    bad_data = {"kubetune.test/run-for": "1s", "kubetune.test/exit-code": "65", "kubetune.test/message": "row 3"}
    ftjs.create("bad-data", annotations=bad_data)
    # L4 nodes have one GPU: eight stay unschedulable until the pending timeout fails the job.
    ftjs.create("too-big", spec=minimal_spec() | {"resources": {"gpusPerNode": 8, "gpuProduct": "NVIDIA-L4"}})
    invalid = minimal_spec() | {"output": {"destination": "s3://ab/out"}}  # bucket names need 3+ characters
    ftjs.create("invalid", spec=invalid)
    observe("failed-invalid-spec", ftjs.wait_phase("invalid", "Failed"))
    observe("failed-bad-data", ftjs.wait_phase("bad-data", "Failed"))
    pending = ftjs.wait(
        "too-big",
        lambda obj: status_of(obj).get("phase") == "Pending" and "nodes are available" in str(status_of(obj)),
        what="the scheduler's message",
    )
    observe("pending-unschedulable", pending)
    observe("failed-unschedulable", ftjs.wait_phase("too-big", "Failed", timeout=90))


def test_the_argocd_cm_patch_installs_the_script_with_the_documented_command(
    cluster: Cluster, admin: Kube, namespace: str
) -> None:
    if not isinstance(cluster, ControlPlane):
        pytest.skip("kubectl is bundled only with the local control plane, not with KUBETUNE_TEST_KUBECONFIG")
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    admin.request("POST", path, body={"metadata": {"name": "argocd-cm"}, "data": {"url": "https://argocd.example"}})
    cluster.kubectl(
        "-n", namespace, "patch", "configmap", "argocd-cm", "--type", "merge", "--patch-file", str(CM_PATCH)
    )
    data = admin.request("GET", f"{path}/argocd-cm")["data"]
    assert data == {"url": "https://argocd.example", CM_KEY: HEALTH_SCRIPT.read_text(encoding="utf-8")}
