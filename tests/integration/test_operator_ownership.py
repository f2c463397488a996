"""Owner references: what the operator owns is marked so, and what it does not own it never takes.

Children have deterministic names (``<name>-config``, ``<name>-workers``, ``<name>-train``), so an object
someone else made can hold one of those names. The operator adopts only an orphan carrying its label; any
other object is reported on the FineTuneJob (phase Failed, ``Validated=False`` naming it) and left exactly
as it was.
"""

from __future__ import annotations

from typing import Any

import pytest
from kube_objects import FineTuneJobs, condition_of, status_of, wait_for
from kubetune_operator.builders.names import FINETUNEJOB_LABEL, child_names
from kubetune_operator.k8s import collection_path, object_path
from operator_harness import CHILD_KINDS, leftovers

from kubetune.api.resource import API_VERSION, KIND

pytestmark = pytest.mark.cluster

RUNS_LONG = {"kubetune.test/run-for": "10m"}


def warnings_about(ftjs: FineTuneJobs, name: str) -> list[dict[str, Any]]:
    path = collection_path(api_version="v1", plural="events", namespace=ftjs.namespace)
    selector = f"involvedObject.kind={KIND},involvedObject.name={name}"
    items = ftjs.kube.request("GET", path, query=[("fieldSelector", selector)])["items"]
    return [e for e in items if e["type"] == "Warning"]


def assert_reported_and_nothing_started(ftjs: FineTuneJobs, name: str, *, kind: str, child: str) -> None:
    """Failed with Validated=False naming ``kind child``, a Warning Event saying so, and no Job or pods."""
    failed = ftjs.wait_phase(name, "Failed", timeout=90)
    validated = condition_of(failed, "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "InvalidSpec"), validated
    assert "metadata.name" in validated["message"] and f"{kind} " in validated["message"], validated
    assert child in validated["message"], validated
    assert status_of(failed)["failure"]["reason"] == "InvalidSpec"
    assert any(child in e["message"] and e["reason"] == "InvalidSpec" for e in warnings_about(ftjs, name))
    assert not ftjs.everything("jobs") and not ftjs.everything("pods"), "a job that cannot be owned never starts"


def test_each_child_has_one_controller_reference_to_its_finetunejob_and_deletion_cascades(
    ftjs: FineTuneJobs,
) -> None:
    created = ftjs.create("owned", annotations=RUNS_LONG)
    ftjs.wait_phase("owned", "Running", timeout=90)
    owner = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": "owned",
        "uid": created["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for _, plural in CHILD_KINDS:
        (child,) = ftjs.children(plural, "owned")
        assert child["metadata"]["ownerReferences"] == [owner], plural
    (job,) = ftjs.children("jobs", "owned")
    (pod,) = ftjs.children("pods", "owned")
    (ref,) = pod["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("Job", job["metadata"]["uid"], True)

    ftjs.delete("owned")
    ftjs.wait("owned", lambda obj: obj == {}, what="deleted", timeout=90)
    wait_for(
        lambda: leftovers(ftjs.kube, namespace=ftjs.namespace, name="owned"),
        lambda found: not found,
        what="its children and pods garbage-collected",
        timeout=90,
    )


def test_a_foreign_service_holding_the_child_name_fails_the_job_and_is_left_untouched(ftjs: FineTuneJobs) -> None:
    name = "squatted"
    service = child_names(name=name).service
    theirs = {"app.kubernetes.io/name": "someone-else"}
    foreign = ftjs.kube.request(
        "POST",
        collection_path(api_version="v1", plural="services", namespace=ftjs.namespace),
        body={
            "metadata": {"name": service, "labels": theirs},
            "spec": {"clusterIP": "None", "selector": theirs, "ports": [{"port": 8080}]},
        },
    )
    ftjs.create(name, annotations=RUNS_LONG)

    assert_reported_and_nothing_started(ftjs, name, kind="Service", child=service)
    now = ftjs.kube.get(object_path(api_version="v1", plural="services", namespace=ftjs.namespace, name=service))
    assert now is not None
    assert now["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"], "it was written to"
    assert "ownerReferences" not in now["metadata"]
    assert now["metadata"]["labels"] == theirs


def test_a_labelled_configmap_controlled_by_another_owner_is_reported_never_adopted(ftjs: FineTuneJobs) -> None:
    name = "contested"
    config_map = child_names(name=name).config_map
    # A real owner: the garbage collector deletes a dependent whose owner does not exist.
    selector = {"app.kubernetes.io/name": "someone-else"}
    deployment = ftjs.kube.request(
        "POST",
        collection_path(api_version="apps/v1", plural="deployments", namespace=ftjs.namespace),
        body={
            "metadata": {"name": "someone-else"},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": selector},
                    "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
                },
            },
        },
    )
    their_owner = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "someone-else",
        "uid": deployment["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    foreign = ftjs.kube.request(
        "POST",
        collection_path(api_version="v1", plural="configmaps", namespace=ftjs.namespace),
        body={
            "metadata": {"name": config_map, "labels": {FINETUNEJOB_LABEL: name}, "ownerReferences": [their_owner]},
            "data": {"theirs": "yes"},
        },
    )
    ftjs.create(name, annotations=RUNS_LONG)

    assert_reported_and_nothing_started(ftjs, name, kind="ConfigMap", child=config_map)
    (now,) = ftjs.children("configmaps", name)
    assert now["metadata"]["uid"] == foreign["metadata"]["uid"]
    assert now["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"], "it was written to"
    assert now["metadata"]["ownerReferences"] == [their_owner]
    assert now["data"] == {"theirs": "yes"}
