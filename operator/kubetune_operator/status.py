"""Pure status computation: observed Job and pods in, the FineTuneJob's desired status out.

Level-based: the status is recomputed from what is observed now (plus the previous status, for the times
and transitions it must keep), so a missed or repeated watch event cannot leave it wrong. Terminal phases
are sticky: once Succeeded or Failed, later observations (a Job deleted by hand) do not change them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kubetune.api.exit_codes import FATAL_EXIT_CODES, reason_for_exit_code
from kubetune.api.progress import ProgressEvent
from kubetune.api.status import (
    DATA_VALIDATED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    VALIDATED,
    AppliedProfile,
    Condition,
    ConditionStatus,
    Estimate,
    Failure,
    FineTuneJobStatus,
    Phase,
    Progress,
)
from kubetune_operator.builders.event import EventSpec
from kubetune_operator.builders.names import TRAINER_CONTAINER
from kubetune_operator.preflight import Checked, CheckView, check_summary
from kubetune_operator.progress import fold_events

TERMINAL_PHASES: tuple[Phase, ...] = ("Succeeded", "Failed")
INVALID_SPEC = "InvalidSpec"
PROFILE_NOT_FOUND = "ProfileNotFound"
UNSCHEDULABLE = "Unschedulable"
# Pending because the Job controller's pod creation is refused; the Job keeps retrying with backoff, so the
# job starts once the quota is raised or other jobs finish.
QUOTA_EXCEEDED = "QuotaExceeded"
POD_CREATION_FAILED = "PodCreationFailed"
# The Job controller's message for a FailJob rule, e.g.
# "Container trainer for pod ns/name-train-0-abcde failed with exit code 65 matching FailJob rule at index 0".
_FAIL_JOB_MESSAGE = re.compile(
    r"Container (?P<container>\S+) for pod \S+/(?P<pod>\S+) failed with exit code (?P<code>\d+)"
)

Obj = Mapping[str, Any]


def now_utc() -> datetime:
    """The current time at the API's precision (RFC 3339 seconds), so recomputed times compare equal."""
    return datetime.now(UTC).replace(microsecond=0)


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value).astimezone(UTC)


def parse_status(raw: object) -> FineTuneJobStatus:
    """The stored status; an unreadable one (written by an older operator) counts as empty."""
    if not isinstance(raw, Mapping):
        return FineTuneJobStatus()
    try:
        return FineTuneJobStatus.model_validate(raw)
    except ValidationError:
        return FineTuneJobStatus()


@dataclass(frozen=True, kw_only=True)
class Observation:
    """Everything the status is computed from."""

    generation: int
    spec_problems: Sequence[str]
    job: Obj | None
    pods: Sequence[Obj]
    previous: FineTuneJobStatus
    now: datetime
    nodes: int
    suspend_requested: bool
    pending_timeout: timedelta
    # The latest events the trainer reported, oldest first.
    trainer_events: Sequence[ProgressEvent] = ()
    # Messages of the Job controller's FailedCreate events for the Job, oldest first: why it has no pods
    # (a ResourceQuota, a LimitRange, an admission webhook, Pod Security admission).
    pod_creation_failures: Sequence[str] = ()
    # The data check (spec.dataset.preflight is not skip). While no training Job exists: its Job, pods and
    # what they say (``check``); then what it found for the current spec (``checked``, from the check or
    # the stored status), which status.dataset, hyperparameters and estimate show.
    data_check: bool = False
    check_job: Obj | None = None
    check_pods: Sequence[Obj] = ()
    check: CheckView | None = None
    checked: Checked | None = None
    # Why spec_problems fail the job (InvalidSpec, or OutsideProfile for a profile's limits).
    problem_reason: str = INVALID_SPEC
    # Set while the job's FineTuneProfile does not exist: it waits, Pending, for the profile.
    waiting_for_profile: str | None = None
    # The profile recorded for the job (status.profile); None keeps the previous record.
    profile: AppliedProfile | None = None


@dataclass(frozen=True, kw_only=True)
class _Outcome:
    phase: Phase
    reason: str
    message: str
    failure: Failure | None = None
    completion_time: datetime | None = None


def _condition(obj: Obj | None, type_: str) -> Obj | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _terminated(pod: Obj) -> Obj | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == TRAINER_CONTAINER:
            terminated = (status.get("state") or {}).get("terminated")
            return dict(terminated) if terminated else None
    return None


def _pod_name(pod: Obj) -> str:
    return str((pod.get("metadata") or {}).get("name", ""))


def _failed_pods(pods: Sequence[Obj]) -> list[tuple[Obj, Obj]]:
    """(pod, terminated state) of failed trainer containers, the most recent last."""
    failed = []
    for pod in pods:
        terminated = _terminated(pod)
        if terminated is not None and terminated.get("exitCode", 0) != 0:
            failed.append((pod, terminated))
    return sorted(failed, key=lambda item: str(item[1].get("finishedAt") or ""))


def _pod_failure(*, reason: str, pod: Obj, terminated: Obj, context: str) -> Failure:
    code = int(terminated.get("exitCode", 0))
    detail = str(terminated.get("message") or "").strip()
    message = f"{context}: container {TRAINER_CONTAINER} of pod {_pod_name(pod)} exited with code {code}"
    if terminated.get("reason"):
        message += f" ({terminated['reason']})"
    if detail:
        message += f": {detail}"
    return Failure(reason=reason, message=message, pod=_pod_name(pod), container=TRAINER_CONTAINER, exit_code=code)


def job_failure(*, job_failed: Obj, pods: Sequence[Obj]) -> Failure:
    """Why the Job failed, naming the pod, container and exit code when the pods (or the Job) say."""
    job_reason = str(job_failed.get("reason") or "JobFailed")
    job_message = str(job_failed.get("message") or "")
    failed = _failed_pods(pods)
    if job_reason == "PodFailurePolicy":
        fatal = [(p, t) for p, t in failed if int(t.get("exitCode", 0)) in FATAL_EXIT_CODES]
        if fatal:
            pod, terminated = fatal[-1]
            code = int(terminated["exitCode"])
            return _pod_failure(reason=reason_for_exit_code(code), pod=pod, terminated=terminated, context="fatal")
        match = _FAIL_JOB_MESSAGE.search(job_message)
        if match:  # the pod is gone already; the Job's condition still names it
            code = int(match["code"])
            return Failure(
                reason=reason_for_exit_code(code),
                message=job_message,
                pod=match["pod"],
                container=match["container"],
                exit_code=code,
            )
        return Failure(reason="PodFailurePolicy", message=job_message)
    if job_reason == "BackoffLimitExceeded" and failed:
        pod, terminated = failed[-1]
        reason = "OOMKilled" if terminated.get("reason") == "OOMKilled" else "BackoffLimitExceeded"
        return _pod_failure(reason=reason, pod=pod, terminated=terminated, context="backoff limit exceeded")
    return Failure(reason=job_reason, message=job_message or f"the Job failed: {job_reason}")


def _unschedulable(*, pods: Sequence[Obj], now: datetime, timeout: timedelta) -> tuple[Failure | None, str]:
    """A failure when a pod has been unschedulable longer than the timeout; else the scheduler's message."""
    latest_message = ""
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Pending":
            continue
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") != "PodScheduled" or cond.get("status") != "False":
                continue
            if cond.get("reason") != UNSCHEDULABLE:
                continue
            since = parse_time(cond.get("lastTransitionTime")) or parse_time(
                (pod.get("metadata") or {}).get("creationTimestamp")
            )
            message = str(cond.get("message") or "")
            latest_message = message
            if since is not None and now - since >= timeout:
                return (
                    Failure(
                        reason=UNSCHEDULABLE,
                        message=f"pod {_pod_name(pod)} unschedulable for over {int(timeout.total_seconds())}s: "
                        f"{message}",
                        pod=_pod_name(pod),
                    ),
                    message,
                )
    return None, latest_message


def _live_and_running(pods: Sequence[Obj]) -> tuple[list[Obj], list[Obj]]:
    """The pods not being deleted, and those of them running."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    return live, [p for p in live if (p.get("status") or {}).get("phase") == "Running"]


def _active_outcome(obs: Observation) -> _Outcome:
    """The phase of a Job that has neither succeeded nor failed."""
    job = obs.job
    assert job is not None
    if (job.get("spec") or {}).get("suspend"):
        if obs.suspend_requested:
            return _Outcome(phase="Suspended", reason="SuspendedByUser", message="spec.runPolicy.suspend is true")
        return _Outcome(phase="Pending", reason="WaitingForAdmission", message="the Job is suspended by its queue")
    failure, scheduler_message = _unschedulable(pods=obs.pods, now=obs.now, timeout=obs.pending_timeout)
    if failure is not None:
        return _Outcome(phase="Failed", reason=failure.reason, message=failure.message, failure=failure)
    live, running = _live_and_running(obs.pods)
    # A pod that exited 0 finished its rank; the Job controller marks the Job Complete moments later.
    # Until then the job is still running, not back to Pending.
    finished = [p for p in live if (p.get("status") or {}).get("phase") == "Succeeded"]
    retries = int((job.get("status") or {}).get("failed") or 0)
    retry_note = f"; {retries} failed pod(s) so far" if retries else ""
    if len(running) + len(finished) >= obs.nodes:
        finished_note = f", {len(finished)} finished" if finished else ""
        return _Outcome(
            phase="Running",
            reason="TrainerRunning",
            message=f"{len(running)}/{obs.nodes} pods running{finished_note}{retry_note}",
        )
    if scheduler_message:
        return _Outcome(phase="Pending", reason=UNSCHEDULABLE, message=scheduler_message)
    if not live and obs.pod_creation_failures:
        message = obs.pod_creation_failures[-1]
        reason = QUOTA_EXCEEDED if "exceeded quota" in message else POD_CREATION_FAILED
        return _Outcome(phase="Pending", reason=reason, message=f"the Job cannot create its pods: {message}")
    return _Outcome(
        phase="Pending", reason="PodsStarting", message=f"{len(running)}/{obs.nodes} pods running{retry_note}"
    )


def _check_outcome(obs: Observation, check: CheckView) -> _Outcome:
    """The phase while the data check runs (no training Job yet)."""
    if check.state == "Failed":
        failure = check.failure or Failure(reason="DataCheckFailed", message="the data check failed")
        return _Outcome(
            phase="Failed", reason=failure.reason, message=failure.message, failure=failure, completion_time=obs.now
        )
    if check.state == "Passed":
        return _Outcome(phase="Pending", reason="JobNotCreated", message="the data check passed; creating the Job")
    job = obs.check_job or {}
    if (job.get("spec") or {}).get("suspend"):
        if obs.suspend_requested:
            return _Outcome(
                phase="Suspended", reason="SuspendedByUser", message="spec.runPolicy.suspend is true (data check)"
            )
        return _Outcome(phase="Pending", reason="WaitingForAdmission", message="the data check waits for its queue")
    stuck, scheduler_message = _unschedulable(pods=obs.check_pods, now=obs.now, timeout=obs.pending_timeout)
    if stuck is not None:
        return _Outcome(phase="Failed", reason=stuck.reason, message=stuck.message, failure=stuck)
    live, running = _live_and_running(obs.check_pods)
    if running:
        message = f"pod {_pod_name(running[0])} is checking the data; no GPU is claimed yet"
        return _Outcome(phase="Validating", reason="DataCheckRunning", message=message)
    if scheduler_message:
        return _Outcome(phase="Validating", reason=UNSCHEDULABLE, message=f"the data check: {scheduler_message}")
    if not live and obs.pod_creation_failures:
        message = obs.pod_creation_failures[-1]
        reason = QUOTA_EXCEEDED if "exceeded quota" in message else POD_CREATION_FAILED
        return _Outcome(phase="Validating", reason=reason, message=f"the data check cannot start: {message}")
    return _Outcome(phase="Validating", reason="DataCheckStarting", message="the data check's pod is starting")


def _outcome(obs: Observation) -> _Outcome:
    if obs.spec_problems:
        message = "; ".join(obs.spec_problems)
        reason = obs.problem_reason
        failure = Failure(reason=reason, message=message)
        return _Outcome(phase="Failed", reason=reason, message=message, failure=failure, completion_time=obs.now)
    if obs.waiting_for_profile is not None:
        return _Outcome(phase="Pending", reason=PROFILE_NOT_FOUND, message=obs.waiting_for_profile)
    if obs.job is None and obs.check is not None:
        return _check_outcome(obs, obs.check)
    if obs.job is None:
        return _Outcome(phase="Pending", reason="JobNotCreated", message="the trainer Job is being created")
    job_status = obs.job.get("status") or {}
    complete = _condition(obs.job, "Complete") or _condition(obs.job, "SuccessCriteriaMet")
    if complete is not None:
        return _Outcome(
            phase="Succeeded",
            reason="TrainingSucceeded",
            message="every trainer pod finished",
            completion_time=parse_time(job_status.get("completionTime")) or obs.now,
        )
    failed = _condition(obs.job, "Failed") or _condition(obs.job, "FailureTarget")
    if failed is not None:
        failure = job_failure(job_failed=failed, pods=obs.pods)
        return _Outcome(
            phase="Failed",
            reason=failure.reason,
            message=failure.message,
            failure=failure,
            completion_time=parse_time(failed.get("lastTransitionTime")) or obs.now,
        )
    return _active_outcome(obs)


def _conditions(obs: Observation, outcome: _Outcome) -> list[Condition]:
    phase = outcome.phase
    valid = not obs.spec_problems and obs.waiting_for_profile is None
    wanted: list[tuple[str, ConditionStatus, str, str]] = [
        (VALIDATED, "True", "SpecValid", "") if valid else (VALIDATED, "False", outcome.reason, outcome.message),
        (RUNNING, "True", outcome.reason, outcome.message)
        if phase == "Running"
        else (RUNNING, "False", outcome.reason, outcome.message),
        (SUSPENDED, "True", outcome.reason, outcome.message)
        if phase == "Suspended"
        else (SUSPENDED, "False", "NotSuspended", ""),
        (SUCCEEDED, "True", outcome.reason, outcome.message)
        if phase == "Succeeded"
        else (SUCCEEDED, "False", "NotSucceeded", ""),
        (FAILED, "True", outcome.reason, outcome.message) if phase == "Failed" else (FAILED, "False", "NotFailed", ""),
    ]
    previous = {c.type: c for c in obs.previous.conditions}
    data = _data_condition(obs, outcome)
    if data is not None:
        wanted.insert(1, data)
    elif DATA_VALIDATED in previous:
        kept = previous[DATA_VALIDATED]
        wanted.insert(1, (DATA_VALIDATED, kept.status, kept.reason, kept.message))
    out = []
    for type_, status, reason, message in wanted:
        before = previous.get(type_)
        # Per the API conventions the transition time moves only when the status does.
        since = before.last_transition_time if before is not None and before.status == status else obs.now
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=since,
                observed_generation=obs.generation,
            )
        )
    return out


def _data_condition(obs: Observation, outcome: _Outcome) -> tuple[str, ConditionStatus, str, str] | None:
    """DataValidated: True once the check passed, False when it failed, Unknown while it runs; None
    (the previous one kept, or none) when no check applies."""
    if not obs.data_check:
        return None
    if obs.checked is not None and obs.checked.passed:
        warnings = obs.checked.dataset.warning_count
        note = f" ({warnings} warning(s), see status.dataset.warnings)" if warnings else ""
        return (DATA_VALIDATED, "True", "DataValid", check_summary(obs.checked) + note)
    if obs.check is not None and obs.check.state == "Failed":
        return (DATA_VALIDATED, "False", outcome.reason, outcome.message)
    if obs.check is not None:
        return (DATA_VALIDATED, "Unknown", "DataCheckRunning", outcome.message)
    return None


def _estimate(obs: Observation, *, phase: Phase, progress: Progress | None) -> Estimate | None:
    """The check's estimate; while running, with the finish time the trainer's measured pace gives."""
    estimate = obs.checked.estimate if obs.data_check and obs.checked is not None else obs.previous.estimate
    finish = None
    running = phase == "Running" and progress is not None
    if running and progress and progress.eta_seconds is not None and progress.updated_at is not None:
        finish = progress.updated_at + timedelta(seconds=progress.eta_seconds)
    if estimate is None and finish is None:
        return None
    return (estimate or Estimate()).model_copy(update={"estimated_finish_time": finish})


def _start_time(obs: Observation, outcome: _Outcome) -> datetime | None:
    if obs.previous.start_time is not None:
        return obs.previous.start_time
    if outcome.phase != "Running":
        return None
    starts = [parse_time((p.get("status") or {}).get("startTime")) for p in obs.pods]
    known = [s for s in starts if s is not None]
    return min(known) if known else obs.now


def compute_status(obs: Observation) -> FineTuneJobStatus:
    """The status the FineTuneJob should have, given what is observed."""
    previous = obs.previous
    if previous.phase in TERMINAL_PHASES:
        return previous
    outcome = _outcome(obs)
    # With the check on, status.dataset is what it found for the current spec (nothing while a changed
    # spec is checked again); without it, what an earlier operator recorded stays.
    checked = (
        obs.checked
        if obs.data_check
        else Checked(dataset=previous.dataset, hyperparameters=previous.hyperparameters)
        if previous.dataset is not None
        else None
    )
    reported = fold_events(
        obs.trainer_events,
        progress=previous.progress,
        metrics=previous.metrics,
        output=previous.output,
        checkpoints=previous.checkpoints,
    )
    return FineTuneJobStatus(
        phase=outcome.phase,
        conditions=_conditions(obs, outcome),
        observed_generation=obs.generation,
        job_name=previous.job_name if obs.job is None else str(obs.job["metadata"]["name"]),
        start_time=_start_time(obs, outcome),
        completion_time=previous.completion_time or outcome.completion_time,
        progress=reported.progress,
        metrics=reported.metrics,
        failure=outcome.failure,
        output=reported.output,
        checkpoints=reported.checkpoints,
        trained_tokens=reported.metrics.trained_tokens if reported.metrics is not None else previous.trained_tokens,
        gpu_seconds=previous.gpu_seconds,
        gpu_seconds_updated_at=previous.gpu_seconds_updated_at,
        dataset=checked.dataset if checked is not None else None,
        hyperparameters=checked.hyperparameters if checked is not None else None,
        estimate=_estimate(obs, phase=outcome.phase, progress=reported.progress),
        profile=obs.profile if obs.profile is not None else previous.profile,
    )


def account_usage(
    *, previous: FineTuneJobStatus, desired: FineTuneJobStatus, now: datetime, gpus: int
) -> tuple[FineTuneJobStatus, float]:
    """``desired`` with the GPU-seconds since the last accounting added, and how many were added.

    Called only for a status that is written anyway: accounting alone never causes a write, so an idle
    running job costs no writes, and the time since the last write is added at the next one (at the
    latest when the job finishes). Time counts while the previous status said Running.
    """
    added = 0.0
    since = previous.gpu_seconds_updated_at
    if previous.phase == "Running" and since is not None:
        added = max(0.0, (now - since).total_seconds()) * gpus
    running = previous.phase == "Running" or desired.phase == "Running"
    total = (previous.gpu_seconds or 0.0) + added
    return (
        desired.model_copy(
            update={
                "gpu_seconds": round(total, 3) if running or previous.gpu_seconds is not None else None,
                "gpu_seconds_updated_at": now if running else previous.gpu_seconds_updated_at,
            }
        ),
        added,
    )


def status_patch(*, previous: FineTuneJobStatus, desired: FineTuneJobStatus) -> dict[str, Any] | None:
    """A JSON merge patch of ``status`` turning previous into desired; ``None`` when they are equal."""
    if previous == desired:
        return None
    old, new = previous.to_wire(), desired.to_wire()
    patch: dict[str, Any] = dict(new)
    for key in old:
        if key not in new:
            patch[key] = None  # merge patch deletes a key set to null
    return patch


def _milestone_events(*, previous: FineTuneJobStatus, desired: FineTuneJobStatus) -> list[EventSpec]:
    """The trainer's milestones, one Event each at most per status write (so at most one a few seconds)."""
    events = []
    known = {(c.step, c.uri) for c in previous.checkpoints}
    new = [c for c in desired.checkpoints if (c.step, c.uri) not in known]
    if new:
        events.append(EventSpec(type="Normal", reason="CheckpointSaved", message=f"step {new[-1].step}: {new[-1].uri}"))
    before = previous.metrics.eval_loss if previous.metrics is not None else None
    after = desired.metrics.eval_loss if desired.metrics is not None else None
    if after is not None and after != before:
        step = desired.progress.step if desired.progress is not None else 0
        events.append(EventSpec(type="Normal", reason="EvalCompleted", message=f"eval loss {after:.4g} at step {step}"))
    if desired.output is not None and previous.output is None:
        events.append(
            EventSpec(type="Normal", reason="TrainingFinished", message=f"output written to {desired.output.uri}")
        )
    return events


def _profile_events(*, previous: FineTuneJobStatus, desired: FineTuneJobStatus) -> list[EventSpec]:
    """ProfileApplied when a profile is first recorded; ProfileMissing when it is deleted under the job."""
    before, after = previous.profile, desired.profile
    if after is None:
        return []
    if before is None:
        filled = "; ".join(after.applied) if after.applied else "nothing to fill in"
        message = f"FineTuneProfile {after.name} (chosen by {after.chosen_by}): {filled}"
        return [EventSpec(type="Normal", reason="ProfileApplied", message=message)]
    if after.missing and not before.missing:
        message = (
            f"FineTuneProfile {after.name} was deleted; the job goes on with the defaults recorded in status.profile"
        )
        return [EventSpec(type="Warning", reason="ProfileMissing", message=message)]
    return []


def _check_events(*, previous: FineTuneJobStatus, desired: FineTuneJobStatus) -> list[EventSpec]:
    """DataValidated when the data check passed for this spec, and its warnings (one Event for all)."""
    dataset = desired.dataset
    if dataset is None or desired.hyperparameters is None:
        return []
    known = previous.dataset is not None and previous.hyperparameters is not None
    if known and previous.dataset and previous.dataset.spec_hash == dataset.spec_hash:
        return []
    checked = Checked(dataset=dataset, hyperparameters=desired.hyperparameters, estimate=desired.estimate)
    events = [EventSpec(type="Normal", reason="DataValidated", message=check_summary(checked))]
    if dataset.warning_count:
        shown = "; ".join(dataset.warnings[:3])
        more = dataset.warning_count - min(len(dataset.warnings), 3)
        message = f"{dataset.warning_count} data warning(s): {shown}" + (f" (and {more} more)" if more > 0 else "")
        events.append(EventSpec(type="Warning", reason="DataWarnings", message=message))
    return events


def transition_events(*, previous: FineTuneJobStatus, desired: FineTuneJobStatus) -> list[EventSpec]:
    """The Kubernetes Events a status change deserves: milestones and failures, each once."""
    events: list[EventSpec] = []
    if desired.start_time is not None and previous.start_time is None:
        events.append(EventSpec(type="Normal", reason="TrainingStarted", message="the trainer pods are running"))
    events.extend(_profile_events(previous=previous, desired=desired))
    events.extend(_check_events(previous=previous, desired=desired))
    events.extend(_milestone_events(previous=previous, desired=desired))
    if desired.phase == previous.phase:
        return events
    if desired.phase == "Suspended":
        events.append(EventSpec(type="Normal", reason="Suspended", message="the trainer pods were stopped"))
    elif previous.phase == "Suspended" and desired.phase in ("Pending", "Validating", "Running"):
        events.append(EventSpec(type="Normal", reason="Resumed", message="the trainer Job was resumed"))
    if desired.phase == "Succeeded":
        events.append(EventSpec(type="Normal", reason="Succeeded", message="training finished"))
    if desired.phase == "Failed" and desired.failure is not None:
        events.append(EventSpec(type="Warning", reason=desired.failure.reason, message=desired.failure.message))
    return events
