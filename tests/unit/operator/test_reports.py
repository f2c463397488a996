"""Progress reports: the store keeps the latest events; the service accepts only a job's own pods' reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from kubetune_operator.reports import Identity, Ingested, JobState, Rejected, ReportService, ReportStore

from kubetune.api.progress import (
    CheckpointSavedEvent,
    EvalEvent,
    FinishedEvent,
    ProgressEvent,
    StartedEvent,
    StepEvent,
    event_to_json,
)
from kubetune.api.reports import MAX_REPORT_BYTES, audience

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
KEY = ("team-a", "run")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def step(n: int, *, t: float) -> StepEvent:
    return StepEvent(
        time=at(t), step=n, total_steps=100, epoch=0.1, loss=2.0, learning_rate=1e-4, tokens_per_second=10.0,
        trained_tokens=n,
    )  # fmt: skip


def started(*, t: float, step: int = 0) -> StartedEvent:
    return StartedEvent(
        time=at(t), step=step, total_steps=100, epochs=1, world_size=1, train_examples=10, validation_examples=2
    )


def test_the_store_keeps_the_latest_events_and_ignores_repeats_and_older_ones() -> None:
    store = ReportStore()
    first = store.ingest(KEY, [started(t=0), step(1, t=1), step(2, t=2)])
    assert first == Ingested(accepted=3, milestone=True)
    again = store.ingest(KEY, [step(2, t=2), step(1, t=1)])
    assert again == Ingested(accepted=0, milestone=False)
    assert store.ingest(KEY, [step(3, t=3)]) == Ingested(accepted=1, milestone=False)
    assert [e.step for e in store.events(KEY) if isinstance(e, StepEvent)] == [1, 2, 3]
    assert store.events(("team-a", "other")) == []
    assert [e.step for e in store.latest(KEY)] == [3]


def test_the_step_window_is_bounded_and_checkpoints_keep_the_newest_five() -> None:
    store = ReportStore()
    events: list[ProgressEvent] = [step(n, t=n) for n in range(1, 101)]
    events += [CheckpointSavedEvent(time=at(n), step=n, uri=f"pvc://o/ck/{n}", reason="periodic") for n in range(10)]
    store.ingest(KEY, events)
    kept = store.events(KEY)
    assert len([e for e in kept if isinstance(e, StepEvent)]) == 32
    assert [e.step for e in kept if isinstance(e, CheckpointSavedEvent)] == [5, 6, 7, 8, 9]
    assert [e.time for e in kept] == sorted(e.time for e in kept)


def test_a_restart_from_a_checkpoint_starts_the_step_window_again() -> None:
    store = ReportStore()
    store.ingest(KEY, [started(t=0), step(40, t=40), step(50, t=50)])
    store.ingest(KEY, [started(t=60, step=40), step(41, t=61)])
    steps = [e.step for e in store.events(KEY) if isinstance(e, StepEvent)]
    assert steps == [40, 41]


def test_a_reconcile_sees_new_progress_only_when_a_write_is_due() -> None:
    now = [100.0]
    store = ReportStore(interval=5.0, clock=lambda: now[0])
    store.ingest(KEY, [step(1, t=1)])
    assert store.next_write_in(KEY) == 0.0
    assert [e.step for e in store.view(KEY)] == [1]
    store.wrote(KEY)
    now[0] = 102.0
    store.ingest(KEY, [step(2, t=2)])
    assert store.next_write_in(KEY) == pytest.approx(3.0)
    # Any reconcile before then (e.g. the watch event of that very write) folds what was written last.
    assert [e.step for e in store.view(KEY)] == [1]
    now[0] = 105.0
    assert [e.step for e in store.view(KEY)] == [1, 2]
    store.wrote(KEY)
    store.forget(KEY)
    assert len(store) == 0


def test_a_write_from_older_events_leaves_the_newer_ones_unwritten_and_due_later() -> None:
    now = [100.0]
    store = ReportStore(interval=5.0, clock=lambda: now[0])
    assert store.view(KEY) == []  # a reconcile (a pod event) before the first report
    store.ingest(KEY, [step(1, t=1)])  # the report arrives while that reconcile runs
    store.wrote(KEY)  # and that reconcile writes (a phase change) without the report's event
    assert store.unwritten(KEY)
    assert store.next_write_in(KEY) == pytest.approx(5.0)
    now[0] = 105.0
    assert [e.step for e in store.view(KEY)] == [1]
    store.wrote(KEY)
    assert not store.unwritten(KEY)


def test_a_milestone_is_seen_at_once() -> None:
    now = [100.0]
    store = ReportStore(interval=5.0, clock=lambda: now[0])
    store.ingest(KEY, [step(1, t=1)])
    store.view(KEY)
    store.wrote(KEY)
    now[0] = 101.0
    store.ingest(KEY, [step(2, t=2), EvalEvent(time=at(3), step=2, eval_loss=1.0, perplexity=2.7)])
    assert store.next_write_in(KEY) == 0.0
    assert any(isinstance(e, EvalEvent) for e in store.view(KEY))
    store.wrote(KEY)
    store.ingest(KEY, [step(3, t=4)])
    assert store.next_write_in(KEY) == pytest.approx(5.0)


def test_many_reporting_jobs_share_a_budget_of_writes_per_second() -> None:
    now = [100.0]
    store = ReportStore(interval=5.0, writes_per_second=20.0, clock=lambda: now[0])
    for i in range(199):
        store.ingest(("ns", f"job-{i}"), [step(1, t=1)])
    store.ingest(KEY, [step(1, t=1)])
    store.view(KEY)
    store.wrote(KEY)
    # 200 jobs at 20 writes/s: each job every 10 s, not every 5 s.
    assert store.next_write_in(KEY) == pytest.approx(10.0)


class Reviewer:
    """Stands in for the API server's TokenReview (integration tests use the real one)."""

    def __init__(self, tokens: dict[tuple[str, str], Identity]) -> None:
        self.tokens = tokens

    def review(self, token: str, *, audience: str) -> Identity:
        found = self.tokens.get((token, audience))
        if found is None:
            raise Rejected(401, "unauthenticated", "the token is not valid for this FineTuneJob")
        return found


POD = Identity(namespace="team-a", service_account="default", pod_name="run-0-abc", pod_uid="uid-0")
OTHER_POD = Identity(namespace="team-a", service_account="default", pod_name="other-0-x", pod_uid="uid-9")


class Harness:
    def __init__(self, *, state: JobState | None) -> None:
        self.store = ReportStore()
        self.accepted: list[Ingested] = []
        self.results: list[tuple[str, str]] = []
        reviewer = Reviewer(
            {
                ("good", audience(namespace="team-a", name="run")): POD,
                ("other", audience(namespace="team-a", name="run")): OTHER_POD,
            }
        )
        self.service = ReportService(
            reviewer=reviewer,  # type: ignore[arg-type]
            store=self.store,
            job_state=lambda key: state,
            on_accepted=lambda key, ingested: self.accepted.append(ingested),
            on_result=lambda result, reason: self.results.append((result, reason)),
        )

    def post(self, events: list[ProgressEvent] | None = None, *, token: str = "good", body: bytes | None = None) -> int:
        if body is None:
            body = json.dumps({"events": [json.loads(event_to_json(e)) for e in events or [step(1, t=1)]]}).encode()
        status, _ = self.service.handle(namespace="team-a", name="run", authorization=f"Bearer {token}", body=body)
        return status


RUNNING = JobState(exists=True, finished=False, pods=frozenset({("run-0-abc", "uid-0")}))


def test_a_report_from_the_jobs_own_pod_is_accepted_and_queues_the_reconcile() -> None:
    h = Harness(state=RUNNING)
    assert h.post([started(t=0), step(1, t=1)]) == 202
    assert h.accepted == [Ingested(accepted=2, milestone=True)]
    assert h.results == [("accepted", "ok")]
    assert len(h.store.events(KEY)) == 2


@pytest.mark.parametrize(
    ("case", "state", "token", "body", "status", "reason"),
    [
        ("forged", RUNNING, "forged", None, 401, "unauthenticated"),
        ("another job's pod", RUNNING, "other", None, 403, "wrong_job"),
        ("no such job", JobState(exists=False, finished=False, pods=frozenset()), "good", None, 404, "unknown_job"),
        ("finished", JobState(exists=True, finished=True, pods=RUNNING.pods), "good", None, 409, "finished"),
        ("not json", RUNNING, "good", b"{not json", 400, "malformed"),
        ("no events", RUNNING, "good", b'{"events": []}', 400, "malformed"),
        ("unknown event", RUNNING, "good", b'{"events": [{"event": "hack", "time": "2026-01-01T00:00:00Z"}]}', 400,
         "malformed"),
        ("too large", RUNNING, "good", b"x" * (MAX_REPORT_BYTES + 1), 413, "too_large"),
        ("operator starting", None, "good", None, 503, "not_ready"),
    ],
)  # fmt: skip
def test_a_refused_report_is_counted_by_reason_and_changes_nothing(
    case: str, state: JobState | None, token: str, body: bytes | None, status: int, reason: str
) -> None:
    h = Harness(state=state)
    assert h.post(token=token, body=body) == status, case
    assert h.results == [("rejected", reason)]
    assert h.accepted == [] and h.store.events(KEY) == []


def test_a_missing_bearer_token_is_refused_without_a_review() -> None:
    h = Harness(state=RUNNING)
    status, body = h.service.handle(namespace="team-a", name="run", authorization=None, body=b"{}")
    assert (status, body["reason"]) == (401, "unauthenticated")


def test_the_finished_event_and_eval_are_milestones() -> None:
    h = Harness(state=RUNNING)
    h.post([step(1, t=1)])
    h.post([EvalEvent(time=at(2), step=1, eval_loss=1.0, perplexity=2.7)])
    finished = FinishedEvent(time=at(3), step=1, output_uri="pvc://o/run", manifest_sha256="a" * 64, trained_tokens=1)
    h.post([finished])
    assert [i.milestone for i in h.accepted] == [False, True, True]
