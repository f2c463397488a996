"""Rank 0's progress events, pushed to the operator over HTTPS (the protocol: :mod:`kubetune.api.reports`).

:meth:`PushReporter.emit` only appends to a bounded in-memory buffer; one daemon thread makes every
request. Step events are sent at most every ``min_interval_s``, milestones (every other kind) at once.
Delivery is at least once: the operator ignores events older than what it has, so re-sending is harmless,
and after a failed request the first accepted one also carries a snapshot of the run so far, for an
operator that restarted and lost its in-memory state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import http.client
import json
import logging
import math
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kubetune.api.progress import (
    CheckpointSavedEvent,
    EvalEvent,
    FailedEvent,
    FinishedEvent,
    ProgressEvent,
    StartedEvent,
    StepEvent,
    StoppedEvent,
    event_to_json,
)
from kubetune.api.reports import MAX_REPORT_BYTES, REPORT_CA_FILE_ENV, REPORT_TOKEN_FILE_ENV, REPORT_URL_ENV

log = logging.getLogger(__name__)

# ReportBatch.events holds at most this many events.
MAX_EVENTS_PER_REPORT = 1024
_BODY_PREFIX = b'{"events":['
_BODY_SUFFIX = b"]}"
# The largest single event that fits in a request body.
MAX_EVENT_BYTES = MAX_REPORT_BYTES - len(_BODY_PREFIX) - len(_BODY_SUFFIX)
# A FailedEvent too large to send keeps this much of its message (4 bytes a character at most in UTF-8).
_FAILED_MESSAGE_CHARS = 4096
# How much of a refusal's text goes into the warning line.
_LOGGED_ANSWER_CHARS = 300


class PushSettingsError(ValueError):
    """A push setting is invalid; the message names the environment variable or the field."""


class DeliveryError(Exception):
    """A request that may succeed later: no answer, a TLS failure, an unreadable token or CA, 429 or 5xx."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _ConnectionLost(DeliveryError):
    """The peer closed the connection before answering."""


@dataclass(frozen=True, kw_only=True)
class PushSettings:
    """How the trainer pushes its events; the operator's pod builder sets the three environment variables."""

    url: str
    """``https://<operator>/v1/reports/<namespace>/<name>`` (``KUBETUNE_REPORT_URL``)."""
    token_file: Path | None = None
    """The bearer token's file (``KUBETUNE_REPORT_TOKEN_FILE``), read for every request because the kubelet
    rotates it; None sends no ``Authorization`` header."""
    ca_file: Path | None = None
    """The CA bundle that signs the operator's certificate (``KUBETUNE_REPORT_CA_FILE``), read again after a
    failed TLS handshake because the operator may rotate its certificate; None trusts the system's CAs."""
    max_step_events: int = 512
    """Step events held while the operator does not answer; the oldest go first (the operator's status
    shows only the latest step)."""
    max_milestone_events: int = 1024
    """Other events held (started, eval, checkpoint, finished, failed, stopped); the oldest go first. A run
    emits one per evaluation and per checkpoint, plus the started and the final event."""
    min_interval_s: float = 1.0
    """Seconds between requests while only step events are pending; milestones are sent at once."""
    request_timeout_s: float = 10.0
    """Seconds to connect, or to wait for each read or write of a request."""
    backoff_initial_s: float = 0.5
    """Seconds before the first retry; doubled per consecutive failure, with jitter (a random 50-100%)."""
    backoff_max_s: float = 30.0
    """The longest wait between retries, in seconds."""
    close_timeout_s: float = 15.0
    """Seconds :meth:`PushReporter.close` waits for pending events to be delivered. It runs in the SIGTERM
    path too, so it must fit in the pod's grace period after the checkpoint."""
    close_retry_interval_s: float = 1.0
    """While closing, retries come at most this many seconds apart, so the final event gets through if the
    operator comes back before the deadline."""
    snapshot_checkpoints: int = 5
    """Checkpoint events kept in the catch-up snapshot."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        try:
            valid = parts.scheme == "https" and bool(parts.hostname) and (parts.port or 443) > 0
        except ValueError:  # a port that is not a number
            valid = False
        if not valid:
            raise PushSettingsError(f"{REPORT_URL_ENV} must be an https:// URL with a host, got {self.url!r}")
        for name in ("max_step_events", "max_milestone_events", "snapshot_checkpoints"):
            if getattr(self, name) < 1:
                raise PushSettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "backoff_initial_s", "backoff_max_s", "close_retry_interval_s"):
            if not getattr(self, name) > 0:
                raise PushSettingsError(f"{name} must be more than 0, got {getattr(self, name)}")
        for name in ("min_interval_s", "close_timeout_s"):
            if not getattr(self, name) >= 0:
                raise PushSettingsError(f"{name} must be 0 or more, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PushSettings | None:
        """The settings from the trainer's environment; None when ``KUBETUNE_REPORT_URL`` is unset or empty."""
        url = environ.get(REPORT_URL_ENV, "").strip()
        if not url:
            return None
        token_file = environ.get(REPORT_TOKEN_FILE_ENV, "").strip()
        ca_file = environ.get(REPORT_CA_FILE_ENV, "").strip()
        return cls(
            url=url,
            token_file=Path(token_file) if token_file else None,
            ca_file=Path(ca_file) if ca_file else None,
        )


@dataclass(frozen=True)
class PushCounters:
    """What the reporter did so far."""

    sent_events: int = 0
    """Events in accepted requests (catch-up re-sends included)."""
    sent_requests: int = 0
    """Requests the operator accepted."""
    dropped_events: int = 0
    """Events dropped before any request: a full buffer, too large to send, or emitted after close."""
    rejected_events: int = 0
    """Events in batches the operator refused (400, 401, 403, 404, 409, 413: any 3xx or 4xx but 429)."""
    failed_requests: int = 0
    """Requests that failed and were retried: no answer, TLS failure, unreadable token, 429, 5xx."""


@dataclass
class _Tally:
    sent_events: int = 0
    sent_requests: int = 0
    dropped_events: int = 0
    rejected_events: int = 0
    failed_requests: int = 0


@dataclass(frozen=True, slots=True)
class _Item:
    seq: int
    event: ProgressEvent
    body: bytes


def backoff_delay(failures: int, *, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait after ``failures`` consecutive failures: exponential, capped, 50-100% jitter."""
    base = min(max_s, initial_s * math.pow(2.0, min(failures - 1, 64)))
    return base * rng.uniform(0.5, 1.0)


def encode_event(event: ProgressEvent) -> bytes | None:
    """The event's JSON for a request body; a FailedEvent's long message is cut; None when it cannot fit."""
    body = event_to_json(event).encode()
    if len(body) <= MAX_EVENT_BYTES:
        return body
    if isinstance(event, FailedEvent) and len(event.message) > _FAILED_MESSAGE_CHARS:
        return encode_event(event.model_copy(update={"message": event.message[:_FAILED_MESSAGE_CHARS] + "…"}))
    log.warning("progress report: a %s event of %d bytes does not fit in a report; dropped", event.event, len(body))
    return None


def report_body(bodies: Iterable[bytes]) -> bytes:
    """A :class:`kubetune.api.reports.ReportBatch` from encoded events."""
    return _BODY_PREFIX + b",".join(bodies) + _BODY_SUFFIX


class _Buffer:
    """Pending events (steps and milestones apart) and the catch-up snapshot; the reporter's lock guards it."""

    def __init__(self, settings: PushSettings) -> None:
        self._seq = 0
        self.steps: deque[_Item] = deque()
        self.milestones: deque[_Item] = deque()
        self._max_steps = settings.max_step_events
        self._max_milestones = settings.max_milestone_events
        self.dropped = 0
        self._started: _Item | None = None
        self._step: _Item | None = None
        self._eval: _Item | None = None
        self._checkpoints: deque[_Item] = deque(maxlen=settings.snapshot_checkpoints)
        self._terminal: _Item | None = None

    def __len__(self) -> int:
        return len(self.steps) + len(self.milestones)

    def add(self, event: ProgressEvent, body: bytes) -> bool:
        """Hold the event; True when it is a milestone (to be sent at once)."""
        self._seq += 1
        item = _Item(self._seq, event, body)
        if isinstance(event, StepEvent):
            self._step = item
            self._append(self.steps, item, self._max_steps)
            return False
        self._append(self.milestones, item, self._max_milestones)
        if isinstance(event, StartedEvent):
            self._started = item
        elif isinstance(event, EvalEvent):
            self._eval = item
        elif isinstance(event, CheckpointSavedEvent):
            self._checkpoints.append(item)
        elif isinstance(event, FinishedEvent | FailedEvent | StoppedEvent):
            self._terminal = item
        return True

    def _append(self, queue: deque[_Item], item: _Item, bound: int) -> None:
        if len(queue) >= bound:
            queue.popleft()
            self.dropped += 1
        queue.append(item)

    def snapshot(self) -> list[_Item]:
        """The latest started, step and eval events, the last checkpoints and the final event, oldest first."""
        items = [self._started, self._step, self._eval, *self._checkpoints, self._terminal]
        return sorted((item for item in items if item is not None), key=lambda item: item.seq)

    def remove_through(self, seq: int) -> int:
        """Forget pending events up to ``seq`` (they were delivered or refused); returns how many."""
        removed = 0
        for queue in (self.steps, self.milestones):
            while queue and queue[0].seq <= seq:
                queue.popleft()
                removed += 1
        return removed


def _next_batch(pending: list[_Item], extras: list[_Item]) -> tuple[list[_Item], int]:
    """The events of one request and the last pending ``seq`` it covers.

    ``extras`` (the catch-up snapshot) are merged in by age, without those already pending; the batch is
    the longest run, oldest first, that fits in :data:`MAX_REPORT_BYTES` and :data:`MAX_EVENTS_PER_REPORT`.
    """
    pending_seqs = {item.seq for item in pending}
    candidates = heapq.merge(
        (item for item in extras if item.seq not in pending_seqs), pending, key=lambda item: item.seq
    )
    size = len(_BODY_PREFIX) + len(_BODY_SUFFIX)
    batch: list[_Item] = []
    for item in candidates:
        grown = size + len(item.body) + (1 if batch else 0)
        if grown > MAX_REPORT_BYTES or len(batch) == MAX_EVENTS_PER_REPORT:
            break
        batch.append(item)
        size = grown
    covered = max((item.seq for item in batch if item.seq in pending_seqs), default=0)
    return batch, covered


@dataclass(frozen=True, kw_only=True)
class _Answer:
    status: int
    reason: str
    message: str
    retry_after_s: float | None

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


# How a connection the peer closed (an idle keep-alive one, typically) ends a request.
_LOST_CONNECTION = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


class _Client:
    """One keep-alive HTTPS connection to the operator (only the sender thread calls :meth:`post`)."""

    def __init__(self, settings: PushSettings) -> None:
        parts = urlsplit(settings.url)
        self._host = parts.hostname or ""
        self._port = parts.port or 443
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._settings = settings
        self._context: ssl.SSLContext | None = None
        self._conn: http.client.HTTPSConnection | None = None
        self._aborted = False

    def post(self, body: bytes) -> _Answer:
        """An accepted or refused answer; :class:`DeliveryError` for anything worth retrying."""
        headers = {"Content-Type": "application/json", **self._authorization()}
        reused = self._conn is not None and self._conn.sock is not None
        try:
            answer = self._request(body, headers)
        except _ConnectionLost:
            if not reused:
                raise
            # The operator closed an idle keep-alive connection: one more try on a new connection.
            answer = self._request(body, headers)
        if answer.status == 429 or answer.status >= 500 or answer.status < 200:
            raise DeliveryError(f"answer {answer.status}: {answer.message}", retry_after_s=answer.retry_after_s)
        return answer

    def _request(self, body: bytes, headers: dict[str, str]) -> _Answer:
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            response = conn.getresponse()
            text = response.read()
        except _LOST_CONNECTION as err:
            self.close()
            raise _ConnectionLost(f"{self._host}:{self._port} closed the connection: {err!r}") from err
        except ssl.SSLError as err:
            self._context = None  # read the CA file again: the operator may have a new certificate
            self.close()
            raise DeliveryError(f"TLS with {self._host}:{self._port} failed: {err}") from err
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise DeliveryError(f"no answer from {self._host}:{self._port}: {err!r}") from err
        reason, message = _answer_text(text)
        return _Answer(
            status=response.status,
            reason=reason or response.reason,
            message=message,
            retry_after_s=_seconds(response.getheader("Retry-After")),
        )

    def _connection(self) -> http.client.HTTPSConnection:
        if self._aborted:
            raise DeliveryError("the reporter is closed")
        if self._conn is None:
            if self._context is None:
                self._context = self._load_context()
            self._conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._settings.request_timeout_s, context=self._context
            )
        return self._conn

    def _load_context(self) -> ssl.SSLContext:
        ca_file = self._settings.ca_file
        try:
            return ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        except (OSError, ValueError) as err:
            raise DeliveryError(f"cannot load the report CA file {ca_file}: {err}") from err

    def _authorization(self) -> dict[str, str]:
        token_file = self._settings.token_file
        if token_file is None:
            return {}
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise DeliveryError(f"cannot read the report token file {token_file}: {err}") from err
        if not token:
            raise DeliveryError(f"the report token file {token_file} is empty")
        return {"Authorization": f"Bearer {token}"}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def abort(self) -> None:
        """From another thread: end a request that waits for an answer, and refuse new ones."""
        self._aborted = True
        conn = self._conn
        sock = None if conn is None else conn.sock
        if sock is not None:
            # The plain socket's shutdown: it wakes a blocked read without touching the TLS object.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _answer_text(body: bytes) -> tuple[str, str]:
    """The operator answers ``{"reason": ..., "message": ...}``; anything else is logged as text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return str(data.get("reason", "")), str(data.get("message", ""))[:_LOGGED_ANSWER_CHARS]
    return "", " ".join(text.split())[:_LOGGED_ANSWER_CHARS]


def _seconds(header: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the HTTP-date form is not used by the operator)."""
    try:
        return None if header is None else max(0.0, float(header))
    except ValueError:
        return None


class PushReporter:
    """A :class:`kubetune_trainer.reporting.Reporter` that pushes events to the operator.

    :meth:`emit` never blocks on the network and never raises. :meth:`close` delivers what is pending, or
    gives up at its deadline.
    """

    def __init__(self, settings: PushSettings, *, rng: random.Random | None = None) -> None:
        self._settings = settings
        self._client = _Client(settings)
        self._rng = rng or random.Random()
        self._cond = threading.Condition()
        self._buffer = _Buffer(settings)
        self._tally = _Tally()
        self._catch_up = False
        self._failures = 0
        self._retry_at = 0.0
        self._last_attempt = -math.inf
        self._closing = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="kubetune-report-push", daemon=True)
        self._thread.start()

    @property
    def counters(self) -> PushCounters:
        with self._cond:
            tally = dataclasses.replace(self._tally)
            tally.dropped_events += self._buffer.dropped
        return PushCounters(**dataclasses.asdict(tally))

    def pending_events(self) -> list[ProgressEvent]:
        """Events not yet delivered or refused, oldest first."""
        with self._cond:
            items = [*self._buffer.steps, *self._buffer.milestones]
        return [item.event for item in sorted(items, key=lambda item: item.seq)]

    def emit(self, event: ProgressEvent) -> None:
        try:
            body = encode_event(event)
        except Exception:  # emit never raises into the training loop
            log.exception("progress report: cannot encode a %s event; dropped", type(event).__name__)
            body = None
        with self._cond:
            if body is None or self._stopped:
                self._tally.dropped_events += 1
                return
            was_empty = len(self._buffer) == 0
            if self._buffer.add(event, body) or was_empty:
                self._cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds (default ``close_timeout_s``) for delivery, then stop the thread."""
        budget = self._settings.close_timeout_s if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + budget
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._retry_at = min(self._retry_at, time.monotonic())
            self._cond.notify_all()
            self._cond.wait_for(lambda: len(self._buffer) == 0, timeout=budget)
            left = len(self._buffer)
            self._stopped = True
            self._cond.notify_all()
        self._client.abort()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if left:
            log.warning("progress report: %d events not delivered within %.1f s of closing", left, budget)

    # -- the sender thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while self._wait_until_due():
            try:
                self._send_once()
            except Exception:  # a bug here must not end reporting, and never training
                log.exception("progress report: unexpected error; retrying")
                with self._cond:
                    self._failed(DeliveryError("unexpected error"))
        self._client.close()

    def _wait_until_due(self) -> bool:
        with self._cond:
            while not self._stopped:
                due = self._due_at()
                now = time.monotonic()
                if due is not None and due <= now:
                    return True
                self._cond.wait(None if due is None else due - now)
            return False

    def _due_at(self) -> float | None:
        if len(self._buffer) == 0:
            return None
        if self._buffer.milestones or self._closing:
            return self._retry_at
        return max(self._retry_at, self._last_attempt + self._settings.min_interval_s)

    def _send_once(self) -> None:
        with self._cond:
            steps, milestones = list(self._buffer.steps), list(self._buffer.milestones)
            extras = self._buffer.snapshot() if self._catch_up else []
            self._last_attempt = time.monotonic()
        pending = list(heapq.merge(steps, milestones, key=lambda item: item.seq))
        batch, covered = _next_batch(pending, extras)
        try:
            answer = self._client.post(report_body(item.body for item in batch))
        except DeliveryError as err:
            with self._cond:
                self._failed(err)
            return
        with self._cond:
            removed = self._buffer.remove_through(covered)
            if answer.accepted:
                self._accepted(len(batch))
            else:
                self._tally.rejected_events += removed
                log.warning(
                    "progress report refused with %d %s: %s; dropped %d events",
                    answer.status,
                    answer.reason,
                    answer.message,
                    removed,
                )
            self._cond.notify_all()

    def _accepted(self, events: int) -> None:
        self._tally.sent_events += events
        self._tally.sent_requests += 1
        if self._failures:
            log.info("progress report delivered again after %d failed requests", self._failures)
        self._catch_up = False
        self._failures = 0
        self._retry_at = 0.0

    def _failed(self, err: DeliveryError) -> None:
        self._tally.failed_requests += 1
        self._failures += 1
        self._catch_up = True
        settings = self._settings
        delay = backoff_delay(
            self._failures, initial_s=settings.backoff_initial_s, max_s=settings.backoff_max_s, rng=self._rng
        )
        if err.retry_after_s is not None:
            delay = max(delay, min(err.retry_after_s, settings.backoff_max_s))
        if self._closing:
            delay = min(delay, settings.close_retry_interval_s)
        self._retry_at = time.monotonic() + delay
        if self._failures == 1:
            log.warning("progress report failed (%s); keeping %d events, retrying with backoff", err, len(self._buffer))
