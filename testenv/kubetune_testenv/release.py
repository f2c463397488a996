"""kubetune installed by its own Helm chart on the real node: chart values for the locally built images,
namespaces that enforce the ``restricted`` Pod Security Standard, and ``helm upgrade --install``.

The end-to-end tests and ``kubetune local`` install it the same way; only the release name and the
namespaces the operator watches differ.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .node_config import NODE_ROLE_KEY, NODE_ROLE_VALUE

if TYPE_CHECKING:  # the kubernetes client is imported lazily: `build` must work without it
    from kubernetes.client import ApiClient

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
OPERATOR_NAMESPACE = "kubetune"
# The API server admits or refuses every pod of these namespaces, as a hardened cluster would.
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
# Pods select and tolerate the real node's label and taint; the kwok GPU nodes never get them.
ON_CPU_NODE: dict[str, Any] = {
    "nodeSelector": {NODE_ROLE_KEY: NODE_ROLE_VALUE},
    "tolerations": [{"key": NODE_ROLE_KEY, "operator": "Equal", "value": NODE_ROLE_VALUE, "effect": "NoSchedule"}],
}
TRAINER_UID = 1000  # the chart's trainer.runAsUser: outputs must be writable by it
# A trainer pod gets this long between SIGTERM and SIGKILL; SmolLM2's adapter checkpoints in about a second.
GRACE_SECONDS = 30
# Seconds between the operator's re-checks of each FineTuneJob: status follows a job within seconds.
RESYNC_INTERVAL_SECONDS = 2
# `helm --wait` for the operator pod: its image is already in the node's containerd.
INSTALL_TIMEOUT_S = 300
NAMESPACE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Release:
    """helm against one cluster, with its cache and config under ``home`` (not the user's)."""

    helm: Path
    kubeconfig: Path
    home: Path

    def helm_run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HELM_CACHE_HOME": str(self.home / "cache"), "HELM_CONFIG_HOME": str(self.home / "config")}
        return subprocess.run(
            [str(self.helm), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def install(self, name: str, *, namespace: str, values: Path) -> subprocess.CompletedProcess[str]:
        """``helm upgrade --install`` of charts/kubetune, waiting for the operator pod to be ready."""
        return self.helm_run(
            "upgrade", "--install", name, str(CHART), f"--namespace={namespace}",
            f"--values={values}", "--wait", f"--timeout={INSTALL_TIMEOUT_S}s",
            timeout=INSTALL_TIMEOUT_S + 60,
        )  # fmt: skip

    def uninstall(self, name: str, *, namespace: str) -> subprocess.CompletedProcess[str]:
        return self.helm_run("uninstall", name, f"--namespace={namespace}", "--wait", "--timeout=120s")


def release_values(*, watch_namespaces: Sequence[str]) -> dict[str, Any]:
    """Chart values for the real node: local images (never pulled), the operator on the real node."""
    return {
        "image": {"repository": "kubetune/operator", "pullPolicy": "Never"},
        "operator": {
            "watchNamespaces": list(watch_namespaces),
            "resyncIntervalSeconds": RESYNC_INTERVAL_SECONDS,
            "logLevel": "info",
        },
        "trainer": {
            "image": {"repository": "kubetune/trainer"},
            "imagePullPolicy": "Never",
            "terminationGracePeriodSeconds": GRACE_SECONDS,
        },
        **ON_CPU_NODE,
    }


def restricted_namespace_manifest(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(RESTRICTED)}}


def ensure_restricted_namespace(api: ApiClient, name: str, *, timeout: float = NAMESPACE_TIMEOUT_S) -> None:
    """Create the namespace (an existing one is kept as it is) and wait for its default ServiceAccount."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    create_or_keep(
        lambda: core.create_namespace(client.V1Namespace.model_validate(restricted_namespace_manifest(name)))
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            return
        except client.ApiException as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.25)


def create_or_keep(create: Callable[[], object]) -> None:
    """Call ``create``; an object that already exists (409 Conflict) is kept."""
    from kubernetes import client

    try:
        create()
    except client.ApiException as error:
        if error.status != 409:
            raise
