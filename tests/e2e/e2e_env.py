"""What the end-to-end tests and their fixtures share: names, the Helm release, storage, a CPU spec."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_operator.k8s import ApiError, Kube, collection_path, object_path
from kubetune_testenv.cluster import Cluster, ControlPlane
from kubetune_testenv.node_config import NODE_ROLE_KEY, NODE_ROLE_VALUE

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
OPERATOR_NAMESPACE = "kubetune"
JOBS_NAMESPACE = "e2e-jobs"
RELEASE = "e2e"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
ON_CPU_NODE: dict[str, Any] = {
    "nodeSelector": {NODE_ROLE_KEY: NODE_ROLE_VALUE},
    "tolerations": [{"key": NODE_ROLE_KEY, "operator": "Equal", "value": NODE_ROLE_VALUE, "effect": "NoSchedule"}],
}
CLAIMS = ("models", "datasets", "outputs")
TRAINER_UID = 1000  # the chart's trainer.runAsUser: outputs must be writable by it
# A trainer pod gets this long between SIGTERM and SIGKILL; the tiny model checkpoints in well under a second.
GRACE_SECONDS = 30


@dataclass(frozen=True)
class Release:
    """The kubetune Helm release in the test cluster."""

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


def release_values() -> dict[str, Any]:
    """Chart values for the test cluster: local images (never pulled), the operator on the real node."""
    return {
        "image": {"repository": "kubetune/operator", "pullPolicy": "Never"},
        "operator": {
            "watchNamespaces": [JOBS_NAMESPACE],
            "resyncIntervalSeconds": 2,
            "logLevel": "info",
        },
        "trainer": {
            "image": {"repository": "kubetune/trainer"},
            "imagePullPolicy": "Never",
            "terminationGracePeriodSeconds": GRACE_SECONDS,
        },
        **ON_CPU_NODE,
    }


def operator_log(admin: Kube) -> str:
    pods = admin.request("GET", collection_path(api_version="v1", plural="pods", namespace=OPERATOR_NAMESPACE))
    logs = []
    for pod in pods["items"]:
        path = object_path(api_version="v1", plural="pods", namespace=OPERATOR_NAMESPACE, name=pod["metadata"]["name"])
        try:
            logs.append(admin.request_text(f"{path}/log", query=[("tailLines", "80")]))
        except ApiError as err:
            logs.append(f"(no log: {err})")
    return "\n".join(logs)


@dataclass(frozen=True)
class Volumes:
    """hostPath directories behind the ``models``, ``datasets`` and ``outputs`` claims."""

    root: Path

    def path(self, claim: str) -> Path:
        return self.root / claim


def cpu_spec(*, output: str, data: str = "pvc://datasets/lamini-64.jsonl", **overrides: Any) -> dict[str, Any]:
    """A short LoRA run of the tiny model on one CPU pod of the real node."""
    spec: dict[str, Any] = {
        "model": {"source": "pvc://models/tiny"},
        "dataset": {
            "train": [data],
            "format": "prompt_completion",
            "fieldMapping": {"prompt": "question", "completion": "answer"},
            "validationSplit": 0.25,
            "maxSeqLength": 128,
        },
        "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0},
        "hyperparameters": {"maxSteps": 6, "perDeviceBatchSize": 4, "learningRate": 1e-3},
        "checkpointing": {"everySteps": 2, "keepLast": 2},
        "resources": {"gpusPerNode": 0, "cpu": "500m", "memory": "3Gi", **ON_CPU_NODE},
        "output": {"destination": output},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def kubectl(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    assert isinstance(cluster, ControlPlane)
    return cluster.kubectl(*args, check=False)
