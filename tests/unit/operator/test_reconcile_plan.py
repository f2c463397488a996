"""The reconcile's plan, as a table of observed states: which actions, which status, when to look again."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubetune_operator.builders import build_children
from kubetune_operator.builders.names import KUEUE_QUEUE_LABEL
from kubetune_operator.plan import (
    POD_CREATION_RECHECK_SECONDS,
    WAIT_FOR_GARBAGE_COLLECTION_SECONDS,
    DeleteFineTuneJob,
    DeleteJob,
    EnsureChild,
    Observed,
    Plan,
    SetJobSuspend,
    plan,
    pods_overdue,
)
from kubetune_operator.settings import OperatorSettings
from kubetune_operator.status import parse_status

from kubetune.api.resource import FineTuneJob

T0 = datetime(2026, 11, 29, 9, 0, 0, tzinfo=UTC)
UID = "ftj-uid-1"
SETTINGS = OperatorSettings(pending_timeout_seconds=600)
CAMEL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def ftj(
    *, status: dict[str, Any] | None = None, generation: int = 1, name: str = "demo", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"], "preflight": "skip"},
        "output": {"destination": "s3://outputs/run-1"},
    }
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "team-a", "uid": UID, "generation": generation, "resourceVersion": "7"},
        "spec": body | spec,
        "status": status or {},
    }


def existing(manifest: dict[str, Any], *, uid: str, **extra: Any) -> dict[str, Any]:
    """A child as the API server returns it once created from ``manifest``."""
    meta = {**manifest["metadata"], "uid": uid, "resourceVersion": "1"}
    return {**manifest, "metadata": meta, **extra}


def children_of(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    built = build_children(ftj=FineTuneJob.from_object({**obj, "status": {}}), settings=SETTINGS)
    return (
        existing(built.config_map, uid="cm-uid"),
        existing(built.service, uid="svc-uid"),
        existing(built.job, uid="job-uid", status={}),
    )


def pod(phase: str, *, index: str = "0", conditions: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": f"demo-train-{index}-abcde",
            "namespace": "team-a",
            "creationTimestamp": stamp(T0),
            "annotations": {"batch.kubernetes.io/job-completion-index": index},
        },
        "status": {"phase": phase, "startTime": stamp(T0), "conditions": list(conditions)},
    }


def unschedulable(since: datetime) -> dict[str, Any]:
    scheduled = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/6 nodes are available: 6 Insufficient nvidia.com/gpu.",
        "lastTransitionTime": stamp(since),
    }
    return pod("Pending", conditions=[scheduled])


def observed(
    obj: dict[str, Any],
    *,
    config_map: dict[str, Any] | None = None,
    service: dict[str, Any] | None = None,
    job: dict[str, Any] | None = None,
    pods: Sequence[dict[str, Any]] = (),
    now: datetime = T0,
    child_problem: str | None = None,
) -> Observed:
    return Observed(
        ftj=obj, config_map=config_map, service=service, job=job, pods=pods, now=now, child_problem=child_problem
    )


def settled(obj: dict[str, Any], result: Plan) -> dict[str, Any]:
    """The FineTuneJob after the plan's status write."""
    merged = {**(obj.get("status") or {}), **(result.status_patch or {})}
    return {**obj, "status": {k: v for k, v in merged.items() if v is not None}}


def conditions(result: Plan) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (result.status_patch or {}).get("conditions", [])}


def test_a_new_finetunejob_creates_its_three_children_in_order_and_reports_pending() -> None:
    obj = ftj()
    result = plan(observed(obj), settings=SETTINGS)
    kinds = [a.manifest["kind"] for a in result.actions if isinstance(a, EnsureChild)]
    assert kinds == ["ConfigMap", "Service", "Job"] and len(result.actions) == 3
    job_action = result.actions[2]
    assert isinstance(job_action, EnsureChild) and job_action.created_event is not None
    assert job_action.created_event.reason == "JobCreated"
    assert result.phase == "Pending" and result.status_patch is not None
    assert result.status_patch["jobName"] == "demo-train"
    assert conditions(result)["Validated"]["status"] == "True"
    assert result.requeue_after is None


def test_once_applied_the_plan_is_a_fixed_point_a_replayed_reconcile_does_nothing() -> None:
    obj = ftj()
    first = plan(observed(obj), settings=SETTINGS)
    config_map, service, job = children_of(obj)
    again = plan(
        observed(settled(obj, first), config_map=config_map, service=service, job=job, now=T0 + timedelta(minutes=5)),
        settings=SETTINGS,
    )
    assert again.actions == () and again.status_patch is None and again.events == ()


def test_an_invalid_spec_creates_nothing_and_fails_naming_the_field() -> None:
    obj = ftj(hyperparameters={"learningRate": -1.0})
    result = plan(observed(obj), settings=SETTINGS)
    assert result.actions == () and result.phase == "Failed"
    assert result.status_patch is not None
    assert "learningRate" in result.status_patch["failure"]["message"]
    assert conditions(result)["Validated"] == conditions(result)["Validated"] | {
        "status": "False",
        "reason": "InvalidSpec",
    }
    assert [e.reason for e in result.events] == ["InvalidSpec"]


def test_a_name_taken_by_a_foreign_object_is_reported_and_nothing_is_created() -> None:
    obj = ftj()
    message = "metadata.name: Service team-a/demo-workers already exists and is not owned by this FineTuneJob"
    result = plan(observed(obj, child_problem=message), settings=SETTINGS)
    assert result.actions == () and result.phase == "Failed"
    assert result.status_patch is not None and "metadata.name" in result.status_patch["failure"]["message"]


def test_a_child_controlled_by_something_else_is_never_adopted_or_overwritten() -> None:
    obj = ftj()
    config_map, service, job = children_of(obj)
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "intruder", "uid": "x", "controller": True}
    foreign = {**job, "metadata": {**job["metadata"], "ownerReferences": [owner]}}
    result = plan(observed(obj, config_map=config_map, service=service, job=foreign), settings=SETTINGS)
    assert result.actions == () and result.phase == "Failed"
    assert result.status_patch is not None and "Job demo-train" in result.status_patch["failure"]["message"]


def test_children_of_a_deleted_predecessor_of_the_same_name_are_waited_for() -> None:
    obj = ftj()
    config_map, service, job = children_of(obj)
    old_owner = {**job["metadata"]["ownerReferences"][0], "uid": "the-deleted-one"}
    old_job = {**job, "metadata": {**job["metadata"], "ownerReferences": [old_owner]}}
    result = plan(observed(obj, config_map=config_map, service=service, job=old_job), settings=SETTINGS)
    assert result.actions == () and result.status_patch is None
    assert result.requeue_after == WAIT_FOR_GARBAGE_COLLECTION_SECONDS


def test_an_orphan_carrying_our_label_is_adopted_and_a_stale_config_map_repaired() -> None:
    obj = ftj()
    config_map, service, job = children_of(obj)
    orphan = {**job, "metadata": {**job["metadata"], "ownerReferences": []}}
    stale = {**config_map, "data": {"config.yaml": "old"}}
    result = plan(observed(obj, config_map=stale, service=service, job=orphan), settings=SETTINGS)
    repaired = [a.manifest["kind"] for a in result.actions if isinstance(a, EnsureChild)]
    assert repaired == ["ConfigMap", "Job"]
    assert all(a.created_event is None for a in result.actions if isinstance(a, EnsureChild))


@pytest.mark.parametrize(
    ("suspend", "job_suspended", "kueue", "expected"),
    [
        (True, False, False, [SetJobSuspend(name="demo-train", suspend=True, why="spec.runPolicy.suspend")]),
        (False, True, False, [SetJobSuspend(name="demo-train", suspend=False, why="spec.runPolicy.suspend")]),
        (False, True, True, []),  # Kueue admits (unsuspends) a queued Job, never the operator
        (True, True, True, []),
    ],
)
def test_the_jobs_suspend_follows_the_spec_except_that_kueue_resumes_queued_jobs(
    suspend: bool, job_suspended: bool, kueue: bool, expected: list[SetJobSuspend]
) -> None:
    obj = ftj(runPolicy={"suspend": suspend})
    config_map, service, job = children_of(obj)
    labels = {**job["metadata"]["labels"], **({KUEUE_QUEUE_LABEL: "team-a"} if kueue else {})}
    job = {**job, "metadata": {**job["metadata"], "labels": labels}, "spec": {**job["spec"], "suspend": job_suspended}}
    result = plan(observed(obj, config_map=config_map, service=service, job=job), settings=SETTINGS)
    assert list(result.actions) == expected
    if suspend:
        assert result.phase == "Suspended"


def test_resources_changed_while_suspended_replace_the_job_and_leave_the_status_alone() -> None:
    before = ftj(runPolicy={"suspend": True})
    config_map, service, job = children_of(before)
    job = {**job, "spec": {**job["spec"], "suspend": True}}
    after = ftj(runPolicy={"suspend": True}, resources={"gpusPerNode": 2}, generation=2)
    result = plan(observed(after, config_map=config_map, service=service, job=job), settings=SETTINGS)
    # The trainer's config names the hardware it runs on, so it is rewritten with the Job's replacement.
    assert [type(a) for a in result.actions] == [EnsureChild, DeleteJob]
    assert result.status_patch is None and result.events == ()


def test_a_pending_pod_is_looked_at_again_when_its_timeout_expires_and_then_the_job_is_stopped() -> None:
    obj = ftj()
    config_map, service, job = children_of(obj)
    pods = [unschedulable(since=T0)]
    waiting = plan(observed(obj, config_map=config_map, service=service, job=job, pods=pods), settings=SETTINGS)
    assert waiting.phase == "Pending" and waiting.actions == ()
    assert waiting.requeue_after == pytest.approx(601.0)
    later = T0 + timedelta(seconds=600)
    expired = plan(
        observed(settled(obj, waiting), config_map=config_map, service=service, job=job, pods=pods, now=later),
        settings=SETTINGS,
    )
    assert expired.phase == "Failed"
    assert expired.actions == (SetJobSuspend(name="demo-train", suspend=True, why=expired.actions[0].why),)  # type: ignore[union-attr]
    assert expired.status_patch is not None and expired.status_patch["failure"]["reason"] == "Unschedulable"


def test_a_running_job_is_not_looked_at_again_on_a_timer_progress_comes_as_reports() -> None:
    obj = ftj()
    config_map, service, job = children_of(obj)
    running = plan(
        observed(obj, config_map=config_map, service=service, job=job, pods=[pod("Running")]), settings=SETTINGS
    )
    assert running.phase == "Running" and running.requeue_after is None


def test_a_finished_job_waits_for_its_ttl_then_deletes_itself_and_otherwise_does_nothing() -> None:
    status = {"phase": "Succeeded", "completionTime": stamp(T0)}
    keep = plan(observed(ftj(status=status)), settings=SETTINGS)
    assert keep == Plan(phase="Succeeded")
    with_ttl = ftj(status=status, runPolicy={"ttlSecondsAfterFinished": 60})
    early = plan(observed(with_ttl, now=T0 + timedelta(seconds=45)), settings=SETTINGS)
    assert early.actions == () and early.requeue_after == pytest.approx(15.0)
    due = plan(observed(with_ttl, now=T0 + timedelta(seconds=60)), settings=SETTINGS)
    assert [type(a) for a in due.actions] == [DeleteFineTuneJob] and due.status_patch is None


def job_with(job: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {**job, "status": status}


def complete(at: datetime) -> dict[str, Any]:
    return {"type": "Complete", "status": "True", "reason": "", "message": "", "lastTransitionTime": stamp(at)}


def test_conditions_follow_the_api_conventions_in_every_state_of_a_run() -> None:
    """Walk a run through its states; each status must agree with itself and keep transition times."""
    obj = ftj()
    config_map, service, job = children_of(obj)
    states: list[tuple[dict[str, Any] | None, list[dict[str, Any]], datetime]] = [
        (None, [], T0),
        (job, [], T0 + timedelta(seconds=1)),
        (job, [unschedulable(T0)], T0 + timedelta(seconds=2)),
        (job, [pod("Running")], T0 + timedelta(seconds=3)),
        (job, [pod("Running")], T0 + timedelta(seconds=60)),
        (
            job_with(job, conditions=[complete(T0 + timedelta(seconds=90))]),
            [pod("Succeeded")],
            T0 + timedelta(seconds=91),
        ),
    ]
    phase_of_condition = {"Running": "Running", "Suspended": "Suspended", "Succeeded": "Succeeded", "Failed": "Failed"}
    previous_conditions: dict[str, dict[str, Any]] = {}
    writes = 0
    for current_job, pods, now in states:
        result = plan(
            observed(obj, config_map=config_map, service=service, job=current_job, pods=pods, now=now),
            settings=SETTINGS,
        )
        writes += result.status_patch is not None
        obj = settled(obj, result)
        status = parse_status(obj["status"])
        assert status.observed_generation == 1
        true_types = [c.type for c in status.conditions if c.status == "True" and c.type in phase_of_condition]
        assert [phase_of_condition[t] for t in true_types] == ([status.phase] if status.phase != "Pending" else [])
        for c in status.conditions:
            assert CAMEL_CASE.match(c.reason), c.reason
            assert c.observed_generation == 1
            before = previous_conditions.get(c.type)
            if before is not None and before["status"] == c.status:
                assert stamp(c.last_transition_time) == before["at"], f"{c.type} moved without flipping"
        previous_conditions = {
            c.type: {"status": c.status, "at": stamp(c.last_transition_time)} for c in status.conditions
        }
    assert status.phase == "Succeeded"
    # Written when the Job is planned, when the scheduler's message appears, when it runs, when it succeeds;
    # the Job appearing in the cache and a minute more of running change nothing, so nothing is written.
    assert writes == 4


def test_a_spec_change_moves_observed_generation_without_touching_unchanged_conditions() -> None:
    obj = ftj()
    config_map, service, job = children_of(obj)
    first = plan(
        observed(obj, config_map=config_map, service=service, job=job, pods=[pod("Running")]), settings=SETTINGS
    )
    obj = settled(obj, first)
    bumped = {**obj, "metadata": {**obj["metadata"], "generation": 2}}
    second = plan(
        observed(
            bumped,
            config_map=config_map,
            service=service,
            job=job,
            pods=[pod("Running")],
            now=T0 + timedelta(minutes=1),
        ),
        settings=SETTINGS,
    )
    assert second.status_patch is not None and second.status_patch["observedGeneration"] == 2
    before, after = conditions(first), conditions(second)
    for type_, cond in after.items():
        assert cond["observedGeneration"] == 2
        assert cond["lastTransitionTime"] == before[type_]["lastTransitionTime"]


QUOTA_MESSAGE = (
    'pods "demo-train-0-x7k2p" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, '
    "used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=0"
)


def test_a_job_whose_pods_a_quota_refuses_is_pending_with_the_quota_named_and_checked_again() -> None:
    obj = ftj()
    config_map, service, job = children_of(obj)
    job = {**job, "metadata": {**job["metadata"], "creationTimestamp": stamp(T0)}}
    later = T0 + timedelta(seconds=45)
    assert pods_overdue(job, pods=[], now=later) and not pods_overdue(job, pods=[], now=T0 + timedelta(seconds=5))
    assert not pods_overdue(job, pods=[pod("Pending")], now=later)
    refused = Observed(
        ftj=obj,
        config_map=config_map,
        service=service,
        job=job,
        pods=(),
        now=later,
        pod_creation_failures=("older failure", QUOTA_MESSAGE),
    )
    result = plan(refused, settings=SETTINGS)
    assert result.phase == "Pending" and result.actions == ()
    running = conditions(result)["Running"]
    assert running["reason"] == "QuotaExceeded" and "requests.nvidia.com/gpu" in running["message"]
    assert result.requeue_after == POD_CREATION_RECHECK_SECONDS
    webhook = plan(dataclasses.replace(refused, pod_creation_failures=("admission webhook denied",)), settings=SETTINGS)
    assert conditions(webhook)["Running"]["reason"] == "PodCreationFailed"
