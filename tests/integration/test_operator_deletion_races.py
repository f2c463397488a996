"""FineTuneJobs deleted while the operator is creating their children leave nothing behind.

Twenty FineTuneJobs are created and deleted at once, while the operator works on them: some before it saw
them, some between two child creations, some after their Job started pods. The operator keeps no finalizer,
so each deletion completes without it; every child it created, even one created after its owner was gone,
must be garbage-collected, and no handler may fail on the way (a deletion racing a reconcile is normal
operation, not an error).
"""

from __future__ import annotations

import pytest
from kube_objects import FineTuneJobs, ftj_collection, wait_for
from operator_harness import OperatorProcess, leftovers, metric_sum

pytestmark = pytest.mark.cluster

COUNT = 20
RECONCILES = "kubetune_operator_reconciles_total"


def test_finetunejobs_deleted_while_their_children_are_being_created_leave_nothing_behind(
    ftjs: FineTuneJobs, operator: OperatorProcess
) -> None:
    # The operator finds a new namespace through its namespace watch; churn before that would race nothing.
    ftjs.create("warm-up", annotations={"kubetune.test/run-for": "10m"})
    ftjs.wait_phase("warm-up", "Running", timeout=90)
    log_start = operator.log_path.stat().st_size
    errors_before = metric_sum(operator.metrics(), RECONCILES, result="error")
    names = [f"churn-{i:02d}" for i in range(COUNT)]
    # Half are deleted right after their create, so the deletion lands before or between the creations of
    # their children; the other half once the operator has begun on them, so it lands mid-reconcile or
    # while their first re-checks run.
    for i, name in enumerate(names):
        ftjs.create(name, annotations={"kubetune.test/run-for": "10m"})
        if i % 2 == 0:
            ftjs.delete(name)
    wait_for(
        lambda: [n for n in names[1::2] if ftjs.children("configmaps", n)],
        bool,
        what="the operator to begin creating children",
        timeout=60,
    )
    for name in names[1::2]:
        ftjs.delete(name)
    ftjs.delete("warm-up")
    wait_for(
        lambda: [o["metadata"]["name"] for o in ftjs.kube.request("GET", ftj_collection(ftjs.namespace))["items"]],
        lambda remaining: not remaining,
        what="every FineTuneJob gone",
        timeout=90,
    )
    wait_for(
        lambda: leftovers(ftjs.kube, namespace=ftjs.namespace),
        lambda found: not found,
        what="every child and pod garbage-collected",
        timeout=90,
    )

    # JobCreated Events outlive their FineTuneJobs: at least some deletions found a reconcile under way.
    started = [name for name in names if "JobCreated" in ftjs.event_reasons(name)]
    assert started, "the operator created no Job for any of them: the deletions raced nothing"
    with operator.log_path.open("rb") as log:
        log.seek(log_start)
        text = log.read().decode(errors="replace")
    # A handler that raised is logged by kopf as "... failed with an exception" and a traceback; a reconcile
    # that raised, by the operator as "reconcile failed (...)", and counted.
    failures = [
        line
        for line in text.splitlines()
        if "Traceback" in line or "failed with an exception" in line or "reconcile failed" in line
    ]
    assert not failures, f"{len(failures)} lines; a FineTuneJob that is gone is no failure:\n" + "\n".join(
        failures[:10]
    )
    assert metric_sum(operator.metrics(), RECONCILES, result="error") == errors_before
