"""A namespace's ResourceQuota on GPUs refuses the trainer pods: the status says so, and the job starts once
the quota allows it (the Job controller keeps retrying)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kube_objects import FineTuneJobs, condition_of, wait_for
from kubetune_operator.k8s import MERGE_PATCH, collection_path, object_path

pytestmark = pytest.mark.cluster

Status = Callable[[dict[str, Any]], dict[str, Any]]


def gpu_quota(ftjs: FineTuneJobs, *, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "gpus", "namespace": ftjs.namespace},
        "spec": {"hard": {"requests.nvidia.com/gpu": str(gpus)}},
    }


def test_a_gpu_quota_that_refuses_the_pods_is_named_in_the_status_and_lifting_it_starts_the_job(
    ftjs: FineTuneJobs, status: Status
) -> None:
    quotas = collection_path(api_version="v1", plural="resourcequotas", namespace=ftjs.namespace)
    ftjs.kube.request("POST", quotas, body=gpu_quota(ftjs, gpus=0))
    ftjs.create("over-quota", annotations={"kubetune.test/run-for": "10m"})

    def refused(obj: dict[str, Any] | None) -> bool:
        return obj is not None and condition_of(obj, "Running").get("reason") == "QuotaExceeded"

    obj = wait_for(lambda: ftjs.get("over-quota"), refused, what="status reason QuotaExceeded", timeout=120)
    assert status(obj)["phase"] == "Pending"
    message = condition_of(obj, "Running")["message"]
    assert "exceeded quota: gpus" in message and "requests.nvidia.com/gpu" in message
    assert ftjs.everything("pods") == []

    quota = object_path(api_version="v1", plural="resourcequotas", namespace=ftjs.namespace, name="gpus")
    ftjs.kube.request(
        "PATCH", quota, body={"spec": {"hard": {"requests.nvidia.com/gpu": "8"}}}, content_type=MERGE_PATCH
    )
    running = ftjs.wait_phase("over-quota", "Running", timeout=120)
    assert condition_of(running, "Running")["reason"] == "TrainerRunning"
