"""A real Prometheus server (Debian's ``prometheus`` package) on loopback, scraping given targets."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kube_objects import wait_for
from kubetune_testenv.processes import free_port


class PrometheusServer:
    """``prometheus`` with a throw-away TSDB, scraping ``targets`` (host:port) every ``interval`` seconds."""

    def __init__(self, *, workdir: Path, targets: list[str], interval: float = 1.0) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: install Debian's prometheus package (.ci/install.sh does)"
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "prometheus.yml"
        interval_text = f"{int(interval * 1000)}ms"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": interval_text, "evaluation_interval": interval_text},
                    "scrape_configs": [{"job_name": "kubetune-operator", "static_configs": [{"targets": targets}]}],
                }
            )
        )
        self.log_path = workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, bool, what=f"Prometheus ready (log: {self.log_path})", timeout=60)
        return self

    def _ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise AssertionError(f"prometheus exited {self._process.returncode}: {self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query: the series and their current value."""
        return list(self.api("query", query=promql)["result"])

    def query_range(self, promql: str, *, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=promql, start=str(start), end=str(end), step=str(step))["result"])

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
