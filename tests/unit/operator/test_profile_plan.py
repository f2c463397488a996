"""FineTuneProfiles as the plan sees them: chosen, checked, recorded once, then never consulted again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import yaml
from kubetune_operator.builders import build_children
from kubetune_operator.builders.names import KUEUE_QUEUE_LABEL
from kubetune_operator.plan import EnsureChild, Observed, Plan, plan
from kubetune_operator.settings import OperatorSettings

from kubetune.api.resource import FineTuneJob
from kubetune.api.trainer_config import CONFIG_FILE_NAME

T0 = datetime(2026, 11, 29, 9, 0, 0, tzinfo=UTC)
SETTINGS = OperatorSettings()


def ftj(*, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://data/train.jsonl"], "preflight": "skip"},
    }
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "run", "namespace": "team-a", "uid": "ftj-uid", "generation": 1},
        "spec": body | spec,
        "status": status or {},
    }


def profile_obj(name: str, *, uid: str = "p-uid", version: str = "10", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneProfile",
        "metadata": {
            "name": name,
            "uid": uid,
            "resourceVersion": version,
            "generation": 3,
            "creationTimestamp": "2026-11-01T00:00:00Z",
        },
        "spec": spec,
    }


SMALL = profile_obj(
    "small",
    default=True,
    defaults={
        "trainerImage": "registry.example/trainer:2",
        "gpuProduct": "NVIDIA-L4",
        "nodeSelector": {"pool": "gpu"},
        "queueName": "team-a-gpu",
        "outputBase": "s3://ml-artifacts/{namespace}",
    },
    limits={"maxGpusPerNode": 2, "allowedMethods": ["lora", "qlora"]},
)


def observed(obj: dict[str, Any], **kw: Any) -> Observed:
    values: dict[str, Any] = {
        "ftj": obj,
        "config_map": None,
        "service": None,
        "job": None,
        "pods": (),
        "now": T0,
        "profiles": (SMALL,),
    }
    return Observed(**(values | kw))


def settled(obj: dict[str, Any], result: Plan) -> dict[str, Any]:
    merged = {**(obj.get("status") or {}), **(result.status_patch or {})}
    return {**obj, "status": {k: v for k, v in merged.items() if v is not None}}


def created(result: Plan, kind: str) -> dict[str, Any]:
    (manifest,) = [a.manifest for a in result.actions if isinstance(a, EnsureChild) and a.manifest["kind"] == kind]
    return manifest


def condition(result: Plan, type_: str) -> dict[str, Any]:
    return next(c for c in (result.status_patch or {})["conditions"] if c["type"] == type_)


def test_a_default_profile_fills_the_children_and_is_recorded_without_touching_the_spec() -> None:
    obj = ftj()
    result = plan(observed(obj), settings=SETTINGS)
    job = created(result, "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/trainer:2"
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-L4"}
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a-gpu"
    config = yaml.safe_load(created(result, "ConfigMap")["data"][CONFIG_FILE_NAME])
    assert config["output"]["destination"] == "s3://ml-artifacts/team-a/run"
    recorded = (result.status_patch or {})["profile"]
    assert (recorded["name"], recorded["chosenBy"], recorded["uid"], recorded["resourceVersion"]) == (
        "small",
        "default",
        "p-uid",
        "10",
    )
    assert "spec.trainer.image: registry.example/trainer:2" in recorded["applied"]
    assert "ProfileApplied" in [e.reason for e in result.events]
    assert "output" not in obj["spec"]  # the user's object is never patched, only its status


def test_after_the_record_a_changed_profile_changes_nothing_and_a_deleted_one_is_reported() -> None:
    first = plan(observed(ftj()), settings=SETTINGS)
    obj = settled(ftj(), first)
    children = build_children(
        ftj=FineTuneJob.from_object(
            {
                **obj,
                "spec": obj["spec"]
                | {
                    "trainer": {"image": "registry.example/trainer:2"},
                    "resources": {"gpuProduct": "NVIDIA-L4", "nodeSelector": {"pool": "gpu"}},
                    "runPolicy": {"queueName": "team-a-gpu"},
                    "output": {"destination": "s3://ml-artifacts/team-a/run"},
                },
                "status": {},
            }
        ),
        settings=SETTINGS,
    )
    existing = {
        "config_map": {**children.config_map, "metadata": {**children.config_map["metadata"], "uid": "cm"}},
        "service": {**children.service, "metadata": {**children.service["metadata"], "uid": "svc"}},
        "job": {**children.job, "metadata": {**children.job["metadata"], "uid": "job"}, "status": {}},
    }
    for key in ("config_map", "service", "job"):
        existing[key]["metadata"]["ownerReferences"][0]["uid"] = "ftj-uid"
    edited = profile_obj(
        "small",
        version="11",
        default=True,
        defaults={"trainerImage": "registry.example/trainer:3"},
        limits={"maxGpusPerNode": 0},
    )
    again = plan(observed(obj, profiles=(edited,), **existing), settings=SETTINGS)
    assert not [a for a in again.actions if isinstance(a, EnsureChild)], "an edited profile rebuilt a child"
    assert (
        "profile" not in (again.status_patch or {}) or (again.status_patch or {})["profile"] == obj["status"]["profile"]
    )
    assert again.phase != "Failed"
    gone = plan(observed(obj, profiles=(), **existing), settings=SETTINGS)
    assert not [a for a in gone.actions if isinstance(a, EnsureChild)]
    assert (gone.status_patch or {})["profile"]["missing"] is True
    assert [e.reason for e in gone.events] == ["ProfileMissing"]


def test_over_the_limits_the_job_fails_before_anything_is_created() -> None:
    result = plan(observed(ftj(resources={"gpusPerNode": 8}, method={"type": "full"})), settings=SETTINGS)
    assert result.actions == ()
    status = result.status_patch or {}
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "OutsideProfile"
    assert (
        "spec.resources.gpusPerNode: 8 is over the limit of profile small (maxGpusPerNode 2)"
        in status["failure"]["message"]
    )
    assert "spec.method.type: full is not allowed by profile small" in status["failure"]["message"]
    assert condition(result, "Validated")["reason"] == "OutsideProfile"


def test_a_namespace_bound_to_a_profile_cannot_be_left_through_spec_profile() -> None:
    large = profile_obj("large", uid="l-uid")
    result = plan(observed(ftj(profile="large"), profiles=(SMALL, large), namespace_profile="small"), settings=SETTINGS)
    status = result.status_patch or {}
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "OutsideProfile"
    assert "this namespace is bound to profile small" in status["failure"]["message"]
    assert result.actions == ()


def test_a_job_waits_for_a_profile_that_does_not_exist_yet() -> None:
    waiting = plan(observed(ftj(profile="later", output={"destination": "s3://outputs/run"})), settings=SETTINGS)
    assert waiting.actions == ()
    assert waiting.phase == "Pending"
    assert condition(waiting, "Validated")["reason"] == "ProfileNotFound"
    obj = settled(ftj(profile="later", output={"destination": "s3://outputs/run"}), waiting)
    arrived = plan(observed(obj, profiles=(SMALL, profile_obj("later", uid="x"))), settings=SETTINGS)
    assert [a.manifest["kind"] for a in arrived.actions if isinstance(a, EnsureChild)] == [
        "ConfigMap",
        "Service",
        "Job",
    ]
    assert (arrived.status_patch or {})["profile"]["chosenBy"] == "spec"
    assert condition(arrived, "Validated")["status"] == "True"


def test_no_destination_and_no_profile_to_give_one_is_an_invalid_spec() -> None:
    result = plan(observed(ftj(), profiles=()), settings=SETTINGS)
    status = result.status_patch or {}
    assert status["phase"] == "Failed" and status["failure"]["reason"] == "InvalidSpec"
    assert status["failure"]["message"].startswith("spec.output.destination: required")


def test_a_job_that_ran_before_profiles_existed_is_left_as_it_is() -> None:
    obj = ftj(resources={"gpusPerNode": 8}, output={"destination": "s3://outputs/run"}, status={"phase": "Running"})
    children = build_children(ftj=FineTuneJob.from_object({**obj, "status": {}}), settings=SETTINGS)
    job = {**children.job, "metadata": {**children.job["metadata"], "uid": "job"}, "status": {"active": 1}}
    result = plan(observed(obj, job=job), settings=SETTINGS)
    assert result.phase != "Failed"
    assert "profile" not in (result.status_patch or {})
