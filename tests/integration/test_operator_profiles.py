"""The operator and FineTuneProfiles on the control plane: defaults on the pods, a record in the status, and
profiles edited or deleted under a running job.

The admission policy is tested in ``test_profile_admission.py``; here it is not installed, so what the
operator itself checks (a profile may change after admission) is what decides.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kube_objects import FineTuneJobs, condition_of, status_of, wait_for
from kubetune_operator.builders.names import KUEUE_QUEUE_LABEL
from kubetune_operator.errors import ApiError
from kubetune_operator.k8s import Kube, object_path

from kubetune.api.profile import PROFILE_LABEL, PROFILE_PLURAL
from kubetune.api.resource import API_VERSION

pytestmark = pytest.mark.cluster

PROFILES = f"/apis/{API_VERSION}/{PROFILE_PLURAL}"
RUN_FOR = {"kubetune.test/run-for": "3600s"}


def job_spec(**overrides: Any) -> dict[str, Any]:
    """A tenant's minimal job: the model and the data; the profile gives the rest."""
    body: dict[str, Any] = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"], "preflight": "skip"},
    }
    return body | overrides


POLICIES = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
BINDINGS = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"


@pytest.fixture(scope="module", autouse=True)
def without_profile_admission(admin: Kube) -> Iterator[None]:
    """What the operator checks is what these tests show: a chart installed earlier in the session (the
    end-to-end tests') has a profile policy; its bindings are set aside for the module and put back."""
    policies = {
        p["metadata"]["name"]
        for p in admin.request("GET", POLICIES).get("items") or []
        if (p["spec"].get("paramKind") or {}).get("kind") == "FineTuneProfile"
    }
    kept = [b for b in admin.request("GET", BINDINGS).get("items") or [] if b["spec"].get("policyName") in policies]
    for binding in kept:
        admin.request("DELETE", f"{BINDINGS}/{binding['metadata']['name']}")
    # The API server's policy informer drops a deleted binding within about a second.
    time.sleep(3 if kept else 0)
    yield
    for binding in kept:
        body = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "spec": binding["spec"],
        }
        meta = binding["metadata"]
        body["metadata"] = {key: meta[key] for key in ("name", "labels", "annotations") if key in meta}
        admin.request("POST", BINDINGS, body=body)


@pytest.fixture
def profiles(admin: Kube) -> Iterator[Callable[..., str]]:
    """Creates FineTuneProfiles with unique names (cluster-scoped: deleted after the test)."""
    made: list[str] = []

    def make(**spec: Any) -> str:
        name = f"t-{uuid.uuid4().hex[:8]}"
        admin.request(
            "POST",
            PROFILES,
            body={"apiVersion": API_VERSION, "kind": "FineTuneProfile", "metadata": {"name": name}, "spec": spec},
        )
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            admin.request("DELETE", f"{PROFILES}/{name}")
        except ApiError as err:
            if err.status != 404:
                raise


def small_profile(make: Callable[..., str], *, image: str = "registry.example/kubetune/trainer:2") -> str:
    return make(
        defaults={
            "trainerImage": image,
            "gpuProduct": "NVIDIA-L4",
            "nodeSelector": {"node.kubernetes.io/pool": "gpu-l4"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "queueName": "team-gpu",
            "outputBase": "s3://ml-artifacts/{namespace}",
        },
        limits={"maxGpusPerNode": 1, "maxNodes": 1, "allowedMethods": ["lora", "qlora"]},
    )


def label_namespace(admin: Kube, namespace: str, profile: str) -> None:
    admin.request(
        "PATCH",
        object_path(api_version="v1", plural="namespaces", namespace=None, name=namespace),
        body={"metadata": {"labels": {PROFILE_LABEL: profile}}},
        content_type="application/merge-patch+json",
    )


def test_a_tenant_job_runs_with_the_profiles_settings_and_keeps_them_when_the_profile_changes_or_goes(
    admin: Kube, ftjs: FineTuneJobs, namespace: str, profiles: Callable[..., str]
) -> None:
    profile = small_profile(profiles)
    ftjs.create("tenant", spec=job_spec(profile=profile), annotations=RUN_FOR)
    running = ftjs.wait_phase("tenant", "Running", timeout=60)
    (pod,) = ftjs.children("pods", "tenant")
    assert pod["spec"]["containers"][0]["image"] == "registry.example/kubetune/trainer:2"
    assert pod["spec"]["nodeSelector"] == {"node.kubernetes.io/pool": "gpu-l4", "nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["spec"]["nodeName"].startswith("gpu-l4")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    (job,) = ftjs.children("jobs", "tenant")
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-gpu"
    recorded = status_of(running)["profile"]
    assert recorded["name"] == profile and recorded["chosenBy"] == "spec"
    assert f"spec.output.destination: s3://ml-artifacts/{namespace}/tenant" in recorded["applied"]
    assert "destination" not in (ftjs.get("tenant") or {})["spec"]["output"], "the user's spec was changed"
    assert "ProfileApplied" in ftjs.event_reasons("tenant")

    # The platform team edits the profile: the running job's pods, Job and status stay as they are.
    admin.request(
        "PATCH",
        f"{PROFILES}/{profile}",
        body={
            "spec": {
                "defaults": {"trainerImage": "registry.example/kubetune/trainer:3"},
                "limits": {"maxGpusPerNode": 0},
            }
        },
        content_type="application/merge-patch+json",
    )
    time.sleep(5)  # the operator has seen the change (it reconciles waiting jobs on profile events)
    (pod_after,) = ftjs.children("pods", "tenant")
    assert pod_after["metadata"]["uid"] == pod["metadata"]["uid"]
    (job_after,) = ftjs.children("jobs", "tenant")
    assert job_after["metadata"]["uid"] == job["metadata"]["uid"]
    after = ftjs.get("tenant") or {}
    assert status_of(after)["phase"] == "Running" and status_of(after)["profile"] == recorded

    # The profile is deleted under the job: reported, and the job goes on.
    admin.request("DELETE", f"{PROFILES}/{profile}")
    missing = ftjs.wait(
        "tenant", lambda o: bool((status_of(o).get("profile") or {}).get("missing")), what="status.profile.missing"
    )
    assert status_of(missing)["phase"] == "Running"
    assert "ProfileMissing" in ftjs.event_reasons("tenant")


def test_the_operator_refuses_a_job_outside_its_namespaces_profile(
    admin: Kube, ftjs: FineTuneJobs, namespace: str, profiles: Callable[..., str]
) -> None:
    small = small_profile(profiles)
    large = profiles(limits={"maxGpusPerNode": 8})
    label_namespace(admin, namespace, small)
    ftjs.create("escape", spec=job_spec(profile=large, resources={"gpusPerNode": 8}), annotations=RUN_FOR)
    failed = ftjs.wait_phase("escape", "Failed", timeout=60)
    failure = status_of(failed)["failure"]
    assert failure["reason"] == "OutsideProfile"
    assert f"this namespace is bound to profile {small}" in failure["message"]
    assert (
        f"spec.resources.gpusPerNode: 8 is over the limit of profile {small} (maxGpusPerNode 1)" in failure["message"]
    )
    assert condition_of(failed, "Validated")["reason"] == "OutsideProfile"
    assert ftjs.children("jobs", "escape") == [] and ftjs.children("configmaps", "escape") == []


def test_a_job_waits_for_its_profile_and_starts_when_it_is_created(
    admin: Kube, ftjs: FineTuneJobs, profiles: Callable[..., str]
) -> None:
    name = f"t-later-{uuid.uuid4().hex[:6]}"
    ftjs.create("waits", spec=job_spec(profile=name), annotations=RUN_FOR)
    pending = ftjs.wait(
        "waits",
        lambda o: (
            condition_of(o, "Validated").get("reason") == "ProfileNotFound" if status_of(o).get("conditions") else False
        ),
        what="Validated=False ProfileNotFound",
    )
    assert status_of(pending)["phase"] == "Pending" and ftjs.children("jobs", "waits") == []
    admin.request(
        "POST",
        PROFILES,
        body={
            "apiVersion": API_VERSION,
            "kind": "FineTuneProfile",
            "metadata": {"name": name},
            "spec": {"defaults": {"outputBase": "s3://ml-artifacts/{namespace}"}},
        },
    )
    try:
        running = ftjs.wait_phase("waits", "Running", timeout=60)
        assert status_of(running)["profile"]["name"] == name
    finally:
        admin.request("DELETE", f"{PROFILES}/{name}")
    wait_for(lambda: ftjs.get("waits"), lambda o: o is not None, what="the job", timeout=5)
