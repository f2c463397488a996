"""Thin kopf handlers: watch caches, the triggers, and one reconcile per FineTuneJob at a time.

kopf keeps an in-memory index (a watch cache) of the FineTuneJobs and of the labelled Jobs, ConfigMaps,
Services and pods; a reconcile reads them instead of the API server, and kopf starts no handler before the
indices hold the initial listing, so a restarted operator never mistakes an unlisted child for a missing
one. Every trigger (any event of a FineTuneJob, a child or a pod, a scheduled re-check) runs the same
reconcile. Only watch-event handlers are used: kopf then writes nothing to the FineTuneJob (no progress
or diff-base annotations, which held a copy of the spec and broke specs near the 256 KiB annotation
limit; no finalizer), and the safety re-check is the scheduler's, not a kopf timer per object.
Handlers are registered on an explicit registry by :func:`register`, with the settings and
clients passed in, not read from module globals at import time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import kopf

from kubetune.api.profile import PROFILE_LABEL, PROFILE_PLURAL
from kubetune.api.resource import GROUP, PLURAL, VERSION
from kubetune_operator import k8s
from kubetune_operator.builders.names import FINETUNEJOB_LABEL, child_names
from kubetune_operator.cache import Obj, Written, slim
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.reconcile import reconcile
from kubetune_operator.report_server import ReportServer
from kubetune_operator.reports import Ingested, JobState, ReportService, ReportStore, TokenReviewer
from kubetune_operator.requeue import Backoff, Requeue
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import PROFILE_NOT_FOUND, TERMINAL_PHASES, parse_status
from kubetune_operator.tls import ServingIdentity

# kopf's bookkeeping lives in annotations under our own prefix: the CRD's status schema prunes unknown
# fields, so kopf's default status.kopf storage would be silently dropped by the API server.
KOPF_PREFIX = "kubetune.io"
FINALIZER = "kubetune.io/operator"
# The kinds the operator caches besides FineTuneJobs, each watched only where it carries our label.
CHILD_RESOURCES = (("batch", "v1", "jobs"), ("", "v1", "configmaps"), ("", "v1", "services"), ("", "v1", "pods"))

log = logging.getLogger(__name__)


class ObjectLogger(logging.LoggerAdapter[logging.Logger]):
    """Log lines about one FineTuneJob, prefixed ``[namespace/name]`` as kopf's own object logger does."""

    def __init__(self, logger: logging.Logger, key: tuple[str, str]) -> None:
        super().__init__(logger, {})
        self.prefix = f"[{key[0]}/{key[1]}] "

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.prefix}{msg}", kwargs


def configure_kopf(*, kopf_settings: kopf.OperatorSettings, settings: OperatorSettings) -> None:
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    # No handler needs a finalizer (children go by garbage collection), so kopf adds none and removes
    # this one, which operators before the event-driven rewrite kept for their resync timer.
    kopf_settings.persistence.finalizer = FINALIZER
    # One replica needs no peering objects (nor RBAC for them); several coordinate through a named one.
    kopf_settings.peering.standalone = settings.peering_name is None
    if settings.peering_name is not None:
        kopf_settings.peering.name = settings.peering_name
    kopf_settings.execution.max_workers = settings.max_workers
    # Our handlers post their own Events with specific reasons; kopf's log lines stay in the log.
    kopf_settings.posting.level = logging.WARNING
    # Our handlers retry failed reconciles themselves (requeue.Backoff); this covers kopf's own steps.
    kopf_settings.queueing.error_delays = (1, 1, 2, 5, 10, 20, 30, 60)
    # Server-side filtering: the watches of children and pods carry only the objects the operator owns.
    for group, _, plural in CHILD_RESOURCES:
        kopf_settings.watching.label_selectors[(group, plural) if group else plural] = FINETUNEJOB_LABEL


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


class IndexReader:
    """Reads the kopf indices registered below (a ``cache.Reader``).

    kopf hands its indices to handlers only, as keyword arguments; the first handler call binds them here
    for the scheduled reconciles, which run outside kopf. Each index maps (namespace, FineTuneJob name) to
    a store of slimmed objects; kopf mutates it on its event loop, and a ``list`` of it is one C-level copy.
    """

    NAMES = (
        "finetunejob_cache",
        "job_cache",
        "configmap_cache",
        "service_cache",
        "pod_cache",
        "profile_cache",
        "namespace_cache",
    )

    def __init__(self) -> None:
        self._indices: dict[str, Mapping[Any, Any]] = {}
        self.written = Written()

    def bind(self, kwargs: Mapping[str, Any]) -> None:
        if not self._indices:
            self._indices = {name: kwargs[name] for name in self.NAMES}

    @property
    def bound(self) -> bool:
        return bool(self._indices)

    def _get(self, index: str, *, namespace: str, name: str) -> list[Obj]:
        store = self._indices[index].get((namespace, name))
        return list(store) if store is not None else []

    def finetunejob(self, *, namespace: str, name: str) -> Obj | None:
        found = self._get("finetunejob_cache", namespace=namespace, name=name)
        return self.written.newer(found[0] if found else None, kind="FineTuneJob", namespace=namespace, name=name)

    def children(self, *, namespace: str, ftj_name: str) -> Sequence[Obj]:
        cached = {
            (obj["kind"], obj["metadata"]["name"]): obj
            for index in ("job_cache", "configmap_cache", "service_cache")
            for obj in self._get(index, namespace=namespace, name=ftj_name)
        }
        names = child_names(name=ftj_name)
        out = []
        wanted = (
            ("ConfigMap", names.config_map),
            ("Service", names.service),
            ("Job", names.job),
            ("Job", names.preflight_job),
        )
        for kind, name in wanted:
            child = self.written.newer(cached.pop((kind, name), None), kind=kind, namespace=namespace, name=name)
            if child is not None:
                out.append(child)
        return out + list(cached.values())

    def pods(self, *, namespace: str, ftj_name: str) -> Sequence[Obj]:
        return self._get("pod_cache", namespace=namespace, name=ftj_name)

    def profiles(self) -> Sequence[Obj]:
        index = self._indices["profile_cache"]
        return [obj for name in list(index) for obj in list(index[name])]

    def namespace_profile(self, namespace: str) -> str | None:
        store = self._indices["namespace_cache"].get(namespace)
        values = [value for value in list(store or []) if value]
        return str(values[0]) if values else None

    def waiting_for_profiles(
        self, *, namespace: str | None = None, recorded: str | None = None
    ) -> list[tuple[str, str]]:
        """FineTuneJobs waiting for their profile (in ``namespace``, or everywhere): the ones a profile or a
        namespace's label may decide; with ``recorded``, also the unfinished ones that recorded that profile
        (its deletion or re-creation is reported in their status). Other jobs are left alone: a wake-up here
        would cut short the backoff of a job whose reconciles fail."""
        index = self._indices["finetunejob_cache"]
        out = []
        for key in list(index):
            if namespace is not None and key[0] != namespace:
                continue
            for obj in list(index[key]):
                status = obj.get("status") or {}
                if status.get("phase") in TERMINAL_PHASES:
                    continue
                waiting = any(
                    c.get("type") == "Validated" and c.get("reason") == PROFILE_NOT_FOUND
                    for c in status.get("conditions") or []
                )
                name = (status.get("profile") or {}).get("name")
                if waiting or (recorded is not None and name == recorded):
                    out.append(key)
        return out


def register(
    *,
    registry: kopf.OperatorRegistry,
    settings: OperatorSettings,
    kube: k8s.Kube,
    metrics: OperatorMetrics,
    identity: ServingIdentity | None = None,
) -> Requeue:
    """Register every handler of the operator on ``registry``; returns the scheduler of timed re-checks.

    ``identity``: the report endpoint's TLS identity; None serves no reports."""
    locks = KeyedLocks()
    backoff = Backoff()
    reader = IndexReader()
    reports = ReportStore(
        interval=settings.report_write_interval_seconds, writes_per_second=settings.report_writes_per_second
    )
    report_ca = identity.ca_pem if identity is not None and settings.report_url_base is not None else None
    operator_settings = settings
    requeue: Requeue

    def run(key: tuple[str, str], trigger: str) -> None:
        """Reconcile (on the work queue's pool); a failure is counted, logged and retried with backoff by
        the queue (never by kopf, whose retries would record the error in the FineTuneJob's annotations)."""
        namespace, name = key
        logger = ObjectLogger(log, key)
        started = time.monotonic()
        try:
            with locks.hold(key):
                result = reconcile(
                    kube,
                    reader=reader,
                    namespace=namespace,
                    name=name,
                    settings=settings,
                    logger=logger,
                    reports=reports,
                    report_ca=report_ca,
                )
        except Exception as err:
            metrics.reconciles.labels(trigger=trigger, result="error").inc()
            delay = backoff.failed(key)
            logger.warning("reconcile failed (%s: %s); retrying in %ss", type(err).__name__, err, delay)
            requeue.schedule(key, after=delay)
            return
        finally:
            metrics.reconcile_duration.observe(time.monotonic() - started)
        metrics.reconciles.labels(trigger=trigger, result="success").inc()
        backoff.succeeded(key)
        if result is not None:
            for obj in result.applied.written:
                reader.written.remember(slim(obj, kind=obj["kind"]))
            for kind, deleted_name in result.applied.deleted:
                reader.written.drop(kind=kind, namespace=namespace, name=deleted_name)
        if result is None or result.deleted:
            requeue.cancel(key)
            reports.forget(key)
            if result is not None:
                metrics.forget(uid=result.uid, namespace=namespace, name=name)
            return
        metrics.observe_phase(uid=result.uid, namespace=namespace, name=name, phase=result.phase)
        if result.plan.status_patch is not None:
            metrics.status_writes.inc()
            reports.wrote(key)
            if reports.unwritten(key):
                # This write (a phase change, say) came from older events and restarted the job's write
                # interval: the newer ones are written when it is over, whether or not another report comes.
                requeue.schedule(key, after=reports.next_write_in(key), trigger="report")
            metrics.add_gpu_seconds(namespace=namespace, seconds=result.plan.gpu_seconds_added)
            if result.plan.finished is not None:
                phase, seconds = result.plan.finished
                metrics.finished_job(namespace=namespace, phase=phase, seconds=seconds)
        if result.phase in TERMINAL_PHASES:
            reports.forget(key)
        # A plan's own re-check, or else the safety re-check (cheap: it reads the caches).
        after = result.plan.requeue_after
        requeue.schedule(key, after=settings.resync_interval_seconds if after is None else after)

    requeue = Requeue(callback=run, workers=settings.max_workers)

    def job_state(key: tuple[str, str]) -> JobState | None:
        if not reader.bound:
            return None
        ftj = reader.finetunejob(namespace=key[0], name=key[1])
        if ftj is None:
            return JobState(exists=False, finished=False, pods=frozenset())
        pods = reader.pods(namespace=key[0], ftj_name=key[1])
        return JobState(
            exists=True,
            finished=parse_status(ftj.get("status")).phase in TERMINAL_PHASES,
            pods=frozenset((p["metadata"]["name"], p["metadata"]["uid"]) for p in pods),
        )

    def accepted(key: tuple[str, str], ingested: Ingested) -> None:
        metrics.observe_progress(namespace=key[0], name=key[1], events=reports.latest(key))
        if ingested.accepted:
            # A milestone is written at once; other progress at most every report_write_interval_seconds, and
            # less often when so many jobs report that they would exceed report_writes_per_second together.
            requeue.schedule(key, after=reports.next_write_in(key), trigger="report")

    server: ReportServer | None = None
    if identity is not None and settings.reports_port:
        service = ReportService(
            reviewer=TokenReviewer(kube),
            store=reports,
            job_state=job_state,
            on_accepted=accepted,
            on_result=metrics.report,
        )
        server = ReportServer(service=service, tls=identity.server_context(), port=settings.reports_port)

    def handle(*, namespace: str | None, name: str, trigger: str, kwargs: Mapping[str, Any]) -> None:
        """A watch event: queue its FineTuneJob's reconcile and return, so kopf's worker for the object ends
        at once instead of waiting for a reconcile thread with the event in hand."""
        assert namespace is not None, "FineTuneJobs and their children are namespaced"
        reader.bind(kwargs)
        requeue.schedule((namespace, name), after=0.0, trigger=trigger)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(kopf_settings=settings, settings=operator_settings)
        if server is not None:
            server.start()

    @kopf.on.cleanup(registry=registry)
    def cleanup(**_: Any) -> None:
        if server is not None:
            server.stop()
        requeue.stop()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # kopf's own readers of the pod's ServiceAccount or $KUBECONFIG: the same sources __main__ gives
        # the Kubernetes client (kopf's autodetection does not recognise this client's version).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.index(GROUP, VERSION, PLURAL, id="finetunejob_cache", registry=registry)
    async def finetunejob_cache(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): slim(body, kind="FineTuneJob")}

    @kopf.index("batch", "v1", "jobs", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="job_cache", registry=registry)
    async def job_cache(namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, labels[FINETUNEJOB_LABEL]): slim(body, kind="Job")}

    @kopf.index("v1", "configmaps", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="configmap_cache", registry=registry)
    async def configmap_cache(
        namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        return {(namespace, labels[FINETUNEJOB_LABEL]): slim(body, kind="ConfigMap")}

    @kopf.index("v1", "services", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="service_cache", registry=registry)
    async def service_cache(
        namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        return {(namespace, labels[FINETUNEJOB_LABEL]): slim(body, kind="Service")}

    @kopf.index("v1", "pods", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="pod_cache", registry=registry)
    async def pod_cache(namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, labels[FINETUNEJOB_LABEL]): slim(body, kind="Pod")}

    @kopf.index(GROUP, VERSION, PROFILE_PLURAL, id="profile_cache", registry=registry)
    async def profile_cache(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {name: slim(body, kind="FineTuneProfile")}

    @kopf.index("v1", "namespaces", id="namespace_cache", registry=registry)
    async def namespace_cache(name: str, labels: Mapping[str, str], **_: Any) -> dict[Any, Any]:
        # Only the profile label: the namespaces' other metadata is never read.
        return {name: labels.get(PROFILE_LABEL)}

    @kopf.on.event(GROUP, VERSION, PROFILE_PLURAL, registry=registry)
    async def profile_changed(name: str, type: str | None, **kwargs: Any) -> None:
        # A profile created, changed or deleted decides the jobs still waiting for theirs. Jobs that recorded
        # it keep their record, and only hear of its deletion or re-creation (an edit changes nothing).
        reader.bind(kwargs)
        recorded = name if type in ("ADDED", "DELETED") else None
        for key in reader.waiting_for_profiles(recorded=recorded):
            requeue.schedule(key, after=0.0, trigger="profile")

    @kopf.on.event("v1", "namespaces", registry=registry)
    async def namespace_changed(name: str, **kwargs: Any) -> None:
        reader.bind(kwargs)
        for key in reader.waiting_for_profiles(namespace=name):
            requeue.schedule(key, after=0.0, trigger="profile")

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def finetunejob_changed(namespace: str | None, name: str, type: str | None, uid: str, **kwargs: Any) -> None:
        # Created (ADDED), changed (MODIFIED: spec, metadata, or our own status write, which re-plans to
        # nothing), listed at start-up (None), or deleted: its children go by garbage collection.
        if type == "DELETED":
            key = (namespace or "", name)
            locks.drop(key)
            requeue.cancel(key)
            reports.forget(key)
            reader.written.forget(namespace=key[0], ftj_name=name)
            metrics.forget(uid=uid, namespace=key[0], name=name)
            return
        trigger = {"ADDED": "create", "MODIFIED": "update", None: "resume"}.get(type, "update")
        handle(namespace=namespace, name=name, trigger=trigger, kwargs=kwargs)

    @kopf.on.event("batch", "v1", "jobs", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, registry=registry)
    async def job_changed(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
        handle(namespace=namespace, name=labels[FINETUNEJOB_LABEL], trigger="job", kwargs=kwargs)

    @kopf.on.event("v1", "configmaps", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, registry=registry)
    @kopf.on.event("v1", "services", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, registry=registry)
    async def child_changed(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
        # Rare (created by the operator, deleted by hand): a deleted child is re-created.
        handle(namespace=namespace, name=labels[FINETUNEJOB_LABEL], trigger="child", kwargs=kwargs)

    @kopf.on.event("v1", "pods", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, registry=registry)
    async def pod_changed(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
        handle(namespace=namespace, name=labels[FINETUNEJOB_LABEL], trigger="pod", kwargs=kwargs)

    return requeue
