"""Shared fixtures: ``cluster`` (one real control plane per session) and ``namespace`` (one per test).

Tests that use them are marked ``@pytest.mark.cluster``. ``KUBETUNE_TEST_KUBECONFIG`` points them at an
existing cluster instead of starting one. Missing binaries FAIL the fixture: run the build first.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kubetune_testenv.cluster import BinariesMissingError, Cluster, ControlPlane, ExistingCluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    existing = ExistingCluster.from_env()
    if existing is not None:
        yield existing
        return
    plane = ControlPlane()
    missing = None
    try:
        plane.start()
    except BinariesMissingError as error:
        missing = str(error)
    if missing is not None:
        pytest.fail(missing, pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount) named after the test; deleted afterwards."""
    from kubernetes import client

    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:6]}"
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": name, "labels": {"kubetune.test/namespace": "true"}}})
        deadline = time.monotonic() + 30
        while True:  # pods are rejected until the controller-manager created the default ServiceAccount
            try:
                core.read_namespaced_service_account("default", name)
                break
            except client.ApiException as error:
                if error.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield name
        core.delete_namespace(name, propagation_policy="Background")
