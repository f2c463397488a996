"""Error classes: 429 and 5xx from the API server are retried with backoff; an invalid spec is a permanent,
reported failure that is never retried. The operator talks to the API server through a fault proxy."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from kube_objects import FineTuneJobs, condition_of, minimal_spec
from operator_harness import OperatorProcess, metric_sum

pytestmark = pytest.mark.cluster


@pytest.fixture
def proxied(
    operator: OperatorProcess, operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, FaultProxy]]:
    """An operator whose every request goes through a fault proxy (the session's operator is stopped)."""
    proxy = FaultProxy.for_kubeconfig(operator_kubeconfig).start()
    kubeconfig = proxy.kubeconfig(base=operator_kubeconfig, path=tmp_path / "proxied.kubeconfig")
    operator.stop()
    proxied_operator = OperatorProcess(kubeconfig=kubeconfig, log_path=tmp_path / "proxied-operator.log")
    try:
        proxied_operator.start()
        yield proxied_operator, proxy
    finally:
        proxied_operator.stop()
        proxy.stop()
        operator.start()


def retry_paths(metrics: str) -> float:
    return sum(
        metric_sum(metrics, "kubetune_operator_reconciles_total", trigger=trigger)
        for trigger in ("scheduled", "update")
    )


def test_busy_and_failing_api_answers_are_retried_with_backoff_until_the_status_is_written(
    proxied: tuple[OperatorProcess, FaultProxy], ftjs: FineTuneJobs
) -> None:
    operator, proxy = proxied
    status_path = r"/finetunejobs/flaky/status$"
    outage = 15.0
    proxy.fail("PATCH", status_path, [503, 429, 500, 502], for_seconds=outage)
    # Suspended: no pods, so no pod events trigger extra reconciles; retries are the backoff's alone.
    ftjs.create("flaky", spec=minimal_spec() | {"runPolicy": {"suspend": True}})
    done = ftjs.wait_phase("flaky", "Suspended", timeout=120)
    assert condition_of(done, "Suspended")["status"] == "True"
    attempts = proxy.requests("PATCH", status_path)
    refused = [a for a in attempts if a.status in (429, 500, 502, 503)]
    # The creation and each child's creation trigger a reconcile at once (4 or 5 attempts within a moment);
    # then the backoff waits 1, 2, 5, 10 s between failures: about 4 more in a 15 s outage, not hundreds.
    assert 4 <= len(refused) <= 12, [(round(a.at - attempts[0].at, 2), a.status) for a in attempts]
    later = [a.at for a in refused if a.at - refused[0].at > 0.5]
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(later)), "retries closer than the backoff allows"
    assert attempts[-1].status == 200
    assert metric_sum(operator.metrics(), "kubetune_operator_reconciles_total", result="error") == len(refused)


def test_an_invalid_spec_fails_once_and_is_never_retried(
    proxied: tuple[OperatorProcess, FaultProxy], ftjs: FineTuneJobs
) -> None:
    operator, proxy = proxied
    # Valid for the CRD's schema (affinity is free-form there), refused by the API server as a Job.
    bad_affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": "gpu-only"}}
    ftjs.create("odd-affinity", spec=minimal_spec() | {"resources": {"affinity": bad_affinity}})
    failed = ftjs.wait_phase("odd-affinity", "Failed", timeout=60)
    assert condition_of(failed, "Validated")["reason"] == "InvalidSpec"
    assert "affinity" in condition_of(failed, "Validated")["message"]
    time.sleep(2)  # the Event posted after the status write
    about_it = [s for s in proxy.seen if "odd-affinity" in s.path]
    # A retry would come back by the requeue (scheduled) or by its own status write (update); the other
    # triggers (child, job, pod) also count the previous test's objects going away with their namespace.
    reconciles = retry_paths(operator.metrics())
    time.sleep(20)
    assert [s for s in proxy.seen if "odd-affinity" in s.path] == about_it, "requests about a failed job"
    assert retry_paths(operator.metrics()) == reconciles
    assert metric_sum(operator.metrics(), "kubetune_operator_reconciles_total", result="error") == 0
    assert not [s for s in about_it if s.method == "POST" and "/jobs" in s.path and s.status < 300], "a Job was made"
    assert ftjs.everything("pods") == []
