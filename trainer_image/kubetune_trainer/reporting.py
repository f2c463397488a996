"""Where progress events go: a small :class:`Reporter` protocol, a JSON-lines implementation and a tee.

Only rank 0 reports (``cli.build_reporter`` gives the other ranks a reporter that writes nowhere, and the
recipe emits on every rank without asking which one it is), so a consumer sees one stream per run however
many processes train. Rank 0 tees its events to stdout, its ``/metrics``
(:mod:`kubetune_trainer.trainer_metrics`) and the operator (:mod:`kubetune_trainer.push`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TextIO

from kubetune.api.progress import EVENT_LINE_PREFIX, ProgressEvent, event_to_json


class Reporter(Protocol):
    def emit(self, event: ProgressEvent) -> None: ...

    def close(self) -> None: ...


log = logging.getLogger(__name__)


class JsonLinesReporter:
    """Writes each event as one JSON line to a stream (prefixed, to stand out in logs) and/or a file.

    The file is appended to and flushed + fsynced per event: after a restart it holds the whole history,
    and a reader tailing it never sees half a line from a killed process... except the last one, which
    :func:`kubetune.api.progress.parse_event` rejects and a reader should skip.
    """

    def __init__(self, *, stream: TextIO | None = sys.stdout, path: Path | None = None) -> None:
        self._stream = stream
        self._file: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def emit(self, event: ProgressEvent) -> None:
        line = event_to_json(event)
        if self._stream is not None:
            self._stream.write(EVENT_LINE_PREFIX + line + "\n")
            self._stream.flush()
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RecordingReporter:
    """Keeps events in memory (tests, the benchmark)."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def emit(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        return None


class TeeReporter:
    """Forwards every event to several reporters, in order; one that raises never stops the others.

    A reporter's first failure is logged with its traceback and later ones are only counted
    (:attr:`failures`), so a broken reporter cannot flood the log or stop training. :meth:`close` closes
    each reporter once, however often it is called.
    """

    def __init__(self, reporters: Sequence[Reporter]) -> None:
        self._reporters = tuple(reporters)
        self.failures = [0] * len(self._reporters)
        self._closed = False

    def emit(self, event: ProgressEvent) -> None:
        for index, reporter in enumerate(self._reporters):
            try:
                reporter.emit(event)
            except Exception:
                self._failed(index, "emit")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for index, reporter in enumerate(self._reporters):
            try:
                reporter.close()
            except Exception:
                self._failed(index, "close")

    def _failed(self, index: int, method: str) -> None:
        self.failures[index] += 1
        if self.failures[index] == 1:
            name = type(self._reporters[index]).__name__
            log.exception("%s.%s failed; events still go to the other reporters", name, method)
