"""The operator's work queue: every reconcile runs from here, now (a watch event) or later (a re-check).

Watch events ask for a reconcile of their FineTuneJob now; a plan says when time alone would change it
(``Plan.requeue_after``: a pending timeout expiring, a TTL, the next progress read). One thread sleeps
until the earliest due key, and the reconciles run on a small pool so one slow reconcile does not hold up
the others. A key holds one wake-up, the earliest asked for: a burst of events about one job (its
FineTuneJob, Job, pods, ConfigMap and Service) costs one reconcile, and an event that arrives while the
job is being reconciled makes it run once more afterwards, so no change goes unseen.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

# (namespace, name) of a FineTuneJob.
Key = tuple[str, str]

log = logging.getLogger(__name__)


# The longest single wait (a day): a far-off TTL is re-planned daily, and waits stay below what a
# threading wait accepts (a 10**10 s wait raised OverflowError and stopped the scheduler).
MAX_DELAY_SECONDS = 86_400.0
# Seconds before the n-th retry of a failed reconcile (then the last one, every time): quick for a blip,
# about a minute for an API server that stays down.
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)


class Backoff:
    """Failures in a row per key; ``failed`` says how long to wait before the next try."""

    def __init__(self, delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self._delays = delays
        self._failures: dict[Key, int] = {}
        self._lock = threading.Lock()

    def failed(self, key: Key) -> float:
        with self._lock:
            count = self._failures.get(key, 0)
            self._failures[key] = count + 1
        return self._delays[min(count, len(self._delays) - 1)]

    def succeeded(self, key: Key) -> None:
        with self._lock:
            self._failures.pop(key, None)


class Requeue:
    def __init__(
        self, *, callback: Callable[[Key, str], None], workers: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._callback = callback
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="requeue")
        self._cond = threading.Condition()
        self._due: dict[Key, tuple[float, str]] = {}  # key -> (when, what asked for it)
        self._heap: list[tuple[float, int, Key]] = []
        self._counter = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="requeue", daemon=True)
        self._thread.start()

    def schedule(self, key: Key, *, after: float, trigger: str = "scheduled") -> None:
        """Reconcile ``key`` in ``after`` seconds, unless it is due sooner already; ``trigger`` names why."""
        at = self._clock() + min(max(after, 0.0), MAX_DELAY_SECONDS)
        with self._cond:
            pending = self._due.get(key)
            if pending is not None and pending[0] <= at:
                return
            self._due[key] = (at, trigger)
            self._counter += 1
            heapq.heappush(self._heap, (at, self._counter, key))
            self._cond.notify()

    def cancel(self, key: Key) -> None:
        with self._cond:
            self._due.pop(key, None)

    def pending(self) -> int:
        with self._cond:
            return len(self._due)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while True:
            with self._cond:
                due = self._next_due()
                if due is None:
                    if self._stopped:
                        return
                    continue
            self._pool.submit(self._run, *due)

    def _next_due(self) -> tuple[Key, str] | None:
        """Wait (holding the condition) until a wake-up is due; superseded heap entries are skipped."""
        while not self._stopped:
            while self._heap and (self._due.get(self._heap[0][2]) or (None,))[0] != self._heap[0][0]:
                heapq.heappop(self._heap)
            if not self._heap:
                self._cond.wait()
                continue
            at, _, key = self._heap[0]
            wait = at - self._clock()
            if wait > 0:
                self._cond.wait(timeout=wait)
                continue
            heapq.heappop(self._heap)
            _, trigger = self._due.pop(key)
            return key, trigger
        return None

    def _run(self, key: Key, trigger: str) -> None:
        try:
            self._callback(key, trigger)
        except Exception:  # the callback logs its own failures; the scheduler must keep running
            log.exception("scheduled reconcile of %s failed", key)
