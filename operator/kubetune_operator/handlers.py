"""Thin kopf handlers: every trigger runs the same reconcile of the FineTuneJob concerned.

Handlers are registered on an explicit registry by :func:`register`, so the operator's settings (the resync
interval) and clients are passed in, not read from module globals at import time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kopf

from kubetune.api.resource import GROUP, PLURAL, VERSION
from kubetune_operator import k8s
from kubetune_operator.builders.names import FINETUNEJOB_LABEL
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.reconcile import Logger, reconcile
from kubetune_operator.settings import OperatorSettings

# kopf's bookkeeping lives in annotations under our own prefix: the CRD's status schema prunes unknown
# fields, so kopf's default status.kopf storage would be silently dropped by the API server.
KOPF_PREFIX = "kubetune.io"
FINALIZER = "kubetune.io/operator"


def configure_kopf(*, kopf_settings: kopf.OperatorSettings, settings: OperatorSettings) -> None:
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    # kopf's timer keeps a finalizer on each FineTuneJob so it can stop the timer before deletion.
    kopf_settings.persistence.finalizer = FINALIZER
    # One replica needs no peering objects (nor RBAC for them); several coordinate through a named one.
    kopf_settings.peering.standalone = settings.peering_name is None
    if settings.peering_name is not None:
        kopf_settings.peering.name = settings.peering_name
    kopf_settings.execution.max_workers = settings.max_workers
    # Our handlers post their own Events with specific reasons; kopf's log lines stay in the log.
    kopf_settings.posting.level = logging.WARNING
    # Transient API trouble: retry a failed handler with backoff instead of giving up.
    kopf_settings.queueing.error_delays = (1, 1, 2, 5, 10, 20, 30, 60)


class KeyedLocks:
    """One lock per FineTuneJob: reconciles of the same object (pod event, job event, timer) take turns."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    @contextmanager
    def hold(self, key: tuple[str, str]) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def drop(self, key: tuple[str, str]) -> None:
        with self._guard:
            self._locks.pop(key, None)


def register(
    *,
    registry: kopf.OperatorRegistry,
    settings: OperatorSettings,
    kube: k8s.Kube,
    metrics: OperatorMetrics,
) -> None:
    """Register every handler of the operator on ``registry``."""
    locks = KeyedLocks()

    def run(*, namespace: str | None, name: str, trigger: str, logger: Logger) -> None:
        assert namespace is not None, "FineTuneJobs and their children are namespaced"
        metrics.reconciles.labels(trigger=trigger).inc()
        try:
            with locks.hold((namespace, name)):
                result = reconcile(kube, namespace=namespace, name=name, settings=settings, logger=logger)
        except Exception:
            metrics.reconcile_errors.labels(trigger=trigger).inc()
            raise
        if result is not None:
            if result.deleted:
                metrics.forget(uid=result.uid)
            else:
                metrics.observe_phase(uid=result.uid, phase=result.phase)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(kopf_settings=settings, settings=operator_settings)

    operator_settings = settings

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # kopf's own readers of the pod's ServiceAccount or $KUBECONFIG: the same sources __main__ gives
        # the Kubernetes client (kopf's autodetection does not recognise this client's version).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def created(namespace: str | None, name: str, logger: Logger, **_: Any) -> None:
        run(namespace=namespace, name=name, trigger="create", logger=logger)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    def resumed(namespace: str | None, name: str, logger: Logger, **_: Any) -> None:
        run(namespace=namespace, name=name, trigger="resume", logger=logger)

    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
    def spec_changed(namespace: str | None, name: str, logger: Logger, **_: Any) -> None:
        run(namespace=namespace, name=name, trigger="update", logger=logger)

    @kopf.timer(GROUP, VERSION, PLURAL, interval=settings.resync_interval_seconds, registry=registry)
    def resync(namespace: str | None, name: str, logger: Logger, **_: Any) -> None:
        run(namespace=namespace, name=name, trigger="timer", logger=logger)

    @kopf.on.delete(GROUP, VERSION, PLURAL, optional=True, registry=registry)
    def deleted(namespace: str | None, name: str, uid: str, **_: Any) -> None:
        # Children go with their owner (garbage collection); only our bookkeeping is left to drop.
        locks.drop((namespace or "", name))
        metrics.forget(uid=uid)

    @kopf.on.event("batch", "v1", "jobs", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, registry=registry)
    def job_changed(namespace: str | None, labels: Mapping[str, str], logger: Logger, **_: Any) -> None:
        run(namespace=namespace, name=labels[FINETUNEJOB_LABEL], trigger="job", logger=logger)

    @kopf.on.event("v1", "pods", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, registry=registry)
    def pod_changed(namespace: str | None, labels: Mapping[str, str], logger: Logger, **_: Any) -> None:
        run(namespace=namespace, name=labels[FINETUNEJOB_LABEL], trigger="pod", logger=logger)
