"""Claims on the real node without a storage provisioner: one hostPath PersistentVolume per claim, bound to it.

The PV names its claim (``claimRef``) and the claim its PV (``volumeName``); a ``storageClassName`` that
no StorageClass object has keeps a default class from taking the claim. Pods mount the claims, never the
host path, so the ``restricted`` Pod Security Standard admits them. FineTuneJobs name the claims in
``pvc://`` URIs: ``models``, ``datasets`` and ``outputs``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .release import TRAINER_UID, create_or_keep

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

CLAIMS = ("models", "datasets", "outputs")
# The claim the trainer writes to; the others it only reads.
WRITABLE_CLAIM = "outputs"
BIND_TIMEOUT_S = 60.0


@dataclass(frozen=True, kw_only=True)
class HostPathClaims:
    """Claims of ``namespace``, each bound to the PV ``<pv_prefix><claim>`` over ``root/<claim>``."""

    root: Path
    namespace: str
    pv_prefix: str
    storage_class: str
    claims: tuple[str, ...] = CLAIMS

    def path(self, claim: str) -> Path:
        return self.root / claim

    def pv_name(self, claim: str) -> str:
        return f"{self.pv_prefix}{claim}"

    def pv_manifest(self, claim: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": self.pv_name(claim)},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": self.storage_class,
                "hostPath": {"path": str(self.path(claim)), "type": "Directory"},
                "claimRef": {"namespace": self.namespace, "name": claim},
            },
        }

    def pvc_manifest(self, claim: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": self.namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": self.storage_class,
                "volumeName": self.pv_name(claim),
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }


def create_claims(api: ApiClient, claims: HostPathClaims) -> None:
    """The directories, PVs and claims; existing ones are kept. Fill them, then :func:`finish_claims`."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    for claim in claims.claims:
        claims.path(claim).mkdir(parents=True, exist_ok=True)
        pv = client.V1PersistentVolume.model_validate(claims.pv_manifest(claim))
        pvc = client.V1PersistentVolumeClaim.model_validate(claims.pvc_manifest(claim))
        create_or_keep(lambda pv=pv: core.create_persistent_volume(pv))  # type: ignore[misc]
        create_or_keep(lambda pvc=pvc: core.create_namespaced_persistent_volume_claim(claims.namespace, pvc))  # type: ignore[misc]


def finish_claims(api: ApiClient, claims: HostPathClaims, *, timeout: float = BIND_TIMEOUT_S) -> None:
    """Files readable by the trainer's user, ``outputs`` its own; then wait until every claim is Bound."""
    set_permissions(claims.root, writable=claims.path(WRITABLE_CLAIM), uid=TRAINER_UID)
    wait_bound(api, namespace=claims.namespace, names=claims.claims, timeout=timeout)


def set_permissions(root: Path, *, writable: Path, uid: int) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    os.chown(writable, uid, uid)


def wait_bound(api: ApiClient, *, namespace: str, names: Sequence[str], timeout: float) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            claim = core.read_namespaced_persistent_volume_claim(name, namespace)
            if claim.status is not None and claim.status.phase == "Bound":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for claim {namespace}/{name} to be Bound")
            time.sleep(0.25)
