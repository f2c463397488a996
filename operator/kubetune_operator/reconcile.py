"""One reconcile of one FineTuneJob: observe, plan, act.

**observe** reads the FineTuneJob, its children and its pods (from the watch caches: no request), and the
latest events its trainer reported (from the in-memory report store); **plan** (``kubetune_operator.plan``,
pure) decides; **act** applies the plan's actions and writes the status once, only when it changed, guarded
by the resourceVersion it was computed from. Every trigger runs the same function, so the result depends
only on the cluster's state and the reports.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune.api.status import Phase
from kubetune_operator import k8s
from kubetune_operator.builders.event import EventSpec
from kubetune_operator.builders.names import child_names
from kubetune_operator.cache import ApiReader, Obj, Reader
from kubetune_operator.errors import (
    ApiError,
    BadRequest,
    ChildProblem,
    ChildRejectedError,
    Conflict,
    Invalid,
    NamespaceTerminating,
    NotFound,
)
from kubetune_operator.plan import (
    DeleteFineTuneJob,
    DeleteJob,
    EnsureChild,
    Observed,
    Plan,
    SetJobSuspend,
    plan,
    pods_overdue,
)
from kubetune_operator.reports import ReportStore
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import TERMINAL_PHASES, now_utc, parse_status

Logger = logging.Logger | logging.LoggerAdapter[Any]

# A status write loses a race (409) when someone changed the FineTuneJob since it was read; re-reading and
# re-planning is always correct, and more than a few lost races in a row means something else is wrong.
MAX_ATTEMPTS = 4
# The Job controller's label on each pod: the uid of the Job that owns it.
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"


@dataclass(frozen=True, kw_only=True)
class Applied:
    """What ``act`` changed: the objects as the API server returned them, and the (kind, name)s deleted."""

    written: list[Obj] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Result:
    uid: str
    plan: Plan
    applied: Applied

    @property
    def deleted(self) -> bool:
        return any(isinstance(action, DeleteFineTuneJob) for action in self.plan.actions)

    @property
    def phase(self) -> Phase | None:
        return self.plan.phase


def reconcile(
    kube: k8s.Kube,
    *,
    reader: Reader,
    namespace: str,
    name: str,
    settings: OperatorSettings,
    logger: Logger,
    clock: Callable[[], datetime] = now_utc,
    reports: ReportStore | None = None,
    report_ca: str | None = None,
) -> Result | None:
    """Observe, plan, act until the status write wins; ``None`` when the FineTuneJob no longer exists or its
    namespace is being deleted."""
    child_problem: str | None = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        # After a lost race the cache may not hold the winner's write yet: read the API server instead.
        source = reader if attempt == 1 else ApiReader(kube)
        observed = observe(
            kube, reader=source, namespace=namespace, name=name, now=clock(), reports=reports, report_ca=report_ca
        )
        if observed is None:
            return None
        if child_problem is not None:
            observed = dataclasses.replace(observed, child_problem=child_problem)
        planned = plan(observed, settings=settings)
        try:
            applied = act(kube, ftj=observed.ftj, planned=planned, now=observed.now, logger=logger)
        except ChildProblem as err:
            child_problem = err.problem
        except NamespaceTerminating as err:
            logger.debug("the namespace is being deleted, the FineTuneJob with it: %s", err)
            return None
        except (Conflict, NotFound) as err:
            # A write race lost, or something deleted meanwhile (often the FineTuneJob itself): observe
            # again from the API server; a FineTuneJob that is gone ends the reconcile.
            logger.debug("the cluster changed under attempt %d (%s); re-reading", attempt, err)
        else:
            return Result(uid=observed.ftj["metadata"]["uid"], plan=planned, applied=applied)
    raise Conflict(status=409, reason="Conflict", message=f"{namespace}/{name} kept changing under the operator")


def observe(
    kube: k8s.Kube,
    *,
    reader: Reader,
    namespace: str,
    name: str,
    now: datetime,
    reports: ReportStore | None = None,
    report_ca: str | None = None,
) -> Observed | None:
    ftj = reader.finetunejob(namespace=namespace, name=name)
    if ftj is None or ftj["metadata"].get("deletionTimestamp"):
        return None
    names = child_names(name=name)
    children = {(c["kind"], c["metadata"]["name"]): c for c in reader.children(namespace=namespace, ftj_name=name)}
    job = children.get(("Job", names.job))
    check_job = children.get(("Job", names.preflight_job))
    all_pods = reader.pods(namespace=namespace, ftj_name=name) if job is not None or check_job is not None else []
    pods, check_pods = _pods_of(job, pods=all_pods), _pods_of(check_job, pods=all_pods)
    finished = parse_status(ftj.get("status")).phase in TERMINAL_PHASES
    failures: list[str] = []
    # The Job whose pods are overdue: the training Job, or before it exists the data check's.
    running_job, running_pods = (job, pods) if job is not None else (check_job, check_pods)
    if running_job is not None and not finished and pods_overdue(running_job, pods=running_pods, now=now):
        failures = k8s.pod_creation_failures(kube, namespace=namespace, job_uid=running_job["metadata"]["uid"])
    return Observed(
        ftj=ftj,
        config_map=children.get(("ConfigMap", names.config_map)),
        service=children.get(("Service", names.service)),
        job=job,
        pods=pods,
        now=now,
        trainer_events=reports.view((namespace, name)) if reports is not None and not finished else (),
        pod_creation_failures=failures,
        report_ca=report_ca,
        check_job=check_job,
        check_pods=check_pods,
        # A finished job's plan reads no profile.
        profiles=reader.profiles() if not finished else (),
        namespace_profile=reader.namespace_profile(namespace) if not finished else None,
    )


def _pods_of(job: Obj | None, *, pods: Sequence[Obj]) -> list[Obj]:
    """The pods of this Job (not of an earlier Job of the same name)."""
    if job is None:
        return []
    uid = job["metadata"]["uid"]
    return [p for p in pods if ((p["metadata"].get("labels") or {}).get(CONTROLLER_UID_LABEL)) == uid]


def act(kube: k8s.Kube, *, ftj: Obj, planned: Plan, now: datetime, logger: Logger) -> Applied:
    """Apply the plan's actions in order, then write the status; raises Conflict when the write lost a race."""
    meta = ftj["metadata"]
    namespace = meta["namespace"]
    applied = Applied()
    for action in planned.actions:
        match action:
            case EnsureChild(manifest=manifest, created_event=event):
                try:
                    child, created = k8s.ensure_child(kube, manifest=manifest)
                except (BadRequest, Invalid) as err:
                    kind, name = manifest["kind"], manifest["metadata"]["name"]
                    raise ChildRejectedError(f"the API server refused {kind} {name}: {err.message}") from err
                applied.written.append(child)
                if created and event is not None:
                    _post_events(kube, ftj=ftj, events=[event], now=now, logger=logger)
            case DeleteJob(name=job, uid=uid, why=why):
                logger.info("deleting Job %s: %s", job, why)
                k8s.delete_job(kube, namespace=namespace, name=job, uid=uid)
                applied.deleted.append(("Job", job))
            case SetJobSuspend(name=job, suspend=suspend, why=why):
                logger.info("setting suspend=%s on Job %s: %s", suspend, job, why)
                applied.written.append(k8s.set_job_suspend(kube, namespace=namespace, name=job, suspend=suspend))
            case DeleteFineTuneJob(uid=uid, why=why):
                logger.info("deleting: %s", why)
                k8s.delete_finetunejob(kube, namespace=namespace, name=meta["name"], uid=uid)
                applied.deleted.append(("FineTuneJob", meta["name"]))
    if planned.status_patch is not None:
        written = k8s.patch_finetunejob_status(
            kube,
            namespace=namespace,
            name=meta["name"],
            status=planned.status_patch,
            previous=ftj.get("status") or None,
            uid=meta["uid"],
        )
        applied.written.append(written)
    _post_events(kube, ftj=ftj, events=planned.events, now=now, logger=logger)
    return applied


def _post_events(
    kube: k8s.Kube, *, ftj: Obj, events: tuple[EventSpec, ...] | list[EventSpec], now: datetime, logger: Logger
) -> None:
    for event in events:
        try:
            k8s.post_event(kube, ftj=ftj, event=event, now=now)
        except ApiError as err:  # an Event is best effort; the status already says it
            logger.warning("could not post event %s: %s", event.reason, err)
