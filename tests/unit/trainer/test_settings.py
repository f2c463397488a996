"""Resolving omitted and ``auto`` hyperparameters into the numbers the loop runs with."""

from __future__ import annotations

import pytest
from kubetune_trainer.settings import (
    ResolvedHyperparameters,
    resolve_batch_size,
    resolve_hyperparameters,
    resolve_precision,
    steps_in_epoch,
)

from kubetune.api.spec import Hyperparameters


def _resolve(
    hp: Hyperparameters, *, steps: int = 10, method: str = "lora", examples: int = 100
) -> ResolvedHyperparameters:
    return resolve_hyperparameters(
        hp,
        method=method,
        train_examples=examples,
        per_device_batch_size=8,  # type: ignore[arg-type]
        epoch_steps=lambda epoch: steps,
        device="cpu",
        bf16_supported=False,
    )


def test_omitted_epochs_and_learning_rate_default_to_three_epochs_and_the_adapter_rate() -> None:
    hp = _resolve(Hyperparameters(), steps=10)
    assert hp.epochs == 3 and hp.total_steps == 30 and hp.epoch_steps == (10, 10, 10)
    assert hp.learning_rate == 2e-4
    assert hp.warmup_steps == 1


def test_full_fine_tuning_defaults_to_a_ten_times_smaller_learning_rate() -> None:
    assert _resolve(Hyperparameters(), method="full").learning_rate == 2e-5


@pytest.mark.parametrize(("examples", "epochs"), [(10_000, 3), (10_001, 2), (50_000, 2), (50_001, 1)])
def test_auto_epochs_shrink_for_large_datasets(examples: int, epochs: int) -> None:
    assert _resolve(Hyperparameters(epochs="auto"), examples=examples).epochs == epochs


def test_max_steps_ending_mid_epoch_shortens_the_last_epoch() -> None:
    hp = _resolve(Hyperparameters(max_steps=25, warmup_steps=4), steps=10)
    assert hp.epochs == 3 and hp.epoch_steps == (10, 10, 5) and hp.total_steps == 25
    assert hp.warmup_steps == 4


def test_a_short_last_step_still_counts_so_no_batch_is_dropped() -> None:
    assert steps_in_epoch(batches=9, world_size=2, gradient_accumulation_steps=2) == 3
    assert steps_in_epoch(batches=8, world_size=2, gradient_accumulation_steps=2) == 2


def test_auto_batch_size_is_eight_on_cpu_and_token_budgeted_on_gpu() -> None:
    auto = Hyperparameters(per_device_batch_size="auto")
    assert resolve_batch_size(auto, device="cpu", max_seq_length=512) == 8
    assert resolve_batch_size(auto, device="cuda", max_seq_length=2048) == 2
    assert resolve_batch_size(auto, device="cuda", max_seq_length=65536) == 1
    assert resolve_batch_size(Hyperparameters(per_device_batch_size=3), device="cuda", max_seq_length=512) == 3


def test_precision_is_fp32_on_cpu_whatever_was_asked_and_bf16_on_capable_gpus() -> None:
    assert resolve_precision("bf16", device="cpu", bf16_supported=False) == "fp32"
    assert resolve_precision("auto", device="cuda", bf16_supported=True) == "bf16"
    assert resolve_precision("auto", device="cuda", bf16_supported=False) == "fp32"
    assert resolve_precision("bf16", device="cuda", bf16_supported=False) == "fp16"
