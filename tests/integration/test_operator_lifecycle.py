"""The operator runs a FineTuneJob through its life on the test cluster (kwok plays the trainer pods)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kube_objects import wait_for

pytestmark = pytest.mark.cluster

Status = Callable[[dict[str, Any]], dict[str, Any]]
ConditionOf = Callable[[dict[str, Any], str], dict[str, Any]]


def test_a_job_goes_pending_running_succeeded_with_events_and_owned_children(
    ftjs: Any, status: Status, condition: ConditionOf
) -> None:
    created = ftjs.create("happy", annotations={"kubetune.test/run-for": "6s"})
    running = ftjs.wait_phase("happy", "Running", timeout=60)
    assert status(running)["jobName"] == "happy-train" and status(running)["startTime"]
    assert condition(running, "Validated")["status"] == "True"
    assert condition(running, "Running") | {"lastTransitionTime": None} == condition(running, "Running") | {
        "lastTransitionTime": None,
        "status": "True",
        "reason": "TrainerRunning",
    }
    done = ftjs.wait_phase("happy", "Succeeded", timeout=60)
    assert condition(done, "Succeeded")["status"] == "True" and condition(done, "Running")["status"] == "False"
    assert condition(done, "Failed")["status"] == "False" and "failure" not in status(done)
    assert status(done)["completionTime"] >= status(done)["startTime"]
    assert condition(done, "Succeeded")["observedGeneration"] == created["metadata"]["generation"]
    # Events are posted after the status write that they announce.
    milestones = ["JobCreated", "TrainingStarted", "Succeeded"]
    wait_for(
        lambda: [r for r in ftjs.event_reasons("happy") if r in milestones],
        lambda reasons: reasons == milestones,
        what="the JobCreated, TrainingStarted and Succeeded events, each once",
        timeout=30,
    )
    uid = created["metadata"]["uid"]
    for plural, expected in (("configmaps", "happy-config"), ("services", "happy-workers"), ("jobs", "happy-train")):
        (child,) = ftjs.children(plural, "happy")
        assert child["metadata"]["name"] == expected
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == uid and owner["controller"] is True and owner["blockOwnerDeletion"] is True


def test_job_spec_carries_the_pod_failure_policy_and_restricted_pods(ftjs: Any) -> None:
    ftjs.create("shape", annotations={"kubetune.test/run-for": "30s"})
    ftjs.wait_phase("shape", "Running")
    (job,) = ftjs.children("jobs", "shape")
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [65, 78, 79]
    (pod,) = ftjs.children("pods", "shape")
    assert pod["spec"]["subdomain"] == "shape-workers"
    assert pod["spec"]["hostname"] == "shape-train-0"
    assert pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def test_multi_node_job_places_one_pod_per_h100_node_with_node_ranks(ftjs: Any, status: Status) -> None:
    spec = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"], "preflight": "skip"},
        "output": {"destination": "s3://outputs/multi"},
        "resources": {"nodes": 2, "gpusPerNode": 8, "gpuProduct": "NVIDIA-H100-80GB-HBM3"},
    }
    ftjs.create("multi", spec=spec, annotations={"kubetune.test/run-for": "30s"})
    running = ftjs.wait_phase("multi", "Running")
    assert "2/2 pods running" in next(c for c in status(running)["conditions"] if c["type"] == "Running")["message"]
    pods = ftjs.children("pods", "multi")
    assert len(pods) == 2
    assert len({p["spec"]["nodeName"] for p in pods}) == 2
    assert all(p["spec"]["nodeName"].startswith("gpu-h100-") for p in pods)
    indexes = sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert indexes == ["0", "1"]


def test_suspend_stops_the_pods_and_resume_starts_them_again(ftjs: Any, condition: ConditionOf) -> None:
    ftjs.create("pausable", annotations={"kubetune.test/run-for": "10m"})
    ftjs.wait_phase("pausable", "Running")
    ftjs.patch_spec("pausable", {"runPolicy": {"suspend": True}})
    suspended = ftjs.wait_phase("pausable", "Suspended")
    assert condition(suspended, "Suspended")["reason"] == "SuspendedByUser"
    (job,) = ftjs.children("jobs", "pausable")
    assert job["spec"]["suspend"] is True
    ftjs.wait("pausable", lambda _: not ftjs.children("pods", "pausable"), what="its pods to be gone")
    ftjs.patch_spec("pausable", {"runPolicy": {"suspend": False}})
    resumed = ftjs.wait_phase("pausable", "Running")
    assert condition(resumed, "Suspended")["status"] == "False"
    reasons = ftjs.event_reasons("pausable")
    assert "Suspended" in reasons and "Resumed" in reasons
    assert reasons.index("Suspended") < reasons.index("Resumed")


def test_resources_changed_while_suspended_apply_on_resume(ftjs: Any, status: Status) -> None:
    ftjs.create("resize", annotations={"kubetune.test/run-for": "10m"})
    ftjs.wait_phase("resize", "Running")
    (before,) = ftjs.children("jobs", "resize")
    ftjs.patch_spec("resize", {"runPolicy": {"suspend": True}})
    ftjs.wait_phase("resize", "Suspended")
    ftjs.patch_spec("resize", {"resources": {"nodes": 2, "gpusPerNode": 8, "gpuProduct": "NVIDIA-H100-80GB-HBM3"}})
    ftjs.wait(
        "resize",
        lambda _: (
            [j["metadata"]["uid"] for j in ftjs.children("jobs", "resize")] not in ([], [before["metadata"]["uid"]])
        ),
        what="its Job to be replaced",
    )
    assert status(ftjs.get("resize") or {})["phase"] == "Suspended"
    ftjs.patch_spec("resize", {"runPolicy": {"suspend": False}})
    ftjs.wait_phase("resize", "Running")
    (job,) = ftjs.children("jobs", "resize")
    assert job["spec"]["completions"] == 2
    pods = ftjs.children("pods", "resize")
    assert len(pods) == 2 and all(p["spec"]["nodeName"].startswith("gpu-h100-") for p in pods)


def test_deleting_the_finetunejob_deletes_its_job_and_pods(ftjs: Any) -> None:
    ftjs.create("doomed", annotations={"kubetune.test/run-for": "10m"})
    ftjs.wait_phase("doomed", "Running")
    assert ftjs.children("pods", "doomed")
    ftjs.delete("doomed")
    ftjs.wait(
        "doomed",
        lambda _: not ftjs.children("jobs", "doomed") and not ftjs.children("pods", "doomed"),
        what="its Job and pods to be garbage-collected",
        timeout=90,
    )
    assert not ftjs.children("configmaps", "doomed") and not ftjs.children("services", "doomed")
    assert ftjs.get("doomed") is None


def test_ttl_after_finished_deletes_the_finetunejob(ftjs: Any) -> None:
    spec = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"], "preflight": "skip"},
        "output": {"destination": "s3://outputs/ttl"},
        "runPolicy": {"ttlSecondsAfterFinished": 2},
    }
    ftjs.create("short-lived", spec=spec, annotations={"kubetune.test/run-for": "1s"})
    ftjs.wait("short-lived", lambda obj: obj == {}, what="deletion after its TTL", timeout=90)


def test_operator_metrics_count_reconciles_and_finetunejobs_by_phase(ftjs: Any, operator: Any) -> None:
    ftjs.create("counted", annotations={"kubetune.test/run-for": "1s"})
    ftjs.wait_phase("counted", "Succeeded")
    text = operator.metrics()
    assert 'kubetune_finetunejobs{phase="Succeeded"}' in text
    assert 'kubetune_operator_reconciles_total{result="success",trigger="pod"}' in text
