"""Phase Validating on the real control plane: the operator's data-check Job, checked by the real trainer.

kwok pods run nothing, so the check runs here as a process, given what the check pod gets: the
spec-only config from the operator's ConfigMap and the claims' files. Its termination message (the
file the kubelet would read) is then handed to the kwok pod, which exits with it and the check's exit
code, as the container would. A watch on the namespace's pods records every pod ever created.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from kube_objects import FineTuneJobs, condition_of, status_of, wait_for
from kubernetes import client, watch
from kubernetes.client import ApiClient
from kubetune_operator.builders.names import FINETUNEJOB_LABEL, KUEUE_QUEUE_LABEL, child_names
from kubetune_operator.k8s import Kube, object_path
from kubetune_testenv.stages import EXIT_CODE, MESSAGE, RUN_FOR
from operator_harness import OperatorProcess
from trainer_harness import bound_claims, lay_out_claims

from kubetune.api.exit_codes import ExitCode
from kubetune.api.preflight import decode_result
from kubetune.api.trainer_config import CONFIG_FILE_NAME, PREFLIGHT_CONFIG_FILE_NAME

pytestmark = pytest.mark.cluster

GPU = "nvidia.com/gpu"


def check_spec(*, data: str = "pvc://datasets/lamini.jsonl", preflight: str = "warn", **extra: Any) -> dict[str, Any]:
    """A GPU job (its training pods would claim a GPU) whose hyperparameters are left to kubetune."""
    spec: dict[str, Any] = {
        "model": {"source": "pvc://models/tiny"},
        "dataset": {
            "train": [data],
            "format": "prompt_completion",
            "fieldMapping": {"prompt": "question", "completion": "answer"},
            "validationSplit": 0.1,
            "maxSeqLength": 128,
            "preflight": preflight,
        },
        "hyperparameters": {"epochs": "auto", "perDeviceBatchSize": "auto"},
        "resources": {"gpusPerNode": 1},
        "output": {"destination": "pvc://outputs/run"},
    }
    return spec | extra


class PodWatch:
    """Every pod created in a namespace while it runs: name, the Job that owns it, its GPU limit."""

    def __init__(self, api: ApiClient, *, namespace: str) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(timeout=30), "the pod watch did not start"

    def _run(self) -> None:
        version = self._core.list_namespaced_pod(self._namespace).metadata.resource_version
        self._started.set()
        while not self._stop.is_set():
            stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                self._core.list_namespaced_pod,
                self._namespace,
                resource_version=version,
                timeout_seconds=5,
            )
            for event in stream:
                pod = event["object"]
                version = pod.metadata.resource_version
                limits = [c.resources.limits or {} for c in pod.spec.containers]
                self.pods[pod.metadata.name] = {
                    "job": (pod.metadata.labels or {}).get("job-name"),
                    "gpus": sum(int(limit.get(GPU, 0)) for limit in limits),
                }
                if self._stop.is_set():
                    break

    def stop(self) -> dict[str, dict[str, Any]]:
        self._stop.set()
        self._thread.join(timeout=15)
        return self.pods


@pytest.fixture(scope="module")
def api(cluster: Any) -> Iterator[ApiClient]:
    with cluster.api_client() as api_client:
        yield api_client


@pytest.fixture(scope="module")
def check_namespace(api: ApiClient) -> Iterator[str]:
    name = f"t-check-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name, "labels": {"kubetune.test/namespace": "true"}}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="module")
def claims(
    api: ApiClient,
    check_namespace: str,
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """pvc://models/tiny, pvc://datasets/lamini.jsonl (300 good records) and pvc://datasets/bad.jsonl."""
    root = bound_claims(api, namespace=check_namespace, root=tmp_path_factory.mktemp("check") / "pvc")
    lay_out_claims(root, model_dir=tiny_model_dir, dataset=lamini_subset(300))
    good = (root / "datasets" / "lamini.jsonl").read_text(encoding="utf-8").splitlines()
    # Lines 3 and 7 break: one is not JSON, one lacks its answer.
    bad = [*good[:2], "{not json", *good[3:6], '{"question": "What is kubetune?"}', *good[7:40]]
    (root / "datasets" / "bad.jsonl").write_text("\n".join(bad) + "\n", encoding="utf-8")
    return root


def run_check(config_text: str, *, pvc_root: Path, workdir: Path) -> tuple[int, str]:
    """``python -m kubetune_trainer validate`` as the check pod runs it: (exit code, termination message)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / PREFLIGHT_CONFIG_FILE_NAME
    config.write_text(config_text, encoding="utf-8")
    termination = workdir / "termination-log"
    termination.write_text("", encoding="utf-8")
    env = {
        **os.environ,
        "KUBETUNE_TERMINATION_LOG": str(termination),
        "KUBETUNE_CACHE_DIR": str(workdir / "cache"),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetune_trainer",
            "validate",
            "--config",
            str(config),
            "--pvc-root",
            str(PurePosixPath(pvc_root)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, termination.read_text(encoding="utf-8")


def check_pod(ftjs: FineTuneJobs, name: str) -> dict[str, Any]:
    job = child_names(name=name).preflight_job
    pods = wait_for(
        lambda: [
            p
            for p in ftjs.children("pods", name)
            if (p["metadata"].get("labels") or {}).get("job-name") == job and p["status"].get("phase") == "Running"
        ],
        bool,
        what=f"the running pod of {job}",
        timeout=60,
    )
    return pods[0]


def finish_check_pod(admin: Kube, pod: dict[str, Any], *, code: int, message: str) -> None:
    """The kwok pod exits as the check did: its exit code, its termination message."""
    meta = pod["metadata"]
    admin.request(
        "PATCH",
        object_path(api_version="v1", plural="pods", namespace=meta["namespace"], name=meta["name"]),
        body={"metadata": {"annotations": {MESSAGE: message, EXIT_CODE: str(code), RUN_FOR: "0s"}}},
        content_type="application/merge-patch+json",
    )


def check_and_finish(ftjs: FineTuneJobs, admin: Kube, name: str, *, pvc_root: Path, workdir: Path) -> tuple[int, str]:
    """Run the check on the operator's config for ``name`` and end its kwok pod with the outcome."""
    pod = check_pod(ftjs, name)
    (config_map,) = ftjs.children("configmaps", name)
    code, message = run_check(config_map["data"][PREFLIGHT_CONFIG_FILE_NAME], pvc_root=pvc_root, workdir=workdir)
    finish_check_pod(admin, pod, code=code, message=message)
    return code, message


def test_bad_data_fails_before_any_gpu_pod_exists(
    api: ApiClient, admin: Kube, operator: OperatorProcess, check_namespace: str, claims: Path, tmp_path: Path
) -> None:
    ftjs = FineTuneJobs(kube=admin, namespace=check_namespace)
    pods = PodWatch(api, namespace=check_namespace)
    name = "bad-data"
    ftjs.create(name, spec=check_spec(data="pvc://datasets/bad.jsonl"), annotations={RUN_FOR: "3600s"})
    ftjs.wait_phase(name, "Validating")
    code, message = check_and_finish(ftjs, admin, name, pvc_root=claims, workdir=tmp_path)
    assert code == ExitCode.BAD_DATA, message
    failed = ftjs.wait_phase(name, "Failed", timeout=60)
    seen = pods.stop()
    status = status_of(failed)
    assert status["failure"]["reason"] == "BadData"
    dataset = status["dataset"]
    assert [(p["line"], p["file"].endswith("bad.jsonl")) for p in dataset["errors"]] == [(3, True), (7, True)]
    assert dataset["errorCount"] == 2
    assert "bad.jsonl:3" in status["failure"]["message"] and "bad.jsonl:7" in status["failure"]["message"]
    assert condition_of(failed, "DataValidated")["status"] == "False"
    assert "hyperparameters" not in status
    # Only the check's pod ever existed: no training Job, no pod with a GPU.
    assert [p["job"] for p in seen.values()] == [child_names(name=name).preflight_job]
    assert all(p["gpus"] == 0 for p in seen.values())
    assert not [j for j in ftjs.children("jobs", name) if j["metadata"]["name"] == child_names(name=name).job]
    assert "BadData" in ftjs.event_reasons(name)


def test_good_data_fills_the_status_then_runs_with_the_resolved_values(
    admin: Kube, operator: OperatorProcess, check_namespace: str, claims: Path, tmp_path: Path, cluster: Any
) -> None:
    ftjs = FineTuneJobs(kube=admin, namespace=check_namespace)
    name = "good-data"
    ftjs.create(name, spec=check_spec(), annotations={RUN_FOR: "3600s"})
    validating = ftjs.wait_phase(name, "Validating")
    assert condition_of(validating, "DataValidated")["status"] == "Unknown"
    code, message = check_and_finish(ftjs, admin, name, pvc_root=claims, workdir=tmp_path)
    assert code == 0, message
    result = decode_result(message)
    assert result is not None and result.outcome == "Passed" and result.hyperparameters is not None
    running = ftjs.wait_phase(name, "Running", timeout=60)
    status = status_of(running)
    dataset, hp, estimate = status["dataset"], status["hyperparameters"], status["estimate"]
    assert dataset["trainExamples"] == 270 and dataset["validationExamples"] == 30
    assert dataset["trainTokens"]["total"] > 0 and dataset["trainTokens"]["p95"] <= 128
    assert hp["epochs"] == 3  # auto: 3 for small datasets
    assert hp["perDeviceBatchSize"] == result.hyperparameters.per_device_batch_size
    assert hp["totalSteps"] == estimate["optimizerSteps"] == result.hyperparameters.total_steps
    assert estimate["trainTokens"] == dataset["trainTokens"]["total"] * 3
    assert estimate["duration"] and estimate["basis"]
    assert estimate["gpuHours"] == pytest.approx(estimate["durationSeconds"] / 3600, abs=1e-3)  # one GPU
    assert condition_of(running, "DataValidated")["status"] == "True"
    # The training pods' config carries exactly the resolved values.
    (config_map,) = ftjs.children("configmaps", name)
    training = yaml.safe_load(config_map["data"][CONFIG_FILE_NAME])
    assert training["hyperparameters"]["epochs"] == hp["epochs"]
    assert training["hyperparameters"]["perDeviceBatchSize"] == hp["perDeviceBatchSize"]
    assert training["hyperparameters"]["learningRate"] == hp["learningRate"]
    assert training["hyperparameters"]["warmupSteps"] == hp["warmupSteps"]
    assert training["validated"]["totalSteps"] == hp["totalSteps"]
    assert {"DataCheckStarted", "DataValidated", "JobCreated"} <= set(ftjs.event_reasons(name))
    shown = cluster.kubectl("get", "ftj", name, f"--namespace={check_namespace}").stdout
    assert "ESTIMATE" in shown and estimate["duration"] in shown


def test_suspend_during_validating_stops_the_check_and_resume_finishes_it(
    admin: Kube, operator: OperatorProcess, check_namespace: str, claims: Path, tmp_path: Path
) -> None:
    ftjs = FineTuneJobs(kube=admin, namespace=check_namespace)
    name = "suspended-check"
    ftjs.create(name, spec=check_spec(), annotations={RUN_FOR: "3600s"})
    check_pod(ftjs, name)
    ftjs.patch_spec(name, {"runPolicy": {"suspend": True}})
    suspended = ftjs.wait_phase(name, "Suspended")
    job = child_names(name=name).preflight_job
    assert [j["spec"]["suspend"] for j in ftjs.children("jobs", name) if j["metadata"]["name"] == job] == [True]
    wait_for(
        lambda: [p for p in ftjs.children("pods", name) if not p["metadata"].get("deletionTimestamp")],
        lambda live: not live,
        what="the check's pod to stop",
        timeout=60,
    )
    assert condition_of(suspended, "DataValidated")["status"] == "Unknown"
    ftjs.patch_spec(name, {"runPolicy": {"suspend": False}})
    ftjs.wait_phase(name, "Validating")
    code, message = check_and_finish(ftjs, admin, name, pvc_root=claims, workdir=tmp_path)
    assert code == 0, message
    ftjs.wait_phase(name, "Running", timeout=60)


def test_deleting_during_validating_leaves_nothing_behind(
    api: ApiClient, admin: Kube, operator: OperatorProcess, check_namespace: str, claims: Path
) -> None:
    ftjs = FineTuneJobs(kube=admin, namespace=check_namespace)
    name = "deleted-check"
    ftjs.create(name, spec=check_spec(), annotations={RUN_FOR: "3600s"})
    check_pod(ftjs, name)
    ftjs.delete(name)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    selector = f"{FINETUNEJOB_LABEL}={name}"

    def left() -> list[str]:
        found = [
            f"pod/{p.metadata.name}" for p in core.list_namespaced_pod(check_namespace, label_selector=selector).items
        ]
        found += [
            f"job/{j.metadata.name}" for j in batch.list_namespaced_job(check_namespace, label_selector=selector).items
        ]
        found += [
            f"configmap/{c.metadata.name}"
            for c in core.list_namespaced_config_map(check_namespace, label_selector=selector).items
        ]
        return found

    wait_for(left, lambda found: not found, what="the check's Job, pod and ConfigMap to go", timeout=90)
    assert ftjs.get(name) is None


def test_skip_goes_straight_to_the_training_job(admin: Kube, operator: OperatorProcess, check_namespace: str) -> None:
    ftjs = FineTuneJobs(kube=admin, namespace=check_namespace)
    name = "skipped-check"
    ftjs.create(name, spec=check_spec(preflight="skip"), annotations={RUN_FOR: "3600s"})
    running = ftjs.wait_phase(name, "Running", timeout=60)
    assert [j["metadata"]["name"] for j in ftjs.children("jobs", name)] == [child_names(name=name).job]
    assert "dataset" not in status_of(running)
    assert not [c for c in status_of(running)["conditions"] if c["type"] == "DataValidated"]


def test_the_check_takes_no_gpu_queue_label_and_the_training_job_does(
    admin: Kube, operator: OperatorProcess, check_namespace: str, claims: Path, tmp_path: Path
) -> None:
    """Kueue manages only Jobs with a queue label (manageJobsWithoutQueueName is off by default): the check,
    without one, is never held for the GPU queue's quota; the training Job carries the spec's queue."""
    ftjs = FineTuneJobs(kube=admin, namespace=check_namespace)
    name = "queued-check"
    ftjs.create(name, spec=check_spec(runPolicy={"queueName": "gpu-queue"}), annotations={RUN_FOR: "3600s"})
    names = child_names(name=name)
    check_pod(ftjs, name)  # running: the check was not held for a queue
    (check,) = [j for j in ftjs.children("jobs", name) if j["metadata"]["name"] == names.preflight_job]
    assert KUEUE_QUEUE_LABEL not in check["metadata"]["labels"] and check["spec"]["suspend"] is False
    code, message = check_and_finish(ftjs, admin, name, pvc_root=claims, workdir=tmp_path)
    assert code == 0, message
    training = wait_for(
        lambda: [j for j in ftjs.children("jobs", name) if j["metadata"]["name"] == names.job],
        bool,
        what="the training Job",
        timeout=60,
    )
    assert training[0]["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue"
