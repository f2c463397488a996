"""Another writer edits labels, annotations and spec.suspend while the operator reconciles: no edit is lost
(the operator writes only status, guarded by resourceVersion) and no status flaps back and forth."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kube_objects import FineTuneJobs, ftj_collection
from kubetune_operator.k8s import MERGE_PATCH, finetunejob_path
from operator_harness import OperatorProcess

pytestmark = pytest.mark.cluster

ORDER = {"": 0, "Pending": 1, "Running": 2, "Succeeded": 3}


def collapse(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        if not out or out[-1] != value:
            out.append(value)
    return out


def test_edits_racing_the_operator_are_never_lost_and_the_status_never_flaps(
    ftjs: FineTuneJobs, operator: OperatorProcess
) -> None:
    names = [f"race-{i}" for i in range(4)]
    for name in names:
        ftjs.create(name, annotations={"kubetune.test/run-for": "15s"})
    phases: dict[str, list[str]] = {name: [] for name in names}
    validated_since: dict[str, set[str]] = {name: set() for name in names}
    edits = 0
    suspended = False
    started = time.monotonic()

    def sample() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = ftjs.kube.request("GET", ftj_collection(ftjs.namespace))["items"]
        for item in items:
            status = item.get("status") or {}
            phases[item["metadata"]["name"]].append(status.get("phase", ""))
            for cond in status.get("conditions", []):
                if cond["type"] == "Validated":
                    validated_since[item["metadata"]["name"]].add(cond["lastTransitionTime"])
        return items

    while time.monotonic() - started < 20:
        edits += 1
        for name in names:
            patch: dict[str, Any] = {
                "metadata": {
                    "labels": {"writer": str(edits)},
                    "annotations": {f"writer.example/{edits % 5}": str(edits)},
                }
            }
            elapsed = time.monotonic() - started
            if name == "race-0" and (3 <= elapsed < 10) != suspended:  # suspended from 3 s to 10 s
                suspended = not suspended
                patch["spec"] = {"runPolicy": {"suspend": suspended}}
            path = finetunejob_path(namespace=ftjs.namespace, name=name)
            ftjs.kube.request("PATCH", path, body=patch, content_type=MERGE_PATCH)  # no resourceVersion: last wins
        sample()
    for name in names:
        ftjs.wait_phase(name, "Succeeded", timeout=120)
    final = {item["metadata"]["name"]: item for item in sample()}

    for name in names:
        meta = final[name]["metadata"]
        assert meta["labels"]["writer"] == str(edits), f"{name}: the writer's last label was lost"
        for slot in range(5):
            latest = max(n for n in range(1, edits + 1) if n % 5 == slot)
            assert meta["annotations"][f"writer.example/{slot}"] == str(latest), name
        assert len(validated_since[name]) == 1, f"{name}: Validated moved without flipping: {validated_since[name]}"
    for name in names[1:]:
        seen = collapse(phases[name])
        assert [ORDER[p] for p in seen] == sorted(ORDER[p] for p in seen), f"{name} flapped: {seen}"
    suspended = collapse(phases["race-0"])
    assert "Suspended" in suspended and suspended[-1] == "Succeeded", suspended
    assert suspended.count("Suspended") == 1, f"race-0 suspended more than once: {suspended}"
