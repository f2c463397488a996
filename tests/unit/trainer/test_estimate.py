"""The cost estimate: MFU · peak / (k · N) per process, times the world size and the scaling efficiency."""

from __future__ import annotations

import pytest
from kubetune_trainer.estimate import (
    CPU_MEASURED_PARAMETERS,
    CPU_ROW,
    GENERIC_GPU,
    estimate_training,
    throughput_row,
    tokens_per_second_per_process,
)

from kubetune.api.trainer_config import TargetResources

ONE_H100 = TargetResources(nodes=1, gpus_per_node=1, gpu_product="NVIDIA-H100-80GB-HBM3")


@pytest.mark.parametrize(
    ("label", "row"),
    [
        ("NVIDIA-H100-80GB-HBM3", "H100"),
        ("NVIDIA-H100-PCIe", "H100 PCIe"),
        ("NVIDIA-H200", "H200"),
        ("NVIDIA-A100-SXM4-40GB", "A100"),
        ("NVIDIA-L40S", "L40S"),
        ("NVIDIA-L4", "L4"),
        ("NVIDIA-A10G", "A10G"),
        ("NVIDIA-A10", "A10"),
        ("Tesla-V100-SXM2-16GB", "V100"),
        ("Tesla-T4", "T4"),
    ],
)
def test_the_gpu_product_label_picks_its_row(label: str, row: str) -> None:
    assert throughput_row(TargetResources(gpus_per_node=1, gpu_product=label)).name == row


def test_an_unlisted_or_unnamed_gpu_gets_the_generic_row_and_a_cpu_job_the_cpu_row() -> None:
    assert throughput_row(TargetResources(gpus_per_node=1, gpu_product="NVIDIA-RTX-A6000")) is GENERIC_GPU
    assert throughput_row(TargetResources(gpus_per_node=4)) is GENERIC_GPU
    assert throughput_row(TargetResources(gpus_per_node=0)) is CPU_ROW


def test_one_h100_trains_a_1b_adapter_at_mfu_times_peak_over_4n() -> None:
    # 0.35 x 989e12 / (4 x 1e9) = 86,537.5 tokens/s; 86,537,500 tokens take 1000 s.
    estimate = estimate_training(
        tokens_per_epoch=86_537_500,
        data_passes=1,
        optimizer_steps=500,
        parameters=10**9,
        method="lora",
        resources=ONE_H100,
    )
    assert estimate.tokens_per_second == 86_537.5
    assert (estimate.train_tokens, estimate.optimizer_steps, estimate.parameters) == (86_537_500, 500, 10**9)
    assert (estimate.duration_seconds, estimate.duration) == (1000, "16m40s")
    assert estimate.gpu_hours == round(1000 / 3600, 3)
    assert estimate.basis is not None and "H100" in estimate.basis and "estimate" in estimate.basis


def test_full_fine_tuning_costs_6n_flops_per_token_at_its_own_mfu() -> None:
    per_gpu = tokens_per_second_per_process(row=throughput_row(ONE_H100), parameters=10**9, method="full")
    assert per_gpu == pytest.approx(0.40 * 989e12 / 6e9)
    qlora = tokens_per_second_per_process(row=throughput_row(ONE_H100), parameters=10**9, method="qlora")
    assert qlora == pytest.approx(0.25 * 989e12 / 4e9)


def test_several_nodes_multiply_by_the_gpus_and_lose_ten_percent() -> None:
    job = TargetResources(nodes=2, gpus_per_node=8, gpu_product="NVIDIA-A100-SXM4-80GB")
    estimate = estimate_training(
        tokens_per_epoch=10**9, data_passes=1, optimizer_steps=1, parameters=7 * 10**9, method="lora", resources=job
    )
    per_gpu = 0.35 * 312e12 / (4 * 7e9)
    assert estimate.tokens_per_second == pytest.approx(per_gpu * 16 * 0.9, abs=0.05)
    assert estimate.duration_seconds == -(-(10**9) // (per_gpu * 16 * 0.9))  # rounded up
    assert estimate.gpu_hours == round(16 * estimate.duration_seconds / 3600, 3)
    assert estimate.basis is not None and "2 nodes" in estimate.basis


def test_train_tokens_count_every_pass_and_a_partial_last_one() -> None:
    estimate = estimate_training(
        tokens_per_epoch=1000, data_passes=2.5, optimizer_steps=25, parameters=10**9, method="lora", resources=ONE_H100
    )
    assert estimate.train_tokens == 2500 and estimate.optimizer_steps == 25


def test_the_cpu_row_is_the_measured_throughput_for_smollm2_lora_and_scaled_for_others() -> None:
    cpu = TargetResources(nodes=1, gpus_per_node=0)
    measured = estimate_training(
        tokens_per_epoch=178 * 3720,
        data_passes=1,
        optimizer_steps=10,
        parameters=CPU_MEASURED_PARAMETERS,
        method="lora",
        resources=cpu,
    )
    assert measured.tokens_per_second == 178.0
    assert (measured.duration_seconds, measured.duration) == (3720, "1h02m")
    assert measured.gpu_hours is None
    assert measured.basis is not None and ": measured (178 tokens/s)" in measured.basis

    twice = estimate_training(
        tokens_per_epoch=1,
        data_passes=1,
        optimizer_steps=1,
        parameters=2 * CPU_MEASURED_PARAMETERS,
        method="lora",
        resources=cpu,
    )
    assert twice.tokens_per_second == 89.0
    assert twice.basis is not None and "scaled from measured" in twice.basis
    full = tokens_per_second_per_process(row=CPU_ROW, parameters=CPU_MEASURED_PARAMETERS, method="full")
    assert full == pytest.approx(178 * 4 / 6 * 0.40 / 0.35)


def test_the_basis_fits_the_status_field() -> None:
    job = TargetResources(nodes=128, gpus_per_node=16, gpu_product="NVIDIA-H100-PCIe-" + "X" * 40)
    estimate = estimate_training(
        tokens_per_epoch=10**12,
        data_passes=3,
        optimizer_steps=10**6,
        parameters=405 * 10**9,
        method="dora",
        resources=job,
    )
    assert estimate.basis is not None and len(estimate.basis) <= 300
    assert estimate.duration is not None and len(estimate.duration) <= 32
