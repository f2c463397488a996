"""Resolving omitted and ``auto`` hyperparameters into the numbers the loop runs with, from the examples'
token lengths, the world size and the device (the recipe and the data check call the same function)."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune_trainer.data import plan_batches
from kubetune_trainer.preflight import hyperparameters_status
from kubetune_trainer.settings import (
    ResolvedHyperparameters,
    auto_epochs,
    resolve_batch_size,
    resolve_hyperparameters,
    resolve_precision,
    steps_in_epoch,
)

from kubetune.api.spec import DatasetSpec, Hyperparameters, MethodType
from kubetune.api.status import DatasetStatus
from kubetune.api.trainer_config import TrainerConfig

ALL_CHOSEN = ("epochs", "perDeviceBatchSize", "learningRate", "warmupSteps")


def _dataset(**fields: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"train": ["file:///data/train.jsonl"], "maxSeqLength": 512, **fields})


def _resolve(
    hp: Hyperparameters,
    *,
    examples: int = 80,
    method: MethodType = "lora",
    world_size: int = 1,
    device: str = "cpu",
    dataset: DatasetSpec | None = None,
) -> ResolvedHyperparameters:
    """80 examples of 100 tokens: 10 batches of 8 on the CPU."""
    return resolve_hyperparameters(
        hp,
        method=method,
        dataset=dataset or _dataset(),
        lengths=[100] * examples,
        world_size=world_size,
        device=device,  # type: ignore[arg-type]
    )


def test_omitted_epochs_and_learning_rate_default_to_three_epochs_and_the_adapter_rate() -> None:
    hp = _resolve(Hyperparameters())
    assert hp.per_device_batch_size == 8
    assert hp.epochs == 3 and hp.total_steps == 30 and hp.epoch_steps == (10, 10, 10) and hp.data_passes == 3
    assert hp.learning_rate == 2e-4
    assert hp.warmup_steps == 1  # ceil(0.03 * 30)
    assert hp.chosen == ALL_CHOSEN


def test_full_fine_tuning_defaults_to_a_ten_times_smaller_learning_rate() -> None:
    assert _resolve(Hyperparameters(), method="full").learning_rate == 2e-5
    assert _resolve(Hyperparameters(), method="qlora").learning_rate == 2e-4


@pytest.mark.parametrize(("examples", "epochs"), [(1, 3), (10_000, 3), (10_001, 2), (50_000, 2), (50_001, 1)])
def test_auto_epochs_shrink_for_large_datasets(examples: int, epochs: int) -> None:
    assert auto_epochs(examples) == epochs


def test_auto_epochs_count_the_training_examples_the_plan_gets() -> None:
    assert _resolve(Hyperparameters(epochs="auto"), examples=10_001).epochs == 2


def test_max_steps_ending_mid_epoch_shortens_the_last_epoch() -> None:
    hp = _resolve(Hyperparameters(max_steps=25, warmup_steps=4))
    assert hp.epochs == 3 and hp.epoch_steps == (10, 10, 5) and hp.total_steps == 25
    assert hp.data_passes == 2.5
    assert hp.warmup_steps == 4
    assert hp.chosen == ("perDeviceBatchSize", "learningRate")


def test_max_steps_within_the_first_epoch_is_a_fraction_of_a_pass() -> None:
    hp = _resolve(Hyperparameters(max_steps=4))
    assert (hp.epochs, hp.epoch_steps, hp.data_passes) == (1, (4,), 0.4)


def test_every_rank_and_accumulated_micro_batch_takes_a_batch_of_the_step() -> None:
    hp = _resolve(Hyperparameters(epochs=1, gradient_accumulation_steps=2), world_size=2)
    assert hp.total_steps == 3 and hp.world_size == 2  # ceil(10 batches / (2 ranks x 2 micro-batches))


def test_a_short_last_step_still_counts_so_no_batch_is_dropped() -> None:
    assert steps_in_epoch(batches=9, world_size=2, gradient_accumulation_steps=2) == 3
    assert steps_in_epoch(batches=8, world_size=2, gradient_accumulation_steps=2) == 2


def test_packed_epochs_take_their_steps_from_each_epochs_own_plan() -> None:
    dataset = _dataset(packing=True)
    lengths = [37 * (i % 13) + 5 for i in range(300)]
    hp = resolve_hyperparameters(
        Hyperparameters(epochs=3, per_device_batch_size=4),
        method="lora",
        dataset=dataset,
        lengths=lengths,
        world_size=1,
        device="cpu",
    )
    planned = [
        len(plan_batches(lengths, batch_size=4, max_seq_length=512, packing=True, seed=42, epoch=e)) for e in range(3)
    ]
    assert hp.epoch_steps == tuple(planned) and hp.total_steps == sum(planned)


def test_auto_batch_size_is_eight_on_cpu_and_token_budgeted_on_gpu() -> None:
    auto = Hyperparameters(per_device_batch_size="auto")
    assert resolve_batch_size(auto, device="cpu", max_seq_length=512) == 8
    assert resolve_batch_size(auto, device="cuda", max_seq_length=512) == 8
    assert resolve_batch_size(auto, device="cuda", max_seq_length=2048) == 2
    assert resolve_batch_size(auto, device="cuda", max_seq_length=16) == 64
    assert resolve_batch_size(auto, device="cuda", max_seq_length=65536) == 1
    assert resolve_batch_size(Hyperparameters(per_device_batch_size=3), device="cuda", max_seq_length=512) == 3


def test_gpu_plans_use_the_gpu_batch_size() -> None:
    hp = _resolve(Hyperparameters(epochs=1), device="cuda", dataset=_dataset(maxSeqLength=2048))
    assert hp.per_device_batch_size == 2 and hp.total_steps == 40


def test_a_warmup_ratio_is_applied_to_the_total_and_warmup_steps_are_capped_by_it() -> None:
    assert _resolve(Hyperparameters(epochs=1, warmup_ratio=0.25)).warmup_steps == 3  # ceil(2.5)
    assert _resolve(Hyperparameters(max_steps=5, warmup_steps=50)).warmup_steps == 5


def test_values_given_in_the_spec_are_kept_and_not_marked_chosen() -> None:
    hp = _resolve(
        Hyperparameters(epochs=2, per_device_batch_size=5, learning_rate=1e-3, warmup_steps=2),
    )
    assert (hp.epochs, hp.per_device_batch_size, hp.learning_rate, hp.warmup_steps) == (2, 5, 1e-3, 2)
    assert hp.total_steps == 32 and hp.chosen == ()


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"maxSteps": 7},
        {"epochs": "auto", "gradientAccumulationSteps": 3},
        {"warmupRatio": 0.2, "perDeviceBatchSize": "auto"},
    ],
)
@pytest.mark.parametrize(("nodes", "gpus"), [(1, 0), (2, 8)])
def test_a_config_with_the_resolved_values_plans_the_same_steps(given: dict[str, Any], nodes: int, gpus: int) -> None:
    """What the training pods get (``with_resolved``) plans exactly what the data check reported."""
    config = TrainerConfig.model_validate(
        {
            "run": {"name": "x"},
            "model": {"source": "hf://org/model"},
            "dataset": {"train": ["file:///data/train.jsonl"], "maxSeqLength": 1024},
            "hyperparameters": given,
            "output": {"destination": "file:///out"},
            "resources": {"nodes": nodes, "gpusPerNode": gpus},
        }
    )
    lengths = [(i * 37) % 1000 + 1 for i in range(2000)]
    device = "cpu" if gpus == 0 else "cuda"
    world = config.resources.world_size

    def plan(c: TrainerConfig) -> ResolvedHyperparameters:
        return resolve_hyperparameters(
            c.hyperparameters,
            method=c.method.type,
            dataset=c.dataset,
            lengths=lengths,
            world_size=world,
            device=device,  # type: ignore[arg-type]
        )

    checked = plan(config)
    status = hyperparameters_status(checked)
    pods = config.with_resolved(status, dataset=DatasetStatus(spec_hash="", train_examples=len(lengths)))
    trained = plan(pods)
    assert trained.epoch_steps == checked.epoch_steps and trained.total_steps == checked.total_steps
    assert (trained.per_device_batch_size, trained.learning_rate, trained.warmup_steps) == (
        checked.per_device_batch_size,
        checked.learning_rate,
        checked.warmup_steps,
    )
    assert pods.validated is not None and pods.validated.total_steps == checked.total_steps


def test_precision_is_fp32_on_cpu_whatever_was_asked_and_bf16_on_capable_gpus() -> None:
    on_cpu = resolve_precision("bf16", device="cpu", bf16_supported=False)
    assert on_cpu.used == "fp32" and "CPU" in on_cpu.reason
    assert resolve_precision("fp32", device="cpu", bf16_supported=False).reason == ""
    assert resolve_precision("auto", device="cuda", bf16_supported=True).used == "bf16"
    assert resolve_precision("auto", device="cuda", bf16_supported=False).used == "fp32"
    assert resolve_precision("fp16", device="cuda", bf16_supported=True).used == "fp16"


def test_bf16_on_a_gpu_without_it_is_a_recorded_choice_not_a_silent_switch() -> None:
    choice = resolve_precision("bf16", device="cuda", bf16_supported=False)
    assert (choice.requested, choice.used) == ("bf16", "fp16")
    assert "no bf16" in choice.reason
