"""Where a reconcile reads the cluster from: the operator's watch caches, or the API server directly.

The operator runs on watch caches (kopf indices, see ``handlers``): reading a FineTuneJob, its children and
its pods costs no request. ``ApiReader`` reads the same through the API (a fresh read after a lost write
race, and the tests). Cached objects are slimmed to what the plan reads, so memory stays small per job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kubetune_operator import k8s
from kubetune_operator.builders.names import FINETUNEJOB_LABEL

Obj = Mapping[str, Any]
# The metadata fields the plan and the status computation read.
_META_FIELDS = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "annotations",
    "ownerReferences",
)
# What is kept of each kind besides metadata (a pod's spec is large and never read).
_KEPT = {
    "FineTuneJob": ("spec", "status"),
    "Job": ("spec", "status"),
    "ConfigMap": ("data",),
    "Service": (),
    "Pod": ("status",),
}


# (apiVersion, plural, kind) of every kind of child.
CHILD_KINDS = (("v1", "configmaps", "ConfigMap"), ("v1", "services", "Service"), ("batch/v1", "jobs", "Job"))


class Reader(Protocol):
    def finetunejob(self, *, namespace: str, name: str) -> Obj | None: ...

    def children(self, *, namespace: str, ftj_name: str) -> Sequence[Obj]:
        """The Jobs, ConfigMaps and Services labelled with this FineTuneJob's name."""
        ...

    def pods(self, *, namespace: str, ftj_name: str) -> Sequence[Obj]: ...


def slim(obj: Mapping[str, Any], *, kind: str) -> dict[str, Any]:
    """A copy of ``obj`` with only what a reconcile reads (``kind`` set, managedFields and pod specs gone)."""
    meta = obj.get("metadata") or {}
    out: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": kind,
        "metadata": {key: _copy(meta[key]) for key in _META_FIELDS if key in meta},
    }
    for key in _KEPT[kind]:
        if key in obj:
            out[key] = _copy(obj[key])
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


class ApiReader:
    """Reads straight from the API server: one GET per FineTuneJob, one LIST per kind."""

    def __init__(self, kube: k8s.Kube) -> None:
        self._kube = kube

    def finetunejob(self, *, namespace: str, name: str) -> Obj | None:
        obj = k8s.read_finetunejob(self._kube, namespace=namespace, name=name)
        return None if obj is None else slim(obj, kind="FineTuneJob")

    def children(self, *, namespace: str, ftj_name: str) -> Sequence[Obj]:
        out = []
        for api_version, plural, kind in CHILD_KINDS:
            for item in self._list(api_version=api_version, plural=plural, namespace=namespace, ftj_name=ftj_name):
                out.append(slim(item, kind=kind))
        return out

    def pods(self, *, namespace: str, ftj_name: str) -> Sequence[Obj]:
        items = self._list(api_version="v1", plural="pods", namespace=namespace, ftj_name=ftj_name)
        return [slim(item, kind="Pod") for item in items]

    def _list(self, *, api_version: str, plural: str, namespace: str, ftj_name: str) -> list[Obj]:
        path = k8s.collection_path(api_version=api_version, plural=plural, namespace=namespace)
        query = [("labelSelector", f"{FINETUNEJOB_LABEL}={ftj_name}")]
        return list(self._kube.request("GET", path, query=query).get("items") or [])
