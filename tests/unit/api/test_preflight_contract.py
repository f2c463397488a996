"""The data check's result as the pod writes it and the operator reads it, and what makes a spec re-checked."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.api.preflight import MAX_RESULT_BYTES, PreflightResult, decode_result, encode_result, preflight_spec_hash
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import DataProblem, DatasetStatus, ResolvedHyperparameters
from kubetune.api.trainer_config import RunIdentity, TrainerConfig


def spec(**overrides: Any) -> FineTuneJobSpec:
    body: dict[str, Any] = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
        "dataset": {"train": ["s3://data/train.jsonl"]},
        "output": {"destination": "s3://out/run"},
    }
    return FineTuneJobSpec.model_validate(body | overrides)


def bad_result(*, problems: int, warnings: int, text: int = 300) -> PreflightResult:
    return PreflightResult(
        outcome="BadData",
        message="data validation failed: many problems in the dataset",
        dataset=DatasetStatus(
            spec_hash="",
            error_count=100_000,
            errors=[
                DataProblem(file="s3://data/" + "x" * (text - 20), line=i + 1, field="answer", reason="r" * text)
                for i in range(problems)
            ],
            warning_count=warnings,
            warnings=["w" * text] * warnings,
        ),
    )


def test_a_result_that_fits_is_kept_whole_and_round_trips() -> None:
    result = bad_result(problems=2, warnings=1, text=50)
    text = encode_result(result)
    assert decode_result(text) == result
    assert json.loads(text)["kind"] == "PreflightResult"


def test_a_large_result_drops_warnings_first_then_problems_and_keeps_the_counts() -> None:
    result = bad_result(problems=10, warnings=10)
    text = encode_result(result)
    assert len(text.encode()) <= MAX_RESULT_BYTES
    decoded = decode_result(text)
    assert decoded is not None and decoded.dataset is not None
    assert decoded.dataset.warnings == []
    assert 1 <= len(decoded.dataset.errors) < 10
    assert [p.line for p in decoded.dataset.errors] == list(range(1, len(decoded.dataset.errors) + 1))
    assert (decoded.dataset.error_count, decoded.dataset.warning_count) == (100_000, 10)


def test_an_over_long_message_is_shortened_last() -> None:
    result = PreflightResult(outcome="BadConfig", message="m" * 512)
    assert len(encode_result(result, limit=300).encode()) <= 300


@pytest.mark.parametrize(
    "message",
    [None, "", "Traceback (most recent call last):", "{not json", '{"kind": "Other"}', '{"kind": "PreflightResult"}'],
)
def test_a_termination_message_that_is_not_a_result_reads_as_none(message: object) -> None:
    assert decode_result(message) is None


def test_the_spec_hash_follows_what_the_result_depends_on() -> None:
    base = preflight_spec_hash(spec())
    assert preflight_spec_hash(spec()) == base
    assert preflight_spec_hash(spec(resources={"nodes": 2})) != base
    assert preflight_spec_hash(spec(resources={"gpusPerNode": 0})) != base
    assert preflight_spec_hash(spec(hyperparameters={"epochs": 2})) != base
    # Neither suspending nor the scheduling hints change what the check answers.
    assert preflight_spec_hash(spec(runPolicy={"suspend": True})) == base
    assert preflight_spec_hash(spec(resources={"tolerations": [{"key": "gpu", "operator": "Exists"}]})) == base


RESOLVED = ResolvedHyperparameters(
    epochs=3,
    total_steps=474,
    per_device_batch_size=8,
    gradient_accumulation_steps=1,
    world_size=1,
    learning_rate=2e-4,
    warmup_steps=15,
)


def test_with_resolved_makes_every_auto_concrete_and_stays_a_valid_config() -> None:
    config = TrainerConfig.from_spec(
        spec(hyperparameters={"epochs": "auto", "perDeviceBatchSize": "auto", "warmupRatio": 0.1}),
        run=RunIdentity(name="demo"),
    )
    resolved = config.with_resolved(RESOLVED, dataset=DatasetStatus(spec_hash="h", train_examples=1260, sha256="ab"))
    hp = resolved.hyperparameters
    assert (hp.epochs, hp.per_device_batch_size, hp.learning_rate, hp.warmup_steps, hp.warmup_ratio) == (
        3,
        8,
        2e-4,
        15,
        None,
    )
    assert resolved.validated is not None and resolved.validated.total_steps == 474
    # What the ConfigMap carries parses back (the trainer validates it).
    assert TrainerConfig.model_validate(resolved.to_wire()) == resolved


def test_with_resolved_keeps_max_steps_instead_of_epochs() -> None:
    config = TrainerConfig.from_spec(spec(hyperparameters={"maxSteps": 100}), run=RunIdentity(name="demo"))
    resolved = config.with_resolved(RESOLVED, dataset=DatasetStatus(spec_hash="h"))
    assert (resolved.hyperparameters.max_steps, resolved.hyperparameters.epochs) == (100, None)
    TrainerConfig.model_validate(resolved.to_wire())
