"""Where a reconcile reads the cluster from: the operator's watch caches, or the API server directly.

The operator runs on watch caches (kopf indices, see ``handlers``): reading a FineTuneJob, its children and
its pods costs no request. ``ApiReader`` reads the same through the API (a fresh read after a lost write
race, and the tests). Cached objects are slimmed to what the plan reads, so memory stays small per job.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kubetune.api.profile import PROFILE_LABEL, PROFILE_PLURAL
from kubetune.api.resource import API_VERSION
from kubetune_operator import k8s
from kubetune_operator.builders.names import FINETUNEJOB_LABEL, child_names
from kubetune_operator.errors import NotFound

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
# A Job's spec (its pod template: several KiB per job) is read only for ``suspend``.
_KEPT_SPEC = {"Job": ("suspend",)}
# kubectl apply's copy of the whole object; nothing reads it, and it can be as large as the spec.
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
_KEPT = {
    "FineTuneJob": ("spec", "status"),
    "Job": ("spec", "status"),
    "ConfigMap": ("data",),
    "Service": (),
    "Pod": ("status",),
    "FineTuneProfile": ("spec",),
}


# (apiVersion, plural, kind) of every kind of child.
CHILD_KINDS = (("v1", "configmaps", "ConfigMap"), ("v1", "services", "Service"), ("batch/v1", "jobs", "Job"))


class Reader(Protocol):
    def finetunejob(self, *, namespace: str, name: str) -> Obj | None: ...

    def children(self, *, namespace: str, ftj_name: str) -> Sequence[Obj]:
        """The Jobs, ConfigMaps and Services labelled with this FineTuneJob's name."""
        ...

    def pods(self, *, namespace: str, ftj_name: str) -> Sequence[Obj]: ...

    def profiles(self) -> Sequence[Obj]:
        """Every FineTuneProfile (cluster-scoped)."""
        ...

    def namespace_profile(self, namespace: str) -> str | None:
        """The value of the namespace's kubetune.io/profile label, if any."""
        ...


def slim(obj: Mapping[str, Any], *, kind: str) -> dict[str, Any]:
    """A copy of ``obj`` with only what a reconcile reads (``kind`` set, managedFields and pod specs gone)."""
    meta = obj.get("metadata") or {}
    out: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": kind,
        "metadata": {key: _copy(meta[key]) for key in _META_FIELDS if key in meta},
    }
    annotations = out["metadata"].get("annotations")
    if annotations:
        out["metadata"]["annotations"] = {k: v for k, v in annotations.items() if k not in _DROPPED_ANNOTATIONS}
    for key in _KEPT[kind]:
        if key in obj:
            out[key] = _copy(obj[key])
    if kind in _KEPT_SPEC and isinstance(out.get("spec"), dict):
        out["spec"] = {key: out["spec"][key] for key in _KEPT_SPEC[kind] if key in out["spec"]}
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


def _revision(obj: Obj) -> int | None:
    value = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(value) if value.isdigit() else None


class Written:
    """What this operator wrote last, per object, until its watch cache has caught up.

    A watch delivers our own write a moment later; a reconcile that reads the cache in between would plan
    on the old object (a status write that loses with 409, a create that meets AlreadyExists). ``newer``
    picks the written copy while the cached one is older. resourceVersions are compared as integers: the
    API server's are etcd revisions; were one not a number, the cache is trusted.
    """

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._lock = threading.Lock()

    def remember(self, obj: Obj) -> None:
        meta = obj["metadata"]
        with self._lock:
            self._objects[(obj["kind"], meta["namespace"], meta["name"])] = obj

    def drop(self, *, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((kind, namespace, name), None)

    def forget(self, *, namespace: str, ftj_name: str) -> None:
        """Drop a FineTuneJob and its children (it was deleted)."""
        names = child_names(name=ftj_name)
        for kind, name in (
            ("FineTuneJob", ftj_name),
            ("ConfigMap", names.config_map),
            ("Service", names.service),
            ("Job", names.job),
            ("Job", names.preflight_job),
        ):
            self.drop(kind=kind, namespace=namespace, name=name)

    def newer(self, cached: Obj | None, *, kind: str, namespace: str, name: str) -> Obj | None:
        with self._lock:
            written = self._objects.get((kind, namespace, name))
            if written is None:
                return cached
            seen, mine = (_revision(cached) if cached is not None else None), _revision(written)
            if cached is not None and (seen is None or mine is None or seen >= mine):
                del self._objects[(kind, namespace, name)]  # the cache caught up (or moved past us)
                return cached
            return written


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

    def profiles(self) -> Sequence[Obj]:
        path = k8s.collection_path(api_version=API_VERSION, plural=PROFILE_PLURAL, namespace=None)
        try:
            items = self._kube.request("GET", path).get("items") or []
        except NotFound:  # the FineTuneProfile CRD is not installed: no profiles
            return []
        return [slim(item, kind="FineTuneProfile") for item in items]

    def namespace_profile(self, namespace: str) -> str | None:
        path = k8s.object_path(api_version="v1", plural="namespaces", namespace=None, name=namespace)
        try:
            labels = (self._kube.request("GET", path).get("metadata") or {}).get("labels") or {}
        except NotFound:
            return None
        return labels.get(PROFILE_LABEL)

    def _list(self, *, api_version: str, plural: str, namespace: str, ftj_name: str) -> list[Obj]:
        path = k8s.collection_path(api_version=api_version, plural=plural, namespace=namespace)
        query = [("labelSelector", f"{FINETUNEJOB_LABEL}={ftj_name}")]
        return list(self._kube.request("GET", path, query=query).get("items") or [])
