"""The generated CRD as the real API server serves it: explain text, columns, defaults, transition rules.

No operator runs here: these are the API server's own behaviours, from the schema alone.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubetune_operator.errors import ApiError
from kubetune_operator.k8s import Kube, collection_path
from kubetune_testenv.cluster import Cluster, ControlPlane

from kubetune.api.resource import API_VERSION, KIND, PLURAL

pytestmark = pytest.mark.cluster


def _job(name: str, **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["pvc://data/lamini_docs.jsonl"]},
        "output": {"destination": "pvc://outputs/" + name},
    }
    spec.update(spec_overrides)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


def _create(admin: Kube, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return admin.request(
        "POST", collection_path(api_version=API_VERSION, plural=PLURAL, namespace=namespace), body=body
    )


def _merge_patch(admin: Kube, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    path = collection_path(api_version=API_VERSION, plural=PLURAL, namespace=namespace) + f"/{name}"
    return admin.request("PATCH", path, body=patch, content_type="application/merge-patch+json")


def _kubectl(cluster: Cluster) -> ControlPlane:
    if not isinstance(cluster, ControlPlane):
        pytest.skip("kubectl is bundled only with the local control plane, not with KUBETUNE_TEST_KUBECONFIG")
    return cluster


def test_kubectl_explain_shows_the_model_descriptions(cluster: Cluster, crd: dict[str, Any]) -> None:
    plane = _kubectl(cluster)
    out = plane.kubectl("explain", "ftj.spec.method").stdout
    assert "How the model is adapted" in out
    assert "low-rank adapters" in out and "rank" in out and "targetModules" in out
    rank = plane.kubectl("explain", "finetunejobs.spec.hyperparameters.epochs").stdout
    assert "Passes over the training data" in rank


def test_server_applies_schema_defaults_to_nested_groups(admin: Kube, crd: dict[str, Any], namespace: str) -> None:
    created = _create(admin, namespace, _job("defaults"))
    spec = created["spec"]
    assert spec["method"] == {
        "type": "lora",
        "rank": 16,
        "alpha": 32,
        "dropout": 0.05,
        "targetModules": ["all-linear"],
        "objective": "sft",
    }
    assert spec["runPolicy"]["backoffLimit"] == 3 and spec["runPolicy"]["suspend"] is False
    assert spec["resources"]["gpusPerNode"] == 1 and spec["resources"]["nodes"] == 1
    assert "quantization" not in spec["method"]


def test_printer_columns_in_kubectl_get(cluster: Cluster, admin: Kube, crd: dict[str, Any], namespace: str) -> None:
    plane = _kubectl(cluster)
    _create(admin, namespace, _job("columns"))
    header = plane.kubectl("get", "ftj", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "PROGRESS", "LOSS", "ETA", "ESTIMATE", "AGE"]
    wide = plane.kubectl("get", "ftj", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert "METHOD" in wide[0] and "GPU-H" in wide[0] and "lora" in wide[1]


def test_training_inputs_are_immutable(admin: Kube, crd: dict[str, Any], namespace: str) -> None:
    _create(admin, namespace, _job("immutable"))
    with pytest.raises(ApiError) as err:
        _merge_patch(admin, namespace, "immutable", {"spec": {"model": {"source": "hf://org/other@main"}}})
    assert err.value.status == 422
    assert "spec.model is immutable" in err.value.message
    with pytest.raises(ApiError) as err:
        _merge_patch(admin, namespace, "immutable", {"spec": {"method": {"rank": 8}}})
    assert "spec.method is immutable" in err.value.message


def test_resources_change_only_while_suspended(admin: Kube, crd: dict[str, Any], namespace: str) -> None:
    _create(admin, namespace, _job("resize"))
    with pytest.raises(ApiError) as err:
        _merge_patch(admin, namespace, "resize", {"spec": {"resources": {"gpusPerNode": 8}}})
    assert err.value.status == 422
    assert "spec.resources can change only while the job is suspended" in err.value.message
    _merge_patch(admin, namespace, "resize", {"spec": {"runPolicy": {"suspend": True}}})
    resized = _merge_patch(admin, namespace, "resize", {"spec": {"resources": {"gpusPerNode": 8, "nodes": 2}}})
    assert resized["spec"]["resources"]["gpusPerNode"] == 8 and resized["spec"]["resources"]["nodes"] == 2
    # Suspend and run-policy fields stay editable at any time.
    resumed = _merge_patch(admin, namespace, "resize", {"spec": {"runPolicy": {"suspend": False, "backoffLimit": 5}}})
    assert resumed["spec"]["runPolicy"] == {**resumed["spec"]["runPolicy"], "suspend": False, "backoffLimit": 5}


def test_status_is_a_subresource(admin: Kube, crd: dict[str, Any], namespace: str) -> None:
    _create(admin, namespace, _job("status"))
    patched = _merge_patch(admin, namespace, "status", {"status": {"phase": "Running"}})
    assert "status" not in patched or patched["status"].get("phase") != "Running", json.dumps(patched)
    path = collection_path(api_version=API_VERSION, plural=PLURAL, namespace=namespace) + "/status/status"
    status = admin.request(
        "PATCH", path, body={"status": {"phase": "Running"}}, content_type="application/merge-patch+json"
    )
    assert status["status"]["phase"] == "Running"
