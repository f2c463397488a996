"""The push reporter against a real local HTTPS server that trusts a throw-away CA."""

from __future__ import annotations

import datetime
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubetune_operator.tls import issue, make_ca
from kubetune_trainer.push import PushReporter, PushSettings, PushSettingsError, backoff_delay
from pydantic import ValidationError

from kubetune.api.progress import (
    CheckpointSavedEvent,
    EvalEvent,
    FailedEvent,
    FinishedEvent,
    ProgressEvent,
    StartedEvent,
    StepEvent,
)
from kubetune.api.reports import MAX_REPORT_BYTES, ReportBatch

TOKEN = "s3cr3t-token-value"


# -- a throw-away PKI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    wrong_ca: Path
    server_cert: Path
    server_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The operator's own CA and serving certificate (kubetune_operator.tls), and a second CA of the same
    name and another key: only the signature tells them apart."""
    directory = tmp_path_factory.mktemp("pki")
    identity = issue(make_ca(), hosts=("localhost", "127.0.0.1"))
    pki = Pki(directory / "ca.crt", directory / "wrong-ca.crt", directory / "tls.crt", directory / "tls.key")
    pki.ca.write_text(identity.ca_pem, encoding="ascii")
    pki.wrong_ca.write_text(make_ca().cert_pem, encoding="ascii")
    pki.server_cert.write_text(identity.cert_pem, encoding="ascii")
    pki.server_key.write_text(identity.key_pem, encoding="ascii")
    return pki


# -- a report endpoint --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    status: int
    authorization: str | None
    body: bytes
    events: list[ProgressEvent]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: ReportEndpoint

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        tls = self.endpoint.tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return tls, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # failed handshakes are what some tests make happen


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        endpoint = self.server.endpoint
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            events = ReportBatch.model_validate_json(body).events
        except ValidationError:
            events = []
        with endpoint.cond:
            status = endpoint.statuses.popleft() if endpoint.statuses else (202 if events else 400)
            endpoint.requests.append(Received(status, self.headers.get("Authorization"), body, events))
            endpoint.cond.notify_all()
        answer = {"accepted": len(events)} if status == 202 else {"reason": "Refused", "message": f"no: {status}"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        # Closing without "Connection: close" is what an idle-timeout looks like to the client.
        self.close_connection = endpoint.close_after_answer

    def log_message(self, format: str, *args: Any) -> None:
        return


class ReportEndpoint:
    """Records every report; answers the statuses queued in :attr:`statuses`, then 202 (400 if invalid)."""

    def __init__(self, pki: Pki) -> None:
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(pki.server_cert, pki.server_key)
        self.cond = threading.Condition()
        self.requests: list[Received] = []
        self.statuses: deque[int] = deque()
        self.close_after_answer = False
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.endpoint = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}/v1/reports/team-a/demo"

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 5.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.requests), timeout=timeout), self.requests

    def accepted_events(self) -> list[ProgressEvent]:
        with self.cond:
            return [event for request in self.requests if request.status == 202 for event in request.events]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def endpoint(pki: Pki) -> Iterator[ReportEndpoint]:
    server = ReportEndpoint(pki)
    yield server
    server.stop()


@pytest.fixture
def hanging_url() -> Iterator[str]:
    """A port whose connections the kernel accepts and nobody ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/v1/reports/team-a/demo"


@pytest.fixture
def down_url() -> str:
    """A port nothing listens on: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"https://127.0.0.1:{port}/v1/reports/team-a/demo"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def make_reporter(pki: Pki, token_file: Path) -> Iterator[Callable[..., PushReporter]]:
    """Reporters with small timings; each is closed at the end of the test."""
    made: list[PushReporter] = []

    def make(url: str, **overrides: Any) -> PushReporter:
        settings: dict[str, Any] = {
            "url": url,
            "token_file": token_file,
            "ca_file": pki.ca,
            "min_interval_s": 0.02,
            "request_timeout_s": 1.0,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            "close_timeout_s": 5.0,
            "close_retry_interval_s": 0.05,
        }
        reporter = PushReporter(PushSettings(**(settings | overrides)), rng=random.Random(0))
        made.append(reporter)
        return reporter

    yield make
    for reporter in made:
        reporter.close(timeout=0)


def _count_is(n: int) -> Callable[[list[Received]], bool]:
    return lambda requests: len(requests) == n


def _eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


# -- events -------------------------------------------------------------------------------------------


# Events carry a fixed time, so two made alike compare equal.
def _at(n: int) -> datetime.datetime:
    return datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=n)


def started() -> StartedEvent:
    return StartedEvent(
        time=_at(0), total_steps=1000, epochs=1, world_size=1, train_examples=100, validation_examples=10
    )


def step(n: int) -> StepEvent:
    return StepEvent(
        time=_at(n),
        step=n,
        total_steps=1000,
        epoch=n / 1000,
        loss=2.0,
        learning_rate=1e-4,
        tokens_per_second=1e3,
        trained_tokens=n,
    )


def checkpoint(n: int, uri: str = "s3://bucket/run/checkpoints") -> CheckpointSavedEvent:
    return CheckpointSavedEvent(time=_at(n), step=n, uri=f"{uri}/step-{n:08d}", reason="periodic")


def evaluation(n: int) -> EvalEvent:
    return EvalEvent(time=_at(n), step=n, eval_loss=1.5, perplexity=4.48)


def finished(n: int) -> FinishedEvent:
    return FinishedEvent(time=_at(n), step=n, output_uri="s3://bucket/run", manifest_sha256="0" * 64, trained_tokens=n)


# -- behaviour ----------------------------------------------------------------------------------------


def test_events_arrive_in_order_with_the_token_read_again_for_every_request(
    endpoint: ReportEndpoint, token_file: Path, make_reporter: Callable[..., PushReporter]
) -> None:
    reporter = make_reporter(endpoint.url)
    first = started()
    reporter.emit(first)
    endpoint.wait_for(lambda requests: len(requests) == 1)
    token_file.write_text("rotated-token")
    later: list[ProgressEvent] = [step(1), step(2), step(3), checkpoint(3), finished(3)]
    for event in later:
        reporter.emit(event)
    reporter.close()

    assert endpoint.requests[0].authorization == f"Bearer {TOKEN}"
    assert len(endpoint.requests) >= 2
    assert {request.authorization for request in endpoint.requests[1:]} == {"Bearer rotated-token"}
    assert all(request.status == 202 for request in endpoint.requests)  # every body was a valid ReportBatch
    assert endpoint.accepted_events() == [first, *later]
    assert reporter.counters.sent_events == 6 and reporter.counters.failed_requests == 0


@pytest.mark.parametrize("operator", ["down", "hanging", "token file missing"])
def test_emit_never_blocks_and_the_buffer_drops_the_oldest_steps_first(
    operator: str,
    request: pytest.FixtureRequest,
    endpoint: ReportEndpoint,
    tmp_path: Path,
    make_reporter: Callable[..., PushReporter],
) -> None:
    if operator == "token file missing":
        reporter = make_reporter(endpoint.url, token_file=tmp_path / "not-yet-mounted", max_step_events=512)
    else:
        url = request.getfixturevalue("down_url" if operator == "down" else "hanging_url")
        reporter = make_reporter(url, max_step_events=512)
    events: list[ProgressEvent] = [started()]
    for n in range(1, 991):
        events.append(step(n))
        if n % 110 == 0:
            events.append(checkpoint(n))
    assert len(events) == 1000

    began = time.perf_counter()
    for event in events:
        reporter.emit(event)
    elapsed = time.perf_counter() - began

    assert elapsed < 0.05, f"1000 emits took {elapsed * 1000:.1f} ms"
    pending = reporter.pending_events()
    assert [e.step for e in pending if isinstance(e, StepEvent)] == list(range(479, 991))
    assert [e for e in pending if not isinstance(e, StepEvent)] == [e for e in events if not isinstance(e, StepEvent)]
    assert reporter.counters.dropped_events == 478
    assert reporter.counters.sent_events == 0
    assert endpoint.requests == []


def test_after_503s_the_snapshot_is_sent_again_with_everything_pending(
    endpoint: ReportEndpoint, make_reporter: Callable[..., PushReporter]
) -> None:
    reporter = make_reporter(endpoint.url)
    before: list[ProgressEvent] = [started(), step(1), step(2), evaluation(2), checkpoint(2)]
    for event in before:
        reporter.emit(event)
    endpoint.wait_for(lambda requests: sum(len(r.events) for r in requests) == len(before))
    with endpoint.cond:
        endpoint.statuses.extend([503, 503, 503])
    reporter.emit(step(3))
    reporter.emit(checkpoint(3))
    endpoint.wait_for(lambda requests: [r.status for r in requests][-4:] == [503, 503, 503, 202])
    reporter.close()

    catch_up = endpoint.requests[-1].events  # the first accepted request after the failures
    assert catch_up == [before[0], before[3], before[4], step(3), checkpoint(3)]
    assert reporter.counters.failed_requests == 3
    assert reporter.pending_events() == []


def test_a_refused_batch_is_dropped_not_retried_and_logged_without_the_token(
    endpoint: ReportEndpoint, make_reporter: Callable[..., PushReporter], caplog: pytest.LogCaptureFixture
) -> None:
    reporter = make_reporter(endpoint.url)
    with endpoint.cond:
        endpoint.statuses.append(403)
    with caplog.at_level(logging.WARNING, logger="kubetune_trainer.push"):
        reporter.emit(started())
        endpoint.wait_for(lambda requests: len(requests) == 1)
        reporter.emit(checkpoint(1))
        reporter.close()

    assert [request.status for request in endpoint.requests] == [403, 202]
    assert endpoint.requests[1].events == [checkpoint(1)]
    assert reporter.counters.rejected_events == 1 and reporter.counters.failed_requests == 0
    assert "403" in caplog.text and "no: 403" in caplog.text
    assert TOKEN not in caplog.text


def test_a_429_is_retried(endpoint: ReportEndpoint, make_reporter: Callable[..., PushReporter]) -> None:
    reporter = make_reporter(endpoint.url)
    with endpoint.cond:
        endpoint.statuses.append(429)
    reporter.emit(started())
    reporter.close()
    assert [request.status for request in endpoint.requests] == [429, 202]
    assert endpoint.accepted_events() == [started()]


def test_close_delivers_pending_steps_and_the_final_event(
    endpoint: ReportEndpoint, make_reporter: Callable[..., PushReporter]
) -> None:
    reporter = make_reporter(endpoint.url, min_interval_s=60.0)
    reporter.emit(step(1))
    _eventually(lambda: reporter.counters.sent_requests == 1)
    reporter.emit(step(2))
    reporter.emit(step(3))
    assert reporter.pending_events() == [step(2), step(3)]  # steps wait for min_interval_s
    reporter.emit(finished(3))

    began = time.monotonic()
    reporter.close()

    assert time.monotonic() - began < 2.0
    assert endpoint.accepted_events() == [step(1), step(2), step(3), finished(3)]


@pytest.mark.parametrize("operator", ["down_url", "hanging_url"])
def test_close_returns_at_its_deadline_when_the_operator_does_not_answer(
    operator: str, request: pytest.FixtureRequest, make_reporter: Callable[..., PushReporter]
) -> None:
    reporter = make_reporter(request.getfixturevalue(operator), close_timeout_s=0.5, request_timeout_s=5.0)
    reporter.emit(started())
    reporter.emit(finished(0))

    began = time.monotonic()
    reporter.close()
    elapsed = time.monotonic() - began

    assert 0.45 <= elapsed < 0.5 + 0.3
    assert reporter.pending_events() == [started(), finished(0)]


def test_no_request_body_exceeds_max_report_bytes(
    endpoint: ReportEndpoint, make_reporter: Callable[..., PushReporter]
) -> None:
    reporter = make_reporter(endpoint.url)
    events: list[ProgressEvent] = [checkpoint(n, uri="s3://bucket/" + "x" * 3000) for n in range(100)]
    huge_failure = FailedEvent(reason="BadData", message="y" * 100_000, exit_code=65)
    for event in [*events, huge_failure]:
        reporter.emit(event)
    reporter.close()

    assert all(len(request.body) <= MAX_REPORT_BYTES for request in endpoint.requests)
    assert len(endpoint.requests) >= 5  # 100 x 3 kB cannot go in fewer 64 KiB bodies
    received = endpoint.accepted_events()
    assert received[:100] == events
    last = received[100]
    assert isinstance(last, FailedEvent) and last.message.startswith("y" * 4096) and len(last.message) < 5000


def test_a_wrong_ca_keeps_the_events_until_the_ca_file_is_replaced(
    endpoint: ReportEndpoint, pki: Pki, tmp_path: Path, make_reporter: Callable[..., PushReporter]
) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(pki.wrong_ca.read_bytes())
    reporter = make_reporter(endpoint.url, ca_file=ca_file)
    reporter.emit(started())
    reporter.emit(step(1))
    _eventually(lambda: reporter.counters.failed_requests >= 2)
    assert endpoint.requests == []  # no handshake completed
    assert reporter.pending_events() == [started(), step(1)]

    ca_file.write_bytes(pki.ca.read_bytes())  # the operator's CA, as after a rotation
    endpoint.wait_for(lambda requests: len(requests) >= 1)
    reporter.close()

    assert endpoint.accepted_events() == [started(), step(1)]


def test_a_connection_closed_by_the_operator_is_reopened_without_a_failure(
    endpoint: ReportEndpoint, make_reporter: Callable[..., PushReporter]
) -> None:
    endpoint.close_after_answer = True
    reporter = make_reporter(endpoint.url)
    for n in range(1, 4):
        reporter.emit(checkpoint(n))
        endpoint.wait_for(_count_is(n))
    reporter.close()

    assert endpoint.accepted_events() == [checkpoint(1), checkpoint(2), checkpoint(3)]
    assert reporter.counters.failed_requests == 0


def test_emit_after_close_is_dropped_quietly(
    endpoint: ReportEndpoint, make_reporter: Callable[..., PushReporter]
) -> None:
    reporter = make_reporter(endpoint.url)
    reporter.close()
    reporter.emit(started())
    reporter.close()
    assert reporter.counters.dropped_events == 1 and endpoint.requests == []


# -- settings and pure helpers ------------------------------------------------------------------------


def test_settings_from_env_are_none_without_a_url_and_read_the_three_variables() -> None:
    assert PushSettings.from_env({}) is None
    assert PushSettings.from_env({"KUBETUNE_REPORT_URL": " "}) is None
    settings = PushSettings.from_env(
        {
            "KUBETUNE_REPORT_URL": "https://kubetune-operator.kubetune-system.svc:8443/v1/reports/a/b",
            "KUBETUNE_REPORT_TOKEN_FILE": "/var/run/secrets/kubetune/token",
            "KUBETUNE_REPORT_CA_FILE": "/etc/kubetune/report-ca/ca.crt",
        }
    )
    assert settings is not None
    assert settings.token_file == Path("/var/run/secrets/kubetune/token")
    assert settings.ca_file == Path("/etc/kubetune/report-ca/ca.crt")
    assert (settings.max_step_events, settings.min_interval_s, settings.close_timeout_s) == (512, 1.0, 15.0)


@pytest.mark.parametrize(
    "url", ["http://operator/v1/reports/a/b", "operator:8443", "https:///v1/reports/a/b", "https://operator:x/"]
)
def test_settings_refuse_a_url_that_is_not_https(url: str) -> None:
    with pytest.raises(PushSettingsError, match="KUBETUNE_REPORT_URL"):
        PushSettings.from_env({"KUBETUNE_REPORT_URL": url})


def test_backoff_doubles_from_the_initial_delay_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(0)
    delays = [backoff_delay(n, initial_s=0.5, max_s=30.0, rng=rng) for n in range(1, 10)]
    bases = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert all(base / 2 <= delay <= base for delay, base in zip(delays, bases, strict=True))
