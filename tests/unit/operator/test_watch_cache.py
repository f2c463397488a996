"""The watch cache's helpers: slimmed objects, and our own writes preferred until the cache catches up."""

from __future__ import annotations

from typing import Any

from kubetune_operator.cache import Written, slim


def obj(kind: str, name: str, rv: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}, **extra}


def test_a_pod_is_slimmed_to_metadata_and_status_without_managed_fields_or_spec() -> None:
    pod = obj("Pod", "p", "5", spec={"containers": [{"name": "trainer"}]}, status={"phase": "Running"})
    pod["metadata"]["managedFields"] = [{"manager": "kubelet"}]
    slimmed = slim(pod, kind="Pod")
    assert slimmed == {
        "apiVersion": None,
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "5"},
        "status": {"phase": "Running"},
    }
    slimmed["status"]["phase"] = "Failed"
    assert pod["status"]["phase"] == "Running"  # a copy: kopf's object is never shared


def test_a_job_keeps_only_suspend_of_its_spec_and_no_object_keeps_kubectls_copy_of_itself() -> None:
    job = obj("Job", "j", "7", spec={"suspend": True, "template": {"spec": {"containers": [{"name": "trainer"}]}}})
    job["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": '{"spec": "..."}',
        "kubetune.io/job-spec-hash": "abc",
    }
    slimmed = slim(job, kind="Job")
    assert slimmed["spec"] == {"suspend": True}
    assert slimmed["metadata"]["annotations"] == {"kubetune.io/job-spec-hash": "abc"}
    assert job["spec"]["template"] and len(job["metadata"]["annotations"]) == 2  # the original is untouched


def test_our_write_is_used_until_the_cache_holds_it_or_something_newer() -> None:
    written = Written()
    mine = obj("FineTuneJob", "demo", "12", status={"phase": "Running"})
    written.remember(mine)
    stale = obj("FineTuneJob", "demo", "11", status={"phase": "Pending"})
    assert written.newer(stale, kind="FineTuneJob", namespace="ns", name="demo") is mine
    assert written.newer(None, kind="FineTuneJob", namespace="ns", name="demo") is mine  # not listed yet
    caught_up = obj("FineTuneJob", "demo", "12", status={"phase": "Running"})
    assert written.newer(caught_up, kind="FineTuneJob", namespace="ns", name="demo") is caught_up
    # Once caught up, the written copy is dropped: an older cache value is no longer overridden.
    assert written.newer(stale, kind="FineTuneJob", namespace="ns", name="demo") is stale


def test_a_newer_cached_object_wins_and_deleted_objects_are_forgotten() -> None:
    written = Written()
    written.remember(obj("Job", "demo-train", "20"))
    someone_else = obj("Job", "demo-train", "25")
    assert written.newer(someone_else, kind="Job", namespace="ns", name="demo-train") is someone_else
    written.remember(obj("Job", "demo-train", "30"))
    written.remember(obj("ConfigMap", "demo-config", "31"))
    written.forget(namespace="ns", ftj_name="demo")
    assert written.newer(None, kind="Job", namespace="ns", name="demo-train") is None
    assert written.newer(None, kind="ConfigMap", namespace="ns", name="demo-config") is None
