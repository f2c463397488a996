"""Resolve the config's ``auto`` and omitted hyperparameters into concrete numbers, once, before training.

Pure functions of the config and a few observed facts (the training examples' token lengths, the world
size, the device type); no I/O. The training recipe and the data check (:mod:`kubetune_trainer.preflight`)
both call :func:`resolve_hyperparameters`, so the step count the check reports is the one training runs.
The defaults are the ones documented in :class:`kubetune.api.spec.Hyperparameters`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kubetune.api.spec import DatasetSpec, Hyperparameters, MethodType, Objective
from kubetune_trainer.data.packing import plan_batches

DeviceType = Literal["cpu", "cuda"]
Precision = Literal["bf16", "fp16", "fp32"]

# Adapters move few weights a long way; full fine-tuning moves all weights a little.
ADAPTER_LEARNING_RATE = 2e-4
FULL_LEARNING_RATE = 2e-5
# DPO moves a model away from its own answers, not towards new ones: common practice takes a learning rate
# about 4x (adapters) to 40x (full) lower than for SFT.
DPO_ADAPTER_LEARNING_RATE = 5e-5
DPO_FULL_LEARNING_RATE = 5e-7
DEFAULT_WARMUP_RATIO = 0.03
# "auto" epochs: 3 passes for small datasets (the usual instruction-tuning regime), fewer when one pass
# already shows the model many examples (overfitting and cost grow with passes).
AUTO_EPOCHS_BY_SIZE: tuple[tuple[int, int], ...] = ((10_000, 3), (50_000, 2))
AUTO_EPOCHS_LARGE = 1
# "auto" micro-batch: 8 rows on the CPU (measured best tokens/s on 2 cores with SmolLM2); on a GPU,
# rows worth 4096 tokens: safe without gradient checkpointing for 8B-class models in 16-bit at 2k context;
# gradient accumulation supplies the effective batch.
AUTO_BATCH_CPU = 8
AUTO_BATCH_TOKENS_GPU = 4096
AUTO_BATCH_MAX = 64


@dataclass(frozen=True, kw_only=True)
class ResolvedHyperparameters:
    """The numbers the loop runs with; ``total_steps`` and ``warmup_steps`` are optimizer steps.

    Precision is not here: it depends on the GPU the process finds, so the recipe resolves it itself.
    """

    epochs: int
    # Optimizer steps in each epoch (the last one shortened when maxSteps ends mid-epoch).
    epoch_steps: tuple[int, ...]
    total_steps: int
    # Passes over the training data: ``epochs``, or less when maxSteps ends mid-epoch (e.g. 2.5).
    data_passes: float
    learning_rate: float
    warmup_steps: int
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"]
    per_device_batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    weight_decay: float
    max_grad_norm: float
    seed: int
    gradient_checkpointing: bool
    eval_every_steps: int | None
    # The spec fields kubetune chose because they were auto or omitted, named as the spec names them
    # (``epochs``, ``perDeviceBatchSize``, ``learningRate``, ``warmupSteps``).
    chosen: tuple[str, ...]


def auto_epochs(train_examples: int) -> int:
    for limit, epochs in AUTO_EPOCHS_BY_SIZE:
        if train_examples <= limit:
            return epochs
    return AUTO_EPOCHS_LARGE


def resolve_batch_size(hp: Hyperparameters, *, device: DeviceType, max_seq_length: int) -> int:
    if isinstance(hp.per_device_batch_size, int):
        return hp.per_device_batch_size
    if device == "cpu":
        return AUTO_BATCH_CPU
    return max(1, min(AUTO_BATCH_MAX, AUTO_BATCH_TOKENS_GPU // max_seq_length))


def resolve_learning_rate(hp: Hyperparameters, *, method: MethodType, objective: Objective = "sft") -> float:
    if hp.learning_rate is not None:
        return hp.learning_rate
    if objective == "dpo":
        return DPO_FULL_LEARNING_RATE if method == "full" else DPO_ADAPTER_LEARNING_RATE
    return FULL_LEARNING_RATE if method == "full" else ADAPTER_LEARNING_RATE


@dataclass(frozen=True, kw_only=True)
class PrecisionChoice:
    """The precision asked for, the one used, and why they differ (empty when they do not)."""

    requested: str
    used: Precision
    reason: str = ""


def resolve_precision(requested: str, *, device: DeviceType, bf16_supported: bool) -> PrecisionChoice:
    """auto: bf16 on GPUs that support it, else fp32. The CPU always trains in fp32: bf16 matmuls ran
    over 100x slower than fp32 on the CPUs measured (docs/trainer.md), and fp16 autocast is GPU-only. bf16 on a
    GPU without it trains in fp16 with loss scaling (the same 16-bit memory, a narrower range); the recipe
    logs that and the output manifest records it."""
    if device == "cpu":
        reason = "" if requested in ("auto", "fp32") else "the CPU trains in fp32 (16-bit matmuls are far slower there)"
        return PrecisionChoice(requested=requested, used="fp32", reason=reason)
    if requested == "auto":
        return PrecisionChoice(requested=requested, used="bf16" if bf16_supported else "fp32")
    if requested == "bf16" and not bf16_supported:
        return PrecisionChoice(
            requested=requested,
            used="fp16",
            reason="this GPU has no bf16; fp16 with loss scaling keeps the 16-bit memory footprint",
        )
    used: Precision = "fp32" if requested == "fp32" else ("fp16" if requested == "fp16" else "bf16")
    return PrecisionChoice(requested=requested, used=used)


def micro_batches_per_step(*, world_size: int, gradient_accumulation_steps: int) -> int:
    """Every rank takes ``gradient_accumulation_steps`` micro-batches per optimizer step."""
    return world_size * gradient_accumulation_steps


def steps_in_epoch(*, batches: int, world_size: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps for an epoch of ``batches`` micro-batches; a short last step is still a step
    (its loss is normalised by the tokens it has), so no example is dropped."""
    per_step = micro_batches_per_step(world_size=world_size, gradient_accumulation_steps=gradient_accumulation_steps)
    return max(1, math.ceil(batches / per_step))


def epoch_batches(
    lengths: Sequence[int], *, dataset: DatasetSpec, batch_size: int, seed: int, epoch: int
) -> list[list[list[int]]]:
    """The micro-batches of one epoch (batches → rows → example indices), as the loop takes them."""
    return plan_batches(
        lengths,
        batch_size=batch_size,
        max_seq_length=dataset.max_seq_length,
        packing=dataset.packing,
        seed=seed,
        epoch=epoch,
    )


def chosen_fields(hp: Hyperparameters) -> tuple[str, ...]:
    """The spec fields left to kubetune (auto or omitted), camelCase."""
    chosen: list[str] = []
    if hp.max_steps is None and not isinstance(hp.epochs, int):
        chosen.append("epochs")
    if not isinstance(hp.per_device_batch_size, int):
        chosen.append("perDeviceBatchSize")
    if hp.learning_rate is None:
        chosen.append("learningRate")
    if hp.warmup_steps is None and hp.warmup_ratio is None:
        chosen.append("warmupSteps")
    return tuple(chosen)


def resolve_hyperparameters(
    hp: Hyperparameters,
    *,
    method: MethodType,
    objective: Objective = "sft",
    dataset: DatasetSpec,
    lengths: Sequence[int],
    world_size: int,
    device: DeviceType,
) -> ResolvedHyperparameters:
    """Every hyperparameter made concrete for ``world_size`` processes on ``device``.

    ``lengths`` are the training examples' token counts: the batch plan of each epoch (packing can vary
    it by epoch) gives that epoch's optimizer steps.
    """
    batch_size = resolve_batch_size(hp, device=device, max_seq_length=dataset.max_seq_length)

    def full_epoch_steps(epoch: int) -> int:
        plan = epoch_batches(lengths, dataset=dataset, batch_size=batch_size, seed=hp.seed, epoch=epoch)
        return steps_in_epoch(
            batches=len(plan), world_size=world_size, gradient_accumulation_steps=hp.gradient_accumulation_steps
        )

    if hp.max_steps is not None:
        full: list[int] = []
        while sum(full) < hp.max_steps:
            full.append(full_epoch_steps(len(full)))
        steps = [*full[:-1], full[-1] - (sum(full) - hp.max_steps)]
        total = hp.max_steps
    else:
        epochs = hp.epochs if isinstance(hp.epochs, int) else auto_epochs(len(lengths))
        full = [full_epoch_steps(e) for e in range(epochs)]
        steps = list(full)
        total = sum(steps)
    if hp.warmup_steps is not None:
        warmup = min(hp.warmup_steps, total)
    else:
        ratio = DEFAULT_WARMUP_RATIO if hp.warmup_ratio is None else hp.warmup_ratio
        warmup = math.ceil(ratio * total)
    return ResolvedHyperparameters(
        epochs=len(steps),
        epoch_steps=tuple(steps),
        total_steps=total,
        data_passes=sum(done / whole for done, whole in zip(steps, full, strict=True)),
        learning_rate=resolve_learning_rate(hp, method=method, objective=objective),
        warmup_steps=warmup,
        scheduler=hp.scheduler,
        per_device_batch_size=batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        world_size=world_size,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        seed=hp.seed,
        gradient_checkpointing=hp.gradient_checkpointing,
        eval_every_steps=hp.eval_every_steps,
        chosen=chosen_fields(hp),
    )
