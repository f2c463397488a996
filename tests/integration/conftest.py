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
import time
import urllib.request
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubetune_operator.builders.names import FINETUNEJOB_LABEL
from kubetune_operator.k8s import ApiError, Kube, collection_path, object_path
from kubetune_operator.rbac import cluster_role
from kubetune_testenv.cluster import Cluster

from kubetune.api.resource import API_VERSION, PLURAL

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "finetunejobs.yaml"
OPERATOR_NAMESPACE = "kubetune-system"
OPERATOR_ACCOUNT = "kubetune-operator"
# Short enough for tests to watch a pending timeout expire, long enough not to fire on normal starts.
PENDING_TIMEOUT_SECONDS = 8

T = TypeVar("T")


def wait_for(fetch: Callable[[], T], ready: Callable[[T], bool], *, what: str, timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not ready(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value:\n{value}")
        time.sleep(0.25)
        value = fetch()
    return value


def _create_or_keep(kube: Kube, path: str, body: dict[str, Any]) -> None:
    try:
        kube.request("POST", path, body=body)
    except ApiError as err:
        if err.status != 409:
            raise


@pytest.fixture(scope="session")
def admin(cluster: Cluster) -> Iterator[Kube]:
    with cluster.api_client() as api:
        yield Kube(api_client=api)


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

    def __init__(self, *, kubeconfig: Path, log_path: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.metrics_port = _free_port()
        self.health_port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_")}
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            KUBETUNE_TRAINER_IMAGE="kubetune/trainer:test",
            KUBETUNE_PENDING_TIMEOUT_SECONDS=str(PENDING_TIMEOUT_SECONDS),
            KUBETUNE_RESYNC_INTERVAL_SECONDS="2",
            KUBETUNE_TERMINATION_GRACE_PERIOD_SECONDS="30",
            KUBETUNE_METRICS_PORT=str(self.metrics_port),
            KUBETUNE_HEALTH_PORT=str(self.health_port),
            KUBETUNE_LOG_LEVEL="info",
        )
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


# ---- FineTuneJob helpers shared by the operator tests -------------------------------------------------


def ftj_collection(namespace: str) -> str:
    return collection_path(api_version=API_VERSION, plural=PLURAL, namespace=namespace)


def minimal_spec() -> dict[str, Any]:
    return {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://training-data/lamini_docs.jsonl"]},
        "output": {"destination": "s3://outputs/run-1"},
    }


def ftj_manifest(
    name: str, *, spec: dict[str, Any] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec if spec is not None else minimal_spec(),
    }


class FineTuneJobs:
    """FineTuneJobs, their children and their Events in one test namespace, read as the admin."""

    def __init__(self, *, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace

    def create(self, name: str, **kw: Any) -> dict[str, Any]:
        return self.kube.request("POST", ftj_collection(self.namespace), body=ftj_manifest(name, **kw))

    def get(self, name: str) -> dict[str, Any] | None:
        return self.kube.get(f"{ftj_collection(self.namespace)}/{name}")

    def delete(self, name: str) -> None:
        self.kube.request("DELETE", f"{ftj_collection(self.namespace)}/{name}")

    def patch_spec(self, name: str, spec_patch: dict[str, Any]) -> dict[str, Any]:
        return self.kube.request(
            "PATCH",
            f"{ftj_collection(self.namespace)}/{name}",
            body={"spec": spec_patch},
            content_type="application/merge-patch+json",
        )

    def wait(
        self, name: str, ready: Callable[[dict[str, Any]], bool], *, what: str, timeout: float = 60
    ) -> dict[str, Any]:
        obj = wait_for(lambda: self.get(name) or {}, ready, what=f"FineTuneJob {name}: {what}", timeout=timeout)
        return obj

    def wait_phase(self, name: str, phase: str, *, timeout: float = 60) -> dict[str, Any]:
        return self.wait(name, lambda obj: status_of(obj).get("phase") == phase, what=f"phase {phase}", timeout=timeout)

    def children(self, plural: str, name: str) -> list[dict[str, Any]]:
        path = collection_path(
            api_version="batch/v1" if plural == "jobs" else "v1", plural=plural, namespace=self.namespace
        )
        return list(self.kube.request("GET", path, query=[("labelSelector", f"{FINETUNEJOB_LABEL}={name}")])["items"])

    def everything(self, plural: str) -> list[dict[str, Any]]:
        path = collection_path(
            api_version="batch/v1" if plural == "jobs" else "v1", plural=plural, namespace=self.namespace
        )
        return list(self.kube.request("GET", path)["items"])

    def event_reasons(self, name: str) -> list[str]:
        path = collection_path(api_version="v1", plural="events", namespace=self.namespace)
        selector = f"involvedObject.kind=FineTuneJob,involvedObject.name={name}"
        items = self.kube.request("GET", path, query=[("fieldSelector", selector)])["items"]
        # Timestamps have whole seconds; etcd's revision (the resourceVersion of a new object) orders them.
        return [str(e["reason"]) for e in sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))]


def status_of(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def condition_of(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((dict(c) for c in status_of(obj).get("conditions") or [] if c["type"] == type_), {})


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
