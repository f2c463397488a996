"""The work queue: runs each key once at its earliest due time, coalesces bursts, keeps running on errors."""

from __future__ import annotations

import threading
import time

from kubetune_operator.requeue import Backoff, Key, Requeue


class Calls:
    def __init__(self, *, fail_on: Key | None = None) -> None:
        self.seen: list[tuple[Key, float]] = []
        self.triggers: list[str] = []
        self.fail_on = fail_on
        self.event = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, key: Key, trigger: str) -> None:
        with self._lock:
            self.seen.append((key, time.monotonic()))
            self.triggers.append(trigger)
        self.event.set()
        if key == self.fail_on:
            raise RuntimeError("reconcile failed")


def wait_for_calls(calls: Calls, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(calls.seen) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_key_runs_once_at_the_earliest_wake_up_asked_for() -> None:
    calls = Calls()
    requeue = Requeue(callback=calls, workers=2)
    try:
        start = time.monotonic()
        requeue.schedule(("ns", "a"), after=0.3)
        requeue.schedule(("ns", "a"), after=0.05, trigger="pod")  # sooner: replaces the later wake-up
        requeue.schedule(("ns", "a"), after=0.5)  # later than the one pending: no change
        requeue.schedule(("ns", "b"), after=0.15)
        wait_for_calls(calls, 2)
        time.sleep(0.6)
        assert [key for key, _ in calls.seen] == [("ns", "a"), ("ns", "b")]
        assert calls.triggers == ["pod", "scheduled"]
        assert calls.seen[0][1] - start < 0.25
        assert requeue.pending() == 0
    finally:
        requeue.stop()


def test_a_burst_of_events_about_one_key_is_one_reconcile_and_an_event_during_it_one_more() -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def slow(key: Key, trigger: str) -> None:
        seen.append(trigger)
        started.set()
        release.wait(timeout=5)

    requeue = Requeue(callback=slow, workers=2)
    try:
        for trigger in ("create", "child", "child", "job", "pod"):
            requeue.schedule(("ns", "a"), after=0.05 if trigger == "create" else 0.0, trigger=trigger)
        assert started.wait(timeout=5)
        requeue.schedule(("ns", "a"), after=0.0, trigger="update")  # arrives while the reconcile runs
        release.set()
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert seen == ["child", "update"]
    finally:
        release.set()
        requeue.stop()


def test_a_cancelled_key_never_runs() -> None:
    calls = Calls()
    requeue = Requeue(callback=calls, workers=1)
    try:
        requeue.schedule(("ns", "gone"), after=0.05)
        requeue.cancel(("ns", "gone"))
        requeue.schedule(("ns", "kept"), after=0.1)
        wait_for_calls(calls, 1)
        time.sleep(0.1)
        assert [key for key, _ in calls.seen] == [("ns", "kept")]
    finally:
        requeue.stop()


def test_a_failing_callback_does_not_stop_the_scheduler() -> None:
    calls = Calls(fail_on=("ns", "bad"))
    requeue = Requeue(callback=calls, workers=1)
    try:
        requeue.schedule(("ns", "bad"), after=0.0)
        requeue.schedule(("ns", "good"), after=0.05)
        wait_for_calls(calls, 2)
        assert [key for key, _ in calls.seen] == [("ns", "bad"), ("ns", "good")]
    finally:
        requeue.stop()


def test_many_keys_cost_one_thread_not_one_timer_each() -> None:
    calls = Calls()
    requeue = Requeue(callback=calls, workers=2)
    try:
        requeue.schedule(("ns", "job-0"), after=3600)
        threads = {t.ident for t in threading.enumerate()}
        for i in range(1, 1000):
            requeue.schedule(("ns", f"job-{i}"), after=3600)
        assert requeue.pending() == 1000
        assert {t.ident for t in threading.enumerate()} <= threads
        assert calls.seen == []
    finally:
        requeue.stop()


def test_failures_in_a_row_back_off_up_to_a_minute_and_a_success_starts_over() -> None:
    backoff = Backoff()
    key = ("ns", "flaky")
    delays = [backoff.failed(key) for _ in range(9)]
    assert delays == [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 60.0, 60.0]
    assert backoff.failed(("ns", "other")) == 1.0  # per key
    backoff.succeeded(key)
    assert backoff.failed(key) == 1.0


def test_a_far_off_wake_up_is_capped_so_the_scheduler_keeps_running() -> None:
    calls = Calls()
    requeue = Requeue(callback=calls, workers=1)
    try:
        requeue.schedule(("ns", "ttl-of-centuries"), after=1e10)  # past threading.TIMEOUT_MAX
        requeue.schedule(("ns", "soon"), after=0.05)
        wait_for_calls(calls, 1)
        assert [key for key, _ in calls.seen] == [("ns", "soon")]
    finally:
        requeue.stop()
