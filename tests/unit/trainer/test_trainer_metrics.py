"""The trainer's /metrics: values from the progress events, scraped over HTTP and checked by promtool."""

from __future__ import annotations

import math
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from kubetune_trainer.trainer_metrics import MetricsReporter, MetricsSettingsError, metrics_port_from_env
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.progress import (
    CheckpointSavedEvent,
    EvalEvent,
    FinishedEvent,
    PreferenceMetrics,
    StartedEvent,
    StepEvent,
)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def step(n: int, *, trained_tokens: int, loss: float = 2.0) -> StepEvent:
    return StepEvent(
        step=n,
        total_steps=100,
        epoch=n / 50,
        loss=loss,
        learning_rate=2e-4,
        tokens_per_second=1500.0,
        trained_tokens=trained_tokens,
    )


@pytest.fixture
def served() -> Iterator[tuple[MetricsReporter, str]]:
    reporter = MetricsReporter()
    port = reporter.serve(0, addr="127.0.0.1")
    yield reporter, f"http://127.0.0.1:{port}/metrics"
    reporter.close()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text


def _samples(text: str) -> dict[str, float]:
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


def test_scraped_metrics_hold_the_latest_values_and_pass_promtool(served: tuple[MetricsReporter, str]) -> None:
    reporter, url = served
    reporter.emit(StartedEvent(total_steps=100, epochs=2, world_size=1, train_examples=500, validation_examples=50))
    reporter.emit(EvalEvent(step=0, eval_loss=2.6, perplexity=13.5))
    reporter.emit(step(1, trained_tokens=1000, loss=2.5))
    reporter.emit(step(2, trained_tokens=2500, loss=2.25))
    reporter.emit(CheckpointSavedEvent(step=2, uri="s3://b/run/checkpoints/step-00000002", reason="periodic"))
    reporter.emit(EvalEvent(step=2, eval_loss=2.125, perplexity=8.4))

    text = _scrape(url)
    samples = _samples(text)

    assert samples["kubetune_trainer_step"] == 2
    assert samples["kubetune_trainer_total_steps"] == 100
    assert samples["kubetune_trainer_epoch"] == 0.04
    assert samples["kubetune_trainer_loss"] == 2.25
    assert samples["kubetune_trainer_eval_loss"] == 2.125
    assert samples["kubetune_trainer_learning_rate"] == 2e-4
    assert samples["kubetune_trainer_tokens_per_second"] == 1500.0
    assert samples["kubetune_trainer_trained_tokens_total"] == 2500
    assert samples["kubetune_trainer_checkpoints_total"] == 1
    assert samples["kubetune_trainer_evaluations_total"] == 2
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_dpo_runs_reward_metrics_are_scraped_and_nan_for_sft(served: tuple[MetricsReporter, str]) -> None:
    reporter, url = served
    assert math.isnan(_samples(_scrape(url))["kubetune_trainer_reward_accuracy"])
    rewards = PreferenceMetrics(reward_accuracy=0.75, reward_margin=0.5, chosen_reward=0.2, rejected_reward=-0.3)
    reporter.emit(step(1, trained_tokens=100, loss=0.6).model_copy(update={"preference": rewards}))
    held_out = rewards.model_copy(update={"reward_accuracy": 0.625, "reward_margin": 0.25})
    reporter.emit(EvalEvent(step=1, eval_loss=0.65, perplexity=1.9, preference=held_out))
    samples = _samples(_scrape(url))
    assert (samples["kubetune_trainer_reward_accuracy"], samples["kubetune_trainer_reward_margin"]) == (0.75, 0.5)
    assert samples["kubetune_trainer_eval_reward_accuracy"] == 0.625
    assert samples["kubetune_trainer_eval_reward_margin"] == 0.25


def test_trained_tokens_total_follows_the_cumulative_count_and_values_are_nan_until_set(
    served: tuple[MetricsReporter, str],
) -> None:
    reporter, url = served
    assert math.isnan(_samples(_scrape(url))["kubetune_trainer_eval_loss"])  # no evaluation yet
    reporter.emit(step(101, trained_tokens=1_000_000))  # resumed: the count starts at the checkpoint's
    assert _samples(_scrape(url))["kubetune_trainer_trained_tokens_total"] == 1_000_000
    reporter.emit(step(102, trained_tokens=999_000))
    assert _samples(_scrape(url))["kubetune_trainer_trained_tokens_total"] == 1_000_000
    reporter.emit(FinishedEvent(step=102, output_uri="s3://b/run", manifest_sha256="0" * 64, trained_tokens=1_004_000))
    assert _samples(_scrape(url))["kubetune_trainer_trained_tokens_total"] == 1_004_000


def test_close_stops_serving(served: tuple[MetricsReporter, str]) -> None:
    reporter, url = served
    reporter.close()
    with pytest.raises(urllib.error.URLError):
        _scrape(url)


def test_metrics_port_comes_from_the_environment_and_0_disables_it() -> None:
    assert metrics_port_from_env({}) is None
    assert metrics_port_from_env({"KUBETUNE_METRICS_PORT": "0"}) is None  # 0 disables, as for the operator
    assert metrics_port_from_env({"KUBETUNE_METRICS_PORT": "9400"}) == 9400
    with pytest.raises(MetricsSettingsError, match="KUBETUNE_METRICS_PORT"):
        metrics_port_from_env({"KUBETUNE_METRICS_PORT": "metrics"})
    with pytest.raises(MetricsSettingsError, match="KUBETUNE_METRICS_PORT"):
        metrics_port_from_env({"KUBETUNE_METRICS_PORT": "70000"})
