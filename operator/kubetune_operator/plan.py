"""Pure planning: what is observed of one FineTuneJob in; the actions, the status and the next check out.

The plan is the whole decision of a reconcile. ``reconcile.observe`` gathers its input and
``reconcile.act`` applies its output; neither decides anything, so every behaviour of the operator is
tested here, without a cluster, as a table of observed states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubetune.api.preflight import preflight_spec_hash
from kubetune.api.progress import ProgressEvent
from kubetune.api.resource import KIND, FineTuneJob
from kubetune.api.status import AppliedProfile, FineTuneJobStatus, Phase
from kubetune.api.validation import spec_errors
from kubetune_operator.builders import build_children
from kubetune_operator.builders.event import EventSpec
from kubetune_operator.builders.names import (
    JOB_SPEC_HASH_ANNOTATION,
    KUEUE_QUEUE_LABEL,
    name_problems,
)
from kubetune_operator.preflight import Checked, CheckView, from_status, read_check
from kubetune_operator.preflight import job_spec_hash as check_job_hash
from kubetune_operator.profiles import OUTSIDE_PROFILE, ProfileStage, profile_stage
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import (
    INVALID_SPEC,
    TERMINAL_PHASES,
    UNSCHEDULABLE,
    Observation,
    account_usage,
    compute_status,
    parse_status,
    parse_time,
    status_patch,
    transition_events,
)

Obj = Mapping[str, Any]
# A child still owned by a deleted FineTuneJob of the same name: the garbage collector removes it within
# seconds, and its deletion is a watch event; the re-check is a fallback.
WAIT_FOR_GARBAGE_COLLECTION_SECONDS = 5.0
# A Job without pods after this long is asked why. The Job controller needs seconds when idle but minutes
# under a burst (1,000 Jobs at once: two minutes), and each ask is a request.
POD_CREATION_GRACE_SECONDS = 30.0
# How often a Job without pods is asked again (it retries with backoff, up to every few minutes).
POD_CREATION_RECHECK_SECONDS = 30.0


@dataclass(frozen=True, kw_only=True)
class Observed:
    """One FineTuneJob and what it owns, as read at ``now``."""

    ftj: Obj
    config_map: Obj | None
    service: Obj | None
    job: Obj | None
    # The trainer pods of ``job`` (not of an earlier Job of the same name).
    pods: Sequence[Obj]
    now: datetime
    # The latest events the trainer reported, oldest first (none yet, or the job has finished).
    trainer_events: Sequence[ProgressEvent] = ()
    # The CA of the operator's report endpoint, for the trainer's ConfigMap (None: reports are off).
    report_ca: str | None = None
    # Set when creating a child failed for good (its name taken by an object this FineTuneJob does not own,
    # or the API server refused it): the problem, naming the field.
    child_problem: str | None = None
    # The Job controller's FailedCreate messages for the Job (read only when ``pods_overdue`` says so).
    pod_creation_failures: Sequence[str] = ()
    # The data-check Job and its pods (phase Validating).
    check_job: Obj | None = None
    check_pods: Sequence[Obj] = ()
    # Every FineTuneProfile, and the profile the namespace's kubetune.io/profile label names.
    profiles: Sequence[Obj] = ()
    namespace_profile: str | None = None


@dataclass(frozen=True, kw_only=True)
class EnsureChild:
    """Create the child, or repair the existing one's owner reference (and a ConfigMap's data)."""

    manifest: Obj
    # Posted only when this action created the object, so a retried reconcile never posts it twice.
    created_event: EventSpec | None = None


@dataclass(frozen=True, kw_only=True)
class DeleteJob:
    """Delete the Job with this uid (not a newer one of the same name)."""

    name: str
    uid: str
    why: str


@dataclass(frozen=True, kw_only=True)
class SetJobSuspend:
    name: str
    suspend: bool
    why: str


@dataclass(frozen=True, kw_only=True)
class DeleteFineTuneJob:
    """Delete the FineTuneJob with this uid; its children follow by garbage collection."""

    uid: str
    why: str


Action = EnsureChild | DeleteJob | SetJobSuspend | DeleteFineTuneJob


@dataclass(frozen=True, kw_only=True)
class Plan:
    phase: Phase | None
    actions: tuple[Action, ...] = ()
    # A JSON merge patch of status; None when the stored status is already the desired one.
    status_patch: dict[str, Any] | None = None
    # Posted after the status write wins (a lost race re-plans, and must not post them twice).
    events: tuple[EventSpec, ...] = field(default=())
    # Seconds until time alone changes the plan (a pending timeout, a TTL, pods overdue).
    requeue_after: float | None = None
    # GPU-seconds the status write adds (for the namespace's billing counter).
    gpu_seconds_added: float = 0.0
    # Set when this status write finishes the job: the final phase and seconds since the first start.
    finished: tuple[Phase, float | None] | None = None


def plan(observed: Observed, *, settings: OperatorSettings) -> Plan:
    """Everything one reconcile should do for ``observed``."""
    previous = parse_status(observed.ftj.get("status"))
    if previous.phase in TERMINAL_PHASES:
        return _plan_finished(observed, previous=previous)
    meta = observed.ftj["metadata"]
    problems = name_problems(name=meta["name"]) + spec_errors(observed.ftj.get("spec") or {})
    if observed.child_problem:
        problems.append(observed.child_problem)
    if problems:
        desired = _desired(observed, previous=previous, settings=settings, problems=problems)
        return _with_status(observed, previous=previous, desired=desired)
    # The stored status is parsed apart (parse_status): an unreadable one must not block the spec.
    ftj = FineTuneJob.from_object({**observed.ftj, "status": {}})
    # A job that ran before profiles existed (children and a phase, no record) keeps running as written.
    legacy = previous.profile is None and previous.phase is not None and (observed.job or observed.check_job)
    profile = (
        ProfileStage(spec=ftj.spec)
        if legacy
        else profile_stage(
            ftj, recorded=previous.profile, profiles=observed.profiles, namespace_profile=observed.namespace_profile
        )
    )
    if profile.waiting is not None or profile.outside or profile.invalid:
        desired = _desired(
            observed,
            previous=previous,
            settings=settings,
            problems=profile.outside or profile.invalid,
            problem_reason=OUTSIDE_PROFILE if profile.outside else INVALID_SPEC,
            waiting=profile.waiting,
            profile=profile.record,
        )
        return _with_status(observed, previous=previous, desired=desired)
    ftj = ftj.model_copy(update={"spec": profile.spec})
    stage = _check_stage(observed, ftj=ftj, previous=previous)
    checked = stage.checked if stage.checked is not None and stage.checked.passed else None
    children = build_children(
        ftj=ftj,
        settings=settings,
        report_ca=observed.report_ca,
        checked=(checked.hyperparameters, checked.dataset) if checked and checked.hyperparameters else None,
    )
    job = observed.job
    existing = [
        child for child in (observed.config_map, observed.service, job, observed.check_job) if child is not None
    ]
    foreign = [child for child in existing if _foreign(child, ftj_name=meta["name"])]
    if foreign:
        kind, name = foreign[0].get("kind", "object"), foreign[0]["metadata"]["name"]
        problem = f"metadata.name: {kind} {name} already exists and is not owned by this FineTuneJob"
        desired = _desired(observed, previous=previous, settings=settings, problems=[problem])
        return _with_status(observed, previous=previous, desired=desired)
    if any(_controller_uid(child) not in (None, meta["uid"]) for child in existing):
        # Still controlled by a deleted FineTuneJob of this name: wait for the garbage collector.
        return Plan(phase=previous.phase, requeue_after=WAIT_FOR_GARBAGE_COLLECTION_SECONDS)
    actions: list[Action] = [
        EnsureChild(manifest=manifest)
        for current, manifest in ((observed.config_map, children.config_map), (observed.service, children.service))
        if not _is_current(current, manifest, uid=meta["uid"])
    ]
    if job is None and stage.enabled and checked is None:
        return _plan_check(
            observed,
            previous=previous,
            settings=settings,
            ftj=ftj,
            stage=stage,
            wanted=children.preflight_job,
            actions=actions,
            profile=profile.record,
        )
    if job is None and stage.stale is not None:
        # The check passed for this spec, and an older one's Job is still there: it goes (its result is in
        # the status), so a later re-check cannot mistake it for its own.
        why = "the data check passed; this Job checked an older spec"
        actions.append(DeleteJob(name=stage.stale["metadata"]["name"], uid=stage.stale["metadata"]["uid"], why=why))
    if job is None:
        job_name = children.job["metadata"]["name"]
        created = EventSpec(type="Normal", reason="JobCreated", message=f"created Job {job_name}")
        actions.append(EnsureChild(manifest=children.job, created_event=created))
        job = children.job  # the status is computed from the Job as it is once created
    elif _outdated_while_stopped(job=job, desired=children.job):
        # Resources changed while suspended: a Job's pod template cannot change, so the Job is replaced.
        # Its deletion is a watch event, and that reconcile creates the new one; the status stays as it is
        # meanwhile, so no spurious phase change is reported.
        why = "the spec changed while the Job was stopped"
        actions.append(DeleteJob(name=job["metadata"]["name"], uid=job["metadata"]["uid"], why=why))
        return Plan(phase=previous.phase, actions=tuple(actions))
    elif _controller_uid(job) != meta["uid"]:
        actions.append(EnsureChild(manifest=children.job))  # an orphan carrying our label: adopt it
    suspend = ftj.spec.run_policy.suspend
    if _should_set_suspend(job, suspend=suspend):
        actions.append(SetJobSuspend(name=job["metadata"]["name"], suspend=suspend, why="spec.runPolicy.suspend"))
        job = _with_suspend(job, suspend=suspend)
    desired = _desired(
        observed,
        previous=previous,
        settings=settings,
        job=job,
        suspend=suspend,
        nodes=ftj.spec.resources.nodes,
        stage=stage,
        profile=profile.record,
    )
    if desired.failure is not None and desired.failure.reason == UNSCHEDULABLE and not _suspended(job):
        # Stop the pods that will never run; the suspended Job stays for inspection.
        why = "the pods stayed unschedulable past the pending timeout"
        actions.append(SetJobSuspend(name=job["metadata"]["name"], suspend=True, why=why))
    requeue = _next_check(observed, desired=desired, settings=settings)
    return _with_status(
        observed, previous=previous, desired=desired, actions=actions, requeue_after=requeue, gpus=_gpus(ftj)
    )


@dataclass(frozen=True, kw_only=True)
class _CheckStage:
    """Where the data check stands for the current spec."""

    enabled: bool
    spec_hash: str = ""
    # The check's Job when it was built for the current spec; ``stale`` when built for an older one.
    job: Obj | None = None
    stale: Obj | None = None
    pods: Sequence[Obj] = ()
    # What the Job says (None when there is no current Job, or the training Job exists).
    view: CheckView | None = None
    # What the check found for this spec: from the status, else from the finished Job.
    checked: Checked | None = None


def _check_stage(observed: Observed, *, ftj: FineTuneJob, previous: FineTuneJobStatus) -> _CheckStage:
    mode = ftj.spec.dataset.preflight
    if mode == "skip":
        return _CheckStage(enabled=False)
    spec_hash = preflight_spec_hash(ftj.spec)
    check_job = observed.check_job
    current = check_job if check_job is not None and check_job_hash(check_job) == spec_hash else None
    stale = check_job if check_job is not None and current is None else None
    recorded = from_status(
        dataset=previous.dataset,
        hyperparameters=previous.hyperparameters,
        estimate=previous.estimate,
        spec_hash=spec_hash,
    )
    view = None
    if current is not None and (observed.job is None or recorded is None):
        view = read_check(current, pods=observed.check_pods, spec_hash=spec_hash, mode=mode, now=observed.now)
    if recorded is not None:
        checked: Checked | None = recorded
    elif view is not None:
        checked = view.checked
    else:
        checked = None
    return _CheckStage(
        enabled=True,
        spec_hash=spec_hash,
        job=current,
        stale=stale,
        pods=observed.check_pods if current is not None else (),
        view=view if recorded is None else None,
        checked=checked,
    )


def _plan_check(
    observed: Observed,
    *,
    previous: FineTuneJobStatus,
    settings: OperatorSettings,
    ftj: FineTuneJob,
    stage: _CheckStage,
    wanted: Obj | None,
    actions: list[Action],
    profile: AppliedProfile | None,
) -> Plan:
    """No training Job yet and the data check has not passed: run it (phase Validating)."""
    assert wanted is not None, "a data check is planned only when spec.dataset.preflight is not skip"
    if stage.stale is not None:
        # Built for an older spec (resources changed while suspended): its answer is not for this one.
        why = "the spec changed since this data check was started"
        stale = stage.stale["metadata"]
        return Plan(phase=previous.phase, actions=(*actions, DeleteJob(name=stale["name"], uid=stale["uid"], why=why)))
    check_job = stage.job
    view = stage.view
    if check_job is None:
        name = wanted["metadata"]["name"]
        created = EventSpec(
            type="Normal", reason="DataCheckStarted", message=f"created Job {name} to check the data on a CPU first"
        )
        actions.append(EnsureChild(manifest=wanted, created_event=created))
        check_job = wanted
        view = CheckView(state="Running")
    elif _controller_uid(check_job) != observed.ftj["metadata"]["uid"]:
        actions.append(EnsureChild(manifest=wanted))
    assert view is not None
    suspend = ftj.spec.run_policy.suspend
    if view.state == "Running" and _should_set_suspend(check_job, suspend=suspend):
        actions.append(SetJobSuspend(name=check_job["metadata"]["name"], suspend=suspend, why="spec.runPolicy.suspend"))
        check_job = _with_suspend(check_job, suspend=suspend)
    pods = stage.pods if stage.job is not None else ()
    desired = compute_status(
        Observation(
            generation=int(observed.ftj["metadata"].get("generation") or 0),
            spec_problems=(),
            job=None,
            pods=(),
            previous=previous,
            now=observed.now,
            nodes=1,
            suspend_requested=suspend,
            pending_timeout=timedelta(seconds=settings.pending_timeout_seconds),
            pod_creation_failures=observed.pod_creation_failures,
            data_check=True,
            check_job=check_job,
            check_pods=pods,
            check=view,
            checked=view.checked,
            profile=profile,
        )
    )
    if desired.failure is not None and desired.failure.reason == UNSCHEDULABLE and not _suspended(check_job):
        why = "the data check's pod stayed unschedulable past the pending timeout"
        actions.append(SetJobSuspend(name=check_job["metadata"]["name"], suspend=True, why=why))
    requeue = _pending_recheck(pods, now=observed.now, settings=settings) if desired.phase == "Validating" else None
    waiting = _waiting_for_pods_since(check_job, pods=pods) if stage.job is not None else None
    if waiting is not None:
        requeue = _min_wait(requeue, _pod_creation_wait(waiting, now=observed.now))
    return _with_status(observed, previous=previous, desired=desired, actions=actions, requeue_after=requeue)


def _desired(
    observed: Observed,
    *,
    previous: FineTuneJobStatus,
    settings: OperatorSettings,
    problems: Sequence[str] = (),
    job: Obj | None = None,
    suspend: bool = False,
    nodes: int = 1,
    stage: _CheckStage | None = None,
    problem_reason: str = INVALID_SPEC,
    waiting: str | None = None,
    profile: AppliedProfile | None = None,
) -> FineTuneJobStatus:
    return compute_status(
        Observation(
            generation=int(observed.ftj["metadata"].get("generation") or 0),
            spec_problems=problems,
            job=job,
            pods=observed.pods if job is not None else (),
            previous=previous,
            now=observed.now,
            nodes=nodes,
            suspend_requested=suspend,
            pending_timeout=timedelta(seconds=settings.pending_timeout_seconds),
            trainer_events=observed.trainer_events if job is not None else (),
            pod_creation_failures=observed.pod_creation_failures if job is not None else (),
            data_check=stage is not None and stage.enabled,
            checked=stage.checked if stage is not None else None,
            problem_reason=problem_reason,
            waiting_for_profile=waiting,
            profile=profile,
        )
    )


def _gpus(ftj: FineTuneJob) -> int:
    return ftj.spec.resources.nodes * ftj.spec.resources.gpus_per_node


def _with_status(
    observed: Observed,
    *,
    previous: FineTuneJobStatus,
    desired: FineTuneJobStatus,
    actions: Sequence[Action] = (),
    requeue_after: float | None = None,
    gpus: int = 0,
) -> Plan:
    patch = status_patch(previous=previous, desired=desired)
    added = 0.0
    if patch is not None:
        desired, added = account_usage(previous=previous, desired=desired, now=observed.now, gpus=gpus)
        patch = status_patch(previous=previous, desired=desired)
    events = tuple(transition_events(previous=previous, desired=desired)) if patch is not None else ()
    finished = None
    if desired.phase in TERMINAL_PHASES and previous.phase not in TERMINAL_PHASES:
        end, start = desired.completion_time, desired.start_time
        seconds = (end - start).total_seconds() if end is not None and start is not None else None
        finished = (desired.phase, seconds)
    return Plan(
        phase=desired.phase,
        actions=tuple(actions),
        status_patch=patch,
        events=events,
        requeue_after=requeue_after,
        gpu_seconds_added=added,
        finished=finished,
    )


def _plan_finished(observed: Observed, *, previous: FineTuneJobStatus) -> Plan:
    """A finished FineTuneJob only waits for its TTL; its status is final."""
    ttl = ((observed.ftj.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished")
    finished = previous.completion_time
    if not isinstance(ttl, int) or finished is None:
        return Plan(phase=previous.phase)
    left = (finished + timedelta(seconds=ttl) - observed.now).total_seconds()
    if left > 0:
        return Plan(phase=previous.phase, requeue_after=left)
    why = f"finished at {finished.isoformat()}, ttlSecondsAfterFinished {ttl} expired"
    return Plan(phase=previous.phase, actions=(DeleteFineTuneJob(uid=observed.ftj["metadata"]["uid"], why=why),))


def _next_check(observed: Observed, *, desired: FineTuneJobStatus, settings: OperatorSettings) -> float | None:
    """Seconds until time alone could change the plan: a pending timeout expiring, pods overdue."""
    wait = _pending_recheck(observed.pods, now=observed.now, settings=settings) if desired.phase == "Pending" else None
    waiting = _waiting_for_pods_since(observed.job, pods=observed.pods) if observed.job is not None else None
    if waiting is not None:
        wait = _min_wait(wait, _pod_creation_wait(waiting, now=observed.now))
    return wait


def _pending_recheck(pods: Sequence[Obj], *, now: datetime, settings: OperatorSettings) -> float | None:
    """Seconds until the first unschedulable pod's pending timeout expires."""
    timeout = timedelta(seconds=settings.pending_timeout_seconds)
    waits = [max((since + timeout - now).total_seconds(), 0.0) + 1.0 for since in _unschedulable_since(pods)]
    return min(waits) if waits else None


def _pod_creation_wait(waiting: datetime, *, now: datetime) -> float:
    # Refused pod creations change no Job or pod, so no watch event says when they stop.
    age = (now - waiting).total_seconds()
    return POD_CREATION_GRACE_SECONDS - age + 0.5 if age < POD_CREATION_GRACE_SECONDS else POD_CREATION_RECHECK_SECONDS


def _min_wait(a: float | None, b: float | None) -> float | None:
    known = [w for w in (a, b) if w is not None]
    return min(known) if known else None


def pods_overdue(job: Obj, *, pods: Sequence[Obj], now: datetime) -> bool:
    """A running Job that has had time to create its pods and has none: worth asking the Job's events why."""
    since = _waiting_for_pods_since(job, pods=pods)
    return since is not None and (now - since).total_seconds() >= POD_CREATION_GRACE_SECONDS


def _waiting_for_pods_since(job: Obj, *, pods: Sequence[Obj]) -> datetime | None:
    """When a Job that should have pods and has none was created; None when it has pods or should not."""
    if _suspended(job) or pods or (job.get("status") or {}).get("active"):
        return None
    if any(c.get("status") == "True" for c in (job.get("status") or {}).get("conditions") or []):
        return None  # finished, failed or otherwise settled
    return parse_time((job.get("metadata") or {}).get("creationTimestamp"))


def _unschedulable_since(pods: Sequence[Obj]) -> list[datetime]:
    out = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Pending":
            continue
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                since = parse_time(cond.get("lastTransitionTime")) or parse_time(
                    (pod.get("metadata") or {}).get("creationTimestamp")
                )
                if since is not None:
                    out.append(since)
    return out


def _controller_uid(obj: Obj) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _foreign(child: Obj, *, ftj_name: str) -> bool:
    """Controlled by something other than a FineTuneJob of this name: never adopted, never overwritten."""
    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return bool(ref.get("kind") != KIND or ref.get("name") != ftj_name)
    return False


def _is_current(existing: Obj | None, manifest: Obj, *, uid: str) -> bool:
    if existing is None or _controller_uid(existing) != uid:
        return False
    return "data" not in manifest or (existing.get("data") or {}) == manifest["data"]


def _suspended(job: Obj) -> bool:
    return bool((job.get("spec") or {}).get("suspend"))


def _with_suspend(job: Obj, *, suspend: bool) -> dict[str, Any]:
    return {**job, "spec": {**(job.get("spec") or {}), "suspend": suspend}}


def _should_set_suspend(job: Obj, *, suspend: bool) -> bool:
    """The Job's suspend should follow spec.runPolicy.suspend.

    A Job with a Kueue queue label is resumed by Kueue on admission, never by the operator: unsuspending
    it here would start pods the queue has not admitted.
    """
    if _suspended(job) == suspend:
        return False
    return suspend or KUEUE_QUEUE_LABEL not in ((job.get("metadata") or {}).get("labels") or {})


def _outdated_while_stopped(*, job: Obj, desired: Obj) -> bool:
    """The Job was built from an older spec and can be replaced without stopping a running trainer."""
    built_from = ((job.get("metadata") or {}).get("annotations") or {}).get(JOB_SPEC_HASH_ANNOTATION)
    wanted = desired["metadata"]["annotations"][JOB_SPEC_HASH_ANNOTATION]
    stopped = _suspended(job) and not (job.get("status") or {}).get("active")
    return built_from is not None and built_from != wanted and stopped
