"""FineTuneJobs, their children and Events as tests read them; shared by the integration and e2e tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubetune_operator.builders.names import FINETUNEJOB_LABEL
from kubetune_operator.k8s import Kube, collection_path

from kubetune.api.resource import API_VERSION, PLURAL

T = TypeVar("T")


def wait_for(fetch: Callable[[], T], ready: Callable[[T], bool], *, what: str, timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not ready(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value:\n{value}")
        time.sleep(0.25)
        value = fetch()
    return value


def ftj_collection(namespace: str) -> str:
    return collection_path(api_version=API_VERSION, plural=PLURAL, namespace=namespace)


def minimal_spec() -> dict[str, Any]:
    return {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"], "preflight": "skip"},
        "output": {"destination": "s3://outputs/run-1"},
    }


def ftj_manifest(
    name: str, *, spec: dict[str, Any] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec if spec is not None else minimal_spec(),
    }


class FineTuneJobs:
    """FineTuneJobs, their children and their Events in one test namespace, read as the admin."""

    def __init__(self, *, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace

    def create(self, name: str, **kw: Any) -> dict[str, Any]:
        return self.kube.request("POST", ftj_collection(self.namespace), body=ftj_manifest(name, **kw))

    def get(self, name: str) -> dict[str, Any] | None:
        return self.kube.get(f"{ftj_collection(self.namespace)}/{name}")

    def delete(self, name: str) -> None:
        self.kube.request("DELETE", f"{ftj_collection(self.namespace)}/{name}")

    def patch_spec(self, name: str, spec_patch: dict[str, Any]) -> dict[str, Any]:
        return self.kube.request(
            "PATCH",
            f"{ftj_collection(self.namespace)}/{name}",
            body={"spec": spec_patch},
            content_type="application/merge-patch+json",
        )

    def wait(
        self, name: str, ready: Callable[[dict[str, Any]], bool], *, what: str, timeout: float = 60
    ) -> dict[str, Any]:
        obj = wait_for(lambda: self.get(name) or {}, ready, what=f"FineTuneJob {name}: {what}", timeout=timeout)
        return obj

    def wait_phase(self, name: str, phase: str, *, timeout: float = 60) -> dict[str, Any]:
        return self.wait(name, lambda obj: status_of(obj).get("phase") == phase, what=f"phase {phase}", timeout=timeout)

    def children(self, plural: str, name: str) -> list[dict[str, Any]]:
        path = collection_path(
            api_version="batch/v1" if plural == "jobs" else "v1", plural=plural, namespace=self.namespace
        )
        return list(self.kube.request("GET", path, query=[("labelSelector", f"{FINETUNEJOB_LABEL}={name}")])["items"])

    def everything(self, plural: str) -> list[dict[str, Any]]:
        path = collection_path(
            api_version="batch/v1" if plural == "jobs" else "v1", plural=plural, namespace=self.namespace
        )
        return list(self.kube.request("GET", path)["items"])

    def describe(self, name: str) -> str:
        """A few lines on why a FineTuneJob is where it is: phase, conditions, its Job, pods and Events.

        A timeout's message ends with this, short enough to survive a CI log cut to its last lines."""
        obj = self.get(name) or {}
        status = status_of(obj)
        lines = [f"FineTuneJob {name}: phase={status.get('phase')} progress={status.get('progress')}"]
        for c in status.get("conditions") or []:
            lines.append(f"  condition {c['type']}={c['status']} {c.get('reason', '')}: {c.get('message', '')}"[:300])
        for job in self.children("jobs", name):
            job_status = job.get("status") or {}
            conditions = [f"{c['type']}={c['status']}" for c in job_status.get("conditions") or []]
            counts = {key: job_status.get(key) for key in ("active", "succeeded", "failed")}
            lines.append(f"  Job {job['metadata']['name']}: suspend={job['spec'].get('suspend')} {counts} {conditions}")
        for pod in self.children("pods", name):
            pod_status = pod.get("status") or {}
            states = [
                f"{c['name']}: restarts={c.get('restartCount')} {c.get('state')}"
                for c in pod_status.get("containerStatuses") or []
            ]
            lines.append(f"  pod {pod['metadata']['name']}: {pod_status.get('phase')} {states}"[:400])
        path = collection_path(api_version="v1", plural="events", namespace=self.namespace)
        events = self.kube.request("GET", path)["items"]
        mine = [e for e in events if str(e["involvedObject"].get("name", "")).startswith(name)]
        for e in sorted(mine, key=lambda e: int(e["metadata"]["resourceVersion"]))[-8:]:
            involved = f"{e['involvedObject']['kind']}/{e['involvedObject']['name']}"
            lines.append(f"  event {involved} {e['reason']}: {e.get('message', '')}"[:300])
        return "\n".join(lines)

    def event_reasons(self, name: str) -> list[str]:
        path = collection_path(api_version="v1", plural="events", namespace=self.namespace)
        selector = f"involvedObject.kind=FineTuneJob,involvedObject.name={name}"
        items = self.kube.request("GET", path, query=[("fieldSelector", selector)])["items"]
        # Timestamps have whole seconds; etcd's revision (the resourceVersion of a new object) orders them.
        return [str(e["reason"]) for e in sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))]


def status_of(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def condition_of(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((dict(c) for c in status_of(obj).get("conditions") or [] if c["type"] == type_), {})
