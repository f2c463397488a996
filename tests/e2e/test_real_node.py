"""kubectl apply → Job → pod → trainer container → logs, exit code, checkpoint on SIGTERM → status, for real.

Every FineTuneJob here runs on the real node (kubelet, containerd, runc) from the images built from the
repository's Dockerfiles, handled by the operator that the Helm chart installed in a pod, in namespaces
that enforce the restricted Pod Security Standard.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from e2e_env import (
    JOBS_NAMESPACE,
    OPERATOR_NAMESPACE,
    RUN_TIMEOUT_S,
    Volumes,
    cpu_spec,
    events_in,
    kubectl,
    phases_until,
    pod_log,
)
from kube_objects import FineTuneJobs, condition_of, status_of, wait_for
from kubetune_operator.errors import ApiError
from kubetune_operator.k8s import Kube, collection_path, object_path
from kubetune_testenv.cluster import Cluster
from kubetune_testenv.real_node import RealNode
from model_files import SMOLLM2_GGUF

pytestmark = [pytest.mark.cluster, pytest.mark.real_node]


def wait_for_step(cluster: Cluster, ftjs: FineTuneJobs, name: str, step: int) -> str:
    """Follow rank 0's log until it reports ``step``; returns the pod's name."""

    def running_pod() -> str | None:
        pods = [p for p in ftjs.children("pods", name) if p.get("status", {}).get("phase") == "Running"]
        for pod in pods:
            log = kubectl(cluster, "logs", f"--namespace={JOBS_NAMESPACE}", pod["metadata"]["name"], "-c", "trainer")
            if any(e.event == "step" and e.step >= step for e in events_in(log.stdout)):
                return str(pod["metadata"]["name"])
        return None

    try:
        found = wait_for(
            running_pod, lambda pod: pod is not None, what=f"{name}: step {step} in the log", timeout=RUN_TIMEOUT_S
        )
    except AssertionError:
        raise AssertionError(f"{name}: no step {step} in {RUN_TIMEOUT_S}s\n{ftjs.describe(name)}") from None
    assert found is not None
    return found


def adapter_tensors(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / "adapter" / "adapter_model.safetensors"))


def test_cpu_job_runs_to_succeeded_with_logs_progress_and_an_adapter_peft_loads(
    cluster: Cluster, real_node: RealNode, ftjs: FineTuneJobs, volumes: Volumes
) -> None:
    ftjs.create("tiny-lora", spec=cpu_spec(output="pvc://outputs/tiny-lora"))
    phases = phases_until(ftjs, "tiny-lora", "Succeeded")
    assert "Running" in phases, f"the real pod's Running phase was never mirrored: {phases}"

    (pod,) = ftjs.children("pods", "tiny-lora")
    assert pod["spec"]["nodeName"] == real_node.name
    (container,) = pod["status"]["containerStatuses"]
    assert container["state"]["terminated"]["exitCode"] == 0
    assert container["image"].endswith("kubetune/trainer:0.1.0")

    log = pod_log(cluster, pod["metadata"]["name"])
    events = events_in(log)
    assert [e.step for e in events if e.event == "step"] == [1, 2, 3, 4, 5, 6]
    assert events[-1].event == "finished"

    final = ftjs.get("tiny-lora") or {}
    status = status_of(final)
    assert status["progress"]["step"] == 6 and status["progress"]["totalSteps"] == 6
    assert status["metrics"]["loss"] > 0 and status["metrics"]["evalLoss"] > 0
    out = volumes.path("outputs") / "tiny-lora"
    assert status["output"]["uri"] == "pvc://outputs/tiny-lora"
    assert status["output"]["manifestSha256"] == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    assert condition_of(final, "Succeeded")["status"] == "True"

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = volumes.path("models") / "tiny"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    prompt = tokenizer("What is kubetune?", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4


def test_bad_data_exits_65_and_fails_the_job_at_once_naming_the_line(
    cluster: Cluster, ftjs: FineTuneJobs, volumes: Volumes
) -> None:
    spec = cpu_spec(output="pvc://outputs/bad-data", data="pvc://datasets/bad.jsonl", runPolicy={"backoffLimit": 3})
    spec["dataset"].pop("validationSplit")
    ftjs.create("bad-data", spec=spec)
    phases_until(ftjs, "bad-data", "Failed")

    failure = status_of(ftjs.get("bad-data") or {})["failure"]
    assert failure["reason"] == "BadData" and failure["exitCode"] == 65 and failure["container"] == "trainer"
    (pod,) = ftjs.children("pods", "bad-data")
    assert failure["pod"] == pod["metadata"]["name"]
    # The trainer's reason, naming the file and line, not torchrun's traceback from the log's tail.
    assert "BadData: data validation failed" in failure["message"], failure["message"]
    assert "pvc://datasets/bad.jsonl:2: answer: missing key 'answer'" in failure["message"]
    assert "Traceback" not in failure["message"], failure["message"]
    (job,) = ftjs.children("jobs", "bad-data")
    assert job["status"].get("failed") == 1, "exit 65 fails the Job through podFailurePolicy: no retry"
    assert not (volumes.path("outputs") / "bad-data" / "manifest.json").exists()


def test_suspend_sends_sigterm_the_trainer_checkpoints_and_resume_ends_with_the_uninterrupted_adapter(
    cluster: Cluster, ftjs: FineTuneJobs, volumes: Volumes
) -> None:
    # Long enough that the suspend lands mid-run; everySteps large, so the only checkpoint is SIGTERM's.
    run: dict[str, Any] = {"hyperparameters": {"maxSteps": 150, "perDeviceBatchSize": 2}}
    checkpointing = {"checkpointing": {"everySteps": 1000, "keepLast": 2}}
    ftjs.create("straight", spec=cpu_spec(output="pvc://outputs/straight", **run, **checkpointing))
    ftjs.create("paused", spec=cpu_spec(output="pvc://outputs/paused", **run, **checkpointing))

    first_pod = wait_for_step(cluster, ftjs, "paused", 3)
    ftjs.patch_spec("paused", {"runPolicy": {"suspend": True}})
    suspended = ftjs.wait_phase("paused", "Suspended", timeout=120)
    assert condition_of(suspended, "Suspended")["status"] == "True"
    wait_for(lambda: ftjs.children("pods", "paused"), lambda pods: not pods, what="the suspended job's pod gone")
    (job,) = ftjs.children("jobs", "paused")
    assert job["spec"]["suspend"] is True and not job["status"].get("failed"), job["status"]
    checkpoints = sorted((volumes.path("outputs") / "paused" / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and (checkpoints[0] / "checkpoint.json").is_file(), checkpoints
    step = int(checkpoints[0].name.removeprefix("step-"))
    assert 3 <= step < 150, f"the SIGTERM checkpoint of {first_pod} is at step {step}"

    ftjs.patch_spec("paused", {"runPolicy": {"suspend": False}})
    phases_until(ftjs, "paused", "Succeeded")
    phases_until(ftjs, "straight", "Succeeded")
    (second_pod,) = ftjs.children("pods", "paused")
    started = [e for e in events_in(pod_log(cluster, second_pod["metadata"]["name"])) if e.event == "started"]
    assert [e.resumed_from_step for e in started] == [step]

    resumed = adapter_tensors(volumes.path("outputs") / "paused")
    straight = adapter_tensors(volumes.path("outputs") / "straight")
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert (resumed[key] - straight[key]).abs().max().item() <= 1e-5, key


def test_a_deleted_trainer_pod_is_replaced_and_resumes_without_consuming_the_backoff_limit(
    cluster: Cluster, admin: Kube, ftjs: FineTuneJobs, volumes: Volumes
) -> None:
    spec = cpu_spec(
        output="pvc://outputs/preempted",
        hyperparameters={"maxSteps": 150, "perDeviceBatchSize": 2},
        checkpointing={"everySteps": 1000},
        runPolicy={"backoffLimit": 0},
    )
    ftjs.create("preempted", spec=spec)
    victim = wait_for_step(cluster, ftjs, "preempted", 3)
    admin.request("DELETE", object_path(api_version="v1", plural="pods", namespace=JOBS_NAMESPACE, name=victim))

    phases_until(ftjs, "preempted", "Succeeded")
    (job,) = ftjs.children("jobs", "preempted")
    assert not job["status"].get("failed"), "exit 75 after SIGTERM is ignored by podFailurePolicy"
    (replacement,) = ftjs.children("pods", "preempted")
    assert replacement["metadata"]["name"] != victim
    started = [e for e in events_in(pod_log(cluster, replacement["metadata"]["name"])) if e.event == "started"]
    assert len(started) == 1 and started[0].resumed_from_step is not None and started[0].resumed_from_step >= 3


def test_two_cpu_pods_rendezvous_through_the_headless_service_and_write_one_output(
    cluster: Cluster, real_node: RealNode, ftjs: FineTuneJobs, volumes: Volumes
) -> None:
    spec = cpu_spec(output="pvc://outputs/two-nodes", hyperparameters={"maxSteps": 4})
    spec["resources"]["nodes"] = 2
    ftjs.create("two-nodes", spec=spec)
    phases_until(ftjs, "two-nodes", "Succeeded")

    pods = sorted(ftjs.children("pods", "two-nodes"), key=lambda p: p["metadata"]["name"])
    assert len(pods) == 2 and {p["spec"]["nodeName"] for p in pods} == {real_node.name}
    logs = [pod_log(cluster, p["metadata"]["name"]) for p in pods]
    rank0 = next(events_in(log) for log in logs if events_in(log))  # only rank 0 prints events
    started = next(e for e in rank0 if e.event == "started")
    assert started.world_size == 2
    assert [e.step for e in rank0 if e.event == "step"] == [1, 2, 3, 4]
    out = volumes.path("outputs") / "two-nodes"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["steps"] == 4


def test_restricted_namespaces_admit_the_operator_and_trainer_pods_and_refuse_a_privileged_one(
    cluster: Cluster, admin: Kube, real_node: RealNode, ftjs: FineTuneJobs
) -> None:
    for namespace in (OPERATOR_NAMESPACE, JOBS_NAMESPACE):
        labels = admin.get(f"/api/v1/namespaces/{namespace}")["metadata"]["labels"]  # type: ignore[index]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = admin.request("GET", collection_path(api_version="v1", plural="pods", namespace=OPERATOR_NAMESPACE))
    (operator,) = pods["items"]
    assert operator["spec"]["nodeName"] == real_node.name and operator["status"]["phase"] == "Running"
    assert operator["spec"]["serviceAccountName"].endswith("kubetune")

    ftjs.create("admitted", spec=cpu_spec(output="pvc://outputs/admitted", hyperparameters={"maxSteps": 1}))
    phases_until(ftjs, "admitted", "Succeeded")

    privileged = {
        "metadata": {"name": "privileged"},
        "spec": {
            "nodeSelector": {"kubetune.io/node": "cpu"},
            "containers": [{"name": "c", "image": "kubetune/trainer:0.1.0", "securityContext": {"privileged": True}}],
        },
    }
    with pytest.raises(ApiError) as refused:
        admin.request(
            "POST", collection_path(api_version="v1", plural="pods", namespace=JOBS_NAMESPACE), body=privileged
        )
    assert refused.value.status == 403 and "restricted" in str(refused.value)


@pytest.mark.model
def test_smollm2_from_its_gguf_on_a_volume_fine_tunes_in_a_pod(
    cluster: Cluster, ftjs: FineTuneJobs, volumes: Volumes
) -> None:
    """The real model in the real image: the GGUF comes from a volume, is rebuilt as a plain model in the
    pod's cache (the root filesystem is read-only), trained with LoRA and published."""
    spec = cpu_spec(
        output="pvc://outputs/smollm2",
        model={"source": "pvc://models/smollm2", "ggufFile": SMOLLM2_GGUF},
        hyperparameters={"maxSteps": 2, "perDeviceBatchSize": 2},
        checkpointing={"everySteps": 100},
    )
    spec["resources"]["memory"] = "6Gi"
    ftjs.create("smollm2", spec=spec)
    phases_until(ftjs, "smollm2", "Succeeded")

    out = volumes.path("outputs") / "smollm2"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["steps"] == 2
    assert manifest["baseModel"]["source"] == "pvc://models/smollm2"
    adapter = adapter_tensors(out)
    # SmolLM2 has 30 layers; LoRA on every linear layer gives A and B matrices for each of them.
    assert len(adapter) >= 30 * 2
    samples = json.loads((out / "generations.json").read_text())
    assert samples and all(sample["after"] for sample in samples)
