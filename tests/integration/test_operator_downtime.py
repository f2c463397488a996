"""What users did while the operator was down is all acted on when it returns.

With the session's operator stopped: a FineTuneJob is created, a running one is suspended, and two are
deleted. The operator keeps no finalizer, so a deletion never waits for it: the FineTuneJob goes at once and
kube-controller-manager's garbage collector (the test control plane runs every default controller) removes
its children. One deleted FineTuneJob carries the finalizer ``kubetune.io/operator`` that operators before
the event-driven rewrite kept; it stays Terminating until the returning operator releases it. The returning
operator also starts the new one and suspends the second's Job.
"""

from __future__ import annotations

import time

import pytest
from kube_objects import FineTuneJobs, condition_of, ftj_collection, status_of, wait_for
from operator_harness import CHILD_KINDS, OperatorProcess, leftovers, operator_stopped

pytestmark = pytest.mark.cluster

RUNS_LONG = {"kubetune.test/run-for": "10m"}
# What operators before the event-driven rewrite left on every FineTuneJob (for their resync timer).
LEGACY_FINALIZER = "kubetune.io/operator"
# Long enough for a controller that acts on its own (the garbage collector, the Job controller) to show it.
HOLD_SECONDS = 3


def assert_owned_by(ftjs: FineTuneJobs, name: str, uid: str) -> None:
    for _, plural in CHILD_KINDS:
        (child,) = ftjs.children(plural, name)
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == ("FineTuneJob", name, uid), (plural, ref)
        assert ref["controller"] is True and ref["blockOwnerDeletion"] is True, (plural, ref)


def test_a_create_a_suspend_and_deletes_made_while_the_operator_was_down_are_acted_on(
    ftjs: FineTuneJobs, operator: OperatorProcess
) -> None:
    running = {name: ftjs.create(name, annotations=RUNS_LONG) for name in ("pausing", "doomed", "legacy")}
    for name, created in running.items():
        ftjs.wait_phase(name, "Running", timeout=90)
        assert_owned_by(ftjs, name, created["metadata"]["uid"])
        assert not (ftjs.get(name) or {})["metadata"].get("finalizers"), "the operator adds no finalizer"

    with operator_stopped(operator):
        ftjs.create("newcomer", annotations=RUNS_LONG)
        ftjs.patch_spec("pausing", {"runPolicy": {"suspend": True}})
        ftjs.kube.request(
            "PATCH",
            f"{ftj_collection(ftjs.namespace)}/legacy",
            body={"metadata": {"finalizers": [LEGACY_FINALIZER]}},
            content_type="application/merge-patch+json",
        )
        ftjs.delete("doomed")
        ftjs.delete("legacy")

        assert ftjs.get("doomed") is None, "no finalizer: the deletion does not wait for the operator"
        wait_for(
            lambda: leftovers(ftjs.kube, namespace=ftjs.namespace, name="doomed"),
            lambda found: not found,
            what="the garbage collector to remove doomed's children without the operator",
            timeout=90,
        )
        time.sleep(HOLD_SECONDS)
        terminating = ftjs.get("legacy")
        assert terminating is not None and terminating["metadata"].get("deletionTimestamp")
        assert terminating["metadata"]["finalizers"] == [LEGACY_FINALIZER]
        assert leftovers(ftjs.kube, namespace=ftjs.namespace, name="legacy").keys() == {
            "configmaps",
            "services",
            "jobs",
            "pods",
        }, "an owner that still exists keeps its children"
        assert not leftovers(ftjs.kube, namespace=ftjs.namespace, name="newcomer")
        assert status_of(ftjs.get("newcomer") or {}) == {}
        (job,) = ftjs.children("jobs", "pausing")
        assert not job["spec"].get("suspend"), "nobody but the operator suspends the Job"

    ftjs.wait("legacy", lambda obj: obj == {}, what="the legacy finalizer released and the object gone", timeout=90)
    wait_for(
        lambda: leftovers(ftjs.kube, namespace=ftjs.namespace, name="legacy"),
        lambda found: not found,
        what="legacy's children and pods garbage-collected",
        timeout=90,
    )
    assert not leftovers(ftjs.kube, namespace=ftjs.namespace, name="doomed"), "nothing re-created for doomed"

    ftjs.wait_phase("newcomer", "Running", timeout=90)
    for _, plural in CHILD_KINDS:
        assert len(ftjs.children(plural, "newcomer")) == 1, plural

    suspended = ftjs.wait_phase("pausing", "Suspended", timeout=90)
    assert condition_of(suspended, "Suspended")["reason"] == "SuspendedByUser"
    (job,) = ftjs.children("jobs", "pausing")
    assert job["spec"]["suspend"] is True
    ftjs.wait("pausing", lambda _: not ftjs.children("pods", "pausing"), what="its pods stopped", timeout=90)
    assert "Suspended" in ftjs.event_reasons("pausing")
