"""FineTuneProfile rules: which profile applies, what it fills in, what it refuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubetune.api.profile import (
    FineTuneProfileSpec,
    ProfileRef,
    choose_profile,
    effective_spec,
    limit_violations,
)
from kubetune.api.spec import FineTuneJobSpec


def job(**overrides: Any) -> FineTuneJobSpec:
    body: dict[str, Any] = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://data/train.jsonl"]},
    }
    return FineTuneJobSpec.model_validate(body | overrides)


def profile(**spec: Any) -> FineTuneProfileSpec:
    return FineTuneProfileSpec.model_validate(spec)


SMALL = profile(
    default=True,
    defaults={
        "trainerImage": "registry.example/kubetune/trainer:1.0",
        "gpuProduct": "NVIDIA-L4",
        "nodeSelector": {"pool": "gpu", "zone": "a"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "batch-low",
        "queueName": "team-queue",
        "outputBase": "s3://ml-artifacts/{namespace}/",
        "credentials": {"huggingFaceToken": {"name": "hf", "key": "token"}},
        "hyperparameters": {"learningRate": 1e-4, "epochs": 2},
    },
    limits={
        "maxGpusPerNode": 2,
        "maxNodes": 1,
        "allowedGpuProducts": ["NVIDIA-L4", "NVIDIA-A10G"],
        "allowedModelSources": ["hf://HuggingFaceTB/", "pvc://models/"],
        "allowedMethods": ["lora", "qlora"],
        "maxActiveDeadlineSeconds": 86400,
        "allowImageOverride": False,
    },
)


def refs(**profiles: FineTuneProfileSpec) -> list[ProfileRef]:
    return [
        ProfileRef(name=name, spec=spec, created=f"2026-11-0{i + 1}T00:00:00Z")
        for i, (name, spec) in enumerate(profiles.items())
    ]


@pytest.mark.parametrize(
    ("spec_profile", "namespace_profile", "expected"),
    [
        (None, None, ("small", "default")),
        ("large", None, ("large", "spec")),
        (None, "large", ("large", "namespace")),
        ("large", "large", ("large", "namespace")),
    ],
)
def test_the_namespace_label_then_spec_then_the_default(
    spec_profile: str | None, namespace_profile: str | None, expected: tuple[str, str]
) -> None:
    choice = choose_profile(
        spec_profile=spec_profile, namespace_profile=namespace_profile, profiles=refs(small=SMALL, large=profile())
    )
    assert (choice.name, choice.chosen_by, choice.problem) == (*expected, None)


def test_a_namespace_bound_to_a_profile_cannot_be_escaped_through_spec_profile() -> None:
    choice = choose_profile(
        spec_profile="large", namespace_profile="small", profiles=refs(small=SMALL, large=profile())
    )
    assert choice.name == "small" and choice.chosen_by == "namespace"
    assert choice.problem == (
        "spec.profile: large is not allowed: this namespace is bound to profile small (label kubetune.io/profile)"
    )


def test_without_a_default_profile_none_applies_and_of_two_defaults_the_oldest_does() -> None:
    assert choose_profile(spec_profile=None, namespace_profile=None, profiles=refs(large=profile())).name is None
    both = refs(first=profile(default=True), second=profile(default=True))
    assert choose_profile(spec_profile=None, namespace_profile=None, profiles=both).name == "first"


def test_defaults_fill_what_the_job_leaves_unset_and_say_what_they_filled() -> None:
    effective, applied = effective_spec(job(), SMALL.defaults, SMALL.limits, namespace="team-a", name="run-1")
    assert effective.trainer.image == "registry.example/kubetune/trainer:1.0"
    assert effective.resources.gpu_product == "NVIDIA-L4"
    assert effective.resources.node_selector == {"pool": "gpu", "zone": "a"}
    assert [t.key for t in effective.resources.tolerations] == ["nvidia.com/gpu"]
    assert effective.resources.priority_class_name == "batch-low"
    assert effective.run_policy.queue_name == "team-queue"
    assert effective.run_policy.active_deadline_seconds == 86400
    assert effective.output.destination == "s3://ml-artifacts/team-a/run-1"
    assert effective.credentials.hugging_face_token is not None
    assert (effective.hyperparameters.learning_rate, effective.hyperparameters.epochs) == (1e-4, 2)
    assert "spec.output.destination: s3://ml-artifacts/team-a/run-1" in applied
    assert "spec.hyperparameters.learningRate: 0.0001" in applied
    assert len(applied) == 11


def test_the_jobs_own_values_win_and_node_selectors_merge_under_them() -> None:
    own = job(
        trainer={"image": "mine:1"},
        resources={"gpuProduct": "NVIDIA-A10G", "nodeSelector": {"zone": "b"}, "priorityClassName": "urgent"},
        runPolicy={"queueName": "other", "activeDeadlineSeconds": 60},
        output={"destination": "pvc://outputs/mine"},
        hyperparameters={"learningRate": 3e-4, "maxSteps": 10},
    )
    effective, applied = effective_spec(own, SMALL.defaults, SMALL.limits, namespace="team-a", name="run-1")
    assert effective.trainer.image == "mine:1"
    assert effective.resources.gpu_product == "NVIDIA-A10G"
    assert effective.resources.node_selector == {"pool": "gpu", "zone": "b"}
    assert effective.resources.priority_class_name == "urgent"
    assert (effective.run_policy.queue_name, effective.run_policy.active_deadline_seconds) == ("other", 60)
    assert effective.output.destination == "pvc://outputs/mine"
    # maxSteps set: epochs stays unset (they are exclusive).
    assert (effective.hyperparameters.learning_rate, effective.hyperparameters.epochs) == (3e-4, None)
    assert not any(line.startswith(("spec.trainer.image", "spec.output", "spec.hyperparameters")) for line in applied)


def test_a_cpu_job_gets_no_gpu_product() -> None:
    effective, _ = effective_spec(
        job(resources={"gpusPerNode": 0}), SMALL.defaults, SMALL.limits, namespace="team-a", name="cpu"
    )
    assert effective.resources.gpu_product is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"resources": {"gpusPerNode": 8}},
            "spec.resources.gpusPerNode: 8 is over the limit of profile small (maxGpusPerNode 2)",
        ),
        ({"resources": {"nodes": 4}}, "spec.resources.nodes: 4 is over the limit of profile small (maxNodes 1)"),
        (
            {"resources": {"gpuProduct": "NVIDIA-H100-80GB-HBM3"}},
            "spec.resources.gpuProduct: NVIDIA-H100-80GB-HBM3 is not allowed by profile small "
            "(allowedGpuProducts NVIDIA-L4, NVIDIA-A10G)",
        ),
        (
            {"model": {"source": "hf://meta-llama/Llama-3.1-8B@main"}},
            "spec.model.source: hf://meta-llama/Llama-3.1-8B@main is not allowed by profile small "
            "(allowedModelSources hf://HuggingFaceTB/, pvc://models/)",
        ),
        (
            {"method": {"type": "full"}},
            "spec.method.type: full is not allowed by profile small (allowedMethods lora, qlora)",
        ),
        (
            {"runPolicy": {"activeDeadlineSeconds": 604800}},
            "spec.runPolicy.activeDeadlineSeconds: 604800 is over the limit of profile small "
            "(maxActiveDeadlineSeconds 86400)",
        ),
        (
            {"trainer": {"image": "mine:1"}},
            "spec.trainer.image: profile small does not allow setting the trainer image (allowImageOverride false)",
        ),
    ],
)
def test_each_limit_names_the_field_the_value_and_the_limit(overrides: dict[str, Any], message: str) -> None:
    spec = job(**overrides)
    effective, _ = effective_spec(spec, SMALL.defaults, SMALL.limits, namespace="team-a", name="run-1")
    assert limit_violations(spec, effective, profile="small", limits=SMALL.limits) == [message]


def test_a_job_within_the_limits_has_no_violations_and_no_limits_allow_everything() -> None:
    spec = job()
    effective, _ = effective_spec(spec, SMALL.defaults, SMALL.limits, namespace="team-a", name="run-1")
    assert limit_violations(spec, effective, profile="small", limits=SMALL.limits) == []
    big = job(resources={"gpusPerNode": 16, "nodes": 128}, method={"type": "full"}, trainer={"image": "x:1"})
    assert limit_violations(big, big, profile="open", limits=profile().limits) == []


def test_an_output_base_must_be_a_writable_uri() -> None:
    with pytest.raises(ValidationError, match="outputBase"):
        profile(defaults={"outputBase": "hf://org/models"})
    with pytest.raises(ValidationError, match="outputBase"):
        profile(defaults={"outputBase": "gs://bucket/{namespace}"})
