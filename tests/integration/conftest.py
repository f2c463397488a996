"""Operator fixtures: the CRD installed, the operator running as a subprocess under its own RBAC.

The operator runs ``python -m kubetune_operator`` with a ServiceAccount kubeconfig whose ClusterRole is
exactly ``kubetune_operator.rbac.RULES``: a missing permission fails these tests as it would in a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from idle_scenario import IdleWindow
from kube_objects import FineTuneJobs, condition_of, ftj_collection, status_of, wait_for
from kubetune_operator.errors import ApiError
from kubetune_operator.k8s import Kube, collection_path, object_path
from kubetune_operator.rbac import cluster_role, role
from kubetune_testenv.cluster import Cluster
from operator_harness import OPERATOR_NAMESPACE, REPORTS_CA, OperatorProcess

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "finetunejobs.yaml"
# Every CRD the operator and the admission policy read: FineTuneJob first, FineTuneProfile.
CRD_FILES = (CRD_FILE, REPO / "crds" / "finetuneprofiles.yaml")
OPERATOR_ACCOUNT = "kubetune-operator"


def _create_or_keep(kube: Kube, path: str, body: dict[str, Any]) -> None:
    try:
        kube.request("POST", path, body=body)
    except ApiError as err:
        if err.status != 409:
            raise


@pytest.fixture(scope="session")
def crd(admin: Kube) -> dict[str, Any]:
    """The committed CRDs (FineTuneJob and FineTuneProfile), installed and Established; the FineTuneJob one."""
    manifests: list[dict[str, Any]] = [yaml.safe_load(f.read_text(encoding="utf-8")) for f in CRD_FILES]
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    for manifest in manifests:
        _create_or_keep(admin, path, manifest)

    def established(obj: dict[str, Any] | None) -> bool:
        conditions = ((obj or {}).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    for name in (manifest["metadata"]["name"] for manifest in manifests):
        wait_for(
            partial(admin.get, f"{path}/{name}"),
            established,
            what=f"the CRD {name} to be Established",
            timeout=30,
        )

    def servable() -> bool:
        # A new CRD's watch cache answers lists with 429 "storage is (re)initializing" for a while; an
        # operator started then waits out kopf's retry backoff (about a minute) before it handles anything.
        try:
            for manifest in manifests:
                admin.request("GET", f"/apis/kubetune.io/v1alpha1/{manifest['spec']['names']['plural']}")
        except ApiError:
            return False
        return True

    wait_for(servable, bool, what="FineTuneJobs and FineTuneProfiles to be listable", timeout=60)
    return manifests[0]


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: Cluster, admin: Kube) -> Path:
    """A ServiceAccount bound to a ClusterRole with exactly the operator's rules."""
    _create_or_keep(admin, "/api/v1/namespaces", {"metadata": {"name": OPERATOR_NAMESPACE}})
    wait_for(
        lambda: admin.get(
            object_path(api_version="v1", plural="serviceaccounts", namespace=OPERATOR_NAMESPACE, name="default")
        ),
        lambda sa: sa is not None,
        what="the operator namespace's default ServiceAccount",
    )
    _create_or_keep(
        admin,
        collection_path(api_version="v1", plural="serviceaccounts", namespace=OPERATOR_NAMESPACE),
        {"metadata": {"name": OPERATOR_ACCOUNT}},
    )
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    _create_or_keep(admin, f"{rbac}/clusterroles", cluster_role(name=OPERATOR_ACCOUNT))
    binding = {
        "metadata": {"name": OPERATOR_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR_ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}],
    }
    _create_or_keep(admin, f"{rbac}/clusterrolebindings", binding)
    namespaced = f"{rbac}/namespaces/{OPERATOR_NAMESPACE}"
    _create_or_keep(
        admin, f"{namespaced}/roles", role(name=OPERATOR_ACCOUNT, namespace=OPERATOR_NAMESPACE, ca_secret=REPORTS_CA)
    )
    _create_or_keep(
        admin,
        f"{namespaced}/rolebindings",
        {**binding, "roleRef": {**binding["roleRef"], "kind": "Role"}},
    )
    return cluster.sa_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)


@pytest.fixture(scope="session")
def operator(
    crd: dict[str, Any], operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        kubeconfig=operator_kubeconfig, log_path=tmp_path_factory.mktemp("operator") / "operator.log"
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


# The idle-cost test (test_operator_idle.py) watches 100 jobs for 10 minutes: its jobs are created before
# the first integration test, with an operator of their own, and the test itself runs last, so the window
# passes while the other tests run instead of adding 10 minutes to the suite.
IDLE_FILE = "test_operator_idle.py"
IDLE_SELECTED = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: a deselected test opens no window
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    idle = [item for item in items if item.path.name == IDLE_FILE]
    config.stash[IDLE_SELECTED] = bool(idle)
    items[:] = [item for item in items if item.path.name != IDLE_FILE] + idle


@pytest.fixture(scope="session", autouse=True)
def idle_window(
    request: pytest.FixtureRequest, crd: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdleWindow | None]:
    """100 jobs settled (50 Succeeded, 50 Running) under their own operator; None when the test is not run."""
    if not request.config.stash.get(IDLE_SELECTED, False):
        yield None
        return
    admin: Kube = request.getfixturevalue("admin")
    kubeconfig: Path = request.getfixturevalue("operator_kubeconfig")
    with IdleWindow.opened(admin, kubeconfig, log_dir=tmp_path_factory.mktemp("idle")) as window:
        yield window


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failed test that used the operator, attach the operator's log tail to the report."""
    report = yield
    funcargs = getattr(item, "funcargs", {})
    process = funcargs.get("operator")
    if report.failed and isinstance(process, OperatorProcess):
        report.sections.append(("operator log (tail)", process.log_tail()))
    window = funcargs.get("idle_window")
    if report.failed and item.path.name == IDLE_FILE and isinstance(window, IdleWindow):
        report.sections.append(("idle operator log (tail)", window.operator.log_tail()))
    return report


@pytest.fixture
def ftjs(admin: Kube, namespace: str, operator: OperatorProcess) -> Iterator[FineTuneJobs]:
    """FineTuneJobs in this test's namespace, with the operator running.

    Afterwards the test's FineTuneJobs are deleted and their pods awaited, so the next test finds the fake
    GPUs free (namespace deletion alone releases them seconds later, longer than the pending timeout).
    """
    jobs = FineTuneJobs(kube=admin, namespace=namespace)
    yield jobs
    for item in admin.request("GET", ftj_collection(namespace))["items"]:
        try:
            jobs.delete(item["metadata"]["name"])
        except ApiError as err:
            if err.status != 404:
                raise
    try:
        wait_for(lambda: jobs.everything("pods"), lambda pods: not pods, what="the test's pods to be gone", timeout=90)
    except AssertionError:
        leftovers = {plural: [o["metadata"] for o in jobs.everything(plural)] for plural in ("jobs",)}
        leftovers["finetunejobs"] = [o["metadata"] for o in admin.request("GET", ftj_collection(namespace))["items"]]
        raise AssertionError(f"left behind: {leftovers}") from None


@pytest.fixture
def status() -> Callable[[dict[str, Any]], dict[str, Any]]:
    return status_of


@pytest.fixture
def condition() -> Callable[[dict[str, Any], str], dict[str, Any]]:
    return condition_of
