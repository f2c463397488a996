"""Fake GPU nodes for kwok to manage: Node manifests only, no kubelet behind them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# kwok is started with --manage-nodes-with-annotation-selector matching this annotation.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class NodePool:
    """``count`` identical nodes named ``<name>-0 .. <name>-(count-1)``."""

    name: str
    count: int
    gpus: int
    gpu_product: str
    cpu: str
    memory: str
    pods: str = "110"
    ephemeral_storage: str = "2Ti"


# Shapes of real machines: 8 x H100 80GB (p5.48xlarge-like) and 1 x L4 (g6.4xlarge-like).
DEFAULT_POOLS = (
    NodePool(name="gpu-h100", count=4, gpus=8, gpu_product="NVIDIA-H100-80GB-HBM3", cpu="192", memory="2000Gi"),
    NodePool(name="gpu-l4", count=2, gpus=1, gpu_product="NVIDIA-L4", cpu="16", memory="64Gi"),
)


def node_manifests(pool: NodePool) -> list[dict[str, Any]]:
    """Node objects with capacity = allocatable; kwok's node-initialize stage keeps them."""
    resources = {
        "cpu": pool.cpu,
        "memory": pool.memory,
        "pods": pool.pods,
        "ephemeral-storage": pool.ephemeral_storage,
        GPU_RESOURCE: str(pool.gpus),
    }
    manifests = []
    for index in range(pool.count):
        name = f"{pool.name}-{index}"
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {KWOK_NODE_ANNOTATION: KWOK_NODE_ANNOTATION_VALUE},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "node.kubernetes.io/pool": pool.name,
                        "type": "kwok",
                        GPU_PRODUCT_LABEL: pool.gpu_product,
                        "nvidia.com/gpu.count": str(pool.gpus),
                    },
                },
                "spec": {},
                "status": {"capacity": dict(resources), "allocatable": dict(resources)},
            }
        )
    return manifests


def all_node_manifests(pools: tuple[NodePool, ...] = DEFAULT_POOLS) -> list[dict[str, Any]]:
    return [manifest for pool in pools for manifest in node_manifests(pool)]
