"""The API server's refusals, as the operator's client types them (``kubetune_operator.errors``)."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from kube_objects import wait_for
from kubetune_operator.errors import NamespaceTerminating, NotFound
from kubetune_operator.k8s import Kube, collection_path, object_path

pytestmark = pytest.mark.cluster

HOLD = "kubetune.test/hold"


def test_creating_in_a_terminating_namespace_is_namespace_terminating(admin: Kube) -> None:
    namespace = f"t-terminating-{uuid.uuid4().hex[:6]}"  # deleted by the test itself, not the fixture
    admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}})
    configmaps = collection_path(api_version="v1", plural="configmaps", namespace=namespace)
    held = object_path(api_version="v1", plural="configmaps", namespace=namespace, name="held")
    # A finalizer no controller removes keeps the namespace Terminating until the test removes it.
    admin.request("POST", configmaps, body={"metadata": {"name": "held", "finalizers": [HOLD]}})
    admin.request("DELETE", f"/api/v1/namespaces/{namespace}")
    try:
        wait_for(
            lambda: admin.request("GET", f"/api/v1/namespaces/{namespace}")["status"].get("phase"),
            lambda phase: phase == "Terminating",
            what="the namespace Terminating",
        )
        with pytest.raises(NamespaceTerminating, match="being terminated"):
            admin.request("POST", configmaps, body={"metadata": {"name": "late"}})
    finally:
        patch = [{"op": "remove", "path": "/metadata/finalizers"}]
        with contextlib.suppress(NotFound):
            admin.request("PATCH", held, body=patch, content_type="application/json-patch+json")
