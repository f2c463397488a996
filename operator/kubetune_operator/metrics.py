"""Prometheus metrics: the operator's work, FineTuneJobs by phase, GPU-seconds, and each running job's curves.

Per-job series carry the labels ``namespace`` and ``name`` only and are removed when the job finishes or
is deleted, so their number is bounded by the jobs that exist and have not finished.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubetune.api.progress import EvalEvent, ProgressEvent, StepEvent
from kubetune.api.status import Phase

PHASES: tuple[Phase, ...] = ("Pending", "Validating", "Running", "Succeeded", "Failed", "Suspended")
FINISHED: tuple[Phase, ...] = ("Succeeded", "Failed")
# Reconciles take milliseconds from the caches; a slow API server makes them take seconds.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Fine-tunes take minutes to days.
JOB_DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200)


class OperatorMetrics:
    """The operator's metrics in their own registry (tests create as many operators as they like)."""

    def __init__(self, *, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry or CollectorRegistry()
        self._clock = clock
        r = self.registry
        self.reconciles = Counter(
            "kubetune_operator_reconciles",
            "FineTuneJob reconciles, by what triggered them and how they ended (success or error).",
            ["trigger", "result"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "kubetune_operator_reconcile_duration_seconds",
            "Seconds one reconcile took (observe, plan, act).",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.status_writes = Counter(
            "kubetune_operator_status_writes",
            "Status writes to FineTuneJobs (a reconcile writes only when the status changed).",
            registry=r,
        )
        self.api_requests = Counter(
            "kubetune_operator_api_requests",
            "Requests the reconciles made to the API server (kopf's watches not included), by verb, "
            "resource and HTTP status (0: no answer).",
            ["verb", "resource", "code"],
            registry=r,
        )
        self.finetunejobs = Gauge("kubetune_finetunejobs", "FineTuneJobs seen, by phase.", ["phase"], registry=r)
        self.job_duration = Histogram(
            "kubetune_finetunejob_duration_seconds",
            "Seconds from a FineTuneJob's first running trainer to its completion, by final phase.",
            ["phase"],
            buckets=JOB_DURATION_BUCKETS,
            registry=r,
        )
        self.finished = Counter(
            "kubetune_finetunejobs_finished",
            "FineTuneJobs that finished, by namespace and final phase.",
            ["namespace", "phase"],
            registry=r,
        )
        self.gpu_seconds = Counter(
            "kubetune_gpu_seconds",
            "GPUs times seconds the trainer pods of FineTuneJobs ran, by namespace (for billing).",
            ["namespace"],
            registry=r,
        )
        self.reports = Counter(
            "kubetune_progress_reports",
            "Progress reports from trainers, by result (accepted, rejected) and reason.",
            ["result", "reason"],
            registry=r,
        )
        job = ["namespace", "name"]
        self.train_loss = Gauge("kubetune_finetunejob_train_loss", "Training loss of the last step.", job, registry=r)
        self.eval_loss = Gauge("kubetune_finetunejob_eval_loss", "Loss on the validation data.", job, registry=r)
        self.step = Gauge("kubetune_finetunejob_step", "Optimizer steps done.", job, registry=r)
        self.total_steps = Gauge("kubetune_finetunejob_total_steps", "Optimizer steps planned.", job, registry=r)
        self.tokens_per_second = Gauge(
            "kubetune_finetunejob_tokens_per_second", "Trained tokens per second (last step).", job, registry=r
        )
        self.learning_rate = Gauge(
            "kubetune_finetunejob_learning_rate", "Learning rate of the last step.", job, registry=r
        )
        # DPO only (method.objective dpo): the reward metrics of the last step and of the last evaluation.
        self.reward_accuracy = Gauge(
            "kubetune_finetunejob_reward_accuracy",
            "DPO: fraction of the last step's pairs whose preferred answer got the higher reward.",
            job,
            registry=r,
        )
        self.reward_margin = Gauge(
            "kubetune_finetunejob_reward_margin",
            "DPO: mean reward of the preferred answers minus the others' over the last step's pairs.",
            job,
            registry=r,
        )
        self.eval_reward_accuracy = Gauge(
            "kubetune_finetunejob_eval_reward_accuracy",
            "DPO: reward accuracy on the held-out pairs at the last evaluation.",
            job,
            registry=r,
        )
        self.eval_reward_margin = Gauge(
            "kubetune_finetunejob_eval_reward_margin",
            "DPO: reward margin on the held-out pairs at the last evaluation.",
            job,
            registry=r,
        )
        self.last_report = Gauge(
            "kubetune_finetunejob_last_report_timestamp_seconds",
            "Unix time of the last accepted progress report.",
            job,
            registry=r,
        )
        self.phase = Gauge(
            "kubetune_finetunejob_phase",
            "1 for the current phase of each FineTuneJob that has not finished.",
            [*job, "phase"],
            registry=r,
        )
        self.phase_since = Gauge(
            "kubetune_finetunejob_phase_since_timestamp_seconds",
            "Unix time the current phase of each unfinished FineTuneJob began.",
            job,
            registry=r,
        )
        self._per_job = (
            self.train_loss,
            self.eval_loss,
            self.step,
            self.total_steps,
            self.tokens_per_second,
            self.learning_rate,
            self.reward_accuracy,
            self.reward_margin,
            self.eval_reward_accuracy,
            self.eval_reward_margin,
            self.last_report,
            self.phase_since,
        )
        self._phases: dict[str, Phase | None] = {}
        self._job_phase: dict[tuple[str, str], Phase] = {}
        self._lock = threading.Lock()
        for phase in PHASES:
            self.finetunejobs.labels(phase=phase).set(0)

    def api_response(self, verb: str, resource: str, code: int) -> None:
        """A ``k8s.Kube`` response hook."""
        self.api_requests.labels(verb=verb, resource=resource, code=str(code)).inc()

    def report(self, result: str, reason: str) -> None:
        self.reports.labels(result=result, reason=reason).inc()

    def observe_phase(self, *, uid: str, namespace: str, name: str, phase: Phase | None) -> None:
        """The phase a reconcile left the job in: the count by phase and the job's own phase series."""
        with self._lock:
            self._phases[uid] = phase
            self._publish()
            key = (namespace, name)
            if phase is None or phase in FINISHED:
                self._remove_job(key)
            elif self._job_phase.get(key) != phase:
                before = self._job_phase.get(key)
                if before is not None:
                    self._remove(self.phase, (namespace, name, before))
                self._job_phase[key] = phase
                self.phase.labels(namespace=namespace, name=name, phase=phase).set(1)
                self.phase_since.labels(namespace=namespace, name=name).set(self._clock())

    def observe_progress(self, *, namespace: str, name: str, events: Sequence[ProgressEvent]) -> None:
        """A job's latest reported events (oldest first) onto its per-job series."""
        labels = {"namespace": namespace, "name": name}
        with self._lock:
            for event in events:
                if isinstance(event, StepEvent):
                    self.train_loss.labels(**labels).set(event.loss)
                    self.step.labels(**labels).set(event.step)
                    self.total_steps.labels(**labels).set(event.total_steps)
                    self.tokens_per_second.labels(**labels).set(event.tokens_per_second)
                    self.learning_rate.labels(**labels).set(event.learning_rate)
                    if event.preference is not None:
                        self.reward_accuracy.labels(**labels).set(event.preference.reward_accuracy)
                        self.reward_margin.labels(**labels).set(event.preference.reward_margin)
                elif isinstance(event, EvalEvent):
                    self.eval_loss.labels(**labels).set(event.eval_loss)
                    if event.preference is not None:
                        self.eval_reward_accuracy.labels(**labels).set(event.preference.reward_accuracy)
                        self.eval_reward_margin.labels(**labels).set(event.preference.reward_margin)
            self.last_report.labels(**labels).set(self._clock())

    def finished_job(self, *, namespace: str, phase: Phase, seconds: float | None) -> None:
        """A job reached Succeeded or Failed (counted once, by the reconcile that wrote that phase)."""
        self.finished.labels(namespace=namespace, phase=phase).inc()
        if seconds is not None:
            self.job_duration.labels(phase=phase).observe(seconds)

    def add_gpu_seconds(self, *, namespace: str, seconds: float) -> None:
        if seconds > 0:
            self.gpu_seconds.labels(namespace=namespace).inc(seconds)

    def forget(self, *, uid: str, namespace: str, name: str) -> None:
        """The job is gone: its phase leaves the counts and its series are removed."""
        with self._lock:
            self._phases.pop(uid, None)
            self._publish()
            self._remove_job((namespace, name))

    def _remove_job(self, key: tuple[str, str]) -> None:
        for gauge in self._per_job:
            self._remove(gauge, key)
        before = self._job_phase.pop(key, None)
        if before is not None:
            self._remove(self.phase, (*key, before))

    @staticmethod
    def _remove(gauge: Gauge, labels: tuple[str, ...]) -> None:
        with contextlib.suppress(KeyError):  # never set for this job
            gauge.remove(*labels)

    def _publish(self) -> None:
        for phase in PHASES:
            self.finetunejobs.labels(phase=phase).set(sum(1 for p in self._phases.values() if p == phase))
