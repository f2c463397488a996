"""The HTTPS endpoint trainers report to: moves bytes between sockets and :class:`ReportService`.

A thread per connection (the standard library's threading server): a report is a small JSON body and a
cached token check, and a blocking TokenReview on a cache miss holds up only its own connection. HTTP/1.1
keep-alive lets a trainer reuse one TLS connection for all its reports.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubetune.api.reports import MAX_REPORT_BYTES, REPORTS_PATH_PREFIX
from kubetune_operator.reports import ReportService

log = logging.getLogger(__name__)

# A connection that sends nothing for this long is closed (slow clients must not pin threads forever).
IDLE_TIMEOUT_SECONDS = 30.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    service: ReportService
    tls: ssl.SSLContext

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        connection.settimeout(IDLE_TIMEOUT_SECONDS)
        # The handshake runs in the connection's own thread (on first read), never in the accept loop.
        return self.tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Handshake failures and resets are a client's problem; one debug line, no traceback.
        log.debug("report connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        parts = self.path.split("?", 1)[0].removeprefix(REPORTS_PATH_PREFIX + "/").split("/")
        if not self.path.startswith(REPORTS_PATH_PREFIX + "/") or len(parts) != 2 or not all(parts):
            self._answer(404, {"reason": "not_found", "message": f"POST {REPORTS_PATH_PREFIX}/<namespace>/<name>"})
            return
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REPORT_BYTES:
            # The body is not read: the connection is closed after the answer instead.
            self.close_connection = True
            self._answer(*self.server.service.refuse_too_large(namespace=parts[0], name=parts[1], length=length))
            return
        status, body = self.server.service.handle(
            namespace=parts[0],
            name=parts[1],
            authorization=self.headers.get("Authorization"),
            body=self.rfile.read(length),
        )
        self._answer(status, body)

    def do_GET(self) -> None:
        self._answer(405, {"reason": "method_not_allowed", "message": "reports are POSTed"})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        if status >= 500:
            # Not ready here (e.g. a standby replica that has not listed the cluster): the trainer's next
            # connection may reach another replica behind the Service.
            self.close_connection = True
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return  # the service logs rejections; a line per accepted report would flood the log


class ReportServer:
    """Serves reports on ``port`` (0: any free port, see :attr:`port`) until :meth:`stop`."""

    def __init__(self, *, service: ReportService, tls: ssl.SSLContext, port: int, host: str = "0.0.0.0") -> None:
        self._server = _Server((host, port), _Handler)
        self._server.service = service
        self._server.tls = tls
        self._thread = threading.Thread(target=self._server.serve_forever, name="reports", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ReportServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
