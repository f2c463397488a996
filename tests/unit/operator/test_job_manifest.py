"""The Indexed Job: completions, retries, deadlines, suspend, Kueue and the podFailurePolicy."""

from __future__ import annotations

from collections.abc import Callable

from kubetune_operator.builders import build_children
from kubetune_operator.builders.job import pod_failure_policy
from kubetune_operator.settings import OperatorSettings

from kubetune.api.exit_codes import ExitCode
from kubetune.api.resource import FineTuneJob

MakeFtj = Callable[..., FineTuneJob]


def test_job_is_indexed_with_one_pod_per_node(make_ftj: MakeFtj) -> None:
    job = build_children(ftj=make_ftj(resources={"nodes": 3}), settings=OperatorSettings()).job
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    assert spec["podReplacementPolicy"] == "Failed"


def test_run_policy_sets_backoff_deadline_and_suspend(make_ftj: MakeFtj) -> None:
    ftj = make_ftj(runPolicy={"backoffLimit": 7, "activeDeadlineSeconds": 3600, "suspend": True})
    spec = build_children(ftj=ftj, settings=OperatorSettings()).job["spec"]
    assert spec["backoffLimit"] == 7 and spec["activeDeadlineSeconds"] == 3600 and spec["suspend"] is True
    default = build_children(ftj=make_ftj(), settings=OperatorSettings()).job["spec"]
    assert default["backoffLimit"] == 3 and default["suspend"] is False and "activeDeadlineSeconds" not in default


def test_queue_name_becomes_the_kueue_label_on_the_job(make_ftj: MakeFtj) -> None:
    job = build_children(ftj=make_ftj(runPolicy={"queueName": "gpu-team-a"}), settings=OperatorSettings()).job
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-team-a"
    plain = build_children(ftj=make_ftj(), settings=OperatorSettings()).job
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]


def test_pod_failure_policy_fails_the_job_on_fatal_trainer_exit_codes() -> None:
    first = pod_failure_policy()["rules"][0]
    assert first["action"] == "FailJob"
    assert first["onExitCodes"] == {
        "containerName": "trainer",
        "operator": "In",
        "values": [ExitCode.BAD_DATA, ExitCode.BAD_CONFIG, ExitCode.DIVERGED],
    }
    assert first["onExitCodes"]["values"] == [65, 78, 79]


def test_pod_failure_policy_ignores_checkpointed_sigterm_and_disruptions() -> None:
    rules = pod_failure_policy()["rules"]
    ignored_codes = [r["onExitCodes"]["values"] for r in rules if r["action"] == "Ignore" and "onExitCodes" in r]
    assert ignored_codes == [[75]]
    disruption = [r for r in rules if "onPodConditions" in r]
    assert disruption == [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]


def test_retryable_exit_codes_match_no_rule_so_they_count_against_the_backoff_limit() -> None:
    matched = {code for r in pod_failure_policy()["rules"] if "onExitCodes" in r for code in r["onExitCodes"]["values"]}
    assert not {1, 137, 139} & matched


def test_job_spec_hash_changes_with_resources_but_not_with_suspend(make_ftj: MakeFtj) -> None:
    def digest(**spec: object) -> str:
        job = build_children(ftj=make_ftj(**spec), settings=OperatorSettings()).job
        return str(job["metadata"]["annotations"]["kubetune.io/job-spec-hash"])

    assert digest() == digest()
    assert digest(runPolicy={"suspend": True}) == digest(runPolicy={"suspend": False})
    assert digest(resources={"nodes": 2}) != digest(resources={"nodes": 1})
    assert digest(resources={"gpuProduct": "NVIDIA-L4"}) != digest()
    assert digest(resources={"gpusPerNode": 0}) != digest(resources={"gpusPerNode": 1})


def test_cpu_job_is_indexed_with_one_pod_per_node_like_a_gpu_job(make_ftj: MakeFtj) -> None:
    job = build_children(ftj=make_ftj(resources={"gpusPerNode": 0, "nodes": 2}), settings=OperatorSettings()).job
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["podFailurePolicy"] == pod_failure_policy()
