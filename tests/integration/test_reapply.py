"""Re-applying a FineTuneJob manifest, as ``kubectl apply`` and a GitOps sync do: what docs/gitops.md says.

The real API server (CEL transition rules of the committed CRD), the bundled kubectl and the operator.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kube_objects import FineTuneJobs, ftj_manifest, minimal_spec, status_of
from kubetune_testenv.cluster import Cluster, ControlPlane

from kubetune.api.spec import IMMUTABLE_SPEC_FIELDS

pytestmark = pytest.mark.cluster

RUNS_LONG = {"kubetune.test/run-for": "10m"}
# One change per immutable group, each valid on its own, so only the transition rule can refuse it.
IMMUTABLE_CHANGES: dict[str, dict[str, Any]] = {
    "model": {"model": {"source": "hf://HuggingFaceTB/SmolLM2-360M-Instruct@main"}},
    "dataset": {"dataset": {"train": ["s3://training-data/other.jsonl"]}},
    "method": {"method": {"type": "lora", "rank": 8}},
    "hyperparameters": {"hyperparameters": {"learningRate": 0.0001}},
    "output": {"output": {"destination": "s3://outputs/other"}},
}
# Immutable by a rule on the spec (it is optional, and may not be added either).
PROFILE_CHANGE = {"profile": "other"}
H100_PAIR = {"nodes": 2, "gpusPerNode": 8, "gpuProduct": "NVIDIA-H100-80GB-HBM3"}


class Kubectl:
    """``kubectl apply``/``replace`` of manifests written to files, in one namespace."""

    def __init__(self, plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
        self.plane, self.namespace, self.tmp_path = plane, namespace, tmp_path

    def run(self, verb: str, manifest: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
        path = self.tmp_path / f"{manifest['metadata']['name']}.json"
        path.write_text(json.dumps(manifest))
        return self.plane.kubectl(verb, "-n", self.namespace, "-f", str(path), *flags, check=False)

    def apply(self, manifest: dict[str, Any], *flags: str) -> str:
        result = self.run("apply", manifest, *flags)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def kubectl(cluster: Cluster, ftjs: FineTuneJobs, tmp_path: Path) -> Kubectl:
    if not isinstance(cluster, ControlPlane):
        pytest.skip("kubectl is bundled only with the local control plane, not with KUBETUNE_TEST_KUBECONFIG")
    return Kubectl(cluster, ftjs.namespace, tmp_path)


def manifest(name: str, **spec: Any) -> dict[str, Any]:
    return ftj_manifest(name, spec=minimal_spec() | spec, annotations=RUNS_LONG)


def observed(ftjs: FineTuneJobs, name: str, generation: int) -> dict[str, Any]:
    return ftjs.wait(
        name, lambda obj: status_of(obj).get("observedGeneration") == generation, what=f"generation {generation}"
    )


def test_an_unchanged_apply_bumps_no_generation_and_the_operator_does_nothing(
    ftjs: FineTuneJobs, kubectl: Kubectl
) -> None:
    body = manifest("steady")
    assert "created" in kubectl.apply(body)
    running = ftjs.wait_phase("steady", "Running")
    (job,) = ftjs.children("jobs", "steady")
    events = ftjs.event_reasons("steady")
    assert "unchanged" in kubectl.apply(body)
    kubectl.apply(body, "--server-side")
    kubectl.apply(body, "--server-side")
    after = ftjs.get("steady") or {}
    assert after["metadata"]["generation"] == running["metadata"]["generation"] == 1
    assert status_of(after)["phase"] == "Running" and status_of(after)["observedGeneration"] == 1
    assert [j["metadata"]["uid"] for j in ftjs.children("jobs", "steady")] == [job["metadata"]["uid"]]
    assert ftjs.event_reasons("steady") == events


def test_suspend_and_resize_in_one_apply_is_refused_and_takes_two(ftjs: FineTuneJobs, kubectl: Kubectl) -> None:
    kubectl.apply(manifest("resize"))
    ftjs.wait_phase("resize", "Running")
    (job,) = ftjs.children("jobs", "resize")
    at_once = kubectl.run("apply", manifest("resize", runPolicy={"suspend": True}, resources=H100_PAIR))
    assert at_once.returncode != 0
    assert "spec.resources can change only while the job is suspended" in at_once.stderr
    assert (ftjs.get("resize") or {})["metadata"]["generation"] == 1
    kubectl.apply(manifest("resize", runPolicy={"suspend": True}))
    ftjs.wait_phase("resize", "Suspended")
    kubectl.apply(manifest("resize", runPolicy={"suspend": True}, resources=H100_PAIR))
    replaced = ftjs.wait(
        "resize",
        lambda _: [j["metadata"]["uid"] for j in ftjs.children("jobs", "resize")] not in ([], [job["metadata"]["uid"]]),
        what="its Job to be replaced",
    )
    assert status_of(replaced)["phase"] == "Suspended"
    (new_job,) = ftjs.children("jobs", "resize")
    assert new_job["spec"]["completions"] == 2


def test_requests_and_checkpointing_change_while_running_and_reach_the_pods_after_a_suspend(
    ftjs: FineTuneJobs, kubectl: Kubectl
) -> None:
    kubectl.apply(manifest("requests"))
    ftjs.wait_phase("requests", "Running")
    (job,) = ftjs.children("jobs", "requests")
    changed = {"resources": {"cpu": "4", "memory": "8Gi"}, "checkpointing": {"everySteps": 50}}
    kubectl.apply(manifest("requests", **changed))
    assert status_of(observed(ftjs, "requests", 2))["phase"] == "Running"
    # The trainer config is rewritten at once; the running trainer and its Job are left alone.
    ftjs.wait(
        "requests",
        lambda _: "everySteps: 50" in ftjs.children("configmaps", "requests")[0]["data"]["trainer-config.yaml"],
        what="the trainer config to be rewritten",
    )
    assert [j["metadata"]["uid"] for j in ftjs.children("jobs", "requests")] == [job["metadata"]["uid"]]
    (pod,) = ftjs.children("pods", "requests")
    assert "cpu" not in pod["spec"]["containers"][0]["resources"]["requests"], "a running trainer is left alone"
    kubectl.apply(manifest("requests", **changed, runPolicy={"suspend": True}))
    ftjs.wait(
        "requests",
        lambda _: (
            [j["metadata"]["uid"] for j in ftjs.children("jobs", "requests")] not in ([], [job["metadata"]["uid"]])
        ),
        what="its Job to be replaced",
    )
    kubectl.apply(manifest("requests", **changed, runPolicy={"suspend": False}))
    ftjs.wait_phase("requests", "Running")
    (pod,) = ftjs.children("pods", "requests")
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"}


def test_a_changed_immutable_field_is_refused_by_apply_and_replace(ftjs: FineTuneJobs, kubectl: Kubectl) -> None:
    assert set(IMMUTABLE_CHANGES) == set(IMMUTABLE_SPEC_FIELDS)
    kubectl.apply(manifest("fixed"))
    ftjs.wait_phase("fixed", "Running")
    for field, change in [*IMMUTABLE_CHANGES.items(), ("profile", PROFILE_CHANGE)]:
        for verb in ("apply", "replace"):
            result = kubectl.run(verb, manifest("fixed", **change))
            for _ in range(5):  # replace sends the resourceVersion it read: the operator may write in between
                if "(Conflict)" not in result.stderr:
                    break
                result = kubectl.run(verb, manifest("fixed", **change))
            assert result.returncode != 0, f"{verb} changed spec.{field}"
            assert f"spec.{field} is immutable; create a new FineTuneJob" in result.stderr
    assert (ftjs.get("fixed") or {})["metadata"]["generation"] == 1


def test_replace_force_deletes_and_creates_a_new_run(ftjs: FineTuneJobs, kubectl: Kubectl) -> None:
    kubectl.apply(manifest("rerun"))
    before = ftjs.wait_phase("rerun", "Running")
    result = kubectl.run("replace", manifest("rerun", **IMMUTABLE_CHANGES["output"]), "--force")
    assert result.returncode == 0, result.stderr
    after = ftjs.wait_phase("rerun", "Running")
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    assert after["spec"]["output"]["destination"] == "s3://outputs/other"
    assert status_of(after)["jobName"] == "rerun-train"
