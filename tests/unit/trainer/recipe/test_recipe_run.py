"""The recipe end to end on a tiny random model: artifact, events, resume, accumulation, exit codes."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from kubetune_trainer.signals import StopRequest

from kubetune.api.exit_codes import ExitCode
from kubetune.api.trainer_config import TrainerConfig

Runner = Callable[..., tuple[int, list[Any]]]


def _events(events: list[Any], kind: str) -> list[Any]:
    return [e for e in events if e.event == kind]


def test_run_publishes_adapter_tokenizer_samples_and_a_manifest_hashing_every_file(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    out = tmp_path / "out"
    config = config_factory(
        model_dir=tiny_model_dir,
        data=lamini_subset(40),
        output=out,
        dataset={"validationSplit": 0.2},
        hyperparameters={"maxSteps": 3, "evalEverySteps": 2},
    )
    code, events = run_in_process(config)

    assert code == ExitCode.OK
    kinds = [e.event for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert [e.step for e in _events(events, "step")] == [1, 2, 3]
    assert [e.step for e in _events(events, "eval")] == [0, 2, 3]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["baseModel"]["source"] == f"file://{tiny_model_dir}"
    assert manifest["steps"] == 3 and manifest["method"] == "lora"
    assert manifest["trainedTokens"] == _events(events, "step")[-1].trained_tokens > 0
    assert len(manifest["datasetSha256"]) == 64
    assert manifest["config"]["hyperparameters"]["maxSteps"] == 3
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "generations.json"} <= set(
        manifest["files"]
    )
    assert any(name.startswith("tokenizer/") for name in manifest["files"])
    for name, record in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == record["sha256"], name
    finished = _events(events, "finished")[0]
    assert finished.manifest_sha256 == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    samples = json.loads((out / "generations.json").read_text())
    assert len(samples) == 2 and all(s["before"] is not None and "after" in s for s in samples)
    # keepLast 2 of the checkpoints at steps 2 and 3 (final).
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]


def test_resumed_run_repeats_the_uninterrupted_losses_and_data_order(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    # Dropout on: the resumed run must also restore the RNG to draw the same dropout masks.
    common: dict[str, Any] = {
        "data": lamini_subset(48),
        "method": {"dropout": 0.1},
        "hyperparameters": {"maxSteps": 6, "perDeviceBatchSize": 4},
        "checkpointing": {"everySteps": 100},
    }
    code, straight = run_in_process(config_factory(model_dir=tiny_model_dir, output=tmp_path / "a", **common))
    assert code == ExitCode.OK

    stop = StopRequest()

    def stop_after_step_3(event: Any) -> None:
        if event.event == "step" and event.step == 3:
            stop.request("test")

    config_b = TrainerConfig.model_validate(config_factory(model_dir=tiny_model_dir, output=tmp_path / "b", **common))
    from kubetune_trainer.cli import run
    from kubetune_trainer.reporting import RecordingReporter

    first = RecordingReporter()
    first.emit = _chain(first.emit, stop_after_step_3)  # type: ignore[method-assign]
    code = run(config_b, reporter=first, cache_dir=tmp_path / "cache", threads=2, sample_prompts=0, stop=stop)
    assert code == ExitCode.CHECKPOINTED_ON_SIGTERM
    assert [e.step for e in _events(first.events, "checkpoint")] == [3]
    assert not (tmp_path / "b" / "manifest.json").exists()

    code, resumed = run_in_process(config_b.to_wire(), samples=0)
    assert code == ExitCode.OK
    assert _events(resumed, "started")[0].resumed_from_step == 3
    straight_steps = _events(straight, "step")
    resumed_steps = _events(first.events, "step") + _events(resumed, "step")
    assert [e.step for e in resumed_steps] == [1, 2, 3, 4, 5, 6]
    # Same micro-batches in the same order: identical token counts step by step...
    assert [e.trained_tokens for e in resumed_steps] == [e.trained_tokens for e in straight_steps]
    # ...and the same losses (same weights, optimizer state, schedule and dropout masks).
    for a, b in zip(straight_steps, resumed_steps, strict=True):
        assert b.loss == pytest.approx(a.loss, abs=1e-5), a.step
        assert b.learning_rate == pytest.approx(a.learning_rate)


def _chain(first: Callable[[Any], None], then: Callable[[Any], None]) -> Callable[[Any], None]:
    def both(event: Any) -> None:
        first(event)
        then(event)

    return both


def test_accumulated_micro_batches_give_the_same_step_as_one_batch(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    """Loss normalised by the label tokens of the whole step, not averaged per micro-batch."""
    from kubetune_trainer.recipe import FineTuneRecipe, RunOptions
    from kubetune_trainer.reporting import RecordingReporter

    config = TrainerConfig.model_validate(
        config_factory(model_dir=tiny_model_dir, data=lamini_subset(16), output=tmp_path / "out")
    )

    def one_step(micro_batches: list[list[list[int]]]) -> tuple[float, dict[str, torch.Tensor]]:
        recipe = FineTuneRecipe(
            config, options=RunOptions(cache_dir=tmp_path / "cache", threads=2), reporter=RecordingReporter()
        )
        recipe.setup()
        try:
            # Rows of very different lengths, so per-micro-batch means would weigh tokens unequally.
            loss = recipe._optimizer_step(micro_batches).loss
            weights = {k: v.detach().clone() for k, v in recipe.model.named_parameters() if v.requires_grad}
        finally:
            recipe.cleanup()
        return loss, weights

    lengths = [len(e.input_ids) for e in _prepared_train(config, tmp_path)]
    by_length = sorted(range(len(lengths)), key=lengths.__getitem__)
    short, long = by_length[:2], by_length[-6:]
    loss_split, weights_split = one_step([[[i] for i in short], [[i] for i in long]])
    loss_whole, weights_whole = one_step([[[i] for i in short + long]])

    assert loss_split == pytest.approx(loss_whole, rel=1e-5)
    for name, tensor in weights_whole.items():
        torch.testing.assert_close(weights_split[name], tensor, rtol=1e-4, atol=1e-6)


def _prepared_train(config: TrainerConfig, tmp_path: Path) -> list[Any]:
    from kubetune_trainer.data import prepare_data
    from kubetune_trainer.modeling import load_tokenizer, resolve_model_source

    source = resolve_model_source(config.model, cache_dir=tmp_path)
    return prepare_data(config.dataset, tokenizer=load_tokenizer(source), seed=42).train


def test_nan_loss_stops_with_diverged_and_leaves_no_manifest(
    nan_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    out = tmp_path / "out"
    code, events = run_in_process(config_factory(model_dir=nan_model_dir, data=lamini_subset(16), output=out))

    assert code == ExitCode.DIVERGED == 79
    failed = _events(events, "failed")[0]
    assert failed.reason == "TrainingDiverged" and failed.exit_code == 79
    assert "loss became nan at step 1" in failed.message
    assert not (out / "manifest.json").exists()


def test_unknown_target_module_fails_with_bad_config_naming_the_field(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    config = config_factory(
        model_dir=tiny_model_dir,
        data=lamini_subset(16),
        output=tmp_path / "out",
        method={"targetModules": ["no_such_proj"]},
    )
    code, events = run_in_process(config)

    assert code == ExitCode.BAD_CONFIG
    assert _events(events, "failed")[0].message.startswith("method.targetModules:")


def test_missing_model_directory_fails_with_bad_config_naming_model_source(
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    config = config_factory(model_dir=tmp_path / "nowhere", data=lamini_subset(16), output=tmp_path / "out")
    code, events = run_in_process(config)

    assert code == ExitCode.BAD_CONFIG
    assert _events(events, "failed")[0].message.startswith("model.source:")


def test_unusable_data_fails_with_bad_data(
    tiny_model_dir: Path,
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    data = tmp_path / "broken.jsonl"
    data.write_text('{"question": "q?"}\nnot json\n', encoding="utf-8")
    code, events = run_in_process(config_factory(model_dir=tiny_model_dir, data=data, output=tmp_path / "out"))

    assert code == ExitCode.BAD_DATA
    assert _events(events, "failed")[0].reason == "BadData"


def test_crash_while_publishing_leaves_no_manifest_even_over_a_finished_run(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    config = config_factory(
        model_dir=tiny_model_dir, data=lamini_subset(16), output=out, hyperparameters={"maxSteps": 1}
    )
    assert run_in_process(config, samples=0)[0] == ExitCode.OK
    assert (out / "manifest.json").exists()

    import kubetune_trainer.output as output

    def crash(path: Path, data: bytes) -> None:
        raise OSError("disk gone")  # the process dies after the files, before the manifest

    monkeypatch.setattr(output, "write_file_atomically", crash)
    config["hyperparameters"]["maxSteps"] = 2
    config["checkpointing"]["everySteps"] = 100
    with pytest.raises(OSError, match="disk gone"):
        run_in_process(config, samples=0)

    assert not (out / "manifest.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()


def test_perplexity_is_reported_as_exp_of_eval_loss(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    config = config_factory(
        model_dir=tiny_model_dir,
        data=lamini_subset(30),
        output=tmp_path / "out",
        dataset={"validationSplit": 0.2},
        hyperparameters={"maxSteps": 1},
    )
    _, events = run_in_process(config, samples=0)
    for event in _events(events, "eval"):
        assert event.perplexity == pytest.approx(math.exp(event.eval_loss))
    # A random model is close to uniform over the 49k vocabulary: ln(49152) = 10.8.
    assert _events(events, "eval")[0].eval_loss == pytest.approx(math.log(49152), abs=0.3)


def test_the_eval_report_scores_every_held_out_example_before_and_after_even_after_a_resume(
    tiny_model_dir: Path,
    lamini_subset: Callable[[int], Path],
    tmp_path: Path,
    run_in_process: Runner,
    config_factory: Callable[..., dict[str, Any]],
) -> None:
    out = tmp_path / "out"
    config = config_factory(
        model_dir=tiny_model_dir,
        data=lamini_subset(40),
        output=out,
        dataset={"validationSplit": 0.25},
        hyperparameters={"maxSteps": 3, "learningRate": 5e-3},
        checkpointing={"everySteps": 2},
    )
    code, events = run_in_process(config, samples=1)
    assert code == ExitCode.OK
    evals = _events(events, "eval")
    report = json.loads((out / "eval-report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["files"]["eval-report.json"]["sha256"]
        == hashlib.sha256((out / "eval-report.json").read_bytes()).hexdigest()
    )
    assert "eval-report.md" in manifest["files"]
    assert report["objective"] == "sft" and report["step"] == 3 and report["exampleCount"] == 10
    # The per-example losses add up to the eval losses the run reported (both weigh answer tokens).
    weights = [e["labelTokens"] for e in report["examples"]]
    after = sum(e["lossAfter"] * w for e, w in zip(report["examples"], weights, strict=True)) / sum(weights)
    before = sum(e["lossBefore"] * w for e, w in zip(report["examples"], weights, strict=True)) / sum(weights)
    assert after == pytest.approx(evals[-1].eval_loss, rel=1e-4)
    assert before == pytest.approx(evals[0].eval_loss, rel=1e-4)
    assert report["improved"] + report["worsened"] <= 10
    assert len(report["worst"]) == 5 and all(w["prompt"] and w["answer"] is not None for w in report["worst"])
    assert sum(b["examples"] for b in report["buckets"]) == 10
    assert len(report["generations"]) == 1
    markdown = (out / "eval-report.md").read_text()
    assert report["worst"][0]["reference"][:20] in markdown

    # A longer run of the same job resumes from step 3's checkpoint: the base model is scored with the adapters off,
    # so "before" is still there although step 0's evaluation did not run in this process.
    config["hyperparameters"]["maxSteps"] = 4
    code, events = run_in_process(config, samples=0)
    assert code == ExitCode.OK and _events(events, "started")[0].resumed_from_step == 3
    resumed = json.loads((out / "eval-report.json").read_text())
    assert [e["lossBefore"] for e in resumed["examples"]] == pytest.approx(
        [e["lossBefore"] for e in report["examples"]], rel=1e-4
    )
