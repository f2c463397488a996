"""method.objective dpo through the whole recipe (tiny random model): pairs in, DPO metrics in events,
the reference kept in checkpoints, the evaluation report and the data report in the artifact."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dpo_pairs import dpo_config, preference_pairs

from kubetune.api.exit_codes import ExitCode

Runner = Callable[..., tuple[int, list[Any]]]


def test_dpo_trains_reports_reward_metrics_and_writes_the_eval_report(
    tiny_model_dir: Path,
    lamini_path: Path,
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    out = tmp_path / "out"
    data = preference_pairs(lamini_path, tmp_path / "pairs.jsonl", count=40)
    config = dpo_config(
        config_factory,
        model_dir=tiny_model_dir,
        data=data,
        output=out,
        dataset={"validationSplit": 0.2, "maxSeqLength": 128},
        hyperparameters={"maxSteps": 4, "perDeviceBatchSize": 4, "learningRate": 5e-3},
    )
    config["method"]["dpo"] = {"beta": 0.2}
    code, events = run_in_process(config, samples=1)

    assert code == ExitCode.OK
    started = next(e for e in events if e.event == "started")
    assert (started.train_examples, started.validation_examples) == (32, 8)
    steps = [e for e in events if e.event == "step"]
    assert len(steps) == 4
    for step in steps:
        assert step.preference is not None and 0 <= step.preference.reward_accuracy <= 1
        margin = step.preference.chosen_reward - step.preference.rejected_reward
        assert step.preference.reward_margin == pytest.approx(margin, abs=1e-6)
    # The first step starts where policy == reference: every reward 0, the loss log 2 per pair.
    assert steps[0].loss == pytest.approx(0.6931, abs=1e-3)
    assert steps[0].preference is not None and steps[0].preference.reward_accuracy == 0.0
    evals = [e for e in events if e.event == "eval"]
    assert len(evals) == 2 and all(e.preference is not None for e in evals)
    assert evals[0].eval_loss == pytest.approx(0.6931, abs=1e-3)
    assert evals[1].preference is not None and evals[1].preference.reward_margin != 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["objective"] == "dpo"
    assert {"eval-report.json", "eval-report.md", "data-report.json"} <= set(manifest["files"])
    report = json.loads((out / "eval-report.json").read_text())
    assert report["objective"] == "dpo" and report["exampleCount"] == 8
    assert all(e["lossBefore"] == pytest.approx(0.6931, abs=1e-3) for e in report["examples"])
    assert all(e["marginBefore"] == pytest.approx(0.0, abs=1e-4) for e in report["examples"])
    assert report["meanLossAfter"] == pytest.approx(evals[1].eval_loss, rel=1e-4)
    assert len(report["worst"]) == 5 and all(w["answer"] is not None for w in report["worst"])
    data_report = json.loads((out / "data-report.json").read_text())
    assert data_report["formats"] == {"prompt_chosen_rejected": 40}


def test_a_resumed_dpo_run_takes_its_reference_from_the_checkpoint(
    tiny_model_dir: Path,
    lamini_path: Path,
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    out = tmp_path / "out"
    data = preference_pairs(lamini_path, tmp_path / "pairs.jsonl", count=24, openai_format=True)
    config = dpo_config(
        config_factory,
        model_dir=tiny_model_dir,
        data=data,
        output=out,
        method={"type": "full"},
        hyperparameters={"maxSteps": 2, "perDeviceBatchSize": 4, "learningRate": 1e-3},
        checkpointing={"everySteps": 1},
    )
    assert run_in_process(config, samples=0)[0] == ExitCode.OK
    checkpoint = out / "checkpoints" / "step-00000002"
    assert (checkpoint / "extra.safetensors").is_file()

    # Two more steps: a full fine-tune cannot recompute its reference, so it must come from the checkpoint.
    config["hyperparameters"]["maxSteps"] = 4
    code, events = run_in_process(config, samples=0)
    assert code == ExitCode.OK
    started = next(e for e in events if e.event == "started")
    assert started.resumed_from_step == 2
    assert [e.step for e in events if e.event == "step"] == [3, 4]

    # Without the saved reference the resumed full fine-tune is refused, not trained against a moved model.
    for step_dir in (out / "checkpoints").iterdir():
        (step_dir / "extra.safetensors").unlink(missing_ok=True)
    config["hyperparameters"]["maxSteps"] = 6
    code, events = run_in_process(config, samples=0)
    assert code == ExitCode.BAD_CONFIG
    failed = next(e for e in events if e.event == "failed")
    assert "reference" in failed.message


def test_bad_preference_records_fail_with_their_lines(
    tiny_model_dir: Path,
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    data = tmp_path / "bad.jsonl"
    good = {"prompt": "What is kubetune?", "chosen": "A fine-tuning operator.", "rejected": "A database."}
    lines = [good, {"prompt": "Hi", "chosen": "Hello"}, good, {"prompt": "Q", "chosen": 3, "rejected": "x"}]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    config = dpo_config(config_factory, model_dir=tiny_model_dir, data=data, output=tmp_path / "out")
    code, events = run_in_process(config, samples=0)
    assert code == ExitCode.BAD_DATA
    failed = next(e for e in events if e.event == "failed")
    assert f"{data.as_uri()}:2" in failed.message and "rejected" in failed.message
    assert f"{data.as_uri()}:4" in failed.message and "chosen" in failed.message
    assert not (tmp_path / "out" / "manifest.json").exists()
