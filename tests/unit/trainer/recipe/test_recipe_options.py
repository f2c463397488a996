"""Options that change the loop's path: packing, full fine-tuning, gradient checkpointing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.exit_codes import ExitCode

Runner = Callable[..., tuple[int, list[Any]]]


def _eval_losses(events: list[Any]) -> list[float]:
    return [e.eval_loss for e in events if e.event == "eval"]


def test_packed_rows_give_the_same_held_out_loss_as_one_example_per_row(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    """The block-diagonal mask isolates packed examples: packing changes the speed, not the loss."""
    losses = {}
    for packing in (False, True):
        config = config_factory(
            model_dir=tiny_model_dir,
            data=lamini_subset(60),
            output=tmp_path / f"packing-{packing}",
            dataset={"validationSplit": 0.2, "packing": packing, "maxSeqLength": 512},
            hyperparameters={"maxSteps": 1},
        )
        code, events = run_in_process(config, samples=0)
        assert code == ExitCode.OK
        losses[packing] = _eval_losses(events)[0]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_full_fine_tuning_writes_full_weights_and_trains(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    config = config_factory(
        model_dir=tiny_model_dir,
        data=lamini_subset(8),
        output=out,
        method={"type": "full"},
        hyperparameters={"maxSteps": 3, "perDeviceBatchSize": 8, "learningRate": 1e-2, "warmupSteps": 0},
        checkpointing={"everySteps": 2},
    )
    code, events = run_in_process(config, samples=1)

    assert code == ExitCode.OK
    losses = [e.loss for e in events if e.event == "step"]
    assert losses[-1] < losses[0], losses
    assert not (out / "adapter").exists()
    AutoModelForCausalLM.from_pretrained(out / "model")  # loadable on its own
    samples = json.loads((out / "generations.json").read_text())
    assert samples[0]["before"] is not None and samples[0]["after"] is not None


def test_gradient_checkpointing_recomputes_but_gives_the_same_losses(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    runs = {}
    for checkpointing in (False, True):
        config = config_factory(
            model_dir=tiny_model_dir,
            data=lamini_subset(24),
            output=tmp_path / f"gc-{checkpointing}",
            hyperparameters={"maxSteps": 2, "gradientCheckpointing": checkpointing},
        )
        code, events = run_in_process(config, samples=0)
        assert code == ExitCode.OK
        runs[checkpointing] = [e.loss for e in events if e.event == "step"]
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)
