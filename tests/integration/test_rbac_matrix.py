"""Who may do what, asked of the real API server's RBAC: the operator's ServiceAccount and a tenant's.

The operator's account is bound to a ClusterRole with exactly ``kubetune_operator.rbac.RULES`` (the
``operator_kubeconfig`` fixture). SubjectAccessReviews (as the admin) ask the authorizer about each verb;
real requests with the accounts' own tokens check the refusals that matter most. The tenant gets the chart's
``kubetune-edit`` rules (rendered by helm) through a RoleBinding in one namespace, as a platform team binds
them, and must stay inside it. docs/security.md states these rules.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_objects import ftj_collection, ftj_manifest, minimal_spec, wait_for
from kubetune_operator.errors import ApiError
from kubetune_operator.k8s import Kube
from kubetune_operator.rbac import RULES
from kubetune_testenv.cluster import Cluster, new_api_client
from kubetune_testenv.helm import find_helm
from operator_harness import OPERATOR_NAMESPACE, REPORTS_CA

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
RBAC = "/apis/rbac.authorization.k8s.io/v1"
# The operator's ServiceAccount, as the operator_kubeconfig fixture (tests/integration/conftest.py) makes it.
OPERATOR_ACCOUNT = "kubetune-operator"
MERGE_PATCH = "application/merge-patch+json"
SAR = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
# Cluster-scoped resources the operator reads; every other resource it names is namespaced.
CLUSTER_SCOPED = {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}
ALL_NAMESPACES = ""


def can(
    admin: Kube, user: str, *, verb: str, group: str, resource: str, namespace: str = ALL_NAMESPACES, name: str = ""
) -> bool:
    """The authorizer's answer for ``user`` (a ServiceAccount: its groups are implied by its name)."""
    resource, _, subresource = resource.partition("/")
    account_namespace = user.split(":")[2]
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{account_namespace}", "system:authenticated"],
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "group": group,
                "resource": resource,
                "subresource": subresource,
                "name": name,
            },
        },
    }
    return bool(admin.request("POST", SAR, body=review)["status"].get("allowed"))


def refused(kube: Kube, method: str, path: str, body: dict[str, Any] | None = None) -> bool:
    """The request is answered 403 Forbidden (any other answer fails the test)."""
    try:
        kube.request(method, path, body=body, content_type=MERGE_PATCH if method == "PATCH" else "application/json")
    except ApiError as err:
        assert err.status == 403, f"{method} {path}: expected 403 Forbidden, got {err}"
        return True
    return False


# What the operator's account must never be allowed, in its watched namespaces or cluster-wide.
OPERATOR_DENIED: list[tuple[str, str, str]] = [
    *((verb, "", "secrets") for verb in ("get", "list", "watch", "create", "update", "patch", "delete")),
    *((verb, "", "pods") for verb in ("create", "update", "patch", "delete")),
    *(("create", "", f"pods/{sub}") for sub in ("exec", "attach", "portforward", "eviction")),
    ("create", "", "serviceaccounts/token"),
    *((verb, "", "configmaps") for verb in ("update", "delete")),
    ("delete", "", "services"),
    *(
        (verb, "rbac.authorization.k8s.io", kind)
        for verb in ("create", "patch", "delete")
        for kind in ("roles", "rolebindings")
    ),
    *(
        (verb, "rbac.authorization.k8s.io", kind)
        for verb in ("create", "patch", "delete")
        for kind in ("clusterroles", "clusterrolebindings")
    ),
    *((verb, "rbac.authorization.k8s.io", kind) for verb in ("bind", "escalate") for kind in ("roles", "clusterroles")),
    *(("impersonate", "", kind) for kind in ("users", "groups", "serviceaccounts")),
    *((verb, "apps", "deployments") for verb in ("create", "patch", "delete")),
    ("create", "apps", "daemonsets"),
    *((verb, "", "nodes") for verb in ("get", "create", "patch", "delete")),
    *((verb, "", "namespaces") for verb in ("create", "patch", "delete")),
    *((verb, "apiextensions.k8s.io", "customresourcedefinitions") for verb in ("create", "patch", "delete")),
    ("create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
    ("create", "certificates.k8s.io", "certificatesigningrequests"),
    ("update", "kubetune.io", "finetunejobs/status"),
    ("create", "kubetune.io", "finetunejobs"),
]
OPERATOR_ALLOWED = [
    (verb, group, resource)
    for rule in RULES
    for group in rule.api_groups
    for resource in rule.resources
    for verb in rule.verbs
]


@pytest.mark.parametrize(("verb", "group", "resource"), OPERATOR_ALLOWED, ids="-".join)
def test_the_operator_account_has_each_of_its_rules(
    admin: Kube, operator_kubeconfig: Path, namespace: str, verb: str, group: str, resource: str
) -> None:
    scope = ALL_NAMESPACES if (group, resource) in CLUSTER_SCOPED else namespace
    assert can(admin, OPERATOR_USER, verb=verb, group=group, resource=resource, namespace=scope)


@pytest.mark.parametrize(("verb", "group", "resource"), OPERATOR_DENIED, ids="-".join)
def test_the_operator_account_is_refused_outside_its_rules(
    admin: Kube, operator_kubeconfig: Path, namespace: str, verb: str, group: str, resource: str
) -> None:
    for scope in (namespace, OPERATOR_NAMESPACE, ALL_NAMESPACES):
        if (scope, verb, resource) == (OPERATOR_NAMESPACE, "create", "secrets"):
            continue  # the report endpoint's CA Secret (test below)
        assert not can(admin, OPERATOR_USER, verb=verb, group=group, resource=resource, namespace=scope), scope


def test_in_its_own_namespace_the_operator_reads_only_its_ca_secret_and_may_create_it(
    admin: Kube, operator_kubeconfig: Path
) -> None:
    def allowed(verb: str, name: str = "") -> bool:
        return can(
            admin, OPERATOR_USER, verb=verb, group="", resource="secrets", namespace=OPERATOR_NAMESPACE, name=name
        )

    assert allowed("get", REPORTS_CA) and allowed("create")
    assert not allowed("get", "some-other-secret") and not allowed("list") and not allowed("update", REPORTS_CA)


def test_the_operator_cannot_read_secrets_nor_grant_itself_more(
    cluster: Cluster, admin: Kube, operator_kubeconfig: Path, namespace: str
) -> None:
    admin.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body={"metadata": {"name": "hf-token"}})
    subject = [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}]
    admin_role = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"}
    binding = {"metadata": {"name": "escalate"}, "roleRef": admin_role, "subjects": subject}
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    with new_api_client(operator_kubeconfig) as api:
        operator = Kube(api_client=api)
        assert refused(operator, "GET", f"/api/v1/namespaces/{namespace}/secrets/hf-token")
        assert refused(operator, "GET", f"/api/v1/namespaces/{namespace}/secrets")
        assert refused(operator, "GET", "/api/v1/secrets")
        assert refused(operator, "POST", f"{RBAC}/namespaces/{namespace}/rolebindings", binding)
        assert refused(operator, "POST", f"{RBAC}/clusterrolebindings", binding)
        assert refused(operator, "POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        # Sanity: the same token is accepted where the rules allow.
        assert operator.request("GET", f"/api/v1/namespaces/{namespace}/configmaps")["items"] is not None


def rendered_edit_rules() -> list[dict[str, Any]]:
    """The rules of the chart's ``kubetune-edit`` ClusterRole, as ``helm template`` renders them."""
    helm = find_helm()
    if helm is None:
        pytest.fail("helm not found: run .ci/build-helm.sh (or set $HELM to a helm 3 binary)", pytrace=False)
    result = subprocess.run(
        [
            str(helm),
            "template",
            "kubetune",
            str(REPO / "charts" / "kubetune"),
            "--show-only",
            "templates/user-roles.yaml",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (role,) = [doc for doc in yaml.safe_load_all(result.stdout) if doc and doc["metadata"]["name"] == "kubetune-edit"]
    return list(role["rules"])


@pytest.fixture
def other_namespace(admin: Kube, namespace: str) -> Iterator[str]:
    name = f"{namespace[:56]}-other"
    admin.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
    yield name
    admin.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def tenant(cluster: Cluster, admin: Kube, crd: dict[str, Any], namespace: str) -> Iterator[Kube]:
    """A ServiceAccount of ``namespace`` bound there, by a RoleBinding, to the chart's kubetune-edit rules.

    The ClusterRole gets a name of its own and no aggregation labels: the session's cluster also gets the
    chart installed (tests/e2e), and the built-in edit/admin roles must not change under other tests.
    """
    role = f"t-kubetune-edit-{uuid.uuid4().hex[:8]}"
    admin.request(
        "POST",
        f"{RBAC}/clusterroles",
        body={"metadata": {"name": role}, "rules": rendered_edit_rules()},
    )
    admin.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", body={"metadata": {"name": "tenant"}})
    admin.request(
        "POST",
        f"{RBAC}/namespaces/{namespace}/rolebindings",
        body={
            "metadata": {"name": "tenant-kubetune-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
        },
    )
    try:
        with new_api_client(cluster.sa_kubeconfig(namespace, "tenant")) as api:
            yield Kube(api_client=api)
    finally:
        admin.request("DELETE", f"{RBAC}/clusterroles/{role}")


def test_a_tenant_runs_finetunejobs_in_its_namespace_only(
    admin: Kube, tenant: Kube, namespace: str, other_namespace: str
) -> None:
    # Suspended: an operator of the session may be running; these jobs must not take fake GPUs.
    spec = minimal_spec() | {"runPolicy": {"suspend": True}}
    mine, theirs = ftj_collection(namespace), ftj_collection(other_namespace)
    admin.request("POST", theirs, body=ftj_manifest("theirs", spec=spec))
    # A fresh RoleBinding reaches the authorizer's cache within moments.
    created = wait_for(
        lambda: _try(lambda: tenant.request("POST", mine, body=ftj_manifest("mine", spec=spec))),
        lambda result: result is not None,
        what="the tenant's first FineTuneJob to be admitted",
        timeout=30,
    )
    assert created is not None and created["metadata"]["namespace"] == namespace
    assert tenant.request("GET", f"{mine}/mine")["metadata"]["name"] == "mine"
    assert [i["metadata"]["name"] for i in tenant.request("GET", mine)["items"]] == ["mine"]
    tenant.request(
        "PATCH",
        f"{mine}/mine",
        body={"spec": {"runPolicy": {"backoffLimit": 1}}},
        content_type=MERGE_PATCH,
    )
    assert refused(tenant, "PATCH", f"{mine}/mine/status", {"status": {"phase": "Succeeded"}})

    # Another namespace: nothing, not even reading.
    assert refused(tenant, "GET", f"{theirs}/theirs")
    assert refused(tenant, "GET", theirs)
    assert refused(tenant, "POST", theirs, ftj_manifest("intruder", spec=spec))
    assert refused(tenant, "DELETE", f"{theirs}/theirs")
    assert refused(tenant, "GET", "/apis/kubetune.io/v1alpha1/finetunejobs")
    assert refused(tenant, "PATCH", f"{theirs}/theirs", {"spec": {"runPolicy": {"backoffLimit": 1}}})
    assert admin.request("GET", f"{theirs}/theirs")["spec"]["runPolicy"]["backoffLimit"] == 3


def test_a_tenant_reads_no_secrets_and_runs_nothing_but_finetunejobs(
    admin: Kube, tenant: Kube, namespace: str, other_namespace: str
) -> None:
    for ns in (namespace, other_namespace):
        admin.request("POST", f"/api/v1/namespaces/{ns}/secrets", body={"metadata": {"name": "hf-token"}})
    wait_for(
        lambda: _try(lambda: tenant.request("GET", ftj_collection(namespace))),
        lambda result: result is not None,
        what="the tenant's RoleBinding to take effect",
        timeout=30,
    )
    for ns in (namespace, other_namespace):
        assert refused(tenant, "GET", f"/api/v1/namespaces/{ns}/secrets/hf-token")
        assert refused(tenant, "GET", f"/api/v1/namespaces/{ns}/secrets")
    assert refused(tenant, "GET", "/api/v1/secrets")
    job = {"metadata": {"name": "j"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": []}}}}
    assert refused(tenant, "POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job)
    assert refused(tenant, "GET", f"/api/v1/namespaces/{namespace}/pods")


def _try(call: Any) -> Any:
    try:
        return call()
    except ApiError as err:
        if err.status != 403:
            raise
        return None
