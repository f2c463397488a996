"""Fake GPU node pools: the shapes tests schedule against."""

from __future__ import annotations

from collections import Counter

from kubetune_testenv.nodes import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    KWOK_NODE_ANNOTATION,
    NodePool,
    all_node_manifests,
    node_manifests,
)


def test_default_pools_are_four_h100x8_and_two_l4x1_nodes() -> None:
    nodes = all_node_manifests()
    shapes = Counter((n["metadata"]["labels"][GPU_PRODUCT_LABEL], n["status"]["capacity"][GPU_RESOURCE]) for n in nodes)
    assert shapes == {("NVIDIA-H100-80GB-HBM3", "8"): 4, ("NVIDIA-L4", "1"): 2}


def test_nodes_are_marked_for_kwok_and_have_cpu_memory_pods() -> None:
    for node in all_node_manifests():
        assert node["metadata"]["annotations"][KWOK_NODE_ANNOTATION] == "fake"
        assert node["status"]["capacity"] == node["status"]["allocatable"]
        assert {"cpu", "memory", "pods"} <= set(node["status"]["capacity"])


def test_node_names_are_unique_and_indexed() -> None:
    pool = NodePool(name="a100", count=3, gpus=4, gpu_product="NVIDIA-A100", cpu="64", memory="512Gi")
    assert [n["metadata"]["name"] for n in node_manifests(pool)] == ["a100-0", "a100-1", "a100-2"]
