"""The trainer pod template: resources, rendezvous, credentials, volumes, scheduling and security."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from kubetune_operator.builders import build_children
from kubetune_operator.settings import OperatorSettings

from kubetune.api.resource import FineTuneJob
from kubetune.api.trainer_config import CONFIG_FILE_NAME, CONFIG_MOUNT_PATH

MakeFtj = Callable[..., FineTuneJob]


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def trainer(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(job)["containers"]
    assert container["name"] == "trainer"
    return dict(container)


def env_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in trainer(job)["env"]}


def job_for(make_ftj: MakeFtj, settings: OperatorSettings | None = None, **kw: Any) -> dict[str, Any]:
    return build_children(ftj=make_ftj(**kw), settings=settings or OperatorSettings()).job


def test_single_node_pod_requests_its_gpus_as_limits(make_ftj: MakeFtj) -> None:
    job = job_for(make_ftj, resources={"gpusPerNode": 4, "cpu": "16", "memory": "128Gi"})
    resources = trainer(job)["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": "4", "memory": "128Gi"}
    assert resources["requests"] == {"cpu": "16", "memory": "128Gi"}
    env = env_of(job)
    assert env["NNODES"]["value"] == "1" and env["NPROC_PER_NODE"]["value"] == "4"


def test_multi_node_pods_rendezvous_with_pod_zero_through_the_headless_service(make_ftj: MakeFtj) -> None:
    job = job_for(make_ftj, OperatorSettings(master_port=29600), name="big", resources={"nodes": 4, "gpusPerNode": 8})
    env = env_of(job)
    assert env["MASTER_ADDR"]["value"] == "big-train-0.big-workers.team-a.svc"
    assert env["MASTER_PORT"]["value"] == "29600"
    assert env["NNODES"]["value"] == "4" and env["NPROC_PER_NODE"]["value"] == "8"
    assert env["NODE_RANK"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert pod_spec(job)["subdomain"] == "big-workers"
    command = trainer(job)["command"]
    # The trainer's `launch` wraps torchrun so the pod exits with the workers' code (docs/trainer.md).
    assert command[:4] == ["python", "-m", "kubetune_trainer", "launch"]
    assert "--node-rank=$(NODE_RANK)" in command[: command.index("--")]
    assert command[command.index("--") + 1 :] == ["train", "--config", f"{CONFIG_MOUNT_PATH}/{CONFIG_FILE_NAME}"]


def test_gpu_pod_sees_its_gpus(make_ftj: MakeFtj) -> None:
    assert "CUDA_VISIBLE_DEVICES" not in env_of(job_for(make_ftj, resources={"gpusPerNode": 2}))


def test_cpu_pod_asks_for_no_gpu_and_runs_one_process_per_pod(make_ftj: MakeFtj) -> None:
    job = job_for(make_ftj, resources={"gpusPerNode": 0, "nodes": 2, "cpu": "4", "memory": "8Gi"})
    resources = trainer(job)["resources"]
    assert resources["limits"] == {"memory": "8Gi"}
    assert resources["requests"] == {"cpu": "4", "memory": "8Gi"}
    env = env_of(job)
    assert env["NNODES"]["value"] == "2" and env["NPROC_PER_NODE"]["value"] == "1"
    # No CUDA device in the pod, so the trainer runs on the CPU (gloo) even on a GPU node.
    assert env["CUDA_VISIBLE_DEVICES"] == {"name": "CUDA_VISIBLE_DEVICES", "value": ""}
    assert "nodeSelector" not in pod_spec(job)


def test_cpu_pod_without_cpu_or_memory_requests_has_empty_resources(make_ftj: MakeFtj) -> None:
    assert trainer(job_for(make_ftj, resources={"gpusPerNode": 0}))["resources"] == {}


def test_cpu_pod_is_steered_to_cpu_nodes_by_node_selector_and_tolerations(make_ftj: MakeFtj) -> None:
    cpu_nodes = {
        "gpusPerNode": 0,
        "nodeSelector": {"kubetune.io/node": "cpu"},
        "tolerations": [{"key": "kubetune.io/node", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}],
    }
    spec = pod_spec(job_for(make_ftj, resources=cpu_nodes))
    assert spec["nodeSelector"] == {"kubetune.io/node": "cpu"}
    assert spec["tolerations"] == [
        {"key": "kubetune.io/node", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}
    ]


def test_user_env_cannot_make_a_cpu_pod_see_gpus(make_ftj: MakeFtj) -> None:
    job = job_for(
        make_ftj, resources={"gpusPerNode": 0}, trainer={"env": [{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}]}
    )
    assert [e["value"] for e in trainer(job)["env"] if e["name"] == "CUDA_VISIBLE_DEVICES"] == [""]


def test_gpu_product_and_node_selector_are_combined(make_ftj: MakeFtj) -> None:
    job = job_for(make_ftj, resources={"gpuProduct": "NVIDIA-H100-80GB-HBM3", "nodeSelector": {"zone": "a"}})
    assert pod_spec(job)["nodeSelector"] == {"zone": "a", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_tolerations_affinity_and_priority_class_pass_through(make_ftj: MakeFtj) -> None:
    affinity: dict[str, Any] = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    job = job_for(
        make_ftj,
        resources={
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": affinity,
            "priorityClassName": "training-low",
        },
    )
    spec = pod_spec(job)
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["affinity"] == affinity
    assert spec["priorityClassName"] == "training-low"


def test_no_scheduling_fields_when_none_are_asked_for(make_ftj: MakeFtj) -> None:
    spec = pod_spec(job_for(make_ftj))
    assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName"} & spec.keys()


def test_credentials_reach_the_pod_only_as_secret_references(make_ftj: MakeFtj) -> None:
    job = job_for(
        make_ftj,
        credentials={
            "huggingFaceToken": {"name": "hf", "key": "token"},
            "s3": {
                "accessKeyId": {"name": "s3-creds", "key": "id"},
                "secretAccessKey": {"name": "s3-creds", "key": "secret"},
                "endpointUrl": "https://minio.storage.svc:9000",
                "region": "eu-west-1",
            },
        },
    )
    env = env_of(job)
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "s3-creds", "key": "id"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "s3-creds", "key": "secret"}}
    for secret_var in ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[secret_var]
    assert env["AWS_ENDPOINT_URL"]["value"] == "https://minio.storage.svc:9000"
    assert env["AWS_REGION"]["value"] == "eu-west-1"


def test_no_credential_env_without_credentials(make_ftj: MakeFtj) -> None:
    assert not {"HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & env_of(job_for(make_ftj)).keys()


def test_user_env_cannot_override_the_rendezvous_variables(make_ftj: MakeFtj) -> None:
    job = job_for(
        make_ftj, trainer={"env": [{"name": "NNODES", "value": "9"}, {"name": "LOG_LEVEL", "value": "debug"}]}
    )
    env = trainer(job)["env"]
    assert [e["value"] for e in env if e["name"] == "NNODES"] == ["1"]
    assert {"name": "LOG_LEVEL", "value": "debug"} in env


def test_pod_meets_the_restricted_pod_security_standard(make_ftj: MakeFtj) -> None:
    job = job_for(make_ftj)
    pod_ctx = pod_spec(job)["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True and pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = trainer(job)["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctx["runAsUser"] != 0 and pod_ctx["runAsUser"] != 0
    assert not any("hostPath" in v for v in pod_spec(job)["volumes"])


def test_pod_never_restarts_in_place_and_has_time_to_checkpoint(make_ftj: MakeFtj) -> None:
    spec = pod_spec(job_for(make_ftj, OperatorSettings(termination_grace_period_seconds=900)))
    assert spec["restartPolicy"] == "Never"
    assert spec["terminationGracePeriodSeconds"] == 900


def test_config_map_is_mounted_read_only_where_the_trainer_reads_it(make_ftj: MakeFtj) -> None:
    job = job_for(make_ftj, name="cfg")
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    mounts = {m["mountPath"]: m for m in trainer(job)["volumeMounts"]}
    mount = mounts[CONFIG_MOUNT_PATH]
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["configMap"] == {"name": "cfg-config"}


def test_pvc_sources_are_mounted_read_only_and_the_output_claim_read_write(make_ftj: MakeFtj) -> None:
    job = job_for(
        make_ftj,
        model={"source": "pvc://models/llama"},
        dataset={"train": ["pvc://data/a.jsonl", "pvc://data/b.jsonl"], "validation": "pvc://data/val.jsonl"},
        output={"destination": "pvc://results/run-1"},
    )
    volumes = {v["name"]: v["persistentVolumeClaim"] for v in pod_spec(job)["volumes"] if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: m for m in trainer(job)["volumeMounts"]}
    by_claim = {
        claim["claimName"]: (claim, mounts[f"/mnt/kubetune/pvc/{claim['claimName']}"]) for claim in volumes.values()
    }
    assert set(by_claim) == {"models", "data", "results"}  # each claim mounted once
    for claim in ("models", "data"):
        volume, mount = by_claim[claim]
        assert volume["readOnly"] is True and mount["readOnly"] is True
    volume, mount = by_claim["results"]
    assert volume["readOnly"] is False and mount["readOnly"] is False


def test_a_claim_both_read_and_written_is_mounted_read_write(make_ftj: MakeFtj) -> None:
    job = job_for(make_ftj, dataset={"train": ["pvc://work/data.jsonl"]}, output={"destination": "pvc://work/out"})
    (claim,) = [v["persistentVolumeClaim"] for v in pod_spec(job)["volumes"] if "persistentVolumeClaim" in v]
    assert claim == {"claimName": "work", "readOnly": False}


def test_shared_memory_is_a_memory_backed_empty_dir_at_dev_shm(make_ftj: MakeFtj) -> None:
    job = job_for(make_ftj, resources={"sharedMemory": "16Gi"})
    (shm,) = [v for v in pod_spec(job)["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert {"name": shm["name"], "mountPath": "/dev/shm"} in trainer(job)["volumeMounts"]
    default_mounts = [m["mountPath"] for m in trainer(job_for(make_ftj))["volumeMounts"]]
    assert "/dev/shm" not in default_mounts


def test_downloads_go_to_a_cache_volume_the_trainer_finds_through_its_env(make_ftj: MakeFtj) -> None:
    job = job_for(make_ftj)
    cache_dir = env_of(job)["KUBETUNE_CACHE_DIR"]["value"]
    (mount,) = [m for m in trainer(job)["volumeMounts"] if m["mountPath"] == cache_dir]
    (volume,) = [v for v in pod_spec(job)["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"] == {}
    assert env_of(job)["HF_HOME"]["value"].startswith(cache_dir)


def test_the_root_filesystem_is_read_only_and_home_and_tmp_are_a_scratch_volume(make_ftj: MakeFtj) -> None:
    job = job_for(make_ftj)
    assert trainer(job)["securityContext"]["readOnlyRootFilesystem"] is True
    (mount,) = [m for m in trainer(job)["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod_spec(job)["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"] == {} and not mount.get("readOnly")
    assert env_of(job)["HOME"]["value"] == "/tmp"


def test_qlora_job_uses_the_operator_default_image_unless_the_spec_names_one(make_ftj: MakeFtj) -> None:
    settings = OperatorSettings(trainer_image="registry.local/trainer:1", trainer_image_pull_policy="Always")
    qlora = job_for(make_ftj, settings, method={"type": "qlora", "quantization": {"quantType": "nf4"}})
    assert trainer(qlora)["image"] == "registry.local/trainer:1" and trainer(qlora)["imagePullPolicy"] == "Always"
    custom = job_for(make_ftj, settings, trainer={"image": "mine:2", "imagePullPolicy": "Never"})
    assert trainer(custom)["image"] == "mine:2" and trainer(custom)["imagePullPolicy"] == "Never"


def test_annotations_with_a_passthrough_prefix_reach_the_pod_template_and_others_do_not(make_ftj: MakeFtj) -> None:
    ftj_annotations = {"kubetune.test/run-for": "5s", "kubetune.test/exit-code": "65", "team": "nlp"}
    passthrough = OperatorSettings(pod_annotation_prefixes=("kubetune.test/",))
    job = job_for(make_ftj, passthrough, annotations=ftj_annotations)
    assert job["spec"]["template"]["metadata"]["annotations"] == {
        "kubetune.test/run-for": "5s",
        "kubetune.test/exit-code": "65",
    }


def test_by_default_no_finetunejob_annotation_reaches_the_pods_not_even_the_test_hook(make_ftj: MakeFtj) -> None:
    ftj_annotations = {"kubetune.test/run-for": "5s", "kubetune.test/exit-code": "65", "team": "nlp"}
    job = job_for(make_ftj, OperatorSettings(), annotations=ftj_annotations)
    assert "annotations" not in job["spec"]["template"]["metadata"]


def test_no_secret_value_appears_anywhere_in_the_manifests(make_ftj: MakeFtj) -> None:
    # Secret values never reach the operator: the spec can only name a Secret, so the rendered manifests
    # must mention the Secret's name and key, and the pod reads the value itself.
    ftj = make_ftj(credentials={"huggingFaceToken": {"name": "hf-secret", "key": "token"}})
    rendered = json.dumps(build_children(ftj=ftj, settings=OperatorSettings()).in_order())
    assert '"secretKeyRef": {"name": "hf-secret", "key": "token"}' in rendered
    assert rendered.count("hf-secret") == 1
