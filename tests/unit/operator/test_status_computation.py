"""Status computation from fabricated Jobs and pods: phases, failures, conditions and events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kubetune_operator.status import (
    Observation,
    account_usage,
    compute_status,
    job_failure,
    parse_status,
    status_patch,
    transition_events,
)

from kubetune.api.status import CheckpointStatus, FineTuneJobStatus, Metrics, OutputStatus, Progress

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def job(*, suspend: bool = False, conditions: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "demo-train", "namespace": "team-a", "uid": "job-uid"},
        "spec": {"suspend": suspend},
        "status": {"conditions": conditions or [], **status},
    }


def cond(type_: str, reason: str = "", message: str = "", at: datetime = T0) -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": stamp(at)}


def pod(
    name: str,
    phase: str,
    *,
    exit_code: int | None = None,
    reason: str = "",
    message: str = "",
    finished: datetime = T0,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or [], "startTime": stamp(T0)}
    if exit_code is not None:
        terminated = {"exitCode": exit_code, "reason": reason, "message": message, "finishedAt": stamp(finished)}
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    return {"metadata": {"name": name, "creationTimestamp": stamp(T0)}, "status": status}


def unschedulable_pod(name: str, since: datetime) -> dict[str, Any]:
    scheduled = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/6 nodes are available: 6 Insufficient nvidia.com/gpu.",
        "lastTransitionTime": stamp(since),
    }
    return pod(name, "Pending", conditions=[scheduled])


def observe(
    *,
    job_obj: dict[str, Any] | None = None,
    pods: list[dict[str, Any]] | None = None,
    previous: FineTuneJobStatus | None = None,
    now: datetime = T0,
    nodes: int = 1,
    suspend_requested: bool = False,
    problems: list[str] | None = None,
    generation: int = 1,
) -> FineTuneJobStatus:
    return compute_status(
        Observation(
            generation=generation,
            spec_problems=problems or [],
            job=job_obj,
            pods=pods or [],
            previous=previous or FineTuneJobStatus(),
            now=now,
            nodes=nodes,
            suspend_requested=suspend_requested,
            pending_timeout=timedelta(minutes=10),
        )
    )


def conditions(status: FineTuneJobStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_invalid_spec_fails_with_validated_false_naming_the_field() -> None:
    status = observe(problems=["spec.model.source: unsupported scheme 'ftp'"])
    assert status.phase == "Failed"
    assert conditions(status)["Validated"] == ("False", "InvalidSpec")
    validated = next(c for c in status.conditions if c.type == "Validated")
    assert "spec.model.source" in validated.message
    assert status.failure is not None and status.failure.reason == "InvalidSpec"
    assert status.completion_time == T0


def test_no_job_yet_is_pending_and_validated() -> None:
    status = observe()
    assert status.phase == "Pending"
    assert conditions(status)["Validated"] == ("True", "SpecValid")
    assert conditions(status)["Running"][0] == "False"


def test_all_pods_running_is_running_with_a_start_time_from_the_pods() -> None:
    status = observe(job_obj=job(), pods=[pod("p0", "Running"), pod("p1", "Running")], nodes=2, now=T0 + timedelta(9))
    assert status.phase == "Running" and status.start_time == T0 and status.job_name == "demo-train"
    assert conditions(status)["Running"] == ("True", "TrainerRunning")


def test_some_pods_running_is_still_pending_because_the_rendezvous_needs_all_nodes() -> None:
    status = observe(job_obj=job(), pods=[pod("p0", "Running"), pod("p1", "Pending")], nodes=2)
    assert status.phase == "Pending" and status.start_time is None


def test_a_finished_pod_before_the_job_is_marked_complete_is_still_running_not_pending() -> None:
    previous = observe(job_obj=job(), pods=[pod("p0", "Running")])
    status = observe(job_obj=job(succeeded=1), pods=[pod("p0", "Succeeded", exit_code=0)], previous=previous)
    assert status.phase == "Running", "seen on a real node: Running -> Pending -> Succeeded at the end of a job"
    assert conditions(status)["Running"] == ("True", "TrainerRunning")


def test_complete_job_succeeds_with_the_jobs_completion_time() -> None:
    done = job(conditions=[cond("Complete")], completionTime=stamp(T0 + timedelta(hours=2)))
    status = observe(job_obj=done, pods=[pod("p0", "Succeeded", exit_code=0)])
    assert status.phase == "Succeeded" and status.completion_time == T0 + timedelta(hours=2)
    assert conditions(status)["Succeeded"] == ("True", "TrainingSucceeded")
    assert conditions(status)["Failed"][0] == "False" and status.failure is None


def test_bad_data_exit_code_names_pod_container_and_code() -> None:
    failed = job(conditions=[cond("Failed", "PodFailurePolicy", "Container trainer for pod ...")])
    status = observe(job_obj=failed, pods=[pod("demo-train-0-x", "Failed", exit_code=65, message="line 7: bad JSON")])
    assert status.phase == "Failed"
    assert status.failure is not None
    assert (status.failure.reason, status.failure.pod, status.failure.container, status.failure.exit_code) == (
        "BadData",
        "demo-train-0-x",
        "trainer",
        65,
    )
    assert "line 7: bad JSON" in status.failure.message
    assert conditions(status)["Failed"] == ("True", "BadData")


def test_bad_config_and_divergence_have_their_own_reasons() -> None:
    for code, reason in ((78, "BadConfig"), (79, "TrainingDiverged")):
        failed = job(conditions=[cond("FailureTarget", "PodFailurePolicy")])
        status = observe(job_obj=failed, pods=[pod("p", "Failed", exit_code=code)])
        assert status.failure is not None and status.failure.reason == reason


def test_fatal_exit_is_read_from_the_job_condition_when_the_pod_is_gone() -> None:
    message = (
        "Container trainer for pod team-a/demo-train-0-abcde failed with exit code 65 matching FailJob rule at index 0"
    )
    failure = job_failure(job_failed=cond("Failed", "PodFailurePolicy", message), pods=[])
    assert (failure.reason, failure.pod, failure.container, failure.exit_code) == (
        "BadData",
        "demo-train-0-abcde",
        "trainer",
        65,
    )


def test_backoff_limit_exceeded_names_the_last_failed_pod() -> None:
    failed = job(conditions=[cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")])
    pods = [
        pod("try-1", "Failed", exit_code=1, finished=T0),
        pod("try-2", "Failed", exit_code=3, finished=T0 + timedelta(minutes=1)),
    ]
    status = observe(job_obj=failed, pods=pods)
    assert status.failure is not None
    assert (status.failure.reason, status.failure.pod, status.failure.exit_code) == ("BackoffLimitExceeded", "try-2", 3)


def test_oom_killed_is_named_as_the_failure_reason() -> None:
    failed = job(conditions=[cond("Failed", "BackoffLimitExceeded")])
    status = observe(job_obj=failed, pods=[pod("p", "Failed", exit_code=137, reason="OOMKilled")])
    assert status.failure is not None
    assert (status.failure.reason, status.failure.exit_code) == ("OOMKilled", 137)
    assert "OOMKilled" in status.failure.message


def test_deadline_exceeded_is_named() -> None:
    failed = job(conditions=[cond("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")])
    status = observe(job_obj=failed, pods=[pod("p", "Failed", exit_code=137)])
    assert status.failure is not None and status.failure.reason == "DeadlineExceeded"
    assert conditions(status)["Failed"] == ("True", "DeadlineExceeded")


def test_unschedulable_within_the_timeout_is_pending_with_the_schedulers_message() -> None:
    status = observe(job_obj=job(), pods=[unschedulable_pod("p", since=T0)], now=T0 + timedelta(minutes=9))
    assert status.phase == "Pending"
    running = next(c for c in status.conditions if c.type == "Running")
    assert running.reason == "Unschedulable" and "Insufficient nvidia.com/gpu" in running.message


def test_unschedulable_longer_than_the_timeout_fails_with_the_schedulers_message() -> None:
    status = observe(job_obj=job(), pods=[unschedulable_pod("p", since=T0)], now=T0 + timedelta(minutes=10))
    assert status.phase == "Failed"
    assert status.failure is not None and status.failure.reason == "Unschedulable" and status.failure.pod == "p"
    assert "Insufficient nvidia.com/gpu" in status.failure.message


def test_user_suspended_job_is_suspended_and_queue_suspended_job_is_pending() -> None:
    user = observe(job_obj=job(suspend=True), suspend_requested=True)
    assert user.phase == "Suspended" and conditions(user)["Suspended"] == ("True", "SuspendedByUser")
    queued = observe(job_obj=job(suspend=True), suspend_requested=False)
    assert queued.phase == "Pending" and conditions(queued)["Running"] == ("False", "WaitingForAdmission")


def test_last_transition_time_is_kept_while_a_condition_status_is_unchanged() -> None:
    first = observe(job_obj=job(), pods=[pod("p", "Running")], now=T0)
    later = observe(job_obj=job(), pods=[pod("p", "Running")], previous=first, now=T0 + timedelta(minutes=5))
    assert later == first
    assert status_patch(previous=first, desired=later) is None
    done = job(conditions=[cond("Complete")], completionTime=stamp(T0 + timedelta(minutes=6)))
    finished = observe(job_obj=done, previous=later, now=T0 + timedelta(minutes=6))
    times = {c.type: c.last_transition_time for c in finished.conditions}
    assert times["Validated"] == T0 and times["Suspended"] == T0
    assert times["Running"] == times["Succeeded"] == T0 + timedelta(minutes=6)


def test_conditions_carry_the_observed_generation() -> None:
    status = observe(generation=4)
    assert status.observed_generation == 4 and {c.observed_generation for c in status.conditions} == {4}


def test_terminal_phases_are_sticky_when_the_job_disappears() -> None:
    done = observe(job_obj=job(conditions=[cond("Complete")]))
    assert observe(job_obj=None, previous=done, now=T0 + timedelta(hours=1)) == done


def test_trainer_reported_progress_survives_recomputation() -> None:
    previous = FineTuneJobStatus.model_validate({"progress": {"step": 40, "totalSteps": 100}, "metrics": {"loss": 1.5}})
    status = observe(job_obj=job(), pods=[pod("p", "Running")], previous=previous)
    assert status.progress == previous.progress and status.metrics == previous.metrics


def test_status_patch_nulls_fields_that_went_away() -> None:
    previous = FineTuneJobStatus.model_validate({"phase": "Pending", "failure": {"reason": "X"}})
    patch = status_patch(previous=previous, desired=FineTuneJobStatus(phase="Running"))
    assert patch is not None and patch["failure"] is None and patch["phase"] == "Running"


def test_unreadable_stored_status_counts_as_empty() -> None:
    assert parse_status({"phase": "Exploded"}) == FineTuneJobStatus()
    assert parse_status(None) == FineTuneJobStatus()


def test_events_mark_milestones_once() -> None:
    pending = observe(job_obj=job())
    running = observe(job_obj=job(), pods=[pod("p", "Running")], previous=pending)
    assert [e.reason for e in transition_events(previous=pending, desired=running)] == ["TrainingStarted"]
    assert transition_events(previous=running, desired=running) == []
    suspended = observe(job_obj=job(suspend=True), suspend_requested=True, previous=running)
    assert [e.reason for e in transition_events(previous=running, desired=suspended)] == ["Suspended"]
    resumed = observe(job_obj=job(), previous=suspended)
    assert [e.reason for e in transition_events(previous=suspended, desired=resumed)] == ["Resumed"]
    done = observe(job_obj=job(conditions=[cond("Complete")]), previous=resumed)
    assert [e.reason for e in transition_events(previous=resumed, desired=done)] == ["Succeeded"]


def test_failures_raise_a_warning_event_with_the_failure_reason() -> None:
    pending = observe(job_obj=job())
    failed = observe(
        job_obj=job(conditions=[cond("Failed", "PodFailurePolicy")]), pods=[pod("p", "Failed", exit_code=65)]
    )
    (event,) = transition_events(previous=pending, desired=failed)
    assert (event.type, event.reason) == ("Warning", "BadData")
    invalid = observe(problems=["spec.method.rank: must be >= 1"])
    (event,) = transition_events(previous=FineTuneJobStatus(), desired=invalid)
    assert (event.type, event.reason) == ("Warning", "InvalidSpec") and "spec.method.rank" in event.message


def test_gpu_seconds_add_the_running_time_since_the_last_write_times_the_gpus() -> None:
    pending = FineTuneJobStatus(phase="Pending")
    running, added = account_usage(previous=pending, desired=FineTuneJobStatus(phase="Running"), now=T0, gpus=8)
    assert (running.gpu_seconds, running.gpu_seconds_updated_at, added) == (0.0, T0, 0.0)
    later = T0 + timedelta(seconds=90)
    still, added = account_usage(previous=running, desired=running, now=later, gpus=8)
    assert (still.gpu_seconds, still.gpu_seconds_updated_at, added) == (720.0, later, 720.0)
    done, added = account_usage(
        previous=still, desired=FineTuneJobStatus(phase="Succeeded"), now=later + timedelta(seconds=10), gpus=8
    )
    assert (done.gpu_seconds, added) == (800.0, 80.0)
    after, added = account_usage(previous=done, desired=done, now=later + timedelta(hours=1), gpus=8)
    assert (after.gpu_seconds, added) == (800.0, 0.0), "a finished job accrues nothing"


def test_checkpoint_eval_and_output_each_post_one_event() -> None:
    before = FineTuneJobStatus(phase="Running", start_time=T0, metrics=Metrics(eval_loss=2.0))
    after = before.model_copy(
        update={
            "checkpoints": [CheckpointStatus(step=20, uri="pvc://o/run/checkpoints/step-20", time=T0)],
            "metrics": Metrics(eval_loss=1.5),
            "progress": Progress(step=20),
            "output": OutputStatus(uri="pvc://o/run"),
        }
    )
    events = transition_events(previous=before, desired=after)
    assert [(e.reason, e.message) for e in events] == [
        ("CheckpointSaved", "step 20: pvc://o/run/checkpoints/step-20"),
        ("EvalCompleted", "eval loss 1.5 at step 20"),
        ("TrainingFinished", "output written to pvc://o/run"),
    ]
    assert transition_events(previous=after, desired=after) == []
