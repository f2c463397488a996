"""The API server restarts mid-run with its history compacted: every watch breaks and resumes with 410 Gone.
No transition may be missed, none reported twice, and no child duplicated."""

from __future__ import annotations

import pytest
from kube_objects import FineTuneJobs, ftj_collection, wait_for
from kubetune_testenv.cluster import Cluster, ControlPlane
from operator_harness import OperatorProcess

pytestmark = pytest.mark.cluster

MILESTONES = ["JobCreated", "TrainingStarted", "Succeeded"]


def test_jobs_running_across_an_api_server_restart_finish_with_every_milestone_once(
    cluster: Cluster, ftjs: FineTuneJobs, operator: OperatorProcess
) -> None:
    if not isinstance(cluster, ControlPlane):
        pytest.skip("needs the session's own control plane to restart (an existing cluster was given)")
    before = [f"across-{i}" for i in range(4)]
    for name in before:
        ftjs.create(name, annotations={"kubetune.test/run-for": "20s"})
    for name in before:
        ftjs.wait_phase(name, "Running", timeout=90)

    seen = ftjs.kube.request("GET", ftj_collection(ftjs.namespace))["metadata"]["resourceVersion"]
    cluster.restart_apiserver(compact=True)
    # What each of the operator's watches meets on resuming: 410 Gone (an ERROR event in the stream).
    stale = ftjs.kube.request_text(
        ftj_collection(ftjs.namespace), query=[("watch", "1"), ("resourceVersion", seen), ("timeoutSeconds", "2")]
    )
    assert '"code":410' in stale.replace(" ", ""), stale[:500]
    after = ["created-after-restart"]
    ftjs.create(after[0], annotations={"kubetune.test/run-for": "3s"})

    for name in before + after:
        ftjs.wait_phase(name, "Succeeded", timeout=150)
        wait_for(
            lambda name=name: [r for r in ftjs.event_reasons(name) if r in MILESTONES],  # type: ignore[misc]
            lambda reasons: reasons == MILESTONES,
            what=f"{name}'s milestones, each once",
            timeout=30,
        )
        assert [j["metadata"]["name"] for j in ftjs.children("jobs", name)] == [f"{name}-train"]
    assert operator.metrics()  # still serving: the process survived the outage
