"""An operator killed mid-reconcile and restarted finishes the work without duplicating children."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubetune_operator.builders.names import FINETUNEJOB_LABEL
from kubetune_operator.k8s import collection_path

pytestmark = pytest.mark.cluster

Status = Callable[[dict[str, Any]], dict[str, Any]]


def test_restarted_operator_adopts_partial_children_and_creates_no_duplicates(
    ftjs: Any, operator: Any, status: Status
) -> None:
    operator.kill()
    try:
        created = ftjs.create("resilient", annotations={"kubetune.test/run-for": "10m"})
        # What a crash between two creates leaves behind: the ConfigMap owned, the Service not yet owned.
        owner = {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "name": "resilient",
            "uid": created["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        labels = {FINETUNEJOB_LABEL: "resilient"}
        ftjs.kube.request(
            "POST",
            collection_path(api_version="v1", plural="configmaps", namespace=ftjs.namespace),
            body={"metadata": {"name": "resilient-config", "labels": labels, "ownerReferences": [owner]}, "data": {}},
        )
        ftjs.kube.request(
            "POST",
            collection_path(api_version="v1", plural="services", namespace=ftjs.namespace),
            body={
                "metadata": {"name": "resilient-workers", "labels": labels},
                "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 29500}]},
            },
        )
    finally:
        operator.start()
    ftjs.wait_phase("resilient", "Running")
    operator.kill()
    operator.start()
    ftjs.wait(
        "resilient",
        lambda obj: status(obj).get("phase") == "Running" and obj["metadata"]["resourceVersion"],
        what="Running after a second restart",
    )
    for plural in ("configmaps", "services", "jobs"):
        (child,) = ftjs.children(plural, "resilient")
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == created["metadata"]["uid"] and ref["controller"] is True
    (config_map,) = ftjs.children("configmaps", "resilient")
    assert "trainer-config.yaml" in config_map["data"], "the operator repairs a ConfigMap left incomplete"
    assert len(ftjs.children("pods", "resilient")) == 1
    assert ftjs.event_reasons("resilient").count("JobCreated") == 1
