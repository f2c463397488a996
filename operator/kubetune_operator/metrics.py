"""Prometheus metrics: reconcile counts and errors, and FineTuneJobs by phase."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge

from kubetune.api.status import Phase

PHASES: tuple[Phase, ...] = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


class OperatorMetrics:
    """The operator's metrics in their own registry (tests create as many operators as they like)."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "kubetune_operator_reconciles",
            "FineTuneJob reconciles, by what triggered them.",
            ["trigger"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "kubetune_operator_reconcile_errors",
            "FineTuneJob reconciles that raised, by trigger.",
            ["trigger"],
            registry=self.registry,
        )
        self.finetunejobs = Gauge(
            "kubetune_finetunejobs", "FineTuneJobs seen by this operator, by phase.", ["phase"], registry=self.registry
        )
        self._phases: dict[str, Phase | None] = {}
        self._lock = threading.Lock()
        for phase in PHASES:
            self.finetunejobs.labels(phase=phase).set(0)

    def observe_phase(self, *, uid: str, phase: Phase | None) -> None:
        with self._lock:
            self._phases[uid] = phase
            self._publish()

    def forget(self, *, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)
            self._publish()

    def _publish(self) -> None:
        for phase in PHASES:
            self.finetunejobs.labels(phase=phase).set(sum(1 for p in self._phases.values() if p == phase))
