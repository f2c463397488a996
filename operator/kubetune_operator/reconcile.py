"""One reconcile of one FineTuneJob: read what exists, create what is missing, write the status.

Every trigger (create, resume, spec change, a child Job's or pod's change, the periodic resync) runs the
same function, so the result depends only on the cluster's state, never on which event came first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubetune.api.progress import ProgressEvent
from kubetune.api.resource import FineTuneJob
from kubetune.api.status import Phase
from kubetune.api.validation import spec_errors
from kubetune_operator import k8s
from kubetune_operator.builders import Children, build_children
from kubetune_operator.builders.names import (
    COMPLETION_INDEX_ANNOTATION,
    JOB_SPEC_HASH_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    TRAINER_CONTAINER,
    name_problems,
)
from kubetune_operator.progress import events_from_log
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import (
    TERMINAL_PHASES,
    UNSCHEDULABLE,
    EventSpec,
    Observation,
    compute_status,
    now_utc,
    parse_status,
    status_patch,
    transition_events,
)

Logger = logging.Logger | logging.LoggerAdapter[Any]

# A status write loses a race (409) when kopf or another reconcile changed the object meanwhile; re-reading
# and recomputing is always correct, and more than a few lost races in a row means something else is wrong.
MAX_ATTEMPTS = 4


@dataclass(frozen=True, kw_only=True)
class Result:
    uid: str
    phase: Phase | None
    events: list[EventSpec] = field(default_factory=list)
    deleted: bool = False


class _Conflict(Exception):
    pass


def reconcile(
    kube: k8s.Kube, *, namespace: str, name: str, settings: OperatorSettings, logger: Logger
) -> Result | None:
    """Reconcile until the status write wins; ``None`` when the FineTuneJob no longer exists."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return _reconcile_once(kube, namespace=namespace, name=name, settings=settings, logger=logger)
        except _Conflict:
            logger.debug("status write conflict on attempt %d; re-reading", attempt)
    raise k8s.ApiError(status=409, reason="Conflict", message=f"status of {namespace}/{name} kept changing")


def _reconcile_once(
    kube: k8s.Kube, *, namespace: str, name: str, settings: OperatorSettings, logger: Logger
) -> Result | None:
    obj = k8s.read_finetunejob(kube, namespace=namespace, name=name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return None
    meta = obj["metadata"]
    now = now_utc()
    previous = parse_status(obj.get("status"))
    if previous.phase in TERMINAL_PHASES:
        return _after_finish(kube, obj=obj, settings=settings, now=now, logger=logger)
    problems = name_problems(name=name) + spec_errors(obj.get("spec") or {})
    events: list[EventSpec] = []
    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = []
    trainer_events: list[ProgressEvent] = []
    suspend = False
    nodes = 1
    if not problems:
        # The stored status is parsed separately (parse_status): an unreadable one must not block the spec.
        ftj = FineTuneJob.from_object({**obj, "status": {}})
        suspend, nodes = ftj.spec.run_policy.suspend, ftj.spec.resources.nodes
        try:
            children = build_children(ftj=ftj, settings=settings)
            job, created = _ensure_children(kube, children=children)
        except k8s.ChildConflictError as err:
            problems = [f"metadata.name: {err}"]
        else:
            if not created and _outdated_while_stopped(job=job, desired=children.job):
                # Resources changed while suspended: the Job's pod template cannot change, so the Job is
                # replaced; its deletion event triggers the reconcile that creates the new one. The status
                # is left as it is meanwhile, so no spurious phase change is reported.
                logger.info("spec changed while suspended: replacing Job %s", job["metadata"]["name"])
                k8s.delete_job(kube, namespace=namespace, name=job["metadata"]["name"], uid=job["metadata"]["uid"])
                return Result(uid=meta["uid"], phase=previous.phase)
            if created:  # posted at once: a lost status-write race below retries without creating again
                event = EventSpec(type="Normal", reason="JobCreated", message=f"created Job {job['metadata']['name']}")
                _post_events(kube, obj=obj, events=[event], now=now, logger=logger)
            job = _sync_suspend(kube, job=job, suspend=suspend, logger=logger)
            pods = k8s.list_trainer_pods(kube, namespace=namespace, ftj_name=name, job_uid=job["metadata"]["uid"])
            trainer_events = _trainer_events(kube, pods=pods, settings=settings, logger=logger)
    desired = compute_status(
        Observation(
            generation=int(meta.get("generation") or 0),
            spec_problems=problems,
            job=job,
            pods=pods,
            previous=previous,
            now=now,
            nodes=nodes,
            suspend_requested=suspend,
            pending_timeout=timedelta(seconds=settings.pending_timeout_seconds),
            trainer_events=trainer_events,
        )
    )
    if job is not None and desired.failure is not None and desired.failure.reason == UNSCHEDULABLE:
        # Stop the pods that will never run; the suspended Job stays for inspection.
        _sync_suspend(kube, job=job, suspend=True, logger=logger)
    patch = status_patch(previous=previous, desired=desired)
    if patch is not None:
        try:
            k8s.patch_finetunejob_status(
                kube, namespace=namespace, name=name, status=patch, resource_version=meta["resourceVersion"]
            )
        except k8s.ApiError as err:
            if err.status == 409:
                raise _Conflict from err
            raise
        events.extend(transition_events(previous=previous, desired=desired))
    _post_events(kube, obj=obj, events=events, now=now, logger=logger)
    return Result(uid=meta["uid"], phase=desired.phase, events=events)


def _ensure_children(kube: k8s.Kube, *, children: Children) -> tuple[dict[str, Any], bool]:
    k8s.ensure_child(kube, manifest=children.config_map)
    k8s.ensure_child(kube, manifest=children.service)
    return k8s.ensure_child(kube, manifest=children.job)


def _outdated_while_stopped(*, job: dict[str, Any], desired: dict[str, Any]) -> bool:
    """The Job was built from an older spec and can be replaced without stopping a running trainer."""
    built_from = (job["metadata"].get("annotations") or {}).get(JOB_SPEC_HASH_ANNOTATION)
    wanted = desired["metadata"]["annotations"][JOB_SPEC_HASH_ANNOTATION]
    stopped = bool(job["spec"].get("suspend")) and not (job.get("status") or {}).get("active")
    return built_from is not None and built_from != wanted and stopped


# A log tail is a few hundred short JSON lines; the cap guards against a trainer printing huge lines.
LOG_TAIL_MAX_BYTES = 512 * 1024


def _trainer_events(
    kube: k8s.Kube, *, pods: list[dict[str, Any]], settings: OperatorSettings, logger: Logger
) -> list[ProgressEvent]:
    """Progress events from the newest started pod of completion index 0 (the rank that reports)."""
    if not settings.progress_log_lines:
        return []
    rank0 = [
        p
        for p in pods
        if (p["metadata"].get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION) == "0"
        and (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")
    ]
    if not rank0:
        return []
    pod = max(rank0, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""))
    try:
        text = k8s.read_log_tail(
            kube,
            namespace=pod["metadata"]["namespace"],
            pod=pod["metadata"]["name"],
            container=TRAINER_CONTAINER,
            lines=settings.progress_log_lines,
            max_bytes=LOG_TAIL_MAX_BYTES,
        )
    except k8s.ApiError as err:  # no kubelet to ask (yet), or the node is gone: progress just stays put
        logger.debug("no log from %s: %s", pod["metadata"]["name"], err)
        return []
    return events_from_log(text)


def _sync_suspend(kube: k8s.Kube, *, job: dict[str, Any], suspend: bool, logger: Logger) -> dict[str, Any]:
    """Make the Job's suspend follow spec.runPolicy.suspend.

    A Job with a Kueue queue label is resumed by Kueue on admission, never by the operator: unsuspending
    it here would start pods the queue has not admitted.
    """
    current = bool(job["spec"].get("suspend"))
    if current == suspend:
        return job
    if not suspend and KUEUE_QUEUE_LABEL in (job["metadata"].get("labels") or {}):
        return job
    meta = job["metadata"]
    logger.info("setting suspend=%s on Job %s", suspend, meta["name"])
    return k8s.set_job_suspend(kube, namespace=meta["namespace"], name=meta["name"], suspend=suspend)


def _after_finish(
    kube: k8s.Kube, *, obj: dict[str, Any], settings: OperatorSettings, now: datetime, logger: Logger
) -> Result:
    """A finished FineTuneJob only waits for its TTL; its status is final."""
    meta = obj["metadata"]
    status = parse_status(obj.get("status"))
    ttl = ((obj.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished")
    finished = status.completion_time
    if isinstance(ttl, int) and finished is not None and now >= finished + timedelta(seconds=ttl):
        logger.info("deleting: finished at %s, ttlSecondsAfterFinished %d expired", finished.isoformat(), ttl)
        k8s.delete_finetunejob(kube, namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])
        return Result(uid=meta["uid"], phase=status.phase, deleted=True)
    return Result(uid=meta["uid"], phase=status.phase)


def _post_events(
    kube: k8s.Kube, *, obj: dict[str, Any], events: list[EventSpec], now: datetime, logger: Logger
) -> None:
    for event in events:
        try:
            k8s.post_event(kube, ftj=obj, event=event, now=now)
        except k8s.ApiError as err:  # an Event is best effort; the status already says it
            logger.warning("could not post event %s: %s", event.reason, err)
