"""Progress events: typed on the way out, parsed back from stdout or the events file; the tee isolates reporters."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from kubetune_trainer.reporting import JsonLinesReporter, RecordingReporter, TeeReporter
from pydantic import ValidationError

from kubetune.api.progress import EVENT_LINE_PREFIX, FailedEvent, ProgressEvent, StepEvent, parse_event


def test_json_lines_reporter_writes_prefixed_stdout_and_a_plain_file_that_parse_back(tmp_path: Path) -> None:
    stream = io.StringIO()
    path = tmp_path / "events" / "events.jsonl"
    reporter = JsonLinesReporter(stream=stream, path=path)
    step = StepEvent(
        step=3, total_steps=10, epoch=0.3, loss=1.5, learning_rate=2e-4, tokens_per_second=120.0, trained_tokens=900
    )
    reporter.emit(step)
    reporter.emit(FailedEvent(reason="BadData", message="train.jsonl:3: prompt: missing", exit_code=65))
    reporter.close()

    lines = stream.getvalue().splitlines()
    assert all(line.startswith(EVENT_LINE_PREFIX) for line in lines)
    assert parse_event(lines[0]) == step
    file_lines = path.read_text().splitlines()
    assert json.loads(file_lines[0])["tokensPerSecond"] == 120.0  # camelCase on the wire
    failed = parse_event(file_lines[1])
    assert isinstance(failed, FailedEvent) and failed.exit_code == 65


def test_reporter_appends_so_a_restarted_trainer_keeps_the_history(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    for step in (1, 2):
        reporter = JsonLinesReporter(stream=None, path=path)
        reporter.emit(
            StepEvent(
                step=step, total_steps=2, epoch=0, loss=1, learning_rate=1, tokens_per_second=1, trained_tokens=step
            )
        )
        reporter.close()
    assert [parse_event(line).step for line in path.read_text().splitlines()] == [1, 2]


def test_parse_event_rejects_unknown_event_kinds() -> None:
    with pytest.raises(ValidationError):
        parse_event('{"event": "exploded", "step": 1}')


class _Broken:
    def __init__(self) -> None:
        self.closed = 0

    def emit(self, event: ProgressEvent) -> None:
        raise RuntimeError("disk full")

    def close(self) -> None:
        self.closed += 1
        raise RuntimeError("disk full")


class _Counting(RecordingReporter):
    def __init__(self) -> None:
        super().__init__()
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_tee_keeps_feeding_the_other_reporters_when_one_raises(caplog: pytest.LogCaptureFixture) -> None:
    first, broken, last = _Counting(), _Broken(), _Counting()
    tee = TeeReporter([first, broken, last])
    events = [
        StepEvent(step=n, total_steps=2, epoch=0, loss=1, learning_rate=1, tokens_per_second=1, trained_tokens=n)
        for n in (1, 2)
    ]
    with caplog.at_level(logging.ERROR, logger="kubetune_trainer.reporting"):
        for event in events:
            tee.emit(event)
        tee.close()

    assert first.events == last.events == events
    assert (first.closed, broken.closed, last.closed) == (1, 1, 1)
    assert tee.failures == [0, 3, 0]
    assert len(caplog.records) == 1 and "_Broken.emit failed" in caplog.records[0].getMessage()


def test_tee_closes_each_reporter_once() -> None:
    inner = _Counting()
    tee = TeeReporter([inner])
    tee.close()
    tee.close()
    assert inner.closed == 1
