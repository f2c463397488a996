"""Failures are named in status.failure: the pod, the container, the exit code and a CamelCase reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.cluster

Status = Callable[[dict[str, Any]], dict[str, Any]]
ConditionOf = Callable[[dict[str, Any], str], dict[str, Any]]


def spec_with(**run_policy: Any) -> dict[str, Any]:
    return {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"], "preflight": "skip"},
        "output": {"destination": "s3://outputs/run"},
        "runPolicy": run_policy,
    }


def test_bad_data_exit_code_fails_at_once_without_retries(ftjs: Any, status: Status, condition: ConditionOf) -> None:
    annotations = {
        "kubetune.test/run-for": "1s",
        "kubetune.test/exit-code": "65",
        "kubetune.test/message": "row 3: no answer",
    }
    ftjs.create("bad-data", spec=spec_with(backoffLimit=5), annotations=annotations)
    failed = ftjs.wait_phase("bad-data", "Failed")
    failure = status(failed)["failure"]
    assert failure["reason"] == "BadData" and failure["exitCode"] == 65 and failure["container"] == "trainer"
    assert failure["pod"].startswith("bad-data-train-0-")
    assert condition(failed, "Failed")["reason"] == "BadData"
    (job,) = ftjs.children("jobs", "bad-data")
    assert job["status"].get("failed", 0) == 1, "a FailJob exit code must not be retried"
    assert "BadData" in ftjs.event_reasons("bad-data")


def test_retryable_failure_is_retried_then_fails_with_backoff_limit_exceeded(ftjs: Any, status: Status) -> None:
    annotations = {"kubetune.test/run-for": "1s", "kubetune.test/exit-code": "1"}
    ftjs.create("flaky", spec=spec_with(backoffLimit=1), annotations=annotations)
    failed = ftjs.wait_phase("flaky", "Failed", timeout=90)
    failure = status(failed)["failure"]
    assert failure["reason"] == "BackoffLimitExceeded" and failure["exitCode"] == 1
    (job,) = ftjs.children("jobs", "flaky")
    assert job["status"]["failed"] == 2, "backoffLimit 1 allows one retry"
    assert "BackoffLimitExceeded" in ftjs.event_reasons("flaky")


def test_oom_killed_trainer_is_named(ftjs: Any, status: Status) -> None:
    annotations = {"kubetune.test/run-for": "1s", "kubetune.test/reason": "OOMKilled"}
    ftjs.create("hungry", spec=spec_with(backoffLimit=0), annotations=annotations)
    failure = status(ftjs.wait_phase("hungry", "Failed"))["failure"]
    assert failure["reason"] == "OOMKilled" and failure["exitCode"] == 137
    assert "OOMKilled" in ftjs.event_reasons("hungry")


def test_active_deadline_exceeded_fails_the_job(ftjs: Any, status: Status) -> None:
    ftjs.create("slow", spec=spec_with(activeDeadlineSeconds=3), annotations={"kubetune.test/run-for": "10m"})
    failure = status(ftjs.wait_phase("slow", "Failed", timeout=90))["failure"]
    assert failure["reason"] == "DeadlineExceeded"
    assert "DeadlineExceeded" in ftjs.event_reasons("slow")


def test_pods_pending_longer_than_the_timeout_fail_as_unschedulable_with_the_schedulers_message(
    ftjs: Any, status: Status
) -> None:
    spec = spec_with() | {"resources": {"gpusPerNode": 8, "gpuProduct": "NVIDIA-L4"}}  # L4 nodes have 1 GPU
    ftjs.create("too-big", spec=spec)
    failed = ftjs.wait_phase("too-big", "Failed", timeout=90)
    failure = status(failed)["failure"]
    assert failure["reason"] == "Unschedulable" and failure["pod"].startswith("too-big-train-0-")
    assert "nvidia.com/gpu" in failure["message"] or "node" in failure["message"]
    (job,) = ftjs.children("jobs", "too-big")
    assert job["spec"]["suspend"] is True, "the operator stops pods that will never be scheduled"
    assert "Unschedulable" in ftjs.event_reasons("too-big")
