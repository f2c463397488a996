"""Pure: the trainer's reported events folded into status.progress, metrics, checkpoints and output.

Rank 0 pushes its events (``kubetune.api.progress``) to the operator, which keeps the latest few per job
(``reports.ReportStore``). Fields the events do not mention keep their previous values, so an operator
that restarted and has heard only the newest events never erases what the status already holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kubetune.api.durations import human_duration
from kubetune.api.progress import (
    CheckpointSavedEvent,
    EvalEvent,
    FinishedEvent,
    ProgressEvent,
    StartedEvent,
    StepEvent,
)
from kubetune.api.status import CheckpointStatus, Metrics, OutputStatus, Progress

# status.checkpoints keeps this many, the newest.
CHECKPOINTS_KEPT = 5


@dataclass(frozen=True, kw_only=True)
class Reported:
    progress: Progress | None
    metrics: Metrics | None
    output: OutputStatus | None
    checkpoints: list[CheckpointStatus]


def _eta_seconds(steps: Sequence[StepEvent], total: int | None) -> int | None:
    """Remaining steps at the pace of the steps seen in this tail."""
    if total is None or len(steps) < 2:
        return None
    first, last = steps[0], steps[-1]
    elapsed = (last.time - first.time).total_seconds()
    if last.step <= first.step or elapsed <= 0:
        return None
    return max(0, round((total - last.step) * elapsed / (last.step - first.step)))


def fold_events(
    events: Sequence[ProgressEvent],
    *,
    progress: Progress | None,
    metrics: Metrics | None,
    output: OutputStatus | None,
    checkpoints: Sequence[CheckpointStatus] = (),
) -> Reported:
    """The previous progress, metrics, output and checkpoints, updated by the events (oldest first)."""
    kept = list(checkpoints)
    if not events:
        return Reported(progress=progress, metrics=metrics, output=output, checkpoints=kept)
    p = (progress or Progress()).model_dump()
    m = (metrics or Metrics()).model_dump()
    steps = [e for e in events if isinstance(e, StepEvent)]
    updated_at: datetime | None = None
    for event in events:
        updated_at = event.time
        if isinstance(event, StartedEvent):
            p.update(total_steps=event.total_steps, step=event.step)
        elif isinstance(event, StepEvent):
            p.update(step=event.step, total_steps=event.total_steps, epoch=event.epoch)
            m.update(
                loss=event.loss,
                learning_rate=event.learning_rate,
                tokens_per_second=event.tokens_per_second,
                trained_tokens=event.trained_tokens,
                preference=event.preference,
            )
        elif isinstance(event, EvalEvent):
            m.update(eval_loss=event.eval_loss, perplexity=event.perplexity, eval_preference=event.preference)
        elif isinstance(event, CheckpointSavedEvent):
            if not any(c.uri == event.uri and c.step == event.step for c in kept):
                saved = CheckpointStatus(
                    step=event.step, uri=event.uri, time=event.time, train_loss=m["loss"], eval_loss=m["eval_loss"]
                )
                kept = [*kept, saved][-CHECKPOINTS_KEPT:]
        elif isinstance(event, FinishedEvent):
            p.update(step=event.step)
            m.update(trained_tokens=event.trained_tokens)
            if event.loss is not None:
                m["loss"] = event.loss
            if event.eval_loss is not None:
                m["eval_loss"] = event.eval_loss
            output = OutputStatus(uri=event.output_uri, manifest_sha256=event.manifest_sha256, merged=event.merged)
    total = p.get("total_steps")
    if total:
        p["percent"] = f"{min(100, p['step'] * 100 // total)}%"
    eta = _eta_seconds(steps, total)
    if eta is not None or steps:
        # A pace needs two steps: a single new step (or a finished run) leaves no estimate.
        p["eta_seconds"] = eta
        p["eta"] = None if eta is None else human_duration(eta)
    if isinstance(events[-1], FinishedEvent):
        p["eta_seconds"], p["eta"] = 0, human_duration(0)
    p["updated_at"] = updated_at
    return Reported(progress=Progress(**p), metrics=Metrics(**m), output=output, checkpoints=kept)
