"""Pure: the trainer's progress events (from rank 0's log) folded into status.progress/metrics/output.

The trainer prints one ``KUBETUNE_EVENT {json}`` line per event (``kubetune.api.progress``). The operator
reads the tail of the log of the pod with completion index 0; fields an event in the tail does not
mention keep their previous values, so a short tail never erases what an earlier reconcile saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from kubetune.api.progress import (
    EVENT_LINE_PREFIX,
    EvalEvent,
    FinishedEvent,
    ProgressEvent,
    StartedEvent,
    StepEvent,
    parse_event,
)
from kubetune.api.status import Metrics, OutputStatus, Progress


def events_from_log(text: str) -> list[ProgressEvent]:
    """Every well-formed event line of a log, in order; other lines (and torn ones) are skipped."""
    events = []
    for line in text.splitlines():
        start = line.find(EVENT_LINE_PREFIX)
        if start < 0:
            continue
        try:
            events.append(parse_event(line[start:]))
        except ValidationError:
            continue
    return events


@dataclass(frozen=True, kw_only=True)
class Reported:
    progress: Progress | None
    metrics: Metrics | None
    output: OutputStatus | None


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
) -> Reported:
    """The previous progress, metrics and output, updated by the events (oldest first)."""
    if not events:
        return Reported(progress=progress, metrics=metrics, output=output)
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
            )
        elif isinstance(event, EvalEvent):
            m.update(eval_loss=event.eval_loss, perplexity=event.perplexity)
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
    p["eta_seconds"] = _eta_seconds(steps, total)
    p["updated_at"] = updated_at
    return Reported(progress=Progress(**p), metrics=Metrics(**m), output=output)
