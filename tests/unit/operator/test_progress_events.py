"""The trainer's progress events, read from rank 0's log, fill status.progress, metrics and output."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kubetune_operator.progress import events_from_log, fold_events
from kubetune_operator.status import Observation, compute_status

from kubetune.api.progress import (
    EVENT_LINE_PREFIX,
    EvalEvent,
    FinishedEvent,
    ProgressEvent,
    StartedEvent,
    StepEvent,
    event_to_json,
)
from kubetune.api.status import FineTuneJobStatus, Metrics, Progress

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


def log_of(*events: ProgressEvent) -> str:
    lines = ["INFO loading model", "Traceback-looking noise"]
    lines += [f"2026-11-23 INFO {EVENT_LINE_PREFIX}{event_to_json(e)}" for e in events]
    lines.append(f"{EVENT_LINE_PREFIX}{{not json")
    return "\n".join(lines)


def test_event_lines_are_picked_out_of_mixed_log_output_and_torn_lines_skipped() -> None:
    text = log_of(
        StartedEvent(time=T0, total_steps=100, epochs=2, world_size=1, train_examples=10, validation_examples=0)
    )
    (event,) = events_from_log(text)
    assert isinstance(event, StartedEvent) and event.total_steps == 100


def test_step_events_set_progress_percent_eta_and_metrics() -> None:
    events = events_from_log(log_of(step(10, at=T0), step(20, at=T0 + timedelta(seconds=50), loss=1.5)))
    reported = fold_events(events, progress=None, metrics=None, output=None)
    assert reported.progress is not None and reported.metrics is not None
    assert (reported.progress.step, reported.progress.total_steps, reported.progress.percent) == (20, 100, "20%")
    assert reported.progress.eta_seconds == 400  # 80 steps left at 5 s per step
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
