"""Operator fixtures: the CRD installed, the operator running as a subprocess under its own RBAC.

The operator runs ``python -m kubetune_operator`` with a ServiceAccount kubeconfig whose ClusterRole is
exactly ``kubetune_operator.rbac.RULES``: a missing permission fails these tests as it would in a cluster.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_objects import FineTuneJobs, condition_of, ftj_collection, status_of, wait_for
from kubetune_operator.errors import ApiError
from kubetune_operator.k8s import Kube, collection_path, object_path
from kubetune_operator.rbac import cluster_role
from kubetune_testenv.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "finetunejobs.yaml"
OPERATOR_NAMESPACE = "kubetune-system"
OPERATOR_ACCOUNT = "kubetune-operator"
# Short enough for tests to watch a pending timeout expire, long enough not to fire on normal starts.
PENDING_TIMEOUT_SECONDS = 8


def _create_or_keep(kube: Kube, path: str, body: dict[str, Any]) -> None:
    try:
        kube.request("POST", path, body=body)
    except ApiError as err:
        if err.status != 409:
            raise


@pytest.fixture(scope="session")
def crd(admin: Kube) -> dict[str, Any]:
    """The committed CRD, installed and Established."""
    manifest: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    _create_or_keep(admin, path, manifest)

    def established(obj: dict[str, Any] | None) -> bool:
        conditions = ((obj or {}).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    name = manifest["metadata"]["name"]
    wait_for(lambda: admin.get(f"{path}/{name}"), established, what="the CRD to be Established", timeout=30)

    def servable() -> bool:
        # A new CRD's watch cache answers lists with 429 "storage is (re)initializing" for a while; an
        # operator started then waits out kopf's retry backoff (about a minute) before it handles anything.
        try:
            admin.request("GET", "/apis/kubetune.io/v1alpha1/finetunejobs")
        except ApiError:
            return False
        return True

    wait_for(servable, bool, what="FineTuneJobs to be listable", timeout=60)
    return manifest


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
    return cluster.sa_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """``python -m kubetune_operator`` in a subprocess; its log is kept for failure reports."""

    def __init__(self, *, kubeconfig: Path, log_path: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self.metrics_port = _free_port()
        self.health_port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_")}
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            KUBETUNE_TRAINER_IMAGE="kubetune/trainer:test",
            KUBETUNE_PENDING_TIMEOUT_SECONDS=str(PENDING_TIMEOUT_SECONDS),
            KUBETUNE_TERMINATION_GRACE_PERIOD_SECONDS="30",
            KUBETUNE_METRICS_PORT=str(self.metrics_port),
            KUBETUNE_HEALTH_PORT=str(self.health_port),
            KUBETUNE_LOG_LEVEL="info",
            # The kwok stages' test hook (docs/testing.md): off in the operator's defaults.
            KUBETUNE_POD_ANNOTATION_PREFIXES="kubetune.test/",
            # The test namespaces (the `namespace` fixture names them t-...): the e2e tests' namespace
            # belongs to the operator installed in the cluster, which must be the only one acting there.
            KUBETUNE_NAMESPACES="t-*",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "kubetune_operator"], env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_for(self._healthy, bool, what=f"the operator's /healthz (log: {self.log_path})", timeout=60)

    def _healthy(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise AssertionError(f"the operator exited with {self._process.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as when a node dies under the operator."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=30)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failed test that used the operator, attach the operator's log tail to the report."""
    report = yield
    process = getattr(item, "funcargs", {}).get("operator")
    if report.failed and isinstance(process, OperatorProcess):
        report.sections.append(("operator log (tail)", process.log_tail()))
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
