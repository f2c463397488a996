"""The trainer's own ``/metrics`` (rank 0): Prometheus gauges and counters fed from its progress events.

The values describe this process: after a restart the counters start again (Prometheus treats that as a
counter reset), except ``kubetune_trainer_trained_tokens_total``, which starts at the trained tokens of
the checkpoint the run resumed from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from kubetune.api.progress import (
    CheckpointSavedEvent,
    EvalEvent,
    FinishedEvent,
    ProgressEvent,
    StartedEvent,
    StepEvent,
)
from kubetune.api.reports import TRAINER_METRICS_PORT_ENV


class MetricsSettingsError(ValueError):
    """``KUBETUNE_METRICS_PORT`` is not a port number."""


def metrics_port_from_env(environ: Mapping[str, str]) -> int | None:
    """The port to serve ``/metrics`` on; None when ``KUBETUNE_METRICS_PORT`` is unset, empty or 0."""
    value = environ.get(TRAINER_METRICS_PORT_ENV, "").strip()
    if not value:
        return None
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise MetricsSettingsError(f"{TRAINER_METRICS_PORT_ENV} must be a port number (0-65535), got {value!r}")
    return port or None


class MetricsReporter:
    """A :class:`kubetune_trainer.reporting.Reporter` that keeps the metrics in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._server: WSGIServer | None = None
        self._trained_tokens_seen = 0

        def gauge(name: str, documentation: str) -> Gauge:
            return Gauge(f"kubetune_trainer_{name}", documentation, registry=self.registry)

        def counter(name: str, documentation: str) -> Counter:
            # prometheus-client adds the _total suffix to a counter's samples.
            return Counter(f"kubetune_trainer_{name}", documentation, registry=self.registry)

        self._step = gauge("step", "Optimizer steps done.")
        self._total_steps = gauge("total_steps", "Optimizer steps planned for the whole run.")
        self._epoch = gauge("epoch", "Fractional epoch reached.")
        self._loss = gauge("loss", "Mean loss per label token of the latest optimizer step.")
        self._eval_loss = gauge("eval_loss", "Mean loss per label token of the latest evaluation.")
        self._learning_rate = gauge("learning_rate", "Learning rate of the latest optimizer step.")
        self._tokens_per_second = gauge(
            "tokens_per_second", "Non-padding tokens per second over the latest optimizer step, all ranks."
        )
        # DPO only (NaN for SFT): the reward metrics of the latest step and of the latest evaluation.
        self._reward_accuracy = gauge("reward_accuracy", "DPO: fraction of the latest step's pairs ranked right.")
        self._reward_margin = gauge("reward_margin", "DPO: mean chosen minus rejected reward, latest step.")
        self._eval_reward_accuracy = gauge("eval_reward_accuracy", "DPO: reward accuracy of the latest evaluation.")
        self._eval_reward_margin = gauge("eval_reward_margin", "DPO: reward margin of the latest evaluation.")
        self._trained_tokens = counter("trained_tokens", "Non-padding tokens trained on, all ranks.")
        self._checkpoints = counter("checkpoints", "Checkpoints written by this process.")
        self._evaluations = counter("evaluations", "Evaluations on the held-out data finished by this process.")
        # NaN until the first event that carries the value: 0 would read as a real loss or rate.
        for unset in (
            self._loss,
            self._eval_loss,
            self._learning_rate,
            self._tokens_per_second,
            self._reward_accuracy,
            self._reward_margin,
            self._eval_reward_accuracy,
            self._eval_reward_margin,
        ):
            unset.set(math.nan)

    def emit(self, event: ProgressEvent) -> None:
        if isinstance(event, StartedEvent):
            self._step.set(event.step)
            self._total_steps.set(event.total_steps)
        elif isinstance(event, StepEvent):
            self._step.set(event.step)
            self._total_steps.set(event.total_steps)
            self._epoch.set(event.epoch)
            self._loss.set(event.loss)
            self._learning_rate.set(event.learning_rate)
            self._tokens_per_second.set(event.tokens_per_second)
            self._count_trained_tokens(event.trained_tokens)
            if event.preference is not None:
                self._reward_accuracy.set(event.preference.reward_accuracy)
                self._reward_margin.set(event.preference.reward_margin)
        elif isinstance(event, EvalEvent):
            self._eval_loss.set(event.eval_loss)
            if event.preference is not None:
                self._eval_reward_accuracy.set(event.preference.reward_accuracy)
                self._eval_reward_margin.set(event.preference.reward_margin)
            self._evaluations.inc()
        elif isinstance(event, CheckpointSavedEvent):
            self._checkpoints.inc()
        elif isinstance(event, FinishedEvent):
            self._count_trained_tokens(event.trained_tokens)

    def _count_trained_tokens(self, cumulative: int) -> None:
        # Events carry the run's cumulative count; the counter moves by the difference, so it never goes down.
        if cumulative > self._trained_tokens_seen:
            self._trained_tokens.inc(cumulative - self._trained_tokens_seen)
            self._trained_tokens_seen = cumulative

    def serve(self, port: int, *, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns the port (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop serving: the run is over and the process exits next."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
