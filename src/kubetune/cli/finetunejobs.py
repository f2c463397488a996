"""The API calls the cluster commands make, with API failures turned into one line naming the object."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kubetune_operator.builders.names import (
    COMPLETION_INDEX_ANNOTATION,
    FINETUNEJOB_LABEL,
    TRAINER_CONTAINER,
    child_names,
)
from kubetune_operator.errors import ApiError, Conflict, Forbidden, Invalid, NotFound, api_error
from kubetune_operator.k8s import MERGE_PATCH, Obj, collection_path, finetunejob_path, object_path

from kubetune.api.resource import API_VERSION, KIND, PLURAL
from kubetune.cli.connection import Connection
from kubetune.cli.errors import CliError, CliExit, NotFoundError

# Server-side apply records the fields each manager set; kubectl's own is "kubectl".
FIELD_MANAGER = "kubetune"
APPLY_PATCH = "application/apply-patch+yaml"
# Bytes read from a followed log stream at a time; the API server flushes each line as the trainer writes it.
LOG_CHUNK = 4096
# The Job controller's label on each pod: the name of its Job.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# The API server's 404 message for a resource type it does not serve (no CRD), as opposed to a missing object.
NO_SUCH_RESOURCE = "could not find the requested resource"


def api_failure(err: ApiError, *, what: str, server: str) -> CliError:
    """One line for a failed call about ``what`` ("FineTuneJob ns/name"); 422 (a spec the API server's
    schema or CEL rules reject) is an invalid spec, everything else an API error."""
    if err.status == 0:
        return CliError(f"cannot reach the API server at {server}: {_innermost(err.message) or err.reason}")
    if err.status == 401:
        return CliError(f"unauthorized: {server} rejected the kubeconfig's credentials")
    if isinstance(err, Forbidden):
        return CliError(f"forbidden: {err.message}")
    if isinstance(err, NotFound) and NO_SUCH_RESOURCE in err.message:
        return CliError(f"{server} serves no {KIND} API ({API_VERSION}): is kubetune's CRD installed?")
    if isinstance(err, NotFound) and err.message.startswith('namespaces "'):
        return NotFoundError(err.message.replace("namespaces", "namespace", 1))
    if isinstance(err, NotFound):
        return NotFoundError(f"{what} not found")
    if isinstance(err, Invalid):
        return CliError(f"{what}: rejected by the API server: {err.message}", code=CliExit.INVALID)
    return CliError(f"{what}: {err.message or err.reason} ({err.status})")


def _innermost(message: str) -> str:
    """The last clause of a urllib3 error chain: "...(Caused by NewConnectionError(...: [Errno 111]
    Connection refused'))" → "[Errno 111] Connection refused"."""
    tail = message.splitlines()[0].rsplit(": ", 1)[-1].rstrip("\"')")
    return tail + ")" * (tail.count("(") - tail.count(")"))


def describe(namespace: str, name: str) -> str:
    return f"{KIND} {namespace}/{name}"


def _collection(namespace: str | None) -> str:
    if namespace is None:
        return f"/apis/{API_VERSION}/{PLURAL}"
    return collection_path(api_version=API_VERSION, plural=PLURAL, namespace=namespace)


def create(conn: Connection, *, manifest: Mapping[str, Any], namespace: str) -> Obj:
    """Create the FineTuneJob unless one of that name exists.

    It is created by a server-side apply, so a later ``--apply`` of an edited file is the same field
    manager's next apply: it updates what changed and drops what the file no longer sets, where fields
    created by a POST would belong to another operation and conflict.
    """
    name = str(manifest["metadata"]["name"])
    try:
        exists = conn.kube.get(finetunejob_path(namespace=namespace, name=name)) is not None
    except ApiError as err:
        raise api_failure(err, what=describe(namespace, name), server=conn.server) from None
    if exists:
        raise CliError(f"{describe(namespace, name)} already exists (--apply updates it)")
    return apply(conn, manifest=manifest, namespace=namespace, force_conflicts=False)


def apply(conn: Connection, *, manifest: Mapping[str, Any], namespace: str, force_conflicts: bool) -> Obj:
    """Server-side apply: create the FineTuneJob, or update the fields this manifest sets."""
    name = str(manifest["metadata"]["name"])
    query = [("fieldManager", FIELD_MANAGER), ("force", "true" if force_conflicts else "false")]
    path = finetunejob_path(namespace=namespace, name=name)
    try:
        return conn.kube.request("PATCH", path, query=query, body=manifest, content_type=APPLY_PATCH)
    except Conflict as err:
        raise CliError(f"{describe(namespace, name)}: {err.message} (--force-conflicts takes them over)") from None
    except ApiError as err:
        raise api_failure(err, what=describe(namespace, name), server=conn.server) from None


def get(conn: Connection, *, name: str, namespace: str) -> Obj:
    try:
        return conn.kube.request("GET", finetunejob_path(namespace=namespace, name=name))
    except ApiError as err:
        raise api_failure(err, what=describe(namespace, name), server=conn.server) from None


def list_all(conn: Connection, *, namespace: str | None) -> list[Obj]:
    """The FineTuneJobs of one namespace, or of all (``namespace=None``), sorted by namespace and name."""
    try:
        items = conn.kube.request("GET", _collection(namespace)).get("items") or []
    except ApiError as err:
        where = f"namespace {namespace}" if namespace else "all namespaces"
        raise api_failure(err, what=f"{KIND}s in {where}", server=conn.server) from None
    objects = [dict(item) for item in items]
    return sorted(objects, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))


def delete(conn: Connection, *, name: str, namespace: str) -> None:
    """Delete the FineTuneJob; the garbage collector deletes its ConfigMap, Service, Job and pods."""
    body = {"propagationPolicy": "Background"}
    try:
        conn.kube.request("DELETE", finetunejob_path(namespace=namespace, name=name), body=body)
    except ApiError as err:
        raise api_failure(err, what=describe(namespace, name), server=conn.server) from None


def set_suspend(conn: Connection, *, name: str, namespace: str, suspend: bool) -> Obj:
    body = {"spec": {"runPolicy": {"suspend": suspend}}}
    path = finetunejob_path(namespace=namespace, name=name)
    try:
        return conn.kube.request("PATCH", path, body=body, content_type=MERGE_PATCH)
    except ApiError as err:
        raise api_failure(err, what=describe(namespace, name), server=conn.server) from None


def pick_rank0_pod(pods: Sequence[Mapping[str, Any]], *, job: str) -> Mapping[str, Any] | None:
    """The pod of completion index 0 of ``job``: the newest one when the Job retried it."""
    rank0 = [
        pod
        for pod in pods
        if (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION) == "0"
        and (pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL) == job
    ]
    # RFC 3339 timestamps in UTC sort as strings; the name breaks ties within the same second.
    rank0.sort(key=lambda pod: (pod["metadata"].get("creationTimestamp", ""), pod["metadata"]["name"]))
    return rank0[-1] if rank0 else None


def rank0_pod(conn: Connection, *, name: str, namespace: str) -> str:
    """The name of the trainer pod whose log is rank 0's."""
    ftj = get(conn, name=name, namespace=namespace)
    job = (ftj.get("status") or {}).get("jobName") or child_names(name=name).job
    path = collection_path(api_version="v1", plural="pods", namespace=namespace)
    try:
        pods = conn.kube.request("GET", path, query=[("labelSelector", f"{FINETUNEJOB_LABEL}={name}")])
    except ApiError as err:
        raise api_failure(err, what=f"the pods of {describe(namespace, name)}", server=conn.server) from None
    pod = pick_rank0_pod(pods.get("items") or [], job=job)
    if pod is None:
        phase = (ftj.get("status") or {}).get("phase") or "not yet observed"
        raise CliError(f"{describe(namespace, name)} has no rank-0 trainer pod (phase: {phase})")
    return str(pod["metadata"]["name"])


def _log_query(tail: int | None, *, follow: bool) -> list[tuple[str, str]]:
    query = [("container", TRAINER_CONTAINER)]
    if tail is not None:
        query.append(("tailLines", str(tail)))
    if follow:
        query.append(("follow", "true"))
    return query


def read_log(conn: Connection, *, pod: str, namespace: str, tail: int | None) -> str:
    path = object_path(api_version="v1", plural="pods", namespace=namespace, name=pod) + "/log"
    try:
        return conn.kube.request_text(path, query=_log_query(tail, follow=False))
    except ApiError as err:
        raise api_failure(err, what=f"pod {namespace}/{pod}", server=conn.server) from None


def follow_log(conn: Connection, *, pod: str, namespace: str, tail: int | None) -> Iterator[str]:
    """The log as it is written, until the trainer container exits (the API server then ends the stream)."""
    from kubernetes.client import ApiException, CoreV1Api

    try:
        # _preload_content=False: the urllib3 response itself, read as the API server sends it.
        response: Any = CoreV1Api(conn.api_client).read_namespaced_pod_log(
            name=pod,
            namespace=namespace,
            container=TRAINER_CONTAINER,
            follow=True,
            tail_lines=tail,
            _preload_content=False,
        )
    except ApiException as err:
        raise api_failure(_api_error(err), what=f"pod {namespace}/{pod}", server=conn.server) from None
    except Exception as err:  # connection refused, TLS: the server was not reached
        failure = api_error(status=0, reason=type(err).__name__, message=str(err))
        raise api_failure(failure, what=f"pod {namespace}/{pod}", server=conn.server) from None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        for chunk in response.stream(LOG_CHUNK):
            text = decoder.decode(chunk)
            if text:
                yield text
        yield decoder.decode(b"", final=True)
    finally:
        response.release_conn()


def _api_error(err: Any) -> ApiError:
    try:
        message = str(json.loads(err.body).get("message") or "")
    except (TypeError, ValueError):
        message = ""
    return api_error(status=int(err.status or 0), reason=str(err.reason or ""), message=message or str(err.reason))
