"""FineTuneProfile limits, refused by the real API server's admission, and who may write FineTuneProfiles.

The chart's ValidatingAdmissionPolicy and its binding (rendered by helm, renamed so a chart installed in the
same session cannot clash) are applied to the control plane; profiles are created as the admin. Every refusal
is compared, word for word, with what ``kubetune.api.profile.limit_violations`` (the operator's check) says
about the same spec, so the CEL and the Python stay in step.

The API server learns of new policies, profiles and namespace labels through informers, a moment after they
are written: every test first waits until a probe it knows must be refused is refused (a dry run, which goes
through admission and stores nothing). Profiles are deleted after each test and the policy after the module;
a default profile would apply to every other test's FineTuneJobs, so none outlives its test.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_objects import ftj_collection, ftj_manifest, minimal_spec, wait_for
from kubetune_operator.errors import ApiError
from kubetune_operator.k8s import Kube
from kubetune_testenv.cluster import Cluster, ControlPlane, new_api_client
from kubetune_testenv.helm import find_helm

from kubetune.api.profile import (
    PROFILE_LABEL,
    FineTuneProfileSpec,
    choose_profile,
    effective_spec,
    limit_violations,
)
from kubetune.api.spec import FineTuneJobSpec

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
PROFILES = "/apis/kubetune.io/v1alpha1/finetuneprofiles"
ADMISSION = "/apis/admissionregistration.k8s.io/v1"
RBAC = "/apis/rbac.authorization.k8s.io/v1"
MERGE_PATCH = "application/merge-patch+json"
DRY_RUN = (("dryRun", "All"),)
# The informers behind the policy (policies, profiles, namespaces) catch up within a second or two; generous
# because CI machines are shared.
EFFECTIVE_TIMEOUT_S = 60
# What the API server puts before the policy's own message.
DENIED = "denied request: "


def rendered(template: str) -> list[dict[str, Any]]:
    """The objects of one chart template, as ``helm template`` renders them with the default values."""
    helm = find_helm()
    if helm is None:
        pytest.fail("helm not found: run .ci/build-helm.sh (or set $HELM to a helm 3 binary)", pytrace=False)
    chart = str(REPO / "charts" / "kubetune")
    result = subprocess.run(
        [str(helm), "template", "kubetune", chart, "--show-only", f"templates/{template}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def unique(prefix: str) -> str:
    return f"t-{prefix}-{uuid.uuid4().hex[:6]}"


def job_spec(**groups: Any) -> dict[str, Any]:
    """A suspended job (it takes no fake GPU if an operator runs), with these spec fields and groups merged in."""
    spec = minimal_spec() | {"runPolicy": {"suspend": True}}
    for group, fields in groups.items():
        spec[group] = {**spec.get(group, {}), **fields} if isinstance(fields, dict) else fields
    return spec


def refusal(kube: Kube, namespace: str, name: str, spec: dict[str, Any], *, dry_run: bool = False) -> str | None:
    """The policy's message when the API server refuses to create this job (HTTP 422), else None (admitted)."""
    try:
        kube.request(
            "POST", ftj_collection(namespace), query=DRY_RUN if dry_run else (), body=ftj_manifest(name, spec=spec)
        )
    except ApiError as err:
        assert err.status == 422 and DENIED in err.message, f"expected the policy's refusal, got {err}"
        return err.message.split(DENIED, 1)[1]
    return None


def expected(spec: dict[str, Any], profile: dict[str, Any], *, name: str, namespace: str, job: str) -> list[str]:
    """What the operator's Python says about this job under this profile (the API defaults filled in)."""
    parsed = FineTuneJobSpec.model_validate(spec)
    limits = FineTuneProfileSpec.model_validate(profile)
    effective, _ = effective_spec(parsed, limits.defaults, limits.limits, namespace=namespace, name=job)
    return limit_violations(parsed, effective, profile=name, limits=limits.limits)


@dataclass
class Profiles:
    """FineTuneProfiles created by one test, removed afterwards; the admin's client and a namespace to probe."""

    admin: Kube
    namespace: str
    created: list[str]

    def create(self, name: str, spec: dict[str, Any], *, probe: dict[str, Any] | None = None) -> None:
        """Create the profile and wait until the policy enforces it: ``probe`` (default: one GPU more than
        maxGpusPerNode, naming the profile) must be refused."""
        self.admin.request(
            "POST",
            PROFILES,
            body={
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneProfile",
                "metadata": {"name": name},
                "spec": spec,
            },
        )
        self.created.append(name)
        if probe is None:
            probe = job_spec(profile=name, resources={"gpusPerNode": spec["limits"]["maxGpusPerNode"] + 1})
        self.wait_refused(probe)

    def wait_refused(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        message = wait_for(
            lambda: refusal(self.admin, namespace or self.namespace, "probe", spec, dry_run=True),
            lambda refused: refused is not None,
            what="the admission policy to refuse a probe job",
            timeout=EFFECTIVE_TIMEOUT_S,
        )
        assert message is not None
        return message

    def wait_admitted(self, spec: dict[str, Any], namespace: str | None = None) -> None:
        wait_for(
            lambda: refusal(self.admin, namespace or self.namespace, "probe", spec, dry_run=True),
            lambda refused: refused is None,
            what="the admission policy to admit a probe job",
            timeout=EFFECTIVE_TIMEOUT_S,
        )

    def delete(self, name: str) -> None:
        try:
            self.admin.request("DELETE", f"{PROFILES}/{name}")
        except ApiError as err:
            if err.status != 404:
                raise
        if name in self.created:
            self.created.remove(name)


@dataclass(frozen=True)
class Policy:
    name: str
    # Seconds from creating the policy and binding until the API server first refused a job with them.
    effective_after_s: float


@pytest.fixture(scope="module")
def probe_namespace(admin: Kube, crd: dict[str, Any]) -> Iterator[str]:
    """An unlabelled namespace for the dry-run probes (they store nothing in it)."""
    name = unique("profile-probes")
    admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
    yield name
    admin.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture(scope="module")
def policy(admin: Kube, crd: dict[str, Any], probe_namespace: str) -> Iterator[Policy]:
    """The chart's policy and binding on the control plane, enforcing; removed after the module."""
    objects = {doc["kind"]: doc for doc in rendered("admission-policy.yaml")}
    vap, binding = objects["ValidatingAdmissionPolicy"], objects["ValidatingAdmissionPolicyBinding"]
    name = unique("profile-limits")
    vap["metadata"] = {"name": name}
    binding["metadata"] = {"name": name}
    binding["spec"]["policyName"] = name
    profiles = Profiles(admin=admin, namespace=probe_namespace, created=[])
    started = time.monotonic()
    admin.request("POST", f"{ADMISSION}/validatingadmissionpolicies", body=vap)
    admin.request("POST", f"{ADMISSION}/validatingadmissionpolicybindings", body=binding)
    try:
        probe = unique("probe")
        profiles.create(probe, {"limits": {"maxGpusPerNode": 0}})
        effective = Policy(name=name, effective_after_s=round(time.monotonic() - started, 1))
        profiles.delete(probe)
        profiles.wait_admitted(job_spec(profile=probe))
        yield effective
    finally:
        for leftover in list(profiles.created):
            profiles.delete(leftover)
        admin.request("DELETE", f"{ADMISSION}/validatingadmissionpolicybindings/{name}")
        admin.request("DELETE", f"{ADMISSION}/validatingadmissionpolicies/{name}")


@pytest.fixture
def profiles(admin: Kube, policy: Policy, probe_namespace: str) -> Iterator[Profiles]:
    """Profiles for one test; each is deleted after it, and a deleted default profile is awaited gone."""
    made = Profiles(admin=admin, namespace=probe_namespace, created=[])
    try:
        yield made
    finally:
        defaults = [n for n in made.created if (admin.get(f"{PROFILES}/{n}") or {}).get("spec", {}).get("default")]
        for name in list(made.created):
            made.delete(name)
        if defaults:
            # Until the informer drops it, a default profile still limits other tests' jobs.
            made.wait_admitted(job_spec(resources={"gpusPerNode": 16, "nodes": 128}, method={"type": "full"}))


LIMITS: dict[str, Any] = {
    "maxGpusPerNode": 4,
    "maxNodes": 2,
    "allowedGpuProducts": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"],
    "allowedModelSources": ["hf://HuggingFaceTB/", "pvc://models/"],
    "allowedMethods": ["lora", "qlora"],
    "maxActiveDeadlineSeconds": 3600,
    "allowImageOverride": False,
}
TEAM_PROFILE: dict[str, Any] = {"defaults": {"gpuProduct": "NVIDIA-H100-80GB-HBM3"}, "limits": LIMITS}


def test_the_policy_type_checks_against_both_crds_and_took_effect(admin: Kube, policy: Policy) -> None:
    def checked(obj: dict[str, Any] | None) -> bool:
        return obj is not None and (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]

    vap = wait_for(
        lambda: admin.get(f"{ADMISSION}/validatingadmissionpolicies/{policy.name}"),
        checked,
        what="the policy to be type-checked",
        timeout=EFFECTIVE_TIMEOUT_S,
    )
    assert vap is not None
    assert not (vap["status"].get("typeChecking") or {}).get("expressionWarnings"), vap["status"]
    # Shown with -rP (docs/testing.md quotes it): within a second or two on the 2-core CI machine.
    print(f"the policy refused its first job {policy.effective_after_s}s after it was created")


def test_a_job_within_the_limits_is_admitted(admin: Kube, profiles: Profiles, namespace: str) -> None:
    name = unique("team")
    profiles.create(name, TEAM_PROFILE)
    within = job_spec(profile=name, resources={"gpusPerNode": 4, "nodes": 2}, runPolicy={"activeDeadlineSeconds": 3600})
    assert refusal(admin, namespace, "within", within) is None
    # No gpuProduct: the profile's default product, which it allows. A CPU job needs no product at all.
    cpu = job_spec(profile=name, resources={"gpusPerNode": 0})
    assert refusal(admin, namespace, "cpu", cpu) is None
    created = admin.request("GET", f"{ftj_collection(namespace)}/within")
    assert created["spec"]["profile"] == name


BREACHES: list[tuple[str, dict[str, Any]]] = [
    ("gpus-per-node", {"resources": {"gpusPerNode": 8}}),
    ("nodes", {"resources": {"nodes": 3}}),
    ("gpu-product", {"resources": {"gpuProduct": "NVIDIA-A10G"}}),
    ("model-source", {"model": {"source": "hf://someone-else/model@main"}}),
    ("method", {"method": {"type": "full"}}),
    ("deadline", {"runPolicy": {"activeDeadlineSeconds": 7200}}),
    ("image", {"trainer": {"image": "registry.example/my-trainer:1"}}),
]


@pytest.mark.parametrize(("case", "groups"), BREACHES, ids=[case for case, _ in BREACHES])
def test_each_limit_is_refused_by_the_api_server_in_the_operators_words(
    admin: Kube, profiles: Profiles, namespace: str, case: str, groups: dict[str, Any]
) -> None:
    name = unique("team")
    profiles.create(name, TEAM_PROFILE)
    spec = job_spec(profile=name, **groups)
    message = refusal(admin, namespace, case, spec)
    (violation,) = expected(spec, TEAM_PROFILE, name=name, namespace=namespace, job=case)
    assert message == violation
    assert admin.get(f"{ftj_collection(namespace)}/{case}") is None


def test_a_gpu_job_without_a_product_is_checked_with_the_profiles_default_product(
    admin: Kube, profiles: Profiles, namespace: str
) -> None:
    strict = unique("strict")
    profile = {"limits": {**LIMITS, "allowedGpuProducts": ["NVIDIA-H100-80GB-HBM3"]}}
    profiles.create(strict, profile)
    spec = job_spec(profile=strict)
    (violation,) = expected(spec, profile, name=strict, namespace=namespace, job="unset")
    assert refusal(admin, namespace, "unset", spec) == violation
    assert "gpuProduct: (unset) is not allowed" in violation
    other = unique("a100-default")
    with_default = {"defaults": {"gpuProduct": "NVIDIA-A100-SXM4-80GB"}, "limits": profile["limits"]}
    profiles.create(other, with_default)
    spec = job_spec(profile=other)
    (violation,) = expected(spec, with_default, name=other, namespace=namespace, job="defaulted")
    assert refusal(admin, namespace, "defaulted", spec) == violation
    assert "gpuProduct: NVIDIA-A100-SXM4-80GB is not allowed" in violation


def test_a_bound_namespace_cannot_escape_to_a_larger_profile(admin: Kube, profiles: Profiles, namespace: str) -> None:
    small, large = unique("small"), unique("large")
    profiles.create(small, {"limits": {"maxGpusPerNode": 1}})
    profiles.create(large, {"limits": {"maxGpusPerNode": 8}})
    admin.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}",
        body={"metadata": {"labels": {PROFILE_LABEL: small}}},
        content_type=MERGE_PATCH,
    )
    escape = job_spec(profile=large, resources={"gpusPerNode": 1})
    message = profiles.wait_refused(escape, namespace)
    problem = choose_profile(spec_profile=large, namespace_profile=small, profiles=[]).problem
    assert message == problem
    assert refusal(admin, namespace, "escape", escape) == problem
    # Without spec.profile the namespace's profile applies, not the larger one.
    unnamed = job_spec(resources={"gpusPerNode": 2})
    (violation,) = expected(unnamed, {"limits": {"maxGpusPerNode": 1}}, name=small, namespace=namespace, job="unnamed")
    assert refusal(admin, namespace, "unnamed", unnamed) == violation
    assert refusal(admin, namespace, "same", job_spec(profile=small, resources={"gpusPerNode": 1})) is None


def test_a_default_profile_limits_jobs_that_name_none_and_each_default_counts(
    admin: Kube, profiles: Profiles, namespace: str
) -> None:
    older, newer = unique("default-a"), unique("default-b")
    unnamed = job_spec(resources={"gpusPerNode": 2})
    profiles.create(
        older, {"default": True, "limits": {"maxGpusPerNode": 4}}, probe=job_spec(resources={"gpusPerNode": 5})
    )
    assert refusal(admin, namespace, "two-gpus", unnamed) is None
    profiles.create(newer, {"default": True, "limits": {"maxGpusPerNode": 1}}, probe=unnamed)
    # choose_profile would pick the older one for its defaults; at admission every default profile's limits hold.
    message = refusal(admin, namespace, "two-gpus-again", unnamed)
    (violation,) = expected(
        unnamed, {"limits": {"maxGpusPerNode": 1}}, name=newer, namespace=namespace, job="two-gpus-again"
    )
    assert message == violation
    # A job that names a profile is not held to the defaults.
    named = unique("named")
    profiles.create(named, {"limits": {"maxGpusPerNode": 8}})
    assert refusal(admin, namespace, "named", job_spec(profile=named, resources={"gpusPerNode": 2})) is None


def test_with_no_profile_at_all_every_job_is_admitted(admin: Kube, profiles: Profiles, namespace: str) -> None:
    gone = unique("gone")
    profiles.create(gone, {"limits": {"maxGpusPerNode": 1, "allowImageOverride": False}})
    profiles.delete(gone)
    assert admin.request("GET", PROFILES)["items"] == [], "another test left FineTuneProfiles behind"
    anything = job_spec(
        profile=gone,
        resources={"gpusPerNode": 16, "nodes": 128},
        method={"type": "full"},
        trainer={"image": "registry.example/my-trainer:1"},
    )
    profiles.wait_admitted(anything, namespace)
    assert refusal(admin, namespace, "anything", anything) is None
    assert refusal(admin, namespace, "plain", job_spec()) is None


def test_updates_are_checked_only_when_they_change_the_spec(admin: Kube, profiles: Profiles, namespace: str) -> None:
    name = unique("team")
    profiles.create(name, {"limits": {"maxGpusPerNode": 4}})
    path = f"{ftj_collection(namespace)}/grow"
    assert refusal(admin, namespace, "grow", job_spec(profile=name, resources={"gpusPerNode": 2})) is None
    try:
        admin.request("PATCH", path, body={"spec": {"resources": {"gpusPerNode": 8}}}, content_type=MERGE_PATCH)
    except ApiError as err:
        assert err.status == 422 and DENIED in err.message, err
        spec = job_spec(profile=name, resources={"gpusPerNode": 8})
        (violation,) = expected(spec, {"limits": {"maxGpusPerNode": 4}}, name=name, namespace=namespace, job="grow")
        assert err.message.split(DENIED, 1)[1] == violation
    else:
        raise AssertionError("a suspended job's resources grew past the profile's limit")
    # The profile is tightened under the existing job: its metadata can still change (the operator's patches).
    admin.request(
        "PATCH", f"{PROFILES}/{name}", body={"spec": {"limits": {"maxGpusPerNode": 1}}}, content_type=MERGE_PATCH
    )
    profiles.wait_refused(job_spec(profile=name, resources={"gpusPerNode": 2}))
    patched = admin.request("PATCH", path, body={"metadata": {"labels": {"team": "a"}}}, content_type=MERGE_PATCH)
    assert patched["metadata"]["labels"] == {"team": "a"}


def test_right_after_an_api_server_restart_valid_jobs_are_admitted_and_the_limits_return(
    cluster: Cluster, admin: Kube, profiles: Profiles, namespace: str
) -> None:
    """A restarted API server cannot evaluate the policy until it has re-learned the FineTuneProfile kind
    (measured: up to about 30 s). The chart's failurePolicy Ignore admits meanwhile (the operator checks the
    same limits); with Fail this test's first request is refused ("failed to configure policy")."""
    if not isinstance(cluster, ControlPlane):
        pytest.skip("needs the session's own control plane to restart (an existing cluster was given)")
    small = unique("small")
    profiles.create(small, {"limits": {"maxGpusPerNode": 1}})
    cluster.restart_apiserver(compact=False)
    assert refusal(admin, namespace, "valid", job_spec(profile=small), dry_run=True) is None
    over = job_spec(profile=small, resources={"gpusPerNode": 2})
    (violation,) = expected(over, {"limits": {"maxGpusPerNode": 1}}, name=small, namespace=namespace, job="probe")
    assert profiles.wait_refused(over, namespace) == violation


@pytest.fixture
def tenant_account(admin: Kube, crd: dict[str, Any], namespace: str) -> Iterator[str]:
    """ServiceAccount ``namespace/tenant``, bound there by RoleBindings to the chart's kubetune-edit and
    kubetune-view rules, as a platform team sets up a team's namespace; the suffix of its ClusterRoles' names.

    The ClusterRoles get names of their own and no aggregation labels: the built-in roles must not change
    under other tests.
    """
    roles = {doc["metadata"]["name"]: doc for doc in rendered("user-roles.yaml") + rendered("platform-roles.yaml")}
    suffix = uuid.uuid4().hex[:6]
    created = []
    for role in ("kubetune-edit", "kubetune-view", "kubetune-profile-reader"):
        body = {"metadata": {"name": f"t-{role}-{suffix}"}, "rules": roles[role]["rules"]}
        admin.request("POST", f"{RBAC}/clusterroles", body=body)
        created.append(body["metadata"]["name"])
    admin.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", body={"metadata": {"name": "tenant"}})
    # view first: once the authorizer has the later edit binding, it has this one too (one informer, in order).
    bind(admin, f"t-kubetune-view-{suffix}", namespace=namespace)
    bind(admin, f"t-kubetune-edit-{suffix}", namespace=namespace)
    try:
        yield suffix
    finally:
        for name in created:
            admin.request("DELETE", f"{RBAC}/clusterroles/{name}")
        for binding in admin.request("GET", f"{RBAC}/clusterrolebindings")["items"]:
            if binding["metadata"]["name"].endswith(suffix):
                admin.request("DELETE", f"{RBAC}/clusterrolebindings/{binding['metadata']['name']}")


def bind(admin: Kube, role: str, *, namespace: str, cluster_wide: bool = False) -> None:
    """Bind the ClusterRole to ServiceAccount ``namespace/tenant``, in its namespace or cluster-wide."""
    body = {
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
    }
    where = f"{RBAC}/clusterrolebindings" if cluster_wide else f"{RBAC}/namespaces/{namespace}/rolebindings"
    admin.request("POST", where, body=body)


def status_of(kube: Kube, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    """The HTTP status of the request (200 for any success)."""
    try:
        kube.request(method, path, body=body, content_type=MERGE_PATCH if method == "PATCH" else "application/json")
    except ApiError as err:
        return err.status
    return 200


def test_a_tenant_cannot_write_finetuneprofiles_and_reads_them_only_through_a_cluster_binding(
    cluster: Cluster, admin: Kube, profiles: Profiles, namespace: str, tenant_account: str
) -> None:
    name = unique("team")
    profiles.create(name, {"limits": {"maxGpusPerNode": 2}})
    profile = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneProfile",
        "metadata": {"name": unique("mine")},
        "spec": {},
    }
    with new_api_client(cluster.sa_kubeconfig(namespace, "tenant")) as api:
        tenant = Kube(api_client=api)
        # The edit binding has reached the authorizer once the tenant may list its jobs.
        wait_for(
            lambda: status_of(tenant, "GET", ftj_collection(namespace)),
            lambda s: s == 200,
            what="the tenant's RoleBinding",
            timeout=30,
        )
        assert status_of(tenant, "POST", PROFILES, profile) == 403
        assert status_of(tenant, "PATCH", f"{PROFILES}/{name}", {"spec": {"limits": {"maxGpusPerNode": 16}}}) == 403
        assert status_of(tenant, "PUT", f"{PROFILES}/{name}", admin.request("GET", f"{PROFILES}/{name}")) == 403
        assert status_of(tenant, "DELETE", f"{PROFILES}/{name}") == 403
        assert status_of(tenant, "DELETE", PROFILES) == 403
        # view is bound in the namespace too, but a RoleBinding grants nothing on a cluster-scoped kind.
        assert status_of(tenant, "GET", f"{PROFILES}/{name}") == 403
        assert status_of(tenant, "GET", PROFILES) == 403
        # view bound cluster-wide (as the built-in view role is to cluster viewers) reads them.
        bind(admin, f"t-kubetune-view-{tenant_account}", namespace=namespace, cluster_wide=True)
        wait_for(
            lambda: status_of(tenant, "GET", f"{PROFILES}/{name}"),
            lambda s: s == 200,
            what="kubetune-view cluster-wide",
            timeout=30,
        )
        assert status_of(tenant, "GET", PROFILES) == 200
        assert status_of(tenant, "DELETE", f"{PROFILES}/{name}") == 403
    assert admin.request("GET", f"{PROFILES}/{name}")["spec"]["limits"]["maxGpusPerNode"] == 2


@pytest.fixture
def other_namespace(admin: Kube, namespace: str) -> Iterator[str]:
    name = f"{namespace[:56]}-other"
    admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
    yield name
    admin.request("DELETE", f"/api/v1/namespaces/{name}")


def test_the_profile_reader_role_reads_profiles_and_no_job(
    cluster: Cluster, admin: Kube, profiles: Profiles, namespace: str, other_namespace: str, tenant_account: str
) -> None:
    name = unique("team")
    profiles.create(name, {"limits": {"maxGpusPerNode": 2}})
    bind(admin, f"t-kubetune-profile-reader-{tenant_account}", namespace=namespace, cluster_wide=True)
    with new_api_client(cluster.sa_kubeconfig(namespace, "tenant")) as api:
        tenant = Kube(api_client=api)
        wait_for(
            lambda: status_of(tenant, "GET", f"{PROFILES}/{name}"),
            lambda s: s == 200,
            what="the reader binding",
            timeout=30,
        )
        assert status_of(tenant, "POST", PROFILES, {"metadata": {"name": unique("mine")}, "spec": {}}) == 403
        assert status_of(tenant, "GET", ftj_collection(other_namespace)) == 403
        assert status_of(tenant, "GET", "/apis/kubetune.io/v1alpha1/finetunejobs") == 403
