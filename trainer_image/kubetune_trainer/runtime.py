"""The process's place in the run: device, rank, world size, and the collectives the loop needs.

Distributed runs are launched by ``torchrun`` (see docs/trainer.md for the contract); Accelerate reads
its environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK) and initialises the process
group: NCCL on GPUs, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from kubetune_trainer.settings import DeviceType, Precision

_MIXED_PRECISION: dict[Precision, str] = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


@dataclass(frozen=True, kw_only=True)
class Runtime:
    accelerator: Any  # accelerate.Accelerator
    device: torch.device
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device_type(self) -> DeviceType:
        return "cuda" if self.device.type == "cuda" else "cpu"

    def barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()

    def sum(self, *values: float) -> list[float]:
        """Element-wise sum over ranks (float64, so token counts stay exact)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.tolist()]

    def sum_tensors(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor summed element-wise over ranks (in place)."""
        if self.world_size > 1:
            for tensor in tensors:
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return list(tensors)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (SIGTERM may reach ranks at different times)."""
        return self.sum(1.0 if flag else 0.0)[0] > 0


def cuda_available() -> bool:
    return torch.cuda.is_available()


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def launched_world_size() -> int:
    """The world size torchrun (or any launcher setting WORLD_SIZE) asked for."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start_runtime(*, precision: Precision) -> Runtime:
    """Create the Accelerator (and the process group when launched distributed)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not cuda_available(), mixed_precision=_MIXED_PRECISION[precision])
    state = accelerator.state
    runtime = Runtime(
        accelerator=accelerator,
        device=accelerator.device,
        rank=state.process_index,
        local_rank=state.local_process_index,
        world_size=state.num_processes,
    )
    expected = launched_world_size()
    if runtime.world_size != expected:
        # Accelerate can fall back to one process (`accelerate launch --cpu` did on this project's CPUs); a
        # silent single-process run would train N copies of the same model.
        raise RuntimeError(f"launcher asked for WORLD_SIZE={expected} but Accelerate runs {runtime.world_size}")
    return runtime


def stop_runtime() -> None:
    """Tear down the process group and Accelerate's process-wide state (tests run several trainings)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
