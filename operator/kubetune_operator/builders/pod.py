"""The trainer pod template: container, rendezvous env, credentials, volumes, scheduling, security.

The trainer's launch contract (``docs/trainer.md``): ``python -m kubetune_trainer launch <torchrun flags>
-- train --config <file>`` on every node. ``launch`` wraps torchrun so the pod exits with the workers'
code (torchrun alone exits 1 on SIGTERM, which would hide the exit-code contract from podFailurePolicy);
the flags come from the pod's env, which Kubernetes expands (``$(VAR)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune.api.reports import (
    REPORT_CA_FILE_ENV,
    REPORT_TOKEN_FILE_ENV,
    REPORT_URL_ENV,
    TRAINER_METRICS_PORT,
    TRAINER_METRICS_PORT_ENV,
    audience,
    report_path,
)
from kubetune.api.resource import FineTuneJob
from kubetune.api.spec import FineTuneJobSpec, SecretKeyRef
from kubetune.api.trainer_config import CONFIG_FILE_NAME, CONFIG_MOUNT_PATH, PREFLIGHT_CONFIG_FILE_NAME
from kubetune.api.uris import parse_uri, pvc_mount_path
from kubetune_operator.builders.names import (
    COMPLETION_INDEX_ANNOTATION,
    PREFLIGHT_CONTAINER,
    REPORT_CA_FILE_NAME,
    TRAINER_CONTAINER,
    child_labels,
    child_names,
)
from kubetune_operator.settings import OperatorSettings

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
CONFIG_VOLUME = "trainer-config"
SHM_VOLUME = "dshm"
CACHE_VOLUME = "cache"
SCRATCH_VOLUME = "tmp"
# The root filesystem is read-only; /tmp is an emptyDir and HOME points there (torch, triton and other
# libraries write caches under HOME or /tmp).
SCRATCH_DIR = "/tmp"
# Downloads (hf://, s3://) and GGUF conversions; the trainer reads the path from KUBETUNE_CACHE_DIR.
CACHE_DIR = "/var/cache/kubetune"
REPORT_TOKEN_VOLUME = "report-token"
REPORT_TOKEN_DIR = "/var/run/secrets/kubetune.io/report"
# The kubelet refreshes a projected token at 80 % of its life; an hour is the API server's usual maximum
# for tokens with a custom audience and keeps a stolen token short-lived.
REPORT_TOKEN_SECONDS = 3600


def master_addr(*, ftj: FineTuneJob) -> str:
    """Pod 0's DNS name: Indexed Job pods get hostname <job>-<index> under the Service as subdomain."""
    names = child_names(name=ftj.metadata.name)
    return f"{names.job}-0.{names.service}.{ftj.metadata.namespace}.svc"


def trainer_command() -> list[str]:
    return [
        "python",
        "-m",
        "kubetune_trainer",
        "launch",
        "--nnodes=$(NNODES)",
        "--nproc-per-node=$(NPROC_PER_NODE)",
        "--node-rank=$(NODE_RANK)",
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
        "--",
        "train",
        "--config",
        f"{CONFIG_MOUNT_PATH}/{CONFIG_FILE_NAME}",
    ]


def processes_per_node(*, spec: FineTuneJobSpec) -> int:
    """One training process per GPU; a CPU pod (``gpusPerNode: 0``) runs one process on the gloo backend,
    which uses all the pod's cores (more processes would only split the same cores)."""
    return max(spec.resources.gpus_per_node, 1)


def _secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    # Only the reference: the Secret's value never passes through the operator or the Job object.
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _env(*, ftj: FineTuneJob, settings: OperatorSettings) -> list[dict[str, Any]]:
    spec = ftj.spec
    env: list[dict[str, Any]] = [
        {"name": "NNODES", "value": str(spec.resources.nodes)},
        {"name": "NPROC_PER_NODE", "value": str(processes_per_node(spec=spec))},
        {
            "name": "NODE_RANK",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
        },
        {"name": "MASTER_ADDR", "value": master_addr(ftj=ftj)},
        {"name": "MASTER_PORT", "value": str(settings.master_port)},
        {"name": "KUBETUNE_CACHE_DIR", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": TRAINER_METRICS_PORT_ENV, "value": str(TRAINER_METRICS_PORT)},
    ]
    if settings.report_url_base is not None:
        url = settings.report_url_base + report_path(namespace=ftj.metadata.namespace, name=ftj.metadata.name)
        env += [
            {"name": REPORT_URL_ENV, "value": url},
            {"name": REPORT_TOKEN_FILE_ENV, "value": f"{REPORT_TOKEN_DIR}/token"},
            {"name": REPORT_CA_FILE_ENV, "value": f"{CONFIG_MOUNT_PATH}/{REPORT_CA_FILE_NAME}"},
        ]
    if spec.resources.gpus_per_node == 0:
        env.append(HIDE_GPUS)
    return env + _user_env(spec=spec, reserved={item["name"] for item in env})


# A pod without a GPU limit on a GPU node still sees every GPU there (the trainer image's pytorch/pytorch
# base sets NVIDIA_VISIBLE_DEVICES=all); hiding them keeps a CPU pod off GPUs other pods were given, and
# the trainer, finding no CUDA device, runs on the CPU.
HIDE_GPUS = {"name": "CUDA_VISIBLE_DEVICES", "value": ""}


def _user_env(*, spec: FineTuneJobSpec, reserved: set[str]) -> list[dict[str, Any]]:
    """Credentials (Secret references) and spec.trainer.env; a user variable never overrides ``reserved``."""
    env: list[dict[str, Any]] = []
    credentials = spec.credentials
    if credentials.hugging_face_token is not None:
        env.append(_secret_env("HF_TOKEN", credentials.hugging_face_token))
    if credentials.s3 is not None:
        env.append(_secret_env("AWS_ACCESS_KEY_ID", credentials.s3.access_key_id))
        env.append(_secret_env("AWS_SECRET_ACCESS_KEY", credentials.s3.secret_access_key))
        if credentials.s3.endpoint_url is not None:
            env.append({"name": "AWS_ENDPOINT_URL", "value": credentials.s3.endpoint_url})
        if credentials.s3.region is not None:
            env.append({"name": "AWS_REGION", "value": credentials.s3.region})
    reserved = reserved | {item["name"] for item in env}
    env.extend({"name": e.name, "value": e.value} for e in spec.trainer.env if e.name not in reserved)
    return env


@dataclass(frozen=True, kw_only=True)
class ClaimMount:
    claim: str
    read_only: bool


def claim_mounts(*, spec: FineTuneJobSpec, output: bool = True) -> list[ClaimMount]:
    """Each PVC named by a pvc:// URI, mounted once; read-only unless the output is written to it.

    ``output=False``: only what is read (the data check writes nothing)."""
    read = [spec.model.source, *spec.dataset.train]
    if spec.dataset.validation is not None:
        read.append(spec.dataset.validation)
    claims: dict[str, bool] = {}
    for uri in read:
        claim = parse_uri(uri).pvc_claim
        if claim is not None:
            claims.setdefault(claim, True)
    destination = spec.output.destination
    output_claim = parse_uri(destination).pvc_claim if destination is not None else None
    if output and output_claim is not None:
        claims[output_claim] = False
    return [ClaimMount(claim=claim, read_only=ro) for claim, ro in claims.items()]


def _volumes_and_mounts(
    *, ftj: FineTuneJob, settings: OperatorSettings, training: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The trainer's volumes; ``training=False`` (the data check): no output claim and no report token."""
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": child_names(name=ftj.metadata.name).config_map}},
        # The node's ephemeral storage rather than the container's writable layer.
        {"name": CACHE_VOLUME, "emptyDir": {}},
        {"name": SCRATCH_VOLUME, "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT_PATH, "readOnly": True},
        {"name": CACHE_VOLUME, "mountPath": CACHE_DIR},
        {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_DIR},
    ]
    for index, mount in enumerate(claim_mounts(spec=ftj.spec, output=training)):
        # Claim names can exceed a volume name's 63 characters; the index keeps volume names short and unique.
        volume = f"pvc-{index}"
        volumes.append(
            {"name": volume, "persistentVolumeClaim": {"claimName": mount.claim, "readOnly": mount.read_only}}
        )
        mounts.append({"name": volume, "mountPath": str(pvc_mount_path(mount.claim)), "readOnly": mount.read_only})
    if not training:
        return volumes, mounts
    shm = ftj.spec.resources.shared_memory
    if shm is not None:
        volumes.append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    if settings.report_url_base is not None:
        # A token only the report endpoint accepts: its audience names this FineTuneJob, it is bound to the
        # pod (void once the pod is gone), and the pod gets no token for the API server itself.
        token = {
            "path": "token",
            "audience": audience(namespace=ftj.metadata.namespace, name=ftj.metadata.name),
            "expirationSeconds": REPORT_TOKEN_SECONDS,
        }
        volumes.append({"name": REPORT_TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}})
        mounts.append({"name": REPORT_TOKEN_VOLUME, "mountPath": REPORT_TOKEN_DIR, "readOnly": True})
    return volumes, mounts


def _resources(*, spec: FineTuneJobSpec) -> dict[str, Any]:
    limits: dict[str, str] = {}
    if spec.resources.gpus_per_node > 0:
        # Extended resources (GPUs) are set as limits; the API server copies them to requests.
        limits[GPU_RESOURCE] = str(spec.resources.gpus_per_node)
    requests: dict[str, str] = {}
    if spec.resources.cpu is not None:
        requests["cpu"] = spec.resources.cpu
    if spec.resources.memory is not None:
        requests["memory"] = spec.resources.memory
        # A memory limit equal to the request: an over-use is an OOMKill the status names, not a node hang.
        limits["memory"] = spec.resources.memory
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _container_security_context(*, settings: OperatorSettings) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_group,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security_context(*, settings: OperatorSettings) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_group,
        "fsGroup": settings.fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def passthrough_annotations(*, ftj: FineTuneJob, settings: OperatorSettings) -> dict[str, str]:
    return {
        key: value
        for key, value in ftj.metadata.annotations.items()
        if any(key.startswith(prefix) for prefix in settings.pod_annotation_prefixes)
    }


def _node_selector(*, spec: FineTuneJobSpec) -> dict[str, str]:
    selector = dict(spec.resources.node_selector)
    if spec.resources.gpu_product is not None:
        selector[GPU_PRODUCT_LABEL] = spec.resources.gpu_product
    return selector


def build_pod_template(*, ftj: FineTuneJob, settings: OperatorSettings) -> dict[str, Any]:
    spec = ftj.spec
    volumes, mounts = _volumes_and_mounts(ftj=ftj, settings=settings)
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": spec.trainer.image or settings.trainer_image,
        "imagePullPolicy": spec.trainer.image_pull_policy or settings.trainer_image_pull_policy,
        "command": trainer_command(),
        "env": _env(ftj=ftj, settings=settings),
        "ports": [
            {"name": "rendezvous", "containerPort": settings.master_port},
            {"name": "metrics", "containerPort": TRAINER_METRICS_PORT},
        ],
        "resources": _resources(spec=spec),
        "volumeMounts": mounts,
        "securityContext": _container_security_context(settings=settings),
        # The trainer writes its failure reason there; the operator copies it into status.failure.message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": child_names(name=ftj.metadata.name).service,
        "terminationGracePeriodSeconds": settings.termination_grace_period_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(settings=settings),
        "containers": [container],
        "volumes": volumes,
    }
    node_selector = _node_selector(spec=spec)
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if spec.resources.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in spec.resources.tolerations]
    if spec.resources.affinity is not None:
        pod_spec["affinity"] = spec.resources.affinity
    if spec.resources.priority_class_name is not None:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    metadata: dict[str, Any] = {"labels": child_labels(name=ftj.metadata.name)}
    annotations = passthrough_annotations(ftj=ftj, settings=settings)
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": pod_spec}


def preflight_command() -> list[str]:
    return [
        "python",
        "-m",
        "kubetune_trainer",
        "validate",
        "--config",
        f"{CONFIG_MOUNT_PATH}/{PREFLIGHT_CONFIG_FILE_NAME}",
    ]


def build_preflight_pod_template(*, ftj: FineTuneJob, settings: OperatorSettings) -> dict[str, Any]:
    """The data check's pod: the trainer image on a CPU (no GPU request, GPUs hidden), with the training
    pods' credentials, input volumes and restricted security, small fixed resources from the settings, and
    the user's node selector and tolerations but not the GPU product (a CPU pod needs no GPU node)."""
    spec = ftj.spec
    volumes, mounts = _volumes_and_mounts(ftj=ftj, settings=settings, training=False)
    base = [
        {"name": "KUBETUNE_CACHE_DIR", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "HOME", "value": SCRATCH_DIR},
        HIDE_GPUS,
    ]
    quantity = {"cpu": settings.preflight_cpu, "memory": settings.preflight_memory}
    container: dict[str, Any] = {
        "name": PREFLIGHT_CONTAINER,
        "image": spec.trainer.image or settings.trainer_image,
        "imagePullPolicy": spec.trainer.image_pull_policy or settings.trainer_image_pull_policy,
        "command": preflight_command(),
        "env": base + _user_env(spec=spec, reserved={item["name"] for item in base}),
        "resources": {"requests": dict(quantity), "limits": dict(quantity)},
        "volumeMounts": mounts,
        "securityContext": _container_security_context(settings=settings),
        # The check writes its result there (kubetune.api.preflight); a crash leaves the log's tail.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(settings=settings),
        "containers": [container],
        "volumes": volumes,
    }
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    if spec.resources.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in spec.resources.tolerations]
    metadata: dict[str, Any] = {"labels": child_labels(name=ftj.metadata.name)}
    annotations = passthrough_annotations(ftj=ftj, settings=settings)
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": pod_spec}
