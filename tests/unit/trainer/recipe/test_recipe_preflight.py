"""The recipe honours the data check: the training pods' config (``with_resolved``) runs the steps the
check reported, and data that changed since the check is named in a warning (training goes on)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.preflight import run_preflight

from kubetune.api.exit_codes import ExitCode
from kubetune.api.preflight import PreflightResult
from kubetune.api.trainer_config import TrainerConfig

Runner = Callable[..., tuple[int, list[Any]]]
# Everything left to kubetune: what a FineTuneJob without hyperparameters asks for.
AUTO = {"maxSteps": None, "perDeviceBatchSize": None, "learningRate": None}


def _checked(config: dict[str, Any], *, tmp_path: Path) -> tuple[TrainerConfig, PreflightResult]:
    """The check's result for a CPU job, and the config the operator gives the training pods."""
    spec_only = TrainerConfig.model_validate({**config, "resources": {"nodes": 1, "gpusPerNode": 0}})
    result = run_preflight(spec_only, cache_dir=tmp_path / "check-cache")
    assert result.outcome == "Passed", result.message
    assert result.hyperparameters is not None and result.dataset is not None
    return spec_only.with_resolved(result.hyperparameters, dataset=result.dataset), result


def test_the_training_pods_run_the_steps_the_check_reported(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = config_factory(
        model_dir=tiny_model_dir, data=lamini_subset(20), output=tmp_path / "out", hyperparameters=AUTO
    )
    pods, result = _checked(config, tmp_path=tmp_path)
    assert result.hyperparameters is not None
    assert (result.hyperparameters.epochs, result.hyperparameters.per_device_batch_size) == (3, 8)

    with caplog.at_level(logging.WARNING, logger="kubetune_trainer"):
        code, events = run_in_process(pods.to_wire(), samples=0)

    assert code == ExitCode.OK
    started = next(e for e in events if e.event == "started")
    assert (started.total_steps, started.epochs) == (result.hyperparameters.total_steps, 3)
    assert [e.step for e in events if e.event == "step"][-1] == result.hyperparameters.total_steps
    assert "changed since the data check" not in caplog.text


def test_data_changed_since_the_check_is_named_in_a_warning_and_training_goes_on(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(lamini_subset(8).read_bytes())
    config = config_factory(model_dir=tiny_model_dir, data=data, output=tmp_path / "out", hyperparameters=AUTO)
    pods, _ = _checked(config, tmp_path=tmp_path)
    data.write_bytes(lamini_subset(16).read_bytes())  # the data grew after the check

    with caplog.at_level(logging.WARNING, logger="kubetune_trainer"):
        code, _ = run_in_process(pods.to_wire(), samples=0)

    assert code == ExitCode.OK
    warning = next(r.getMessage() for r in caplog.records if "changed since the data check" in r.getMessage())
    assert "16 training examples, the check saw 8" in warning and "dataset sha256" in warning
