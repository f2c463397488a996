"""Kubernetes API calls: JSON in, JSON out, errors as typed exceptions (``kubetune_operator.errors``).

The operator's objects are plain dicts (what the builders produce and what status computation reads), so
this module speaks JSON to the API server through the official client's authenticated connection instead
of converting to and from the client's generated model classes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from kubernetes.client import ApiClient

from kubetune.api.resource import API_VERSION, KIND, PLURAL
from kubetune_operator.builders.event import EventSpec, build_event
from kubetune_operator.builders.names import FINETUNEJOB_LABEL
from kubetune_operator.errors import ChildConflictError, Conflict, Invalid, NotFound, api_error

Obj = dict[str, Any]
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# Seconds per API call; the API server answers in milliseconds unless it is in trouble.
REQUEST_TIMEOUT = 30.0


_PLURALS = {"ConfigMap": "configmaps", "Service": "services", "Job": "jobs", KIND: PLURAL}


def collection_path(*, api_version: str, plural: str, namespace: str | None) -> str:
    """The path of a collection; ``namespace`` None for a cluster-scoped kind."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace is None:
        return f"{prefix}/{plural}"
    return f"{prefix}/namespaces/{quote(namespace)}/{plural}"


def object_path(*, api_version: str, plural: str, namespace: str | None, name: str) -> str:
    return f"{collection_path(api_version=api_version, plural=plural, namespace=namespace)}/{quote(name)}"


# Called after every request with (verb, resource, HTTP status); the operator counts requests with it.
ResponseHook = Callable[[str, str, int], None]


def resource_of(path: str) -> str:
    """The resource a request path names, e.g. ``finetunejobs/status``, ``pods/log``, ``events``."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if "namespaces" in parts:
        after = parts[parts.index("namespaces") + 2 :]
    else:
        after = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if not after:
        return "namespaces"
    return after[0] if len(after) < 3 else f"{after[0]}/{after[2]}"


class Kube:
    """A minimal JSON client over an authenticated :class:`kubernetes.client.ApiClient`."""

    def __init__(self, *, api_client: ApiClient, on_response: ResponseHook | None = None) -> None:
        self._api = api_client
        self._on_response = on_response

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | list[Any] | None = None,
        content_type: str = JSON,
    ) -> Obj:
        data = self._send(method, path, query=query, body=body, content_type=content_type, accept=JSON)
        payload: Obj = json.loads(data) if data else {}
        return payload

    def request_text(self, path: str, *, query: Sequence[tuple[str, str]] = ()) -> str:
        """A GET of a text resource (pod logs)."""
        # The API server answers errors as JSON, and refuses requests that would not accept that.
        return self._send("GET", path, query=query, body=None, content_type=JSON, accept=f"{JSON}, */*").decode(
            "utf-8", errors="replace"
        )

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]],
        body: Mapping[str, Any] | list[Any] | None,
        content_type: str,
        accept: str,
    ) -> bytes:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        method_, url, headers_, body_, post = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=dict(body) if isinstance(body, Mapping) else body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(
                method_, url, header_params=headers_, body=body_, post_params=post, _request_timeout=REQUEST_TIMEOUT
            )
        except Exception as err:  # connection refused, TLS, timeouts: the server was not reached
            status = int(getattr(err, "status", 0) or 0)
            self._observe(method, path, status)
            raise api_error(status=status, reason=type(err).__name__, message=str(err)) from err
        data: bytes = response.read()  # type: ignore[no-untyped-call]
        self._observe(method, path, response.status)
        if response.status >= 400:
            try:  # a metav1.Status from the API server; a proxy in between may answer with anything
                status_obj = json.loads(data)
            except ValueError:
                status_obj = {}
            if not isinstance(status_obj, dict):
                status_obj = {}
            details = status_obj.get("details")
            causes = (details.get("causes") if isinstance(details, dict) else None) or []
            raise api_error(
                status=response.status,
                reason=str(status_obj.get("reason") or response.reason or ""),
                message=str(status_obj.get("message") or data[:500].decode("utf-8", errors="replace")),
                causes=tuple(str(c.get("reason")) for c in causes if isinstance(c, dict)),
            )
        return data

    def _observe(self, method: str, path: str, status: int) -> None:
        if self._on_response is not None:
            self._on_response(method, resource_of(path), status)

    def get(self, path: str) -> Obj | None:
        """The object, or ``None`` when it does not exist."""
        try:
            return self.request("GET", path)
        except NotFound:
            return None


def finetunejob_path(*, namespace: str, name: str) -> str:
    return object_path(api_version=API_VERSION, plural=PLURAL, namespace=namespace, name=name)


def read_finetunejob(kube: Kube, *, namespace: str, name: str) -> Obj | None:
    return kube.get(finetunejob_path(namespace=namespace, name=name))


def _path_of(manifest: Mapping[str, Any], *, name: str | None = None) -> str:
    meta = manifest["metadata"]
    return object_path(
        api_version=manifest["apiVersion"],
        plural=_PLURALS[manifest["kind"]],
        namespace=meta["namespace"],
        name=name or meta["name"],
    )


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def ensure_child(kube: Kube, *, manifest: Mapping[str, Any]) -> tuple[Obj, bool]:
    """Create the child unless it exists; adopt an orphan carrying our label. Returns (object, created).

    Create-then-read (not read-then-create) is race-free: two reconciles of the same FineTuneJob, or an
    operator restarted mid-reconcile, cannot both create, because names are deterministic.
    """
    meta = manifest["metadata"]
    owner = meta["ownerReferences"][0]
    collection = collection_path(
        api_version=manifest["apiVersion"], plural=_PLURALS[manifest["kind"]], namespace=meta["namespace"]
    )
    try:
        return kube.request("POST", collection, body=manifest), True
    except Conflict:
        pass
    existing = kube.get(_path_of(manifest))
    if existing is None:  # deleted between our POST and GET: the next reconcile creates it
        raise Conflict(status=409, reason="Conflict", message=f"{manifest['kind']} {meta['name']} is being deleted")
    controller = _controller_uid(existing)
    labels = (existing.get("metadata") or {}).get("labels") or {}
    if controller == owner["uid"] or (controller is None and labels.get(FINETUNEJOB_LABEL) == owner["name"]):
        patch = _repair_patch(existing=existing, manifest=manifest)
        if patch is None:
            return existing, False
        return kube.request("PATCH", _path_of(manifest), body=patch, content_type=MERGE_PATCH), False
    if labels.get(FINETUNEJOB_LABEL) == owner["name"]:
        # A deleted FineTuneJob of the same name whose children the garbage collector has not removed yet.
        raise Conflict(
            status=409,
            reason="Conflict",
            message=f"{manifest['kind']} {meta['name']} still belongs to an earlier FineTuneJob of this name",
        )
    raise ChildConflictError(
        f"{manifest['kind']} {meta['namespace']}/{meta['name']} already exists and is not owned by this FineTuneJob"
    )


def _repair_patch(*, existing: Mapping[str, Any], manifest: Mapping[str, Any]) -> Obj | None:
    """What makes an existing child ours again: the owner reference, and a ConfigMap's data.

    A Job's template is immutable and a Service's spec holds allocated fields, so only these are repaired;
    a ConfigMap can differ when a crash interrupted a hand-made or older operator's version.
    """
    patch: Obj = {}
    owner = manifest["metadata"]["ownerReferences"][0]
    if _controller_uid(existing) != owner["uid"]:
        patch["metadata"] = {"ownerReferences": [owner]}
    if "data" in manifest and (existing.get("data") or {}) != manifest["data"]:
        stale = {key: None for key in existing.get("data") or {} if key not in manifest["data"]}
        patch["data"] = stale | dict(manifest["data"])
    if not patch:
        return None
    patch.setdefault("metadata", {})["resourceVersion"] = existing["metadata"]["resourceVersion"]
    return patch


def delete_job(kube: Kube, *, namespace: str, name: str, uid: str) -> None:
    """Delete this Job (not a newer one of the same name); its pods follow in the background."""
    path = object_path(api_version="batch/v1", plural="jobs", namespace=namespace, name=name)
    body = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
    with contextlib.suppress(NotFound, Conflict):  # gone already, or the name now holds a newer Job
        kube.request("DELETE", path, body=body)


def set_job_suspend(kube: Kube, *, namespace: str, name: str, suspend: bool) -> Obj:
    path = object_path(api_version="batch/v1", plural="jobs", namespace=namespace, name=name)
    return kube.request("PATCH", path, body={"spec": {"suspend": suspend}}, content_type=MERGE_PATCH)


def status_guard(value: Any, *, pointer: str) -> list[dict[str, Any]]:
    """JSON Patch ``test`` ops that pass only while the stored value is still ``value``.

    The API server compares numbers in a ``test`` by their text, and Go writes a float such as 1.6e-08 as
    ``1.6e-8`` (Python: ``1.6e-08``) and 2e-05 as ``0.00002``: a status holding such a number would fail its
    own test forever. A part without such numbers is tested whole; a part with one is tested member by
    member, and the number itself is left out (its siblings, among them the time of the last report,
    still change with every write).
    """
    if not _has_exponent_float(value):
        return [{"op": "test", "path": pointer, "value": value}]
    if isinstance(value, Mapping):
        items: list[tuple[str, Any]] = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return []
    ops: list[dict[str, Any]] = []
    for key, child in items:
        ops += status_guard(child, pointer=f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}")
    return ops


def _has_exponent_float(value: Any) -> bool:
    if isinstance(value, float):
        return "e" in repr(value) or "inf" in repr(value) or "nan" in repr(value)
    if isinstance(value, Mapping):
        return any(_has_exponent_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_exponent_float(v) for v in value)
    return False


def patch_finetunejob_status(
    kube: Kube,
    *,
    namespace: str,
    name: str,
    status: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    uid: str,
) -> Obj:
    """Write ``status`` (a merge patch of ``previous``) only if the stored status is still ``previous``.

    The guard is on the status itself (a JSON Patch ``test``), not on the object's resourceVersion: edits
    of labels, annotations or the spec by others do not make the write lose, so a busy writer cannot starve
    the status. A status that changed meanwhile fails the test (422) and is raised as Conflict. With no
    stored status yet, the first write checks the object's uid (the status is the operator's alone).
    """
    path = finetunejob_path(namespace=namespace, name=name) + "/status"
    desired = {key: value for key, value in {**(previous or {}), **status}.items() if value is not None}
    guard = (
        status_guard(previous, pointer="/status")
        if previous
        else [{"op": "test", "path": "/metadata/uid", "value": uid}]  # no status yet: only we write one
    )
    ops = [*guard, {"op": "add", "path": "/status", "value": desired}]  # add replaces an existing member
    try:
        return kube.request("PATCH", path, body=ops, content_type=JSON_PATCH)
    except Invalid as err:
        if err.causes:  # the schema refused the status itself (the causes name the fields)
            raise
        # A failed test op (no causes): someone else's status is there now.
        raise Conflict(status=409, reason="Conflict", message=f"the status changed meanwhile: {err.message}") from err


def delete_finetunejob(kube: Kube, *, namespace: str, name: str, uid: str) -> None:
    """Delete this FineTuneJob (the uid precondition spares a new one of the same name); children follow."""
    body = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
    with contextlib.suppress(NotFound, Conflict):  # gone already, or the name now holds a newer one
        kube.request("DELETE", finetunejob_path(namespace=namespace, name=name), body=body)


def pod_creation_failures(kube: Kube, *, namespace: str, job_uid: str) -> list[str]:
    """Messages of the Job controller's FailedCreate events about this Job, oldest first."""
    path = collection_path(api_version="v1", plural="events", namespace=namespace)
    selector = f"involvedObject.uid={job_uid},reason=FailedCreate"
    items = kube.request("GET", path, query=[("fieldSelector", selector)]).get("items") or []
    items.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return [str(e.get("message") or "") for e in items]


def post_event(kube: Kube, *, ftj: Mapping[str, Any], event: EventSpec, now: datetime) -> None:
    path = collection_path(api_version="v1", plural="events", namespace=ftj["metadata"]["namespace"])
    kube.request("POST", path, body=build_event(ftj=ftj, event=event, now=now))
