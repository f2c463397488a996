"""The data check (phase Validating) as the plan sees it: a table of observed check Jobs and pods."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from kubetune_operator.builders import build_children
from kubetune_operator.builders.names import KUEUE_QUEUE_LABEL, PREFLIGHT_CONTAINER, PREFLIGHT_SPEC_HASH_ANNOTATION
from kubetune_operator.plan import DeleteJob, EnsureChild, Observed, Plan, SetJobSuspend, plan
from kubetune_operator.preflight import read_check
from kubetune_operator.settings import OperatorSettings

from kubetune.api.preflight import PreflightResult, encode_result, preflight_spec_hash
from kubetune.api.resource import FineTuneJob
from kubetune.api.status import (
    DataProblem,
    DatasetStatus,
    Estimate,
    ResolvedHyperparameters,
    TokenCounts,
)
from kubetune.api.trainer_config import CONFIG_FILE_NAME, PREFLIGHT_CONFIG_FILE_NAME

T0 = datetime(2026, 11, 29, 9, 0, 0, tzinfo=UTC)
UID = "ftj-uid-1"
SETTINGS = OperatorSettings(pending_timeout_seconds=600)


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def ftj(*, status: dict[str, Any] | None = None, preflight: str = "warn", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"], "preflight": preflight},
        "output": {"destination": "s3://outputs/run-1"},
    }
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo", "namespace": "team-a", "uid": UID, "generation": 1, "resourceVersion": "7"},
        "spec": body | spec,
        "status": status or {},
    }


def built(obj: dict[str, Any], **kw: Any) -> Any:
    return build_children(ftj=FineTuneJob.from_object({**obj, "status": {}}), settings=SETTINGS, **kw)


def existing(manifest: dict[str, Any], *, uid: str, **extra: Any) -> dict[str, Any]:
    meta = {**manifest["metadata"], "uid": uid, "resourceVersion": "1", "creationTimestamp": stamp(T0)}
    return {**manifest, "metadata": meta, **extra}


def condition(type_: str, *, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "message": message}


def check_job(obj: dict[str, Any], *, conditions: Sequence[dict[str, Any]] = (), **spec: Any) -> dict[str, Any]:
    manifest = built(obj).preflight_job
    job = existing(manifest, uid="check-uid", status={"conditions": list(conditions)})
    return {**job, "spec": {**job["spec"], **spec}}


def check_pod(
    phase: str, *, result: PreflightResult | None = None, exit_code: int = 0, message: str | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "startTime": stamp(T0)}
    if phase in ("Succeeded", "Failed"):
        text = encode_result(result) if result is not None else (message or "")
        terminated = {"exitCode": exit_code, "message": text, "finishedAt": stamp(T0 + timedelta(seconds=40))}
        status["containerStatuses"] = [{"name": PREFLIGHT_CONTAINER, "state": {"terminated": terminated}}]
    return {
        "kind": "Pod",
        "metadata": {"name": "demo-check-x1y2z", "namespace": "team-a", "creationTimestamp": stamp(T0)},
        "status": status,
    }


def dataset(**kw: Any) -> DatasetStatus:
    values: dict[str, Any] = {
        "spec_hash": "",
        "format": "prompt_completion",
        "train_examples": 1260,
        "validation_examples": 140,
        "train_tokens": TokenCounts(total=241_930, trained=150_000, p50=160, p95=390, max=1800),
        "sha256": "ab" * 32,
    }
    return DatasetStatus(**(values | kw))


HP = ResolvedHyperparameters(
    epochs=3,
    total_steps=474,
    per_device_batch_size=8,
    gradient_accumulation_steps=1,
    world_size=1,
    learning_rate=2e-4,
    warmup_steps=15,
    chosen=["epochs", "perDeviceBatchSize", "learningRate", "warmupSteps"],
)
ESTIMATE = Estimate(
    train_tokens=725_790,
    optimizer_steps=474,
    parameters=134_515_008,
    tokens_per_second=40_000.0,
    duration_seconds=18,
    duration="18s",
    gpu_hours=0.01,
    basis="NVIDIA-H100-80GB-HBM3, 0.13B parameters, lora: estimate",
)
PASSED = PreflightResult(outcome="Passed", message="ok", dataset=dataset(), hyperparameters=HP, estimate=ESTIMATE)
BAD = PreflightResult(
    outcome="BadData",
    message="data validation failed: 100000 problems in the dataset",
    dataset=dataset(
        train_examples=0,
        error_count=100_000,
        errors=[
            DataProblem(file="s3://training-data/lamini_docs.jsonl", line=i + 1, field="answer", reason="missing")
            for i in range(10)
        ],
    ),
)


def observed(obj: dict[str, Any], *, now: datetime = T0, **kw: Any) -> Observed:
    children = built(obj)
    values: dict[str, Any] = {
        "ftj": obj,
        "config_map": existing(children.config_map, uid="cm-uid"),
        "service": existing(children.service, uid="svc-uid"),
        "job": None,
        "pods": (),
        "now": now,
    }
    return Observed(**(values | kw))


def settled(obj: dict[str, Any], result: Plan) -> dict[str, Any]:
    merged = {**(obj.get("status") or {}), **(result.status_patch or {})}
    return {**obj, "status": {k: v for k, v in merged.items() if v is not None}}


def conditions(result: Plan) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (result.status_patch or {}).get("conditions", [])}


def test_a_new_finetunejob_runs_the_data_check_first_and_no_training_job() -> None:
    obj = ftj()
    result = plan(Observed(ftj=obj, config_map=None, service=None, job=None, pods=(), now=T0), settings=SETTINGS)
    names = [a.manifest["metadata"]["name"] for a in result.actions if isinstance(a, EnsureChild)]
    assert names == ["demo-config", "demo-workers", "demo-check"]
    check = result.actions[2]
    assert isinstance(check, EnsureChild) and check.created_event is not None
    assert check.created_event.reason == "DataCheckStarted"
    assert result.phase == "Validating"
    data = conditions(result)["DataValidated"]
    assert data["status"] == "Unknown" and data["reason"] == "DataCheckRunning"


def test_the_check_job_asks_for_no_gpu_and_carries_the_spec_hash() -> None:
    obj = ftj(resources={"gpusPerNode": 8, "nodes": 2, "gpuProduct": "NVIDIA-H100-80GB-HBM3"}, runPolicy={})
    manifest = built(obj).preflight_job
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert "nodeSelector" not in pod  # the GPU product is not required of a CPU pod
    assert {"name": "CUDA_VISIBLE_DEVICES", "value": ""} in container["env"]
    assert container["command"][-1].endswith(PREFLIGHT_CONFIG_FILE_NAME)
    assert manifest["metadata"]["annotations"][PREFLIGHT_SPEC_HASH_ANNOTATION] == preflight_spec_hash(
        FineTuneJob.from_object(obj).spec
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize(
    ("queue", "spec_queue", "expected"),
    [(None, "gpu-queue", None), ("cpu-queue", "gpu-queue", "cpu-queue"), ("cpu-queue", None, "cpu-queue")],
)
def test_the_check_job_never_takes_the_gpu_queue_label(
    queue: str | None, spec_queue: str | None, expected: str | None
) -> None:
    obj = ftj(runPolicy={"queueName": spec_queue} if spec_queue else {})
    settings = OperatorSettings(preflight_queue_name=queue)
    children = build_children(ftj=FineTuneJob.from_object(obj), settings=settings)
    assert children.preflight_job is not None
    assert children.preflight_job["metadata"]["labels"].get(KUEUE_QUEUE_LABEL) == expected
    assert children.job["metadata"]["labels"].get(KUEUE_QUEUE_LABEL) == spec_queue


def test_while_the_check_runs_the_job_is_validating_and_no_training_job_is_made() -> None:
    obj = ftj(status={"phase": "Validating"})
    result = plan(observed(obj, check_job=check_job(obj), check_pods=[check_pod("Running")]), settings=SETTINGS)
    assert result.actions == ()
    assert result.phase == "Validating"
    assert conditions(result)["Running"]["status"] == "False"


def test_a_passed_check_records_dataset_hyperparameters_estimate_and_creates_the_training_job() -> None:
    obj = ftj(status={"phase": "Validating"})
    job = check_job(obj, conditions=[condition("Complete")])
    result = plan(observed(obj, check_job=job, check_pods=[check_pod("Succeeded", result=PASSED)]), settings=SETTINGS)
    kinds = [(type(a).__name__, a.manifest["metadata"]["name"]) for a in result.actions if isinstance(a, EnsureChild)]
    # The ConfigMap first (the training pods read the resolved values from it), then the training Job.
    assert kinds == [("EnsureChild", "demo-config"), ("EnsureChild", "demo-train")]
    config = next(a for a in result.actions if isinstance(a, EnsureChild) and a.manifest["kind"] == "ConfigMap")
    training = yaml.safe_load(config.manifest["data"][CONFIG_FILE_NAME])
    assert training["hyperparameters"]["epochs"] == 3
    assert training["hyperparameters"]["perDeviceBatchSize"] == 8
    assert training["hyperparameters"]["learningRate"] == 2e-4
    assert training["hyperparameters"]["warmupSteps"] == 15
    assert training["validated"] == {"datasetSha256": "ab" * 32, "trainExamples": 1260, "totalSteps": 474}
    spec_only = yaml.safe_load(config.manifest["data"][PREFLIGHT_CONFIG_FILE_NAME])
    assert "epochs" not in spec_only["hyperparameters"] and "validated" not in spec_only
    status = result.status_patch or {}
    assert status["dataset"]["trainExamples"] == 1260 and status["dataset"]["specHash"]
    assert status["dataset"]["checkedAt"] == stamp(T0 + timedelta(seconds=40))
    assert status["hyperparameters"]["totalSteps"] == 474
    assert status["estimate"]["duration"] == "18s"
    assert conditions(result)["DataValidated"]["status"] == "True"
    assert [e.reason for e in result.events if e.reason == "DataValidated"] == ["DataValidated"]


def test_once_recorded_the_check_is_not_read_again_and_the_training_job_keeps_running() -> None:
    obj = ftj(status={"phase": "Validating"})
    job = check_job(obj, conditions=[condition("Complete")])
    first = plan(observed(obj, check_job=job, check_pods=[check_pod("Succeeded", result=PASSED)]), settings=SETTINGS)
    after = settled(obj, first)
    training = existing(built(after).job, uid="job-uid", status={"active": 1})
    children = built(
        after,
        checked=(
            ResolvedHyperparameters.model_validate(after["status"]["hyperparameters"]),
            DatasetStatus.model_validate(after["status"]["dataset"]),
        ),
    )
    # The check's pods are gone (say, garbage-collected): the status alone carries the result.
    result = plan(
        observed(after, job=training, check_job=job, config_map=existing(children.config_map, uid="cm-uid")),
        settings=SETTINGS,
    )
    assert not [a for a in result.actions if isinstance(a, EnsureChild | DeleteJob)]
    assert (result.status_patch or {}).get("hyperparameters", after["status"]["hyperparameters"]) == after["status"][
        "hyperparameters"
    ]


def test_bad_data_fails_the_job_with_line_numbers_and_no_training_job() -> None:
    obj = ftj(status={"phase": "Validating"})
    job = check_job(obj, conditions=[condition("Failed", reason="PodFailurePolicy")])
    pods = [check_pod("Failed", result=BAD, exit_code=65)]
    result = plan(observed(obj, check_job=job, check_pods=pods), settings=SETTINGS)
    assert not any(isinstance(a, EnsureChild) for a in result.actions)
    status = result.status_patch or {}
    assert status["phase"] == "Failed"
    assert status["failure"]["reason"] == "BadData"
    assert "lamini_docs.jsonl:1: answer: missing" in status["failure"]["message"]
    assert "and 99995 more" in status["failure"]["message"]
    assert status["dataset"]["errorCount"] == 100_000
    assert [p["line"] for p in status["dataset"]["errors"]] == list(range(1, 11))
    assert conditions(result)["DataValidated"]["status"] == "False"
    assert "hyperparameters" not in status


def test_strict_mode_fails_on_warnings_and_warn_mode_posts_them() -> None:
    warned = PASSED.model_copy(
        update={"dataset": dataset(warning_count=2, warnings=["only 40 training examples", "3 duplicates"])}
    )
    for mode, phase in (("strict", "Failed"), ("warn", None)):
        obj = ftj(status={"phase": "Validating"}, preflight=mode)
        job = check_job(obj, conditions=[condition("Complete")])
        pods = [check_pod("Succeeded", result=warned)]
        result = plan(observed(obj, check_job=job, check_pods=pods), settings=SETTINGS)
        status = result.status_patch or {}
        if phase == "Failed":
            assert status["phase"] == "Failed" and status["failure"]["reason"] == "BadData"
            assert (
                "strict" in status["failure"]["message"] and "only 40 training examples" in status["failure"]["message"]
            )
            assert not any(isinstance(a, EnsureChild) for a in result.actions)
        else:
            assert any(isinstance(a, EnsureChild) and a.manifest["kind"] == "Job" for a in result.actions)
            warning = next(e for e in result.events if e.reason == "DataWarnings")
            assert warning.type == "Warning" and "only 40 training examples; 3 duplicates" in warning.message


def test_a_check_that_crashed_without_a_result_fails_as_data_check_failed_with_its_output() -> None:
    obj = ftj(status={"phase": "Validating"})
    job = check_job(obj, conditions=[condition("Failed", reason="BackoffLimitExceeded", message="too many")])
    pods = [check_pod("Failed", exit_code=1, message="Traceback ...\nMemoryError")]
    result = plan(observed(obj, check_job=job, check_pods=pods), settings=SETTINGS)
    failure = (result.status_patch or {})["failure"]
    assert failure["reason"] == "DataCheckFailed"
    assert "BackoffLimitExceeded" in failure["message"] and "MemoryError" in failure["message"]
    assert failure["exitCode"] == 1 and failure["container"] == PREFLIGHT_CONTAINER


def test_suspend_during_the_check_suspends_the_check_and_resume_unsuspends_it() -> None:
    obj = ftj(status={"phase": "Validating"}, runPolicy={"suspend": True})
    result = plan(observed(obj, check_job=check_job(obj, suspend=False)), settings=SETTINGS)
    assert list(result.actions) == [SetJobSuspend(name="demo-check", suspend=True, why="spec.runPolicy.suspend")]
    assert result.phase == "Suspended"
    resumed = ftj(status=settled(obj, result)["status"], runPolicy={"suspend": False})
    result = plan(observed(resumed, check_job=check_job(resumed, suspend=True)), settings=SETTINGS)
    assert list(result.actions) == [SetJobSuspend(name="demo-check", suspend=False, why="spec.runPolicy.suspend")]
    assert result.phase == "Validating"
    assert "Resumed" in [e.reason for e in result.events]


def test_a_check_for_an_older_spec_is_deleted_and_the_job_checked_again() -> None:
    before = ftj(status={"phase": "Suspended"}, runPolicy={"suspend": True})
    stale = check_job(before, conditions=[condition("Complete")])
    after = ftj(status={"phase": "Suspended"}, runPolicy={"suspend": True}, resources={"gpusPerNode": 2})
    result = plan(
        observed(after, check_job=stale, check_pods=[check_pod("Succeeded", result=PASSED)]), settings=SETTINGS
    )
    deletes = [a for a in result.actions if isinstance(a, DeleteJob)]
    assert [(d.name, d.uid) for d in deletes] == [("demo-check", "check-uid")]
    assert not any(isinstance(a, EnsureChild) and a.manifest["kind"] == "Job" for a in result.actions)
    # Once deleted, a new check is created for the new spec.
    result = plan(observed(after), settings=SETTINGS)
    created = [a for a in result.actions if isinstance(a, EnsureChild) and a.manifest["kind"] == "Job"]
    assert [c.manifest["metadata"]["name"] for c in created] == ["demo-check"]
    assert (
        created[0].manifest["metadata"]["annotations"][PREFLIGHT_SPEC_HASH_ANNOTATION]
        != (stale["metadata"]["annotations"][PREFLIGHT_SPEC_HASH_ANNOTATION])
    )


def test_skip_creates_no_check_and_no_data_condition() -> None:
    obj = ftj(preflight="skip")
    result = plan(Observed(ftj=obj, config_map=None, service=None, job=None, pods=(), now=T0), settings=SETTINGS)
    names = [a.manifest["metadata"]["name"] for a in result.actions if isinstance(a, EnsureChild)]
    assert names == ["demo-config", "demo-workers", "demo-train"]
    assert "DataValidated" not in conditions(result)
    assert PREFLIGHT_CONFIG_FILE_NAME not in result.actions[0].manifest["data"]  # type: ignore[union-attr]


def test_an_unschedulable_check_pod_fails_the_job_after_the_pending_timeout() -> None:
    obj = ftj(status={"phase": "Validating"})
    pending = check_pod("Pending")
    since = T0
    pending["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient cpu.",
            "lastTransitionTime": stamp(since),
        }
    ]
    early = plan(observed(obj, check_job=check_job(obj), check_pods=[pending]), settings=SETTINGS)
    assert early.phase == "Validating" and early.requeue_after == pytest.approx(601.0)
    late = plan(
        observed(obj, check_job=check_job(obj), check_pods=[pending], now=T0 + timedelta(seconds=601)),
        settings=SETTINGS,
    )
    assert late.phase == "Failed"
    assert (late.status_patch or {})["failure"]["reason"] == "Unschedulable"
    assert SetJobSuspend(name="demo-check", suspend=True, why=late.actions[-1].why) in late.actions  # type: ignore[union-attr]


def test_read_check_ignores_foreign_termination_messages() -> None:
    obj = ftj()
    job = check_job(obj, conditions=[condition("Complete")])
    view = read_check(job, pods=[check_pod("Succeeded", message="not json")], spec_hash="h", mode="warn", now=T0)
    assert view.state == "Failed" and view.failure is not None and view.failure.reason == "DataCheckFailed"


def test_the_estimated_finish_time_follows_the_trainers_pace_once_running() -> None:
    obj = ftj(status={"phase": "Validating"})
    job = check_job(obj, conditions=[condition("Complete")])
    first = plan(observed(obj, check_job=job, check_pods=[check_pod("Succeeded", result=PASSED)]), settings=SETTINGS)
    status = settled(obj, first)["status"]
    assert "estimatedFinishTime" not in status["estimate"]
    from kubetune_operator.status import Observation, compute_status, parse_status

    from kubetune.api.status import Progress

    previous = parse_status(status)
    progress = Progress(step=100, total_steps=474, eta_seconds=600, updated_at=T0 + timedelta(minutes=5))
    previous = previous.model_copy(update={"progress": progress})
    training = existing(built(obj).job, uid="job-uid", status={"active": 1})
    running_pod = {
        "kind": "Pod",
        "metadata": {"name": "demo-train-0-abcde", "creationTimestamp": stamp(T0)},
        "status": {"phase": "Running", "startTime": stamp(T0)},
    }
    desired = compute_status(
        Observation(
            generation=1,
            spec_problems=(),
            job=training,
            pods=[running_pod],
            previous=previous,
            now=T0 + timedelta(minutes=5),
            nodes=1,
            suspend_requested=False,
            pending_timeout=timedelta(seconds=600),
            data_check=True,
            checked=None,
        )
    )
    assert desired.phase == "Running"
    assert desired.estimate is not None
    assert desired.estimate.estimated_finish_time == T0 + timedelta(minutes=15)
