"""Prometheus metrics: FineTuneJobs by phase follow each object's latest phase."""

from __future__ import annotations

from kubetune_operator.metrics import OperatorMetrics
from prometheus_client import generate_latest


def gauge(metrics: OperatorMetrics, phase: str) -> float | None:
    return metrics.registry.get_sample_value("kubetune_finetunejobs", {"phase": phase})


def test_each_finetunejob_counts_once_in_its_latest_phase() -> None:
    metrics = OperatorMetrics()
    metrics.observe_phase(uid="a", phase="Pending")
    metrics.observe_phase(uid="b", phase="Pending")
    metrics.observe_phase(uid="a", phase="Running")
    assert gauge(metrics, "Pending") == 1 and gauge(metrics, "Running") == 1
    metrics.forget(uid="a")
    assert gauge(metrics, "Running") == 0 and gauge(metrics, "Succeeded") == 0


def test_reconcile_counters_are_exposed_by_trigger() -> None:
    metrics = OperatorMetrics()
    metrics.reconciles.labels(trigger="pod").inc()
    metrics.reconcile_errors.labels(trigger="pod").inc()
    text = generate_latest(metrics.registry).decode()
    assert 'kubetune_operator_reconciles_total{trigger="pod"} 1.0' in text
    assert 'kubetune_operator_reconcile_errors_total{trigger="pod"} 1.0' in text
