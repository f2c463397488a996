"""Progress reports pushed by trainers: who may send them, what is kept, when the status is written.

Rank 0 of each FineTuneJob POSTs its typed events (``kubetune.api.reports``) with its pod's projected
ServiceAccount token, whose audience names that FineTuneJob. The operator asks the API server to review
the token (a TokenReview) rather than checking the signature itself: the API server knows the signing
keys as they rotate, and refuses a token whose pod is gone, which an offline check cannot see. A review
is cached for a minute per token, so a pod costs about one review a minute however often it reports.
The token's pod must be one of the FineTuneJob's own pods: a pod can never report for another job.

The operator stays the only writer of ``status``: an accepted report only updates the in-memory window
of latest events (:class:`ReportStore`) and queues the job's reconcile, at once for a milestone (started,
checkpoint, eval, finished, failed, stopped) and otherwise no sooner than ``write_interval`` after the
last status write.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kubetune.api.progress import (
    CheckpointSavedEvent,
    EvalEvent,
    FailedEvent,
    FinishedEvent,
    ProgressEvent,
    StartedEvent,
    StepEvent,
    StoppedEvent,
)
from kubetune.api.reports import MAX_REPORT_BYTES, ReportBatch, audience
from kubetune_operator import k8s
from kubetune_operator.errors import ApiError

Key = tuple[str, str]
log = logging.getLogger(__name__)

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
# Where the API server puts a bound token's pod in a TokenReview's user.extra.
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
# Step events kept per job: enough for the ETA's pace over the last minute of one-second reports.
STEP_WINDOW = 32
# Checkpoints kept per job, as in status.checkpoints.
CHECKPOINT_WINDOW = 5
MILESTONES = (StartedEvent, CheckpointSavedEvent, EvalEvent, FinishedEvent, FailedEvent, StoppedEvent)


class Rejected(Exception):
    """A report refused: the HTTP status, and the reason counted in kubetune_progress_reports_total."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True, kw_only=True)
class Identity:
    """Who a reviewed token belongs to."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str


class TokenReviewer:
    """TokenReviews with a small cache: ``ttl`` seconds for a valid token, ``negative_ttl`` for a refused one
    (so a flood of one forged token costs one review per ``negative_ttl``)."""

    def __init__(
        self,
        kube: k8s.Kube,
        *,
        ttl: float = 60.0,
        negative_ttl: float = 10.0,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[float, Identity | Rejected]] = OrderedDict()
        self.reviews = 0

    def review(self, token: str, *, audience: str) -> Identity:
        # The cache key is a digest: the token itself is never kept (nor logged).
        key = hashlib.sha256(f"{audience}\n{token}".encode()).hexdigest()
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                self._cache.move_to_end(key)
                return _identity_or_raise(cached[1])
        outcome = self._ask(token, audience=audience)
        if isinstance(outcome, Rejected) and outcome.status >= 500:
            raise outcome  # the API server did not answer: nothing to cache
        expires = now + (self._ttl if isinstance(outcome, Identity) else self._negative_ttl)
        with self._lock:
            self._cache[key] = (expires, outcome)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return _identity_or_raise(outcome)

    def _ask(self, token: str, *, audience: str) -> Identity | Rejected:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        self.reviews += 1
        try:
            answer = self._kube.request("POST", TOKEN_REVIEW_PATH, body=body)
        except ApiError as err:
            return Rejected(503, "unavailable", f"the token could not be reviewed now ({err.status}); retry")
        status = answer.get("status") or {}
        if not status.get("authenticated") or audience not in (status.get("audiences") or []):
            # The API server's own error says why (expired, bad signature, wrong audience, pod deleted).
            why = status.get("error") or "not authenticated"
            return Rejected(401, "unauthenticated", f"the token is not valid for this FineTuneJob: {why}")
        user = status.get("user") or {}
        extra = user.get("extra") or {}
        username = str(user.get("username") or "")
        pod_name, pod_uid = (extra.get(POD_NAME_EXTRA) or [""])[0], (extra.get(POD_UID_EXTRA) or [""])[0]
        if not username.startswith(SERVICE_ACCOUNT_PREFIX) or not pod_name or not pod_uid:
            return Rejected(401, "unauthenticated", "the token is not bound to a pod")
        namespace, _, service_account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        return Identity(namespace=namespace, service_account=service_account, pod_name=pod_name, pod_uid=pod_uid)


def _identity_or_raise(outcome: Identity | Rejected) -> Identity:
    if isinstance(outcome, Rejected):
        raise outcome
    return outcome


@dataclass
class _Window:
    """The latest events of one job: what the status is folded from."""

    started: StartedEvent | None = None
    steps: list[StepEvent] = field(default_factory=list)
    evaluation: EvalEvent | None = None
    checkpoints: list[CheckpointSavedEvent] = field(default_factory=list)
    final: FinishedEvent | FailedEvent | StoppedEvent | None = None
    last_write: float = float("-inf")
    # A milestone arrived since the last status write: the next reconcile writes whatever the time.
    milestone_pending: bool = False
    # The events the last written status was folded from, and those the latest due reconcile read.
    written: list[ProgressEvent] = field(default_factory=list)
    read: list[ProgressEvent] = field(default_factory=list)

    def events(self) -> list[ProgressEvent]:
        out: list[ProgressEvent] = [*self.steps, *self.checkpoints]
        for event in (self.started, self.evaluation, self.final):
            if event is not None:
                out.append(event)
        return sorted(out, key=lambda e: (e.time, e.step))


@dataclass(frozen=True, kw_only=True)
class Ingested:
    accepted: int
    milestone: bool


class ReportStore:
    """The latest events of each job, thread-safe. A repeated or older event changes nothing.

    It also spaces the status writes that reports cause: :meth:`view` hands a reconcile the latest events
    only when the job's write is due (``interval`` after its last one, longer when the jobs reporting would
    together exceed ``writes_per_second``, or at once after a milestone), and otherwise the events its last
    written status came from. So a reconcile for any other reason (the watch event of the operator's own
    status write among them) never writes progress early.
    """

    def __init__(
        self,
        *,
        interval: float = 0.0,
        writes_per_second: float = float("inf"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._writes_per_second = writes_per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[Key, _Window] = {}

    def ingest(self, key: Key, events: Sequence[ProgressEvent]) -> Ingested:
        accepted, milestone = 0, False
        with self._lock:
            window = self._windows.setdefault(key, _Window())
            for event in sorted(events, key=lambda e: e.time):
                if _take(window, event):
                    accepted += 1
                    milestone = milestone or isinstance(event, MILESTONES)
            window.milestone_pending = window.milestone_pending or milestone
        return Ingested(accepted=accepted, milestone=milestone)

    def events(self, key: Key) -> list[ProgressEvent]:
        """The latest events of the job, oldest first."""
        with self._lock:
            window = self._windows.get(key)
            return window.events() if window is not None else []

    def latest(self, key: Key) -> list[ProgressEvent]:
        """The newest eval and step events of the job (what the per-job metrics show), oldest first."""
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                return []
            found = [window.evaluation, window.steps[-1] if window.steps else None]
            return sorted((e for e in found if e is not None), key=lambda e: e.time)

    def view(self, key: Key) -> list[ProgressEvent]:
        """The events a reconcile folds into the status: the latest when a write is due, else those of the
        last written status."""
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                return []
            due = window.milestone_pending or self._clock() >= window.last_write + self._spacing()
            # Reconciles of one job take turns, so the last view is the one a following write came from.
            window.read = window.events() if due else window.written
            return list(window.read)

    def wrote(self, key: Key) -> None:
        """The job's status was just written, from the events its reconcile last viewed."""
        with self._lock:
            window = self._windows.get(key)
            if window is not None:
                window.last_write = self._clock()
                window.written = window.read
                window.milestone_pending = False

    def unwritten(self, key: Key) -> bool:
        """The job has reported events its last written status was not folded from."""
        with self._lock:
            window = self._windows.get(key)
            return window is not None and window.events() != window.written

    def next_write_in(self, key: Key) -> float:
        """Seconds until the job's next status write for progress is due (0 after a milestone)."""
        with self._lock:
            window = self._windows.get(key)
            if window is None or window.milestone_pending:
                return 0.0
            return max(0.0, window.last_write + self._spacing() - self._clock())

    def _spacing(self) -> float:
        return max(self._interval, len(self._windows) / self._writes_per_second)

    def forget(self, key: Key) -> None:
        with self._lock:
            self._windows.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._windows)


def _take(window: _Window, event: ProgressEvent) -> bool:
    """Put ``event`` into the window; False when it is a repeat or older than what the window holds."""
    match event:
        case StartedEvent():
            if window.started is not None and event.time <= window.started.time:
                return False
            # A new start (a restarted pod, maybe resumed from a checkpoint): later steps count from it.
            window.started = event
            window.steps = [s for s in window.steps if s.time < event.time and s.step <= event.step]
            window.final = None
        case StepEvent():
            latest = window.steps[-1] if window.steps else None
            if latest is not None and (event.time <= latest.time or event.step <= latest.step):
                return False
            window.steps = [*window.steps, event][-STEP_WINDOW:]
        case EvalEvent():
            if window.evaluation is not None and event.time <= window.evaluation.time:
                return False
            window.evaluation = event
        case CheckpointSavedEvent():
            if any(c.uri == event.uri and c.step == event.step for c in window.checkpoints):
                return False
            window.checkpoints = sorted([*window.checkpoints, event], key=lambda c: c.time)[-CHECKPOINT_WINDOW:]
        case FinishedEvent() | FailedEvent() | StoppedEvent():
            if window.final is not None and event.time <= window.final.time:
                return False
            window.final = event
    return True


@dataclass(frozen=True, kw_only=True)
class JobState:
    """What the report endpoint needs to know about a FineTuneJob (from the watch caches)."""

    exists: bool
    finished: bool
    pods: frozenset[tuple[str, str]]  # (name, uid) of its trainer pods


class ReportService:
    """One report, from its raw parts to an answer: the HTTP server only moves bytes to and from here."""

    def __init__(
        self,
        *,
        reviewer: TokenReviewer,
        store: ReportStore,
        job_state: Callable[[Key], JobState | None],
        on_accepted: Callable[[Key, Ingested], None],
        on_result: Callable[[str, str], None],
    ) -> None:
        self._reviewer = reviewer
        self._store = store
        self._job_state = job_state
        self._on_accepted = on_accepted
        self._on_result = on_result

    def handle(
        self, *, namespace: str, name: str, authorization: str | None, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        try:
            ingested = self._handle(namespace=namespace, name=name, authorization=authorization, body=body)
        except Rejected as rejected:
            return self._refused(namespace=namespace, name=name, rejected=rejected)
        self._on_result("accepted", "ok")
        return 202, {"accepted": ingested.accepted}

    def refuse_too_large(self, *, namespace: str, name: str, length: int) -> tuple[int, dict[str, Any]]:
        """A body announced larger than allowed (or with no valid length), refused before it is read."""
        message = f"a report is at most {MAX_REPORT_BYTES} bytes, this one announced {length}"
        return self._refused(namespace=namespace, name=name, rejected=Rejected(413, "too_large", message))

    def _refused(self, *, namespace: str, name: str, rejected: Rejected) -> tuple[int, dict[str, Any]]:
        self._on_result("rejected", rejected.reason)
        if rejected.status < 500:
            log.info("[%s/%s] report rejected (%s): %s", namespace, name, rejected.reason, rejected.message)
        return rejected.status, {"reason": rejected.reason, "message": rejected.message}

    def _handle(self, *, namespace: str, name: str, authorization: str | None, body: bytes) -> Ingested:
        if len(body) > MAX_REPORT_BYTES:
            raise Rejected(413, "too_large", f"a report is at most {MAX_REPORT_BYTES} bytes, this one {len(body)}")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Rejected(401, "unauthenticated", "no bearer token")
        identity = self._reviewer.review(token.strip(), audience=audience(namespace=namespace, name=name))
        key = (namespace, name)
        state = self._job_state(key)
        if state is None:
            raise Rejected(503, "not_ready", "the operator is starting; retry")
        if not state.exists:
            raise Rejected(404, "unknown_job", f"no FineTuneJob {namespace}/{name}")
        if identity.namespace != namespace or (identity.pod_name, identity.pod_uid) not in state.pods:
            raise Rejected(403, "wrong_job", f"pod {identity.pod_name} is not a pod of FineTuneJob {name}")
        if state.finished:
            raise Rejected(409, "finished", f"FineTuneJob {name} has finished; its status is final")
        try:
            batch = ReportBatch.model_validate_json(body)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise Rejected(400, "malformed", f"invalid report at {where or 'the top level'}: {first['msg']}") from None
        ingested = self._store.ingest(key, batch.events)
        self._on_accepted(key, ingested)
        return ingested
