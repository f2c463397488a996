"""An HTTP proxy in front of the test API server that answers chosen requests with an error (429, 5xx).

The operator under test gets a kubeconfig pointing at the proxy (plain HTTP on loopback, its token passed
through); the proxy forwards everything else to the API server over TLS, streaming watches as they come,
and records every request with the status it got.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

# Hop-by-hop headers, and the body framing the proxy replaces with a close-delimited body.
_DROPPED = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection"}


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    statuses: list[int]  # answered in turn, one per matching request
    # Until this time (monotonic) the statuses are answered round and round; without it, each once.
    until: float | None = None

    def next_status(self, now: float) -> int | None:
        if self.until is not None:
            if now >= self.until:
                return None
            self.statuses.append(self.statuses[0])
        return self.statuses.pop(0) if self.statuses else None


@dataclass(frozen=True)
class Seen:
    at: float
    method: str
    path: str
    status: int


@dataclass
class FaultProxy:
    upstream: str
    ca_pem: str
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @classmethod
    def for_kubeconfig(cls, path: Path) -> FaultProxy:
        config = yaml.safe_load(path.read_text())
        cluster = config["clusters"][0]["cluster"]
        return cls(upstream=cluster["server"], ca_pem=base64.b64decode(cluster["certificate-authority-data"]).decode())

    def kubeconfig(self, *, base: Path, path: Path) -> Path:
        """``base`` with its server replaced by the proxy."""
        config: dict[str, Any] = yaml.safe_load(base.read_text())
        cluster = config["clusters"][0]["cluster"]
        cluster.pop("certificate-authority-data", None)
        cluster["server"] = self.url
        path.write_text(yaml.safe_dump(config))
        return path

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, method: str, path_pattern: str, statuses: list[int], *, for_seconds: float | None = None) -> None:
        """Answer matching requests with ``statuses`` in turn: each once, or round and round for a while."""
        until = time.monotonic() + for_seconds if for_seconds is not None else None
        with self.lock:
            self.faults.append(
                Fault(method=method, path=re.compile(path_pattern), statuses=list(statuses), until=until)
            )

    def requests(self, method: str, path_pattern: str) -> list[Seen]:
        pattern = re.compile(path_pattern)
        with self.lock:
            return [s for s in self.seen if s.method == method and pattern.search(s.path)]

    def start(self) -> FaultProxy:
        proxy = self
        context = ssl.create_default_context(cadata=self.ca_pem)
        target = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection; bodies end when it closes

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = proxy._injected(self.command, self.path)
                if status is not None:
                    self._answer_error(status)
                    return
                upstream = http.client.HTTPSConnection(target.hostname or "", target.port, context=context)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _DROPPED}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                proxy._record(self.command, self.path, response.status)
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in _DROPPED:
                        self.send_header(key, value)
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    while chunk := response.read1(65536):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    upstream.close()

            def _answer_error(self, status: int) -> None:
                reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}.get(status, "Error")
                payload = json.dumps(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": reason,
                        "code": status,
                        "message": f"injected by the test's fault proxy: {status}",
                    }
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def _injected(self, method: str, path: str) -> int | None:
        with self.lock:
            now = time.monotonic()
            for fault in self.faults:
                if fault.method == method and fault.path.search(path):
                    status = fault.next_status(now)
                    if status is None:
                        continue
                    self.seen.append(Seen(at=now, method=method, path=path, status=status))
                    return status
        return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.seen.append(Seen(at=time.monotonic(), method=method, path=path, status=status))
