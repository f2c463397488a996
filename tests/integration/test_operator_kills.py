"""The operator SIGKILLed every few seconds during a 100-job run: no child duplicated, no milestone reported
twice, and every job ends with the status an undisturbed run gives it."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from kube_objects import FineTuneJobs, ftj_collection, minimal_spec, wait_for
from kubetune_operator.builders.names import FINETUNEJOB_LABEL
from operator_harness import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

JOBS = 100
MILESTONES = ("JobCreated", "TrainingStarted", "Succeeded")


def cpu_spec() -> dict[str, Any]:
    # CPU jobs request no GPU: 100 of them fit on the fake nodes at once.
    return minimal_spec() | {"resources": {"gpusPerNode": 0}}


def comparable(status: dict[str, Any]) -> dict[str, Any]:
    """A status without its times and names: what two runs of the same job must agree on."""
    return {
        "phase": status.get("phase"),
        "conditions": sorted((c["type"], c["status"], c["reason"]) for c in status.get("conditions", [])),
        "failure": status.get("failure"),
        "observedGeneration": status.get("observedGeneration"),
    }


def test_a_100_job_run_with_the_operator_killed_every_few_seconds_converges_without_duplicates(
    ftjs: FineTuneJobs, operator: OperatorProcess
) -> None:
    names = [f"k-{i:03d}" for i in range(JOBS)]
    for name in names:
        ftjs.create(name, spec=cpu_spec(), annotations={"kubetune.test/run-for": "8s"})
    kills = 0
    for _ in range(6):
        time.sleep(3)
        operator.kill()
        kills += 1
        operator.start()

    def phases() -> Counter[str]:
        items = ftjs.kube.request("GET", ftj_collection(ftjs.namespace))["items"]
        return Counter((i.get("status") or {}).get("phase", "") for i in items if i["metadata"]["name"] in names)

    wait_for(phases, lambda count: count["Succeeded"] == JOBS, what=f"all {JOBS} jobs Succeeded", timeout=400)

    ftjs.create("undisturbed", spec=cpu_spec(), annotations={"kubetune.test/run-for": "8s"})
    reference = comparable(ftjs.wait_phase("undisturbed", "Succeeded", timeout=120)["status"])
    items = ftjs.kube.request("GET", ftj_collection(ftjs.namespace))["items"]
    for item in items:
        assert comparable(item["status"]) == reference, item["metadata"]["name"]
    for plural in ("configmaps", "services", "jobs"):
        labels = [(o["metadata"].get("labels") or {}).get(FINETUNEJOB_LABEL) for o in ftjs.everything(plural)]
        owners = Counter(label for label in labels if label is not None)  # not the namespace's root CA map
        assert set(owners) == {*names, "undisturbed"} and set(owners.values()) == {1}, plural
    # A kill between an action and its Event can lose the Event; none may be posted twice.
    for name in names:
        posted = Counter(r for r in ftjs.event_reasons(name) if r in MILESTONES)
        assert all(count == 1 for count in posted.values()), (name, posted)
    assert kills == 6
