"""A create replayed: the operator died after creating a FineTuneJob's children, before its status write.

The test stops the session's operator and leaves exactly that state behind: the FineTuneJob with an empty
status, and its ConfigMap, Service and Job as the operator builds them (``build_children`` with the
FineTuneJob's real uid and the subprocess's own settings). The restarted operator must adopt all three as
they are and create nothing.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kube_objects import FineTuneJobs, status_of
from kubetune_operator.builders import build_children
from kubetune_operator.k8s import collection_path, object_path
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.tls import CA_CERT_KEY
from operator_harness import OperatorProcess, metric_sum, operator_stopped

from kubetune.api.resource import FineTuneJob

pytestmark = pytest.mark.cluster

PLURALS = {"ConfigMap": "configmaps", "Service": "services", "Job": "jobs"}


def created_children(metrics_text: str) -> dict[str, float]:
    """POSTs of children the API server answered 201 Created, by resource, from the operator's /metrics."""
    counts = {
        plural: metric_sum(
            metrics_text, "kubetune_operator_api_requests_total", verb="POST", code="201", resource=plural
        )
        for plural in PLURALS.values()
    }
    return {plural: count for plural, count in counts.items() if count}


def test_children_created_before_a_lost_status_write_are_adopted_not_replaced(
    ftjs: FineTuneJobs, operator: OperatorProcess
) -> None:
    name = "replayed"
    settings = OperatorSettings.from_env(environ=operator.env())
    # The report endpoint's CA, which the operator keeps in its Secret and puts into every ConfigMap.
    assert settings.reports_ca_secret is not None
    ca_namespace, _, ca_name = settings.reports_ca_secret.partition("/")
    ca_secret = ftjs.kube.request(
        "GET", object_path(api_version="v1", plural="secrets", namespace=ca_namespace, name=ca_name)
    )
    report_ca = base64.b64decode(ca_secret["data"][CA_CERT_KEY]).decode("ascii")
    with operator_stopped(operator):
        created = ftjs.create(name, annotations={"kubetune.test/run-for": "20s"})
        children = build_children(ftj=FineTuneJob.from_object(created), settings=settings, report_ca=report_ca)
        mine: dict[str, dict[str, Any]] = {}
        for manifest in children.in_order():
            plural = PLURALS[manifest["kind"]]
            path = collection_path(api_version=manifest["apiVersion"], plural=plural, namespace=ftjs.namespace)
            mine[plural] = ftjs.kube.request("POST", path, body=manifest)
        assert status_of(ftjs.get(name) or {}) == {}, "the replayed state has no status yet"

    # The pod may already have run to the end while the operator started: either phase is the truth then.
    ftjs.wait(name, lambda obj: status_of(obj).get("phase") in ("Running", "Succeeded"), what="Running or later")
    done = ftjs.wait_phase(name, "Succeeded", timeout=90)
    assert status_of(done)["jobName"] == children.job["metadata"]["name"]

    for plural, before in mine.items():
        (now,) = ftjs.children(plural, name)
        assert now["metadata"]["uid"] == before["metadata"]["uid"], f"the {plural} child was replaced"
        (ref,) = now["metadata"]["ownerReferences"]
        assert ref["uid"] == created["metadata"]["uid"] and ref["controller"] is True
    for plural in ("configmaps", "services"):
        (now,) = ftjs.children(plural, name)
        # Already what the operator would build: adopted without a single write.
        assert now["metadata"]["resourceVersion"] == mine[plural]["metadata"]["resourceVersion"], plural
    assert len(ftjs.children("pods", name)) == 1, "one Job, one pod: nothing was started twice"
    assert created_children(operator.metrics()) == {}, "the restarted operator created no child"

    reasons = ftjs.event_reasons(name)
    # JobCreated reports a Job the operator created; this one found the Job and created nothing, so an
    # Event claiming otherwise would be false. (When the operator itself created the Job before dying, its
    # Event was posted right after the create, before the status write, and is not posted again.)
    assert reasons.count("JobCreated") == 0, reasons
    assert reasons.count("Succeeded") == 1, reasons
