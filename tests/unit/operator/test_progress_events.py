"""The trainer's reported events fill status.progress, metrics, checkpoints and output."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kubetune_operator.progress import fold_events
from kubetune_operator.status import Observation, compute_status

from kubetune.api.durations import human_duration
from kubetune.api.progress import (
    CheckpointSavedEvent,
    EvalEvent,
    FinishedEvent,
    PreferenceMetrics,
    ProgressEvent,
    StepEvent,
)
from kubetune.api.status import CheckpointStatus, FineTuneJobStatus, Metrics, Progress

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def step(n: int, *, at: datetime, loss: float = 2.0) -> StepEvent:
    return StepEvent(
        time=at,
        step=n,
        total_steps=100,
        epoch=n / 50,
        loss=loss,
        learning_rate=2e-4,
        tokens_per_second=120.0,
        trained_tokens=n * 1000,
    )


def test_step_events_set_progress_percent_eta_and_metrics() -> None:
    events = [step(10, at=T0), step(20, at=T0 + timedelta(seconds=50), loss=1.5)]
    reported = fold_events(events, progress=None, metrics=None, output=None)
    assert reported.progress is not None and reported.metrics is not None
    assert (reported.progress.step, reported.progress.total_steps, reported.progress.percent) == (20, 100, "20%")
    assert reported.progress.eta_seconds == 400  # 80 steps left at 5 s per step
    assert reported.progress.eta == "6m40s"
    assert reported.progress.updated_at == T0 + timedelta(seconds=50)
    assert reported.metrics.loss == 1.5 and reported.metrics.trained_tokens == 20000
    assert reported.output is None


def test_fields_missing_from_the_tail_keep_their_previous_values() -> None:
    previous = Metrics(eval_loss=1.9, perplexity=6.7)
    reported = fold_events(
        [step(30, at=T0)], progress=Progress(step=25, total_steps=100), metrics=previous, output=None
    )
    assert reported.metrics is not None and reported.metrics.eval_loss == 1.9 and reported.metrics.loss == 2.0
    nothing = fold_events([], progress=Progress(step=25), metrics=previous, output=None)
    assert nothing.progress == Progress(step=25) and nothing.metrics == previous


def test_eval_and_finished_events_record_eval_loss_and_the_output_artifact() -> None:
    events: list[ProgressEvent] = [
        step(99, at=T0),
        EvalEvent(time=T0, step=100, eval_loss=1.2, perplexity=3.3),
        FinishedEvent(
            time=T0,
            step=100,
            output_uri="s3://outputs/run-1",
            manifest_sha256="ab" * 32,
            trained_tokens=99000,
            merged=True,
        ),
    ]
    reported = fold_events(events, progress=None, metrics=None, output=None)
    assert reported.progress is not None and reported.progress.percent == "100%"
    assert (reported.progress.eta_seconds, reported.progress.eta) == (0, "0s")
    assert reported.metrics is not None and reported.metrics.eval_loss == 1.2 and reported.metrics.perplexity == 3.3
    assert reported.output is not None
    assert (reported.output.uri, reported.output.merged) == ("s3://outputs/run-1", True)


def test_status_computation_carries_the_reported_progress() -> None:
    job = {"metadata": {"name": "demo-train"}, "spec": {}, "status": {}}
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Running"}}
    status = compute_status(
        Observation(
            generation=1,
            spec_problems=[],
            job=job,
            pods=[pod],
            previous=FineTuneJobStatus(),
            now=T0,
            nodes=1,
            suspend_requested=False,
            pending_timeout=timedelta(minutes=10),
            trainer_events=[step(5, at=T0)],
        )
    )
    assert status.phase == "Running"
    assert status.progress is not None and status.progress.step == 5
    assert status.metrics is not None and status.metrics.loss == 2.0


def checkpoint(n: int, *, at: datetime) -> CheckpointSavedEvent:
    return CheckpointSavedEvent(time=at, step=n, uri=f"pvc://outputs/run/checkpoints/step-{n}", reason="periodic")


def test_checkpoints_keep_the_newest_five_with_the_losses_known_when_they_were_written() -> None:
    events: list[ProgressEvent] = []
    for n in range(1, 8):
        at = T0 + timedelta(seconds=10 * n)
        events += [step(n * 10, at=at, loss=3.0 - n / 10), checkpoint(n * 10, at=at + timedelta(seconds=1))]
        if n == 4:
            events.append(EvalEvent(time=at + timedelta(seconds=2), step=40, eval_loss=2.5, perplexity=12.2))
    reported = fold_events(events, progress=None, metrics=None, output=None)
    assert [c.step for c in reported.checkpoints] == [30, 40, 50, 60, 70]
    by_step = {c.step: c for c in reported.checkpoints}
    assert by_step[30].train_loss == 2.7 and by_step[30].eval_loss is None
    assert by_step[50].train_loss == 2.5 and by_step[50].eval_loss == 2.5
    again = fold_events(events[-2:], progress=None, metrics=None, output=None, checkpoints=reported.checkpoints)
    assert again.checkpoints == reported.checkpoints  # a re-sent checkpoint is not listed twice


def test_an_earlier_checkpoint_in_the_status_survives_an_operator_that_only_heard_new_events() -> None:
    kept = [CheckpointStatus(step=10, uri="pvc://outputs/run/checkpoints/step-10", time=T0)]
    reported = fold_events([checkpoint(20, at=T0)], progress=None, metrics=None, output=None, checkpoints=kept)
    assert [c.step for c in reported.checkpoints] == [10, 20]


def test_durations_read_like_kubectl_ages() -> None:
    assert [human_duration(s) for s in (0, 59, 250, 3720, 90000)] == ["0s", "59s", "4m10s", "1h02m", "1d01h"]


def test_dpo_reward_metrics_of_steps_and_evaluations_land_in_status_metrics() -> None:
    train = PreferenceMetrics(reward_accuracy=0.75, reward_margin=0.3, chosen_reward=0.1, rejected_reward=-0.2)
    held_out = PreferenceMetrics(reward_accuracy=0.625, reward_margin=0.2, chosen_reward=0.05, rejected_reward=-0.15)
    events: list[ProgressEvent] = [
        step(10, at=T0).model_copy(update={"preference": train}),
        EvalEvent(time=T0, step=10, eval_loss=0.61, perplexity=1.84, preference=held_out),
        step(11, at=T0 + timedelta(seconds=5)).model_copy(update={"preference": train}),
    ]
    reported = fold_events(events, progress=None, metrics=None, output=None)
    assert reported.metrics is not None
    assert reported.metrics.preference == train and reported.metrics.eval_preference == held_out
    assert reported.metrics.eval_loss == 0.61
    wire = reported.metrics.to_wire()
    assert wire["evalPreference"]["rewardAccuracy"] == 0.625 and wire["preference"]["rewardMargin"] == 0.3
    # An SFT job's metrics carry neither.
    sft = fold_events([step(5, at=T0)], progress=None, metrics=None, output=None)
    assert sft.metrics is not None and "preference" not in sft.metrics.to_wire()
