"""SIGTERM handling: note the request, let the loop finish its step and checkpoint.

Kubernetes sends SIGTERM on preemption, suspend and node drain, then SIGKILL after the pod's
``terminationGracePeriodSeconds``; the loop checks :attr:`StopRequest.requested` after every optimizer
step, so the grace period must cover one step plus one checkpoint write.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any


class StopRequest:
    """A flag set by SIGTERM (or SIGINT); installed once per process by :meth:`install`."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str) -> None:
        self.signal_name = reason
        self._event.set()

    def install(self) -> None:
        """Handle SIGTERM and SIGINT in the main thread (signal handlers can only be set there)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        """Put back the handlers :meth:`install` replaced (in-process runs, tests)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            # A second Ctrl-C in a local run means "now", not "after the checkpoint".
            raise KeyboardInterrupt
        print(
            f"kubetune-trainer: {name} received; finishing the current step, then checkpointing",
            file=sys.stderr,
            flush=True,
        )
        self.request(name)
