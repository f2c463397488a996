"""What a training run will cost: tokens, optimizer steps, time and GPU-hours, before any GPU is claimed.

Pure arithmetic over a throughput table. Every GPU row is an **estimate**: the vendor's dense tensor-core
peak times an assumed model FLOPs utilisation (MFU). Only the CPU row comes from a measurement
(docs/benchmarks.md); other model sizes on the CPU are scaled from it.

Training costs about ``k·N`` FLOPs per token for a model of ``N`` parameters: ``k = 6`` for full
fine-tuning (forward 2N, backward 4N: activation and weight gradients), ``k = 4`` for adapters (the frozen
base needs no weight gradients, so backward is only the activation gradients, 2N). So one process trains

    tokens/s = MFU · peak FLOP/s / (k · N)

and the whole job ``world size · tokens/s · scaling efficiency``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from kubetune.api.durations import human_duration
from kubetune.api.spec import MethodType
from kubetune.api.status import MAX_DATA_TEXT, Estimate
from kubetune.api.trainer_config import TargetResources

TFLOPS = 1e12


@dataclass(frozen=True, kw_only=True)
class ThroughputRow:
    """One kind of device: its peak, and whether the resulting estimate rests on a measurement."""

    name: str
    # Tokens of the nvidia.com/gpu.product label that select this row, all of them (e.g. H100 + PCIE).
    match: tuple[str, ...]
    # Dense (no sparsity) tensor-core peak in FLOP/s for the precision the job trains in.
    peak_flops: float
    precision: str


# Vendor datasheet peaks, dense, bf16 (fp16 where the GPU has no bf16 tensor cores). Most specific first:
# a label matches the first row whose tokens it all has ("NVIDIA-H100-PCIe" is the PCIe row, not the SXM one).
GPU_ROWS: tuple[ThroughputRow, ...] = (
    ThroughputRow(name="H100 PCIe", match=("H100", "PCIE"), peak_flops=756 * TFLOPS, precision="bf16"),
    ThroughputRow(name="H100", match=("H100",), peak_flops=989 * TFLOPS, precision="bf16"),
    ThroughputRow(name="H200", match=("H200",), peak_flops=989 * TFLOPS, precision="bf16"),
    ThroughputRow(name="GH200", match=("GH200",), peak_flops=989 * TFLOPS, precision="bf16"),
    ThroughputRow(name="A100", match=("A100",), peak_flops=312 * TFLOPS, precision="bf16"),
    ThroughputRow(name="L40S", match=("L40S",), peak_flops=362 * TFLOPS, precision="bf16"),
    ThroughputRow(name="L4", match=("L4",), peak_flops=121 * TFLOPS, precision="bf16"),
    ThroughputRow(name="A10", match=("A10",), peak_flops=125 * TFLOPS, precision="bf16"),
    ThroughputRow(name="A10G", match=("A10G",), peak_flops=125 * TFLOPS, precision="bf16"),
    ThroughputRow(name="V100", match=("V100",), peak_flops=125 * TFLOPS, precision="fp16"),
    ThroughputRow(name="T4", match=("T4",), peak_flops=65 * TFLOPS, precision="fp16"),
)
# A GPU job without gpuProduct, or with a product not listed: assumed A10-class.
GENERIC_GPU = ThroughputRow(name="unlisted GPU, assumed A10-class", match=(), peak_flops=125 * TFLOPS, precision="bf16")

# Assumed MFU per method. LoRA/DoRA on a GPU reach about a third of peak (small adapter matmuls, optimizer
# and data loading between steps); QLoRA dequantizes every 4-bit weight in each forward and backward;
# full fine-tuning has the large weight-gradient matmuls that run closest to peak.
ASSUMED_MFU: dict[MethodType, float] = {"lora": 0.35, "dora": 0.35, "qlora": 0.25, "full": 0.40}
FLOPS_PER_PARAMETER_TOKEN: dict[MethodType, int] = {"lora": 4, "dora": 4, "qlora": 4, "full": 6}

# The CPU row, measured (docs/benchmarks.md): SmolLM2-135M-Instruct, LoRA, fp32, 2 cores, 178 tokens/s
# (the quiet-machine run; two busier runs gave 190 and 204). Its effective peak is what makes the
# formula above give that number, so other sizes and methods scale from it (∝ 1/N, and by k and MFU).
# A pod with more cores trains faster than this.
CPU_MEASURED_TOKENS_PER_SECOND = 178.0
CPU_MEASURED_PARAMETERS = 134_515_008
CPU_MEASURED_METHOD: MethodType = "lora"
CPU_ROW = ThroughputRow(
    name="CPU (2 cores)",
    match=(),
    peak_flops=CPU_MEASURED_TOKENS_PER_SECOND
    * FLOPS_PER_PARAMETER_TOKEN[CPU_MEASURED_METHOD]
    * CPU_MEASURED_PARAMETERS
    / ASSUMED_MFU[CPU_MEASURED_METHOD],
    precision="fp32",
)
# Within 10% of the measured model's size with the measured method, the CPU figure counts as measured.
MEASURED_SIZE_TOLERANCE = 0.10

# Data parallelism across nodes all-reduces gradients over the network after every optimizer step; 0.9
# assumes a fast interconnect (adapters' gradients are small, full fine-tuning's are not). Within a node
# the all-reduce runs over NVLink/PCIe and is counted as free.
MULTI_NODE_EFFICIENCY = 0.9


def throughput_row(resources: TargetResources) -> ThroughputRow:
    """The row for the job's hardware: the CPU row, the GPU product's row, or the generic GPU."""
    if resources.gpus_per_node == 0:
        return CPU_ROW
    if resources.gpu_product:
        tokens = set(re.split(r"[-_ .]+", resources.gpu_product.upper()))
        for row in GPU_ROWS:
            if all(token in tokens for token in row.match):
                return row
    return GENERIC_GPU


def tokens_per_second_per_process(*, row: ThroughputRow, parameters: int, method: MethodType) -> float:
    """MFU · peak / (k · N) for one training process (one GPU, or one CPU pod)."""
    return ASSUMED_MFU[method] * row.peak_flops / (FLOPS_PER_PARAMETER_TOKEN[method] * max(parameters, 1))


def scaling_efficiency(resources: TargetResources) -> float:
    return MULTI_NODE_EFFICIENCY if resources.nodes > 1 else 1.0


def is_measured(*, row: ThroughputRow, parameters: int, method: MethodType) -> bool:
    if row is not CPU_ROW or method != CPU_MEASURED_METHOD:
        return False
    return abs(parameters - CPU_MEASURED_PARAMETERS) <= MEASURED_SIZE_TOLERANCE * CPU_MEASURED_PARAMETERS


def estimate_training(
    *,
    tokens_per_epoch: int,
    data_passes: float,
    optimizer_steps: int,
    parameters: int,
    method: MethodType,
    resources: TargetResources,
) -> Estimate:
    """Tokens, steps, time and GPU-hours of the planned training.

    ``tokens_per_epoch``: non-padding tokens of the training examples; ``data_passes``: epochs, less when
    maxSteps ends mid-epoch. Loading the model, evaluation and checkpoints are not counted.
    """
    row = throughput_row(resources)
    train_tokens = round(tokens_per_epoch * data_passes)
    per_process = tokens_per_second_per_process(row=row, parameters=parameters, method=method)
    job_tokens_per_second = per_process * resources.world_size * scaling_efficiency(resources)
    seconds = math.ceil(train_tokens / job_tokens_per_second)
    gpus = resources.nodes * resources.gpus_per_node
    return Estimate(
        train_tokens=train_tokens,
        optimizer_steps=optimizer_steps,
        parameters=parameters,
        tokens_per_second=round(job_tokens_per_second, 1),
        duration_seconds=seconds,
        duration=human_duration(seconds),
        gpu_hours=round(gpus * seconds / 3600, 3) if gpus else None,
        basis=basis(row=row, parameters=parameters, method=method, resources=resources),
    )


def basis(*, row: ThroughputRow, parameters: int, method: MethodType, resources: TargetResources) -> str:
    """One line saying which row, model size and method the estimate used, and whether it is measured."""
    if parameters >= 1e9:
        size = f"{parameters / 1e9:.2f}B"
    else:
        size = f"{parameters / 1e6:.0f}M" if parameters >= 1e6 else f"{parameters:,}"
    k = FLOPS_PER_PARAMETER_TOKEN[method]
    if row is CPU_ROW:
        how = (
            "measured"
            if is_measured(row=row, parameters=parameters, method=method)
            else "scaled from measured SmolLM2-135M LoRA"
        )
        text = f"{row.name}, {size} parameters, {method}: {how} ({CPU_MEASURED_TOKENS_PER_SECOND:.0f} tokens/s)"
    else:
        text = (
            f"{row.name} ({row.peak_flops / TFLOPS:.0f} TFLOP/s {row.precision} dense), {size} parameters, "
            f"{method}: estimate, MFU {ASSUMED_MFU[method]:.2f} assumed, {k}N FLOPs/token"
        )
    if resources.nodes > 1:
        text += f", x{MULTI_NODE_EFFICIENCY} across {resources.nodes} nodes"
    return text[:MAX_DATA_TEXT]
