"""Prometheus metrics: reconciles, status writes, API requests, and FineTuneJobs by phase."""

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
        self.status_writes = Counter(
            "kubetune_operator_status_writes",
            "Status writes to FineTuneJobs (a reconcile writes only when the status changed).",
            registry=self.registry,
        )
        self.api_requests = Counter(
            "kubetune_operator_api_requests",
            "Requests the reconciles made to the API server (kopf's watches not included), by verb, "
            "resource and HTTP status (0: no answer).",
            ["verb", "resource", "code"],
            registry=self.registry,
        )
        self.finetunejobs = Gauge(
            "kubetune_finetunejobs", "FineTuneJobs seen by this operator, by phase.", ["phase"], registry=self.registry
        )
        self._phases: dict[str, Phase | None] = {}
        self._lock = threading.Lock()
        for phase in PHASES:
            self.finetunejobs.labels(phase=phase).set(0)

    def api_response(self, verb: str, resource: str, code: int) -> None:
        """A ``k8s.Kube`` response hook."""
        self.api_requests.labels(verb=verb, resource=resource, code=str(code)).inc()

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
