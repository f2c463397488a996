"""``kubetune validate``: FineTuneJobs and FineTuneProfiles in a file, each problem named by file, document
and field; documents of other kinds are not kubetune's and are skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.validation import profile_manifest_errors, validate_manifest_file
from kubetune.cli import main

JOB: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "demo", "namespace": "team-a"},
    "spec": {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["pvc://data/train.jsonl"]},
    },
}
PROFILE: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneProfile",
    "metadata": {"name": "small"},
    "spec": {
        "default": True,
        "defaults": {"gpuProduct": "NVIDIA-L4", "outputBase": "s3://ml-artifacts/{namespace}"},
        "limits": {"maxGpusPerNode": 2, "allowedMethods": ["lora", "qlora"]},
    },
}


def profile(**changes: Any) -> dict[str, Any]:
    return {**PROFILE, **changes}


def write(tmp_path: Path, *documents: object) -> Path:
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    return path


def test_a_job_without_an_output_destination_is_valid_because_a_profile_may_give_one(tmp_path: Path) -> None:
    assert validate_manifest_file(write(tmp_path, JOB)) == []


def test_a_valid_profile_and_job_in_one_file_pass(tmp_path: Path) -> None:
    assert validate_manifest_file(write(tmp_path, PROFILE, JOB)) == []


def test_profile_problems_name_file_document_and_field(tmp_path: Path) -> None:
    bad = profile(spec={"limits": {"maxGpusPerNode": 17, "allowedMethods": ["prefix"]}, "defaultz": True})
    path = write(tmp_path, JOB, bad)
    assert validate_manifest_file(path) == [
        f"{path} document 1: spec.limits.maxGpusPerNode: Input should be less than or equal to 16",
        f"{path} document 1: spec.limits.allowedMethods[0]: Input should be 'lora', 'qlora', 'dora' or 'full'",
        f"{path} document 1: spec.defaultz: Extra inputs are not permitted",
    ]


def test_a_profile_output_base_on_hugging_face_is_refused() -> None:
    (problem,) = profile_manifest_errors(profile(spec={"defaults": {"outputBase": "hf://org/models"}}))
    assert problem.startswith("spec.defaults.outputBase: ") and "hf://" in problem


def test_profile_defaults_are_checked_like_the_job_fields_they_fill() -> None:
    bad = profile(spec={"defaults": {"gpuProduct": "NVIDIA L4", "queueName": "Team_A"}})
    problems = profile_manifest_errors(bad)
    assert [p.split(":")[0] for p in problems] == ["spec.defaults.gpuProduct", "spec.defaults.queueName"]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("small", None),
        ("gpu.h100-large", None),
        ("a" * 253, None),
        ("", "metadata.name: required"),
        ("a" * 254, "metadata.name: must be at most 253 characters"),
        ("Small", "metadata.name: must be lowercase letters"),
        ("-small", "metadata.name: must be lowercase letters"),
        ("small.", "metadata.name: must be lowercase letters"),
        ("team_a", "metadata.name: must be lowercase letters"),
    ],
)
def test_profile_names_follow_the_rules_of_cluster_scoped_object_names(name: str, problem: str | None) -> None:
    problems = profile_manifest_errors(profile(metadata={"name": name}))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_a_profile_may_start_with_a_digit_unlike_a_job() -> None:
    # A job's name becomes a DNS-1035 Service name (a letter first); a profile's only an object name.
    assert profile_manifest_errors(profile(metadata={"name": "8-gpus"})) == []


def test_a_profile_namespace_is_not_a_problem_the_api_server_ignores_it_on_cluster_scoped_objects() -> None:
    assert profile_manifest_errors(profile(metadata={"name": "small", "namespace": "team-a"})) == []


def test_a_profile_needs_a_spec_and_the_api_version() -> None:
    bare = {"apiVersion": "kubetune.io/v1", "kind": "FineTuneProfile", "metadata": {"name": "small"}}
    assert profile_manifest_errors(bare) == [
        "apiVersion: expected kubetune.io/v1alpha1, got 'kubetune.io/v1'",
        "spec: required and must be a mapping",
    ]


def test_an_empty_profile_spec_is_valid() -> None:
    assert profile_manifest_errors(profile(spec={})) == []


def test_other_kinds_are_skipped_and_documents_that_are_not_mappings_reported(tmp_path: Path) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Not_Checked"}}
    path = write(tmp_path, namespace, ["a", "list"], PROFILE)
    assert validate_manifest_file(path) == [f"{path} document 1: not a mapping"]


def test_the_validate_command_takes_profiles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, PROFILE)
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: valid\n"
    bad = write(tmp_path, profile(metadata={"name": "Small"}))
    assert main(["validate", str(bad)]) == 1
    assert f"{bad} document 0: metadata.name: must be lowercase letters" in capsys.readouterr().err
